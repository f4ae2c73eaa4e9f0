// Command sidewall-agent is sidewall's node agent (a DaemonSet in
// production): it watches the pods of its node, the ContainerNetworkPolicies
// and the peers' identities, finds each container's cgroup, attaches the
// datapath to the pod cgroups of selected pods, keeps the pinned BPF maps
// equal to what the policies say, and serves the verdicts as Hubble flows
// (`hubble observe --server unix:///var/run/sidewall/hubble.sock`) and as
// Prometheus metrics.
//
// Everything it programs is pinned under --pin-dir, so enforcement outlives
// the process; a restarted agent adopts the pins and reconciles them.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/cilium/cilium/pkg/k8s/client/clientset/versioned"
	"github.com/cilium/cilium/pkg/policy/api"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/sidewall/sidewall/bpfext"
	"github.com/sidewall/sidewall/bpfext/agent"
	"github.com/sidewall/sidewall/bpfext/cgroups"
	"github.com/sidewall/sidewall/bpfext/identity"
	"github.com/sidewall/sidewall/bpfext/observer"
)

var version = "dev"

func main() {
	os.Exit(run())
}

func run() int {
	var (
		nodeName     = flag.String("node-name", os.Getenv("NODE_NAME"), "name of this node (default $NODE_NAME)")
		kubeconfig   = flag.String("kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig file (default: in-cluster config)")
		pinDir       = flag.String("pin-dir", bpfext.DefaultPinDir, "bpffs directory of the pinned maps and links")
		bpffsRoot    = flag.String("bpffs-root", bpfext.DefaultBPFFSRoot, "where to mount bpffs if --pin-dir is not on one")
		cgroupMount  = flag.String("cgroup-mount", "", "cgroup2 mount point (default: found in /proc/self/mounts)")
		cgroupParent = flag.String("cgroup-root", "", "kubelet's --cgroup-root, relative to the cgroup2 mount (default: the root)")
		kubepods     = flag.String("kubepods-root", "", "the kubepods cgroup relative to the mount (default: probe kubepods.slice, kubepods)")
		driver       = flag.String("cgroup-driver", "", "kubelet's cgroup driver: systemd or cgroupfs (default: from the kubepods name)")
		hubbleSock   = flag.String("hubble-socket", observer.DefaultUnixSocket, `unix socket of the Hubble observer API ("-" disables it)`)
		hubbleAddr   = flag.String("hubble-listen-address", observer.DefaultTCPAddress, `TCP address of the Hubble observer API ("-" disables it)`)
		httpAddr     = flag.String("metrics-bind-address", "127.0.0.1:9963", `address of /metrics, /healthz and /readyz ("0" disables it)`)
		idSource     = flag.String("identity-source", "auto", "peer identities: cilium (CiliumEndpoints), local (allocated from pod labels) or auto (cilium when its CRDs are served)")
		clusterName  = flag.String("cluster-name", identity.DefaultClusterName, "Cilium cluster name (for the cluster entity and local identities)")
		resync       = flag.Duration("resync", agent.DefaultResync, "period of full reconciles")
		logLevel     = flag.String("log-level", "info", "debug, info, warn or error")
	)
	flag.Parse()

	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(os.Stderr, "invalid --log-level %q: %v\n", *logLevel, err)
		return 2
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	if *nodeName == "" {
		log.Error("invalid flags: --node-name (or $NODE_NAME) is required")
		return 2
	}
	switch *idSource {
	case "auto", "cilium", "local":
	default:
		log.Error("invalid flags: --identity-source must be auto, cilium or local", "value", *idSource)
		return 2
	}
	if *driver != "" && *driver != string(cgroups.Systemd) && *driver != string(cgroups.Cgroupfs) {
		log.Error("invalid flags: --cgroup-driver must be systemd or cgroupfs", "value", *driver)
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := serve(ctx, log, options{
		nodeName: *nodeName, kubeconfig: *kubeconfig, pinDir: *pinDir, bpffsRoot: *bpffsRoot,
		cgroups:    cgroups.Config{Mount: *cgroupMount, Parent: *cgroupParent, Root: *kubepods, Driver: cgroups.Driver(*driver)},
		hubbleSock: *hubbleSock, hubbleAddr: *hubbleAddr, httpAddr: *httpAddr, idSource: *idSource,
		clusterName: *clusterName, resync: *resync,
	}); err != nil {
		log.Error("agent failed", "err", err)
		return 1
	}
	return 0
}

type options struct {
	nodeName, kubeconfig, pinDir, bpffsRoot string
	cgroups                                 cgroups.Config
	hubbleSock, hubbleAddr, httpAddr        string
	idSource, clusterName                   string
	resync                                  time.Duration
}

func serve(ctx context.Context, log *slog.Logger, o options) error {
	api.InitEntities(o.clusterName)
	var cfg *rest.Config
	var err error
	if o.kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", o.kubeconfig)
	} else {
		cfg, err = rest.InClusterConfig()
	}
	if err != nil {
		return fmt.Errorf("load kubeconfig: %w", err)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("dynamic client: %w", err)
	}
	src, err := identitySource(o, cfg, client, log)
	if err != nil {
		return err
	}
	resolver, err := cgroups.NewResolver(o.cgroups)
	if err != nil {
		return fmt.Errorf("find kubepods cgroup: %w", err)
	}
	dp, err := bpfext.Load(bpfext.Options{PinDir: o.pinDir, BPFFSRoot: o.bpffsRoot})
	if err != nil {
		return fmt.Errorf("load datapath: %w", err)
	}
	// Close keeps the pins: enforcement goes on while the agent is away.
	defer dp.Close()

	obs, err := observer.New(observer.Options{UnixSocket: o.hubbleSock, TCPAddress: o.hubbleAddr, NodeName: o.nodeName, Version: version, Logger: log.With("component", "hubble")})
	if err != nil {
		return err
	}
	if o.hubbleSock == "-" && o.hubbleAddr == "-" {
		obs = nil
	} else if err := obs.Listen(); err != nil {
		return err
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	rec, err := agent.NewEventRecorder(ctx, client, o.nodeName)
	if err != nil {
		return err
	}
	a, err := agent.New(agent.Config{
		NodeName: o.nodeName, Client: client, Dynamic: dyn, Identities: src, Datapath: dp,
		Cgroups: resolver, Observer: obs, Events: rec, Logger: log, Resync: o.resync,
	})
	if err != nil {
		return err
	}
	errc := make(chan error, 3)
	if obs != nil {
		go func() { errc <- obs.Serve(ctx) }()
		log.Info("serving hubble observer", "addrs", fmt.Sprint(obs.Addrs()))
	}
	if o.httpAddr != "0" {
		srv := &http.Server{Addr: o.httpAddr, Handler: a.Handler(), ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("serve metrics: %w", err)
			}
		}()
		go func() { <-ctx.Done(); srv.Close() }()
	}
	agentDone := make(chan error, 1)
	go func() { agentDone <- a.Run(ctx) }()
	select {
	case err = <-errc:
		cancel()
		// The agent stops before the datapath handles it uses are closed.
		err = errors.Join(err, <-agentDone)
	case err = <-agentDone:
		cancel()
	}
	return err
}

func identitySource(o options, cfg *rest.Config, client kubernetes.Interface, log *slog.Logger) (identity.Source, error) {
	useCilium := o.idSource == "cilium"
	if o.idSource == "auto" {
		ok, err := identity.CiliumInstalled(client.Discovery())
		if err != nil {
			return nil, fmt.Errorf("detect cilium: %w", err)
		}
		useCilium = ok
	}
	if useCilium {
		cc, err := versioned.NewForConfig(cfg)
		if err != nil {
			return nil, fmt.Errorf("cilium client: %w", err)
		}
		log.Info("identity source: cilium")
		return identity.NewCiliumSource(cc, log.With("component", "identity")), nil
	}
	log.Info("identity source: local")
	return identity.NewPodSource(client, nil, o.clusterName, log.With("component", "identity")), nil
}
