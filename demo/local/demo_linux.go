package main

import (
	"context"
	"crypto/rand"
	_ "embed"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/cilium/cilium/pkg/policy/api"
	"github.com/go-logr/logr"
	"golang.org/x/sys/unix"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/sidewall/sidewall/agent"
	"github.com/sidewall/sidewall/agent/hubble"
	"github.com/sidewall/sidewall/agent/identity"
	"github.com/sidewall/sidewall/bpfext"
	"github.com/sidewall/sidewall/hack/harness/localnode"
	"github.com/sidewall/sidewall/hack/harness/testenv"
	"github.com/sidewall/sidewall/translator/controller"
)

// policyYAML is the scenario's policy, as a user would `kubectl apply` it;
// demo/shop/policy.yaml is the same file for a real cluster.
//
//go:embed policy.yaml
var policyYAML string

const (
	namespace = "shop"
	// waitLimit bounds each wait for the controller or the agent, so a
	// broken component fails the demo instead of hanging it.
	waitLimit = 30 * time.Second
)

// demo holds what a run started, so cleanup can undo it in reverse order.
type demo struct {
	out      io.Writer
	start    time.Time
	logPath  string
	logFile  *os.File
	hubble   string
	cleanups []cleanup

	env      *testenv.Env
	cs       kubernetes.Interface
	node     *localnode.Node
	agent    *agent.Agent
	dp       *bpfext.Datapath
	obs      *hubble.Server
	hubbleAt string
	pods     map[string]*localnode.Pod
	// cilium: the shop runs on a real cilium-agent, which owns the node's
	// networking and whose Hubble gives the matrix its Cilium column.
	cilium bool

	checks []check
}

type cleanup struct {
	what string
	fn   func() error
}

func run(ctx context.Context, args []string, out io.Writer) int {
	fs := flag.NewFlagSet("sidewall-demo", flag.ContinueOnError)
	fs.SetOutput(out)
	keep := fs.Bool("keep", false, "leave everything running after the checks, until Ctrl-C, and print how to use kubectl and hubble against it")
	hubbleBin := fs.String("hubble", "", "the hubble CLI (default: bin/hubble of this repository, else hubble on $PATH)")
	cilium := fs.Bool("cilium", true, "run the shop on a real cilium-agent (bin/cilium-agent and bin/cilium-cni, from `make cilium-tools`); --cilium=false runs the lighter mode, in which sidewall's harness wires the pods and no Cilium runs")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(out, "unexpected arguments: %s\n", strings.Join(fs.Args(), " "))
		return 2
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(out, "the demo needs root: it loads BPF programs and creates cgroups and network namespaces (try: sudo make demo)")
		return 1
	}

	d := &demo{out: out, start: time.Now(), pods: map[string]*localnode.Pod{}, cilium: *cilium}
	err := d.run(ctx, *hubbleBin, *keep)
	failed := d.failedChecks()
	interrupted := ctx.Err() != nil

	switch {
	case interrupted:
		fmt.Fprintln(out, "\ninterrupted: cleaning up")
	case err != nil:
		fmt.Fprintf(out, "\nFAILED: %v\n", err)
	}
	cleanErr := d.cleanup()
	if cleanErr != nil {
		fmt.Fprintf(out, "cleanup failed: %v\n", cleanErr)
	}
	if d.logFile != nil {
		d.logFile.Close()
		if err == nil && len(failed) == 0 && cleanErr == nil {
			os.Remove(d.logPath)
		} else {
			fmt.Fprintf(out, "logs of the control plane components, the controller and the agent: %s\n", d.logPath)
		}
	}

	switch {
	case err != nil && interrupted:
		return 130
	case err != nil:
		return 1
	case len(failed) > 0:
		return 1
	case cleanErr != nil:
		return 1
	}
	return 0
}

func (d *demo) run(ctx context.Context, hubbleBin string, keep bool) error {
	fmt.Fprintln(d.out, "sidewall demo: one pod, two containers, two different network policies")
	if d.cilium {
		fmt.Fprintln(d.out, "(real kube-apiserver + etcd, a real cilium-agent owning the node's pod networking, real cgroups,")
		fmt.Fprintln(d.out, " network namespaces, processes and BPF; no cluster needed)")
	} else {
		fmt.Fprintln(d.out, "(real kube-apiserver + etcd, real cgroups, network namespaces, processes and BPF; no cluster needed)")
		fmt.Fprintln(d.out, "(--cilium=false: no Cilium runs; sidewall's harness wires the pods and the matrix has no Cilium column)")
	}

	if err := d.setup(ctx, hubbleBin); err != nil {
		return err
	}
	if err := d.startControlPlane(); err != nil {
		return err
	}
	if err := d.startController(); err != nil {
		return err
	}
	if err := d.startNode(ctx); err != nil {
		return err
	}
	if err := d.startAgent(ctx); err != nil {
		return err
	}
	if err := d.runScenario(ctx); err != nil {
		return err
	}
	if err := d.showCiliumObjects(ctx); err != nil {
		return err
	}
	if err := d.applyPolicy(ctx); err != nil {
		return err
	}
	if err := d.showGenerated(ctx); err != nil {
		return err
	}
	if err := d.showStatus(ctx); err != nil {
		return err
	}
	if err := d.waitEnforced(ctx); err != nil {
		return err
	}
	if err := d.trafficMatrix(ctx); err != nil {
		return err
	}
	if err := d.showHubble(ctx); err != nil {
		return err
	}
	if err := d.showFQDN(ctx); err != nil {
		return err
	}
	d.showLimits()
	d.summary()
	if keep {
		d.showKeep()
		<-ctx.Done()
	}
	return nil
}

// setup opens the log file that every component writes to: the demo's
// own output stays the story, the logs are there when something fails.
func (d *demo) setup(ctx context.Context, hubbleBin string) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	var err error
	if d.hubble, err = findHubble(hubbleBin); err != nil {
		return err
	}
	f, err := os.CreateTemp("", "sidewall-demo-*.log")
	if err != nil {
		return fmt.Errorf("create log file: %w", err)
	}
	d.logFile, d.logPath = f, f.Name()

	// One log, one style for every component: slog text, as the agent logs.
	logger := logr.FromSlogHandler(slog.NewTextHandler(f, &slog.HandlerOptions{Level: slog.LevelDebug}))
	// Before testenv.Start: controller-runtime keeps the first logger set.
	ctrl.SetLogger(logger)
	klog.SetLogger(logger.WithName("client-go"))
	api.InitEntities(identity.DefaultClusterName)
	return nil
}

func (d *demo) defer_(what string, fn func() error) {
	d.cleanups = append(d.cleanups, cleanup{what, fn})
}

// cleanup undoes everything in reverse order and goes on after a failure,
// so one stuck step does not leave the rest behind.
func (d *demo) cleanup() error {
	if len(d.cleanups) == 0 {
		return nil
	}
	fmt.Fprintln(d.out)
	done := d.progress("cleaning up (pods, processes, cgroups, network namespaces, BPF pins, control plane)")
	var errs []error
	for i := len(d.cleanups) - 1; i >= 0; i-- {
		c := d.cleanups[i]
		if err := c.fn(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", c.what, err))
		}
	}
	d.cleanups = nil
	err := errors.Join(errs...)
	done(err)
	return err
}

// progress prints what is starting and returns a function that finishes
// the line with the time it took.
func (d *demo) progress(what string) func(error) {
	start := time.Now()
	fmt.Fprintf(d.out, "  → %s ... ", what)
	return func(err error) {
		if errors.Is(err, context.Canceled) {
			fmt.Fprintln(d.out, "interrupted")
			return
		}
		if err != nil {
			fmt.Fprintf(d.out, "failed (%s)\n", time.Since(start).Round(100*time.Millisecond))
			return
		}
		fmt.Fprintf(d.out, "done (%s)\n", time.Since(start).Round(100*time.Millisecond))
	}
}

func (d *demo) heading(format string, args ...any) {
	title := fmt.Sprintf(format, args...)
	line := strings.Repeat("─", 78)
	fmt.Fprintf(d.out, "\n%s\n %s\n%s\n", line, title, line)
}

func (d *demo) startControlPlane() (err error) {
	d.heading("Starting: control plane, sidewall-controller, local node, sidewall-agent")
	done := d.progress("kube-apiserver + etcd with the ContainerNetworkPolicy CRD and Cilium's CRDs")
	defer func() { done(err) }()
	env, err := testenv.Start(testenv.Options{})
	if err != nil {
		return err
	}
	d.env = env
	d.defer_("stop control plane", env.Stop)
	if d.cs, err = kubernetes.NewForConfig(env.Config); err != nil {
		return fmt.Errorf("create client: %w", err)
	}
	return nil
}

// startController runs sidewall-controller's manager in this process,
// set up as cmd/sidewall-controller sets it up (without leader election and
// listeners, which one local process does not need).
func (d *demo) startController() (err error) {
	done := d.progress("sidewall-controller (in this process)")
	defer func() { done(err) }()
	if err := controller.CheckCiliumCRDs(d.env.Config); err != nil {
		return err
	}
	scheme, err := controller.NewScheme()
	if err != nil {
		return err
	}
	opts := manager.Options{
		Scheme:                 scheme,
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
	}
	controller.ConfigureManager(&opts)
	mgr, err := manager.New(d.env.Config, opts)
	if err != nil {
		return fmt.Errorf("create manager: %w", err)
	}
	if err := controller.SetupWithManager(mgr, controller.Options{}); err != nil {
		return fmt.Errorf("set up controller: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	exited := make(chan error, 1)
	go func() { exited <- mgr.Start(ctx) }()
	d.defer_("stop controller", func() error {
		cancel()
		select {
		case err := <-exited:
			if err != nil && !errors.Is(err, context.Canceled) {
				return err
			}
			return nil
		case <-time.After(waitLimit):
			return errors.New("controller did not stop")
		}
	})
	syncCtx, syncCancel := context.WithTimeout(ctx, waitLimit)
	defer syncCancel()
	select {
	case <-mgr.Elected():
	case err := <-exited:
		exited <- err
		return fmt.Errorf("controller exited: %w", err)
	case <-syncCtx.Done():
		return errors.New("controller did not start")
	}
	if !mgr.GetCache().WaitForCacheSync(syncCtx) {
		return errors.New("controller caches did not sync")
	}
	return nil
}

func (d *demo) startNode(ctx context.Context) (err error) {
	what := "local node (kubelet's part: pod cgroups, network namespaces, processes)"
	opts := localnode.Options{
		Client: d.cs,
		Logf:   func(format string, args ...any) { fmt.Fprintf(d.logFile, "localnode: "+format+"\n", args...) },
	}
	if d.cilium {
		what = "local node, its pod networking owned by a real cilium-agent"
		if opts.Cilium, err = localnode.CiliumTools(d.env.Config); err != nil {
			return fmt.Errorf("%w (run `make cilium-tools`, or pass --cilium=false for the lighter mode without Cilium)", err)
		}
		// As a cluster runs it: kube-proxy replacement (socket LB) and
		// the L7 proxy on. No Envoy runs here (see section 7).
		opts.Cilium.KubeProxyReplacement = true
		opts.Cilium.L7Proxy = true
	}
	done := d.progress(what)
	defer func() { done(err) }()
	node, err := localnode.New(ctx, opts)
	if err != nil {
		return fmt.Errorf("create local node: %w", err)
	}
	d.node = node
	d.defer_("remove local node", node.Close)
	done(nil)
	done = func(error) {}
	if d.cilium {
		fmt.Fprintf(d.out, "    node %s, pod cgroups under %s, pods in %s, cilium-agent in network namespace %s\n",
			node.Name(), node.KubepodsDir(), node.PodCIDR(), node.NetnsName())
		fmt.Fprintf(d.out, "    Cilium's Hubble on unix://%s, its API on %s\n", node.HubbleSocket(), node.CiliumSocket())
		return nil
	}
	fmt.Fprintf(d.out, "    node %s, pod cgroups under %s, pods on bridge %s (%s)\n", node.Name(), node.KubepodsDir(), node.Bridge(), node.PodCIDR())
	return nil
}

// startAgent runs sidewall-agent in this process as cmd/sidewall-agent
// runs it, on a pin directory of its own (so a node agent that may run on
// this machine is not touched) and with a Hubble API on a free local port.
// Peer identities are Cilium's on the Cilium node (CiliumEndpoints and
// CiliumIdentities), and come from pod labels without it.
func (d *demo) startAgent(ctx context.Context) (err error) {
	done := d.progress("sidewall-agent (in this process): BPF datapath and Hubble API")
	defer func() { done(err) }()
	pinDir := filepath.Join(bpfext.DefaultBPFFSRoot, "sidewall-demo-"+randHex(4))
	log := slog.New(slog.NewTextHandler(d.logFile, &slog.HandlerOptions{Level: slog.LevelInfo}))
	ids, ciliumHubble := agent.IdentitiesLocal, agent.Disabled
	if d.cilium {
		// Cilium's own flows, re-served with the container named.
		ids, ciliumHubble = agent.IdentitiesCilium, "unix://"+d.node.HubbleSocket()
	}
	n, err := agent.Start(context.Background(), agent.Options{
		NodeName: d.node.Name(), Config: d.env.Config, PinDir: pinDir, Cgroups: d.node.CgroupConfig(),
		HubbleSocket: agent.Disabled, HubbleAddress: "127.0.0.1:0", IdentitySource: ids, Logger: log,
		CiliumHubble: ciliumHubble,
	})
	if err != nil {
		return err
	}
	d.defer_("remove BPF pins "+pinDir, func() error {
		dp, err := bpfext.Load(bpfext.Options{PinDir: pinDir})
		if err != nil {
			return err
		}
		return errors.Join(dp.Unpin(), dp.Close())
	})
	d.defer_("stop agent", func() error {
		select {
		case <-time.After(waitLimit):
			return errors.New("agent did not stop")
		case err := <-stopped(n):
			return err
		}
	})
	d.agent, d.dp, d.obs = n.Agent, n.Datapath, n.Hubble
	d.hubbleAt = n.Hubble.Addrs()[0].String()
	defer func() {
		if err == nil {
			done(nil)
			done = func(error) {}
			fmt.Fprintf(d.out, "    BPF pins in %s, Hubble API on %s\n", pinDir, d.hubbleAt)
		}
	}()
	wctx, cancel := context.WithTimeout(ctx, waitLimit)
	defer cancel()
	return n.WaitReady(wctx)
}

// stopped stops the agent and reports its exit.
func stopped(n *agent.Node) <-chan error {
	c := make(chan error, 1)
	go func() { c <- n.Stop() }()
	return c
}

// poll calls cond every 50ms until it is true, fails, ctx ends or
// waitLimit passes.
func poll(ctx context.Context, what string, cond func() (bool, error)) error {
	deadline := time.Now().Add(waitLimit)
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not after %s", what, waitLimit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (d *demo) summary() {
	failed := d.failedChecks()
	d.heading("Result")
	if len(failed) == 0 {
		fmt.Fprintf(d.out, "PASS: all %d checks got the expected result (%s in total).\n", len(d.checks), time.Since(d.start).Round(time.Second))
		return
	}
	fmt.Fprintf(d.out, "FAIL: %d of %d checks did not get the expected result:\n", len(failed), len(d.checks))
	for _, c := range failed {
		fmt.Fprintf(d.out, "  - %s: expected %s, got %s\n", c.name, c.expected, c.actual)
	}
}

func (d *demo) failedChecks() []check {
	var out []check
	for _, c := range d.checks {
		if !c.ok {
			out = append(out, c)
		}
	}
	return out
}

func (d *demo) showKeep() {
	d.heading("Still running (--keep): press Ctrl-C to clean up and exit")
	w := tabwriter.NewWriter(d.out, 0, 0, 2, ' ', 0)
	fmt.Fprintf(w, "kubeconfig:\t%s\n", d.env.Kubeconfig)
	fmt.Fprintf(w, "hubble API:\t%s\n", d.hubbleAt)
	w.Flush()
	fmt.Fprintln(d.out, "\nTry (kubectl is not part of this repository; any recent kubectl works):")
	fmt.Fprintf(d.out, "  KUBECONFIG=%s kubectl get ctrnp -n %s\n", d.env.Kubeconfig, namespace)
	fmt.Fprintf(d.out, "  KUBECONFIG=%s kubectl get cnp -n %s -o yaml\n", d.env.Kubeconfig, namespace)
	fmt.Fprintf(d.out, "  KUBECONFIG=%s kubectl get pods -n %s -o wide\n", d.env.Kubeconfig, namespace)
	fmt.Fprintf(d.out, "  %s observe --server %s --follow\n", d.hubble, d.hubbleAt)
	fmt.Fprintf(d.out, "  %s observe --server %s --last 100 --verdict DROPPED --from-label sidewall.io/container=log-shipper -o jsonpb\n", d.hubble, d.hubbleAt)
	if d.cilium {
		fmt.Fprintf(d.out, "  KUBECONFIG=%s kubectl get ciliumendpoints,ciliumidentities -n %s\n", d.env.Kubeconfig, namespace)
		fmt.Fprintf(d.out, "  %s observe --server unix://%s --follow   # Cilium's own Hubble\n", d.hubble, d.node.HubbleSocket())
		fmt.Fprintf(d.out, "  ip netns exec %s ip -br link   # the node's Cilium devices (cilium_host, lxc...)\n", d.node.NetnsName())
	}
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func errnoName(e unix.Errno) string { return unix.ErrnoName(e) }
