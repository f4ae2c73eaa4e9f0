package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

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
	targetP99      = 100 * time.Millisecond
	targetProgram  = 10 * time.Second
	targetMemoryMB = 150.0
	namespace      = "bench"
	sidecar        = "log-shipper"
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
	containers                                    *bpfext.Pinned // the agent's pinned maps, read-only
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
	defer func() { a.Stop() }() // the agent running when run returns
	if b.containers, err = bpfext.OpenPinned(b.pinDir); err != nil {
		return err
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
	if err := b.waitClassified(ctx, sidecars, a.Exited); err != nil {
		return err
	}
	converged := time.Since(start)
	hwm, rss, _ := proc.Memory(a.Pid())
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
		a.Stop()
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
			if b.containers, err = bpfext.OpenPinned(b.pinDir); err != nil {
				return err
			}
		}
		// Ready means one complete reconcile: every sidecar must be
		// classified already, so this wait is a check, not a second clock.
		missing, err := b.unclassified(sidecars)
		if err != nil {
			return err
		}
		hwm, rss, err := proc.Memory(a.Pid())
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
		if cpu, err := proc.CPUTime(a.Pid()); err == nil {
			fmt.Printf("agent %s: CPU time until ready %.2fs (user+system)\n", what, cpu.Seconds())
		}
	}
	a.Stop()
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
				if ok, err := b.containers.Classified(cg); err != nil || ok {
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

func (b *bench) unclassified(cgs []uint64) (int, error) { return b.containers.Unclassified(cgs) }

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

// startAgent runs the agent binary on this node and returns once it is ready.
func (b *bench) startAgent(ctx context.Context) (*agentnode.Process, error) {
	a, err := agentnode.StartProcess(ctx, agentnode.ProcessOptions{
		Binary: b.binary, Kubeconfig: b.kubeconfig, Node: b.node, PinDir: b.pinDir, LogPath: b.logPath, LogLevel: b.logLevel,
	})
	if err != nil {
		return nil, err
	}
	return a, nil
}

// mapCounts counts the entries of the maps the agent programs.
func mapCounts(pinDir string) (string, error) {
	p, err := bpfext.OpenPinned(pinDir)
	if err != nil {
		return "", err
	}
	defer p.Close()
	var parts []string
	for _, name := range []string{bpfext.MapContainers, bpfext.MapPods, bpfext.MapRules, bpfext.MapPolicies, bpfext.MapIdentities4, bpfext.MapCIDR4} {
		n, err := p.Entries(name)
		if err != nil {
			return "", err
		}
		parts = append(parts, fmt.Sprintf("%s=%d", name, n))
	}
	links, _ := filepath.Glob(filepath.Join(pinDir, "links", "*"))
	parts = append(parts, fmt.Sprintf("attached-cgroups=%d", len(links)))
	return strings.Join(parts, " "), nil
}
