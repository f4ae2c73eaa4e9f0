package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/sidewall/sidewall/bpfext"
	"github.com/sidewall/sidewall/bpfext/objs"
	"github.com/sidewall/sidewall/crds/testenv"
	"github.com/sidewall/sidewall/crds/v1alpha1"
	"github.com/sidewall/sidewall/demo/localnode"
	"github.com/sidewall/sidewall/hack/bench/internal/proc"
)

const (
	targetP99      = 100 * time.Millisecond
	targetProgram  = 10 * time.Second
	targetMemoryMB = 150.0
	namespace      = "bench"
	sidecar        = "log-shipper"
	cfDenyAll      = 1 << 3 // container_info.flags, bpf/lib/common.h
)

func main() {
	var (
		latencyPods = flag.Int("latency-pods", 200, "pods started one by one for the status-to-enforcement latency")
		pods        = flag.Int("pods", 1000, "pods on the node for the restart measurement (including the latency pods)")
		policies    = flag.Int("policies", 100, "ContainerNetworkPolicies; pod i has app=app-<i mod policies>")
		binary      = flag.String("agent", "", "prebuilt sidewall-agent binary (default: go build ./cmd/sidewall-agent)")
		workers     = flag.Int("workers", 8, "concurrent pod starts for the scale phase")
		timeout     = flag.Duration("timeout", 8*time.Minute, "give up after this long")
		logTo       = flag.String("log", "", "keep the agent's log in this file (default: a temporary file, shown on failure)")
		logLevel    = flag.String("log-level", "warn", "the agent's --log-level (debug logs every reconcile and its duration)")
	)
	flag.Parse()
	if err := run(*latencyPods, *pods, *policies, *workers, *binary, *logTo, *logLevel, *timeout); err != nil {
		fmt.Fprintln(os.Stderr, "bench agent:", err)
		os.Exit(1)
	}
}

// bench holds what every phase uses.
type bench struct {
	binary, kubeconfig, pinDir, logPath, logLevel string
	node                                          *localnode.Node
	containers                                    *ebpf.Map // pinned sw_containers, opened read-only
}

func run(nLatency, nPods, nPolicies, workers int, binary, logPath, logLevel string, timeout time.Duration) error {
	if nLatency < 1 || nPods < nLatency || nPolicies < 1 || workers < 1 {
		return errors.New("need pods >= latency-pods >= 1, policies >= 1 and workers >= 1")
	}
	if os.Geteuid() != 0 {
		return errors.New("needs root (BPF, cgroups)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()

	tmp, err := os.MkdirTemp("", "sidewall-bench-agent-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if binary == "" {
		binary = filepath.Join(tmp, "sidewall-agent")
		fmt.Fprintln(os.Stderr, ">> building sidewall-agent")
		build := exec.CommandContext(ctx, "go", "build", "-o", binary, "./cmd/sidewall-agent")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			return fmt.Errorf("build agent: %w", err)
		}
	}

	fmt.Fprintln(os.Stderr, ">> starting kube-apiserver and etcd")
	env, err := testenv.Start(testenv.Options{SkipCiliumCRDs: true})
	if err != nil {
		return err
	}
	defer env.Stop()
	cs, err := kubernetes.NewForConfig(env.Config)
	if err != nil {
		return err
	}
	node, err := localnode.New(ctx, localnode.Options{Client: cs})
	if err != nil {
		return err
	}
	defer func() {
		if err := node.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "bench agent: close local node:", err)
		}
	}()
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create namespace: %w", err)
	}
	for i := range nPolicies {
		var p v1alpha1.ContainerNetworkPolicy
		if err := yaml.UnmarshalStrict([]byte(policyYAML(i, nPolicies)), &p); err != nil {
			return fmt.Errorf("parse policy %d: %w", i, err)
		}
		if err := env.Client.Create(ctx, &p); err != nil {
			return fmt.Errorf("create policy %d: %w", i, err)
		}
	}

	b := &bench{
		binary: binary, kubeconfig: env.Kubeconfig, node: node,
		pinDir:  filepath.Join(bpfext.DefaultBPFFSRoot, "sidewall-bench-"+proc.RandHex(4)),
		logPath: logPath, logLevel: logLevel,
	}
	if b.logPath == "" {
		b.logPath = filepath.Join(tmp, "agent.log")
	}
	defer func() {
		dp, err := bpfext.Load(bpfext.Options{PinDir: b.pinDir})
		if err == nil {
			err = errors.Join(dp.Unpin(), dp.Close())
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench agent: unpin:", err)
		}
	}()

	a, err := b.startAgent(ctx)
	if err != nil {
		return err
	}
	defer func() { a.stop() }() // the agent running when run returns
	if b.containers, err = ebpf.LoadPinnedMap(filepath.Join(b.pinDir, "sw_containers"), &ebpf.LoadPinOptions{ReadOnly: true}); err != nil {
		return fmt.Errorf("open pinned containers map: %w", err)
	}
	defer b.containers.Close()

	// 1. Status update to enforcement, one pod at a time.
	fmt.Fprintf(os.Stderr, ">> latency: %d pods, one at a time\n", nLatency)
	var lat []time.Duration
	var sidecars []uint64
	for i := range nLatency {
		d, cg, err := b.timedPod(ctx, i, nPolicies)
		if err != nil {
			return fmt.Errorf("%w (agent log: %s)", err, proc.Tail(b.logPath))
		}
		lat = append(lat, d)
		sidecars = append(sidecars, cg)
	}
	slices.Sort(lat)
	p50, p99 := proc.Percentile(lat, 50), proc.Percentile(lat, 99)
	fmt.Printf("agent: pod status update -> sidecar classified in the maps, %d pods one at a time (node growing to %d pods):\n", nLatency, nLatency)
	fmt.Printf("agent:   p50 %.1f ms, p99 %.1f ms, max %.1f ms (target p99 < %.0f ms, ratio %.2f)\n",
		proc.MS(p50), proc.MS(p99), proc.MS(lat[len(lat)-1]), proc.MS(targetP99), float64(p99)/float64(targetP99))

	// 2. Scale the node up, let the running agent converge.
	fmt.Fprintf(os.Stderr, ">> scale: starting %d more pods with %d workers\n", nPods-nLatency, workers)
	start := time.Now()
	more, err := b.startPods(ctx, nLatency, nPods, nPolicies, workers)
	if err != nil {
		return err
	}
	sidecars = append(sidecars, more...)
	started := time.Since(start)
	if err := b.waitClassified(ctx, sidecars, a.exited); err != nil {
		return err
	}
	converged := time.Since(start)
	hwm, rss, _ := proc.Memory(a.cmd.Process.Pid)
	before, err := mapCounts(b.pinDir)
	if err != nil {
		return err
	}
	fmt.Printf("agent: %d pods x 3 containers, %d policies: pods started in %.1fs, all sidecars classified %.1fs after the first start\n",
		nPods, nPolicies, started.Seconds(), converged.Seconds())
	fmt.Printf("agent: maps %s\n", before)
	fmt.Printf("agent: memory of the agent that grew with the node: VmHWM %.1f MB, VmRSS %.1f MB\n", hwm, rss)

	// 3. Restart adopting the pins, then a cold start on empty maps.
	for _, cold := range []bool{false, true} {
		a.stop()
		what := "restart (adopts the pinned maps and links)"
		if cold {
			what = "cold start (maps and links removed first)"
			dp, err := bpfext.Load(bpfext.Options{PinDir: b.pinDir, KeepVerdicts: true})
			if err != nil {
				return err
			}
			b.containers.Close()
			if err := errors.Join(dp.Unpin(), dp.Close()); err != nil {
				return fmt.Errorf("unpin for the cold start: %w", err)
			}
		}
		fmt.Fprintf(os.Stderr, ">> %s\n", what)
		t0 := time.Now()
		if a, err = b.startAgent(ctx); err != nil {
			return err
		}
		ready := time.Since(t0)
		if cold {
			if b.containers, err = ebpf.LoadPinnedMap(filepath.Join(b.pinDir, "sw_containers"), &ebpf.LoadPinOptions{ReadOnly: true}); err != nil {
				return fmt.Errorf("open pinned containers map: %w", err)
			}
		}
		// Ready means one complete reconcile: every sidecar must be
		// classified already, so this wait is a check, not a second clock.
		missing, err := b.unclassified(sidecars)
		if err != nil {
			return err
		}
		hwm, rss, err := proc.Memory(a.cmd.Process.Pid)
		if err != nil {
			return err
		}
		after, err := mapCounts(b.pinDir)
		if err != nil {
			return err
		}
		fmt.Printf("agent %s: process start -> first reconcile complete (ready) %.2fs (target < %.0fs, ratio %.3f); %d of %d sidecars unclassified at ready\n",
			what, ready.Seconds(), targetProgram.Seconds(), ready.Seconds()/targetProgram.Seconds(), missing, len(sidecars))
		fmt.Printf("agent %s: maps %s\n", what, after)
		fmt.Printf("agent %s: memory VmHWM %.1f MB, VmRSS %.1f MB (target < %.0f MB, ratio %.2f)\n",
			what, hwm, rss, targetMemoryMB, hwm/targetMemoryMB)
		if cpu, err := proc.CPUTime(a.cmd.Process.Pid); err == nil {
			fmt.Printf("agent %s: CPU time until ready %.2fs (user+system)\n", what, cpu.Seconds())
		}
	}
	a.stop()
	fmt.Fprintln(os.Stderr, ">> tearing down the node")
	return nil
}

// policyYAML restricts the log-shipper sidecar of app-i's pods: two peer
// workloads on TCP ports (one a range), a CIDR with an except, and an
// ingress rule, so each policy compiles to rules of every kind.
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

func podSpec(i, nPolicies int) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: fmt.Sprintf("pod-%04d", i),
			Labels: map[string]string{"app": fmt.Sprintf("app-%d", i%nPolicies)}},
		Spec: corev1.PodSpec{
			InitContainers: []corev1.Container{{Name: sidecar, RestartPolicy: ptr.To(corev1.ContainerRestartPolicyAlways)}},
			Containers:     []corev1.Container{{Name: "app"}, {Name: "admin"}},
		},
	}
}

// timedPod starts pod i and measures from the moment the localnode kubelet
// starts writing the Running status (which carries the container ids) to
// the moment the sidecar's cgroup has its own classification in the
// containers map (before that the pod cgroup's DenyAll entry covers it).
func (b *bench) timedPod(ctx context.Context, i, nPolicies int) (time.Duration, uint64, error) {
	type result struct {
		d   time.Duration
		err error
	}
	done := make(chan result, 1)
	var cg uint64
	_, err := b.node.RunPod(ctx, podSpec(i, nPolicies), localnode.WithoutNetwork(), localnode.BeforeStatus(func(p *localnode.Pod) error {
		c, err := p.Container(sidecar)
		if err != nil {
			return err
		}
		cg = c.CgroupID
		t0 := time.Now()
		go func() {
			for time.Since(t0) < 10*time.Second {
				if ok, err := b.classified(cg); err != nil || ok {
					done <- result{time.Since(t0), err}
					return
				}
				time.Sleep(200 * time.Microsecond)
			}
			done <- result{err: fmt.Errorf("pod %d: sidecar cgroup %d not classified 10s after its status", i, cg)}
		}()
		return nil
	}))
	if err != nil {
		return 0, 0, err
	}
	r := <-done
	return r.d, cg, r.err
}

func (b *bench) classified(cg uint64) (bool, error) {
	var ci objs.SkbContainerInfo
	err := b.containers.Lookup(cg, &ci)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("look up cgroup %d: %w", cg, err)
	}
	return ci.Flags&cfDenyAll == 0 && ci.PolicyId != 0, nil
}

func (b *bench) unclassified(cgs []uint64) (int, error) {
	n := 0
	for _, cg := range cgs {
		ok, err := b.classified(cg)
		if err != nil {
			return 0, err
		}
		if !ok {
			n++
		}
	}
	return n, nil
}

func (b *bench) startPods(ctx context.Context, from, to, nPolicies, workers int) ([]uint64, error) {
	var (
		mu   sync.Mutex
		cgs  []uint64
		errs []error
		wg   sync.WaitGroup
	)
	work := make(chan int)
	for range workers {
		wg.Go(func() {
			for i := range work {
				p, err := b.node.RunPod(ctx, podSpec(i, nPolicies), localnode.WithoutNetwork())
				var c localnode.Container
				if err == nil {
					c, err = p.Container(sidecar)
				}
				mu.Lock()
				if err != nil {
					errs = append(errs, err)
				} else {
					cgs = append(cgs, c.CgroupID)
				}
				mu.Unlock()
			}
		})
	}
	for i := from; i < to; i++ {
		mu.Lock()
		failed := len(errs) > 0
		mu.Unlock()
		if failed {
			break
		}
		work <- i
	}
	close(work)
	wg.Wait()
	return cgs, errors.Join(errs...)
}

func (b *bench) waitClassified(ctx context.Context, cgs []uint64, exited <-chan error) error {
	for {
		n, err := b.unclassified(cgs)
		if err != nil || n == 0 {
			return err
		}
		select {
		case err := <-exited:
			return fmt.Errorf("agent exited: %v (log: %s)", err, proc.Tail(b.logPath))
		case <-ctx.Done():
			return fmt.Errorf("%d of %d sidecars still unclassified (log: %s)", n, len(cgs), proc.Tail(b.logPath))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

type agentProc struct {
	cmd    *exec.Cmd
	exited chan error
	once   sync.Once
}

// stop sends SIGTERM, as kubelet does, and waits for the exit.
func (a *agentProc) stop() {
	a.once.Do(func() {
		_ = a.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-a.exited:
			a.exited <- err
		case <-time.After(20 * time.Second):
			_ = a.cmd.Process.Kill()
		}
	})
}

// startAgent runs the agent binary on this node and returns once /readyz
// answers (its first reconcile is complete).
func (b *bench) startAgent(ctx context.Context) (*agentProc, error) {
	port, err := proc.FreePort()
	if err != nil {
		return nil, err
	}
	logFile, err := os.OpenFile(b.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	cmd := exec.Command(b.binary,
		"--kubeconfig", b.kubeconfig,
		"--node-name", b.node.Name(),
		"--pin-dir", b.pinDir,
		"--cgroup-mount", b.node.CgroupMount(),
		"--cgroup-root", b.node.CgroupRoot(),
		"--cgroup-driver", "cgroupfs",
		"--identity-source", "local",
		"--hubble-socket", "-",
		"--hubble-listen-address", "-",
		"--metrics-bind-address", fmt.Sprintf("127.0.0.1:%d", port),
		"--log-level", b.logLevel,
	)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// The agent must not outlive this program, even if it is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start agent: %w", err)
	}
	a := &agentProc{cmd: cmd, exited: make(chan error, 1)}
	go func() { a.exited <- cmd.Wait() }()
	url := fmt.Sprintf("http://127.0.0.1:%d/readyz", port)
	hc := &http.Client{Timeout: time.Second}
	for {
		resp, err := hc.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return a, nil
			}
		}
		select {
		case err := <-a.exited:
			return nil, fmt.Errorf("agent exited before ready: %v (log: %s)", err, proc.Tail(b.logPath))
		case <-ctx.Done():
			a.stop()
			return nil, fmt.Errorf("agent not ready in time (log: %s)", proc.Tail(b.logPath))
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// mapCounts counts the entries of the maps the agent programs.
func mapCounts(pinDir string) (string, error) {
	var parts []string
	for _, name := range []string{"sw_containers", "sw_pods", "sw_rules", "sw_policies", "sw_ident4", "sw_cidr4"} {
		m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, name), &ebpf.LoadPinOptions{ReadOnly: true})
		if err != nil {
			return "", fmt.Errorf("open pinned %s: %w", name, err)
		}
		n := 0
		k := make([]byte, m.KeySize())
		v := make([]byte, m.ValueSize())
		it := m.Iterate()
		for it.Next(&k, &v) {
			n++
		}
		err = it.Err()
		m.Close()
		if err != nil {
			return "", fmt.Errorf("count %s: %w", name, err)
		}
		parts = append(parts, fmt.Sprintf("%s=%d", name, n))
	}
	links, _ := filepath.Glob(filepath.Join(pinDir, "links", "*"))
	parts = append(parts, fmt.Sprintf("attached-cgroups=%d", len(links)))
	return strings.Join(parts, " "), nil
}
