package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/sidewall/sidewall/bpfext"
	"github.com/sidewall/sidewall/crds/v1alpha1"
	"github.com/sidewall/sidewall/hack/harness/agentnode"
	"github.com/sidewall/sidewall/hack/harness/localnode"
	"github.com/sidewall/sidewall/hack/harness/proc"
	"github.com/sidewall/sidewall/hack/harness/testenv"
)

const (
	namespace = "churn"
	sidecar   = "log-shipper"
)

// Config is one churn run.
type Config struct {
	Cycles, Policies, Resident, Workers int
	Agent, LogPath, LogLevel            string
	Timeout                             time.Duration
	// ClassifyTimeout is how long a pod's sidecar may stay unclassified
	// after its Running status before the cycle counts a missed reconcile.
	ClassifyTimeout time.Duration
	// GoroutineSlack is how many goroutines above the baseline still count
	// as returned (client-go keeps idle HTTP/2 and watch goroutines around).
	GoroutineSlack int
	Out            io.Writer
}

func main() {
	c := Config{Out: os.Stdout}
	flag.IntVar(&c.Cycles, "cycles", 1000, "pod create/delete cycles")
	flag.IntVar(&c.Policies, "policies", 100, "ContainerNetworkPolicies; churned pod i has app=app-<i mod policies>")
	flag.IntVar(&c.Resident, "resident", 10, "pods that stay on the node through the churn (taken into the baseline)")
	flag.IntVar(&c.Workers, "workers", 4, "cycles run at once")
	flag.StringVar(&c.Agent, "agent", "", "prebuilt sidewall-agent binary (default: go build ./cmd/sidewall-agent)")
	flag.DurationVar(&c.Timeout, "timeout", 10*time.Minute, "give up after this long (setup, churn and checks)")
	flag.DurationVar(&c.ClassifyTimeout, "classify-timeout", 10*time.Second, "a sidecar unclassified this long after its pod's status is a missed reconcile")
	flag.IntVar(&c.GoroutineSlack, "goroutine-slack", 10, "goroutines above the baseline still counted as returned")
	flag.StringVar(&c.LogPath, "log", "", "keep the agent's log in this file (default: a temporary file, shown on failure)")
	flag.StringVar(&c.LogLevel, "log-level", "warn", "the agent's --log-level")
	flag.Parse()
	if _, err := Run(c); err != nil {
		fmt.Fprintln(os.Stderr, "bench churn:", err)
		os.Exit(1)
	}
}

// Snapshot is what must return to baseline.
type Snapshot struct {
	Maps       map[string]int
	Attached   int
	Goroutines int
	RSSMB      float64
	HWMMB      float64
	Reconciles int
	Errors     int
}

// Result is the figures of one run.
type Result struct {
	Baseline, End   Snapshot
	Cycles          int
	Churn, Settle   time.Duration
	ClassifyP50     time.Duration
	ClassifyP99     time.Duration
	ClassifyMax     time.Duration
	Missed          int
	Leaks           []string
	ResidentMissing int
}

// Failed reports why the run failed, or nil.
func (r *Result) Failed(want int) error {
	var errs []error
	if r.Cycles < want {
		errs = append(errs, fmt.Errorf("only %d of %d cycles finished in time", r.Cycles, want))
	}
	if r.Missed > 0 {
		errs = append(errs, fmt.Errorf("%d missed reconciles (a sidecar never classified)", r.Missed))
	}
	if r.ResidentMissing > 0 {
		errs = append(errs, fmt.Errorf("%d resident sidecars unclassified at the end", r.ResidentMissing))
	}
	for _, l := range r.Leaks {
		errs = append(errs, errors.New(l))
	}
	return errors.Join(errs...)
}

type bench struct {
	Config
	kubeconfig, pinDir string
	node               *localnode.Node
	containers         *bpfext.Pinned // the agent's pinned maps, read-only
	dp                 *bpfext.Datapath
	metricsURL         string
}

// Run runs the churn, prints the figures to c.Out and returns them; the
// error says what leaked or was missed.
func Run(c Config) (*Result, error) {
	if c.Cycles < 1 || c.Policies < 1 || c.Workers < 1 || c.Resident < 0 {
		return nil, errors.New("need cycles, policies and workers >= 1 and resident >= 0")
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("needs root (BPF, cgroups)")
	}
	if c.Out == nil {
		c.Out = io.Discard
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.Timeout)
	defer cancel()

	tmp, err := os.MkdirTemp("", "sidewall-bench-churn-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	if c.Agent == "" {
		c.Agent = filepath.Join(tmp, "sidewall-agent")
		fmt.Fprintln(os.Stderr, ">> building sidewall-agent")
		build := exec.CommandContext(ctx, "go", "build", "-o", c.Agent, "github.com/sidewall/sidewall/cmd/sidewall-agent")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			return nil, fmt.Errorf("build agent: %w", err)
		}
	}
	if c.LogPath == "" {
		c.LogPath = filepath.Join(tmp, "agent.log")
	}

	fmt.Fprintln(os.Stderr, ">> starting kube-apiserver and etcd")
	env, err := testenv.Start(testenv.Options{SkipCiliumCRDs: true})
	if err != nil {
		return nil, err
	}
	defer env.Stop()
	cs, err := kubernetes.NewForConfig(env.Config)
	if err != nil {
		return nil, err
	}
	node, err := localnode.New(ctx, localnode.Options{Client: cs})
	if err != nil {
		return nil, err
	}
	defer func() {
		if err := node.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "bench churn: close local node:", err)
		}
	}()
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}, metav1.CreateOptions{}); err != nil {
		return nil, fmt.Errorf("create namespace: %w", err)
	}
	for i := range c.Policies {
		var p v1alpha1.ContainerNetworkPolicy
		if err := yaml.UnmarshalStrict([]byte(policyYAML(i, c.Policies)), &p); err != nil {
			return nil, fmt.Errorf("parse policy %d: %w", i, err)
		}
		if err := env.Client.Create(ctx, &p); err != nil {
			return nil, fmt.Errorf("create policy %d: %w", i, err)
		}
	}

	b := &bench{Config: c, kubeconfig: env.Kubeconfig, node: node,
		pinDir: filepath.Join(bpfext.DefaultBPFFSRoot, "sidewall-churn-"+proc.RandHex(4))}
	defer func() {
		dp, err := bpfext.Load(bpfext.Options{PinDir: b.pinDir, KeepVerdicts: true})
		if err == nil {
			err = errors.Join(dp.Unpin(), dp.Close())
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench churn: unpin:", err)
		}
	}()
	a, err := b.startAgent(ctx)
	if err != nil {
		return nil, err
	}
	defer a.Stop()
	if b.containers, err = bpfext.OpenPinned(b.pinDir); err != nil {
		return nil, err
	}
	defer b.containers.Close()
	// KeepVerdicts: this handle only reads; the agent's verdicts stay.
	if b.dp, err = bpfext.Load(bpfext.Options{PinDir: b.pinDir, KeepVerdicts: true}); err != nil {
		return nil, fmt.Errorf("open the agent's datapath: %w", err)
	}
	defer b.dp.Close()

	// Resident pods share the policies with the churned ones, so the
	// baseline holds entries a leak-free agent must keep.
	var resident []uint64
	for i := range c.Resident {
		p, err := node.RunPod(ctx, podSpec(fmt.Sprintf("resident-%03d", i), i, c.Policies), localnode.WithoutNetwork())
		if err != nil {
			return nil, err
		}
		ct, err := p.Container(sidecar)
		if err != nil {
			return nil, err
		}
		resident = append(resident, ct.CgroupID)
	}
	if err := b.waitFor(ctx, a, func() (bool, error) {
		n, err := b.unclassified(resident)
		return n == 0, err
	}); err != nil {
		return nil, fmt.Errorf("resident pods not classified: %w", err)
	}
	// Let the agent finish what the resident pods started before the baseline.
	time.Sleep(2 * time.Second)
	r := &Result{}
	if r.Baseline, err = b.snapshot(a); err != nil {
		return nil, err
	}
	baseAttached, err := b.dp.Attached()
	if err != nil {
		return nil, err
	}

	// The churn, with its own deadline so the checks still get time.
	churnCtx, churnCancel := context.WithTimeout(ctx, max(c.Timeout*3/4, c.Timeout-90*time.Second))
	defer churnCancel()
	fmt.Fprintf(os.Stderr, ">> churn: %d cycles, %d workers, %d policies, %d resident pods\n", c.Cycles, c.Workers, c.Policies, c.Resident)
	var (
		next    atomic.Int64
		mu      sync.Mutex
		lat     []time.Duration
		removed []removedPod
		errs    []error
		wg      sync.WaitGroup
	)
	start := time.Now()
	for range c.Workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= c.Cycles || churnCtx.Err() != nil {
					return
				}
				d, rp, err := b.cycle(churnCtx, i)
				mu.Lock()
				switch {
				case errors.Is(err, errMissed):
					r.Missed++
					fmt.Fprintln(os.Stderr, "bench churn:", err)
				case err != nil && churnCtx.Err() == nil:
					errs = append(errs, err)
				case err == nil:
					lat = append(lat, d)
				}
				if rp.name != "" {
					removed = append(removed, rp)
				}
				if err == nil || errors.Is(err, errMissed) {
					r.Cycles++
					if r.Cycles%100 == 0 {
						fmt.Fprintf(os.Stderr, ">> %d cycles in %.1fs\n", r.Cycles, time.Since(start).Seconds())
					}
				}
				mu.Unlock()
				if err != nil && !errors.Is(err, errMissed) {
					return
				}
			}
		})
	}
	wg.Wait()
	r.Churn = time.Since(start)
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("churn: %w (agent log: %s)", err, proc.Tail(c.LogPath))
	}

	// Settle: the maps and attachments must come back to the baseline.
	settleStart := time.Now()
	var last Snapshot
	var lastAttached []uint64
	settled := false
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline) && ctx.Err() == nil; time.Sleep(100 * time.Millisecond) {
		if last, err = b.snapshot(a); err != nil {
			return nil, err
		}
		if lastAttached, err = b.dp.Attached(); err != nil {
			return nil, err
		}
		if maps.Equal(last.Maps, r.Baseline.Maps) && last.Attached == r.Baseline.Attached &&
			last.Goroutines <= r.Baseline.Goroutines+c.GoroutineSlack {
			settled = true
			break
		}
	}
	r.Settle = time.Since(settleStart)
	r.End = last
	if !settled {
		for _, name := range slices.Sorted(maps.Keys(union(r.Baseline.Maps, last.Maps))) {
			if r.Baseline.Maps[name] != last.Maps[name] {
				r.Leaks = append(r.Leaks, fmt.Sprintf("map %s: %d entries at baseline, %d after the churn", name, r.Baseline.Maps[name], last.Maps[name]))
			}
		}
		if last.Attached != r.Baseline.Attached {
			r.Leaks = append(r.Leaks, fmt.Sprintf("attached cgroups: %d at baseline, %d after the churn", r.Baseline.Attached, last.Attached))
		}
		if d := last.Goroutines - r.Baseline.Goroutines; d > c.GoroutineSlack {
			r.Leaks = append(r.Leaks, fmt.Sprintf("agent goroutines: %d at baseline, %d after the churn (+%d > slack %d)", r.Baseline.Goroutines, last.Goroutines, d, c.GoroutineSlack))
		}
	}
	r.Leaks = append(r.Leaks, b.removedLeaks(removed, baseAttached, lastAttached)...)
	if r.ResidentMissing, err = b.unclassified(resident); err != nil {
		return nil, err
	}
	if r.End.Errors > r.Baseline.Errors {
		fmt.Fprintf(os.Stderr, "bench churn: %d reconcile errors during the churn (retried by the agent)\n", r.End.Errors-r.Baseline.Errors)
	}
	if len(lat) > 0 {
		slices.Sort(lat)
		r.ClassifyP50, r.ClassifyP99, r.ClassifyMax = proc.Percentile(lat, 50), proc.Percentile(lat, 99), lat[len(lat)-1]
	}
	r.print(c, len(removed))
	if err := r.Failed(c.Cycles); err != nil {
		return r, fmt.Errorf("%w (agent log: %s)", err, proc.Tail(c.LogPath))
	}
	return r, nil
}

var errMissed = errors.New("missed reconcile")

type removedPod struct {
	name string
	dirs []string
	ids  []uint64 // every cgroup of the pod: pod, sandbox, containers
}

// cycle runs pod i until its sidecar is classified, then deletes it, and
// returns the time from its Running status to the classification.
func (b *bench) cycle(ctx context.Context, i int) (time.Duration, removedPod, error) {
	var t0 time.Time
	p, err := b.node.RunPod(ctx, podSpec(fmt.Sprintf("churn-%05d", i), i, b.Policies), localnode.WithoutNetwork(),
		localnode.BeforeStatus(func(*localnode.Pod) error { t0 = time.Now(); return nil }))
	if err != nil {
		return 0, removedPod{}, err
	}
	rp := removedPod{name: p.Name}
	for _, dir := range []string{p.CgroupDir, p.SandboxCgroupDir} {
		if dir == "" {
			continue
		}
		rp.dirs = append(rp.dirs, dir)
		var st unix.Stat_t
		if unix.Stat(dir, &st) == nil {
			rp.ids = append(rp.ids, st.Ino)
		}
	}
	var cg uint64
	for _, ct := range p.Containers() {
		if ct.CgroupDir != "" {
			rp.dirs = append(rp.dirs, ct.CgroupDir)
			rp.ids = append(rp.ids, ct.CgroupID)
		}
		if ct.Name == sidecar {
			cg = ct.CgroupID
		}
	}
	var d time.Duration
	var cerr error
	for {
		ok, err := b.containers.Classified(cg)
		if err != nil {
			cerr = err
			break
		}
		if ok {
			d = time.Since(t0)
			break
		}
		if time.Since(t0) > b.ClassifyTimeout {
			cerr = fmt.Errorf("%w: pod %s: sidecar cgroup %d not classified %s after its status", errMissed, p.Name, cg, b.ClassifyTimeout)
			break
		}
		if ctx.Err() != nil {
			cerr = ctx.Err()
			break
		}
		time.Sleep(time.Millisecond)
	}
	// Deleted even after a miss: the run goes on and the leak check sees it.
	if err := b.node.DeletePod(context.WithoutCancel(ctx), p); err != nil {
		return 0, rp, err
	}
	return d, rp, cerr
}

// removedLeaks checks every removed pod: its cgroup directories are gone
// and no pinned link or containers-map entry names one of its cgroups.
func (b *bench) removedLeaks(removed []removedPod, baseAttached, attached []uint64) []string {
	var leaks []string
	keys, err := b.containerKeys()
	if err != nil {
		return []string{err.Error()}
	}
	for _, rp := range removed {
		for _, dir := range rp.dirs {
			if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
				leaks = append(leaks, fmt.Sprintf("pod %s: cgroup %s not removed", rp.name, dir))
			}
		}
		for _, id := range rp.ids {
			if slices.Contains(attached, id) && !slices.Contains(baseAttached, id) {
				leaks = append(leaks, fmt.Sprintf("pod %s: cgroup %d still attached after its removal", rp.name, id))
			}
			if keys[id] {
				leaks = append(leaks, fmt.Sprintf("pod %s: cgroup %d still in the containers map after its removal", rp.name, id))
			}
		}
	}
	return leaks
}

func (b *bench) containerKeys() (map[uint64]bool, error) {
	cs, err := b.dp.Containers()
	if err != nil {
		return nil, err
	}
	out := make(map[uint64]bool, len(cs))
	for _, c := range cs {
		out[c.CgroupID] = true
	}
	return out, nil
}

func (b *bench) snapshot(a *agentnode.Process) (Snapshot, error) {
	var s Snapshot
	var err error
	if s.Maps, err = b.dp.MapEntries(); err != nil {
		return s, err
	}
	att, err := b.dp.Attached()
	if err != nil {
		return s, err
	}
	s.Attached = len(att)
	if s.HWMMB, s.RSSMB, err = proc.Memory(a.Pid()); err != nil {
		return s, err
	}
	m, err := b.scrape()
	if err != nil {
		return s, err
	}
	s.Goroutines = int(m["go_goroutines"])
	s.Reconciles = int(m["sidewall_reconcile_duration_seconds_count"])
	s.Errors = int(m["sidewall_reconcile_errors_total"])
	return s, nil
}

// scrape reads the unlabelled samples of the agent's /metrics.
func (b *bench) scrape() (map[string]float64, error) {
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get(b.metricsURL)
	if err != nil {
		return nil, fmt.Errorf("scrape agent metrics: %w", err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 2 || strings.HasPrefix(f[0], "#") || strings.Contains(f[0], "{") {
			continue
		}
		if v, err := strconv.ParseFloat(f[1], 64); err == nil {
			out[f[0]] = v
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("scrape agent metrics: %w", err)
	}
	if _, ok := out["go_goroutines"]; !ok {
		return nil, errors.New("scrape agent metrics: no go_goroutines")
	}
	return out, nil
}

func (r *Result) print(c Config, removed int) {
	w := c.Out
	fmt.Fprintf(w, "churn: %d pod create/delete cycles (%d workers) under %d policies, %d resident pods: %.1fs, %.1f cycles/s\n",
		r.Cycles, c.Workers, c.Policies, c.Resident, r.Churn.Seconds(), float64(r.Cycles)/r.Churn.Seconds())
	fmt.Fprintf(w, "churn: pod status -> sidecar classified: p50 %.1f ms, p99 %.1f ms, max %.1f ms; missed reconciles %d; resident sidecars unclassified at the end %d\n",
		proc.MS(r.ClassifyP50), proc.MS(r.ClassifyP99), proc.MS(r.ClassifyMax), r.Missed, r.ResidentMissing)
	fmt.Fprintf(w, "churn: back to baseline %.1fs after the last cycle; agent reconciles %d (errors %d) during the churn\n",
		r.Settle.Seconds(), r.End.Reconciles-r.Baseline.Reconciles, r.End.Errors-r.Baseline.Errors)
	fmt.Fprintf(w, "churn: %-24s %10s %10s\n", "measure", "baseline", "end")
	for _, name := range slices.Sorted(maps.Keys(union(r.Baseline.Maps, r.End.Maps))) {
		fmt.Fprintf(w, "churn: %-24s %10d %10d\n", "map "+name, r.Baseline.Maps[name], r.End.Maps[name])
	}
	fmt.Fprintf(w, "churn: %-24s %10d %10d\n", "attached cgroups", r.Baseline.Attached, r.End.Attached)
	fmt.Fprintf(w, "churn: %-24s %10d %10d (slack %d)\n", "agent goroutines", r.Baseline.Goroutines, r.End.Goroutines, c.GoroutineSlack)
	fmt.Fprintf(w, "churn: %-24s %10.1f %10.1f (growth %+.1f MB)\n", "agent VmRSS MB", r.Baseline.RSSMB, r.End.RSSMB, r.End.RSSMB-r.Baseline.RSSMB)
	fmt.Fprintf(w, "churn: %-24s %10.1f %10.1f\n", "agent VmHWM MB", r.Baseline.HWMMB, r.End.HWMMB)
	fmt.Fprintf(w, "churn: leaked cgroup attachments/entries of %d removed pods: %d\n", removed, len(r.Leaks))
	for _, l := range r.Leaks {
		fmt.Fprintln(w, "churn: LEAK", l)
	}
}

func union(a, b map[string]int) map[string]int {
	out := maps.Clone(a)
	for k, v := range b {
		out[k] = v
	}
	return out
}

// policyYAML restricts the log-shipper sidecar of app-i's pods, with rules
// of every kind (peers, a port range, a CIDR with an except, ingress).
func policyYAML(i, n int) string {
	return fmt.Sprintf(`
metadata: {name: policy-%03d, namespace: %s}
spec:
  podSelector: {matchLabels: {app: app-%d}}
  containers: {names: [%s]}
  egress:
  - toEndpoints: [{matchLabels: {app: app-%d}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}, {port: "9000", endPort: 9100, protocol: TCP}]}]
  - toCIDRSet: [{cidr: 10.%d.0.0/16, except: [10.%d.1.0/24]}]
    toPorts: [{ports: [{port: "53", protocol: UDP}]}]
  ingress:
  - fromEndpoints: [{matchLabels: {app: app-%d}}]
    toPorts: [{ports: [{port: "9090", protocol: TCP}]}]
`, i, namespace, i, sidecar, (i+1)%n, i%256, i%256, (i+n-1)%n)
}

func podSpec(name string, i, nPolicies int) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name,
			Labels: map[string]string{"app": fmt.Sprintf("app-%d", i%nPolicies)}},
		Spec: corev1.PodSpec{
			InitContainers: []corev1.Container{{Name: sidecar, RestartPolicy: ptr.To(corev1.ContainerRestartPolicyAlways)}},
			Containers:     []corev1.Container{{Name: "app"}, {Name: "admin"}},
		},
	}
}

func (b *bench) unclassified(cgs []uint64) (int, error) { return b.containers.Unclassified(cgs) }

func (b *bench) waitFor(ctx context.Context, a *agentnode.Process, cond func() (bool, error)) error {
	for {
		ok, err := cond()
		if err != nil || ok {
			return err
		}
		select {
		case err := <-a.Exited:
			a.Exited <- err
			return fmt.Errorf("agent exited: %v (log: %s)", err, proc.Tail(b.LogPath))
		case <-ctx.Done():
			return fmt.Errorf("%w (log: %s)", ctx.Err(), proc.Tail(b.LogPath))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// startAgent runs the agent binary on this node and returns once it is ready.
func (b *bench) startAgent(ctx context.Context) (*agentnode.Process, error) {
	a, err := agentnode.StartProcess(ctx, agentnode.ProcessOptions{
		Binary: b.Agent, Kubeconfig: b.kubeconfig, Node: b.node, PinDir: b.pinDir, LogPath: b.LogPath, LogLevel: b.LogLevel,
	})
	if err != nil {
		return nil, err
	}
	b.metricsURL = a.MetricsURL
	return a, nil
}
