package main

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"time"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/go-logr/logr"

	"github.com/sidewall/sidewall/translator/controller"
)

func main() {
	os.Exit(run())
}

func run() int {
	// In a pod the service host is set: run leader election there by
	// default so that two replicas never both write, and skip it on a
	// laptop or in tests where a Lease namespace may not exist.
	inCluster := os.Getenv("KUBERNETES_SERVICE_HOST") != ""

	var (
		metricsAddr    = flag.String("metrics-bind-address", ":8080", `address of the Prometheus metrics endpoint ("0" disables it)`)
		probeAddr      = flag.String("health-probe-bind-address", ":8081", `address of the /healthz and /readyz endpoints ("0" disables them)`)
		leaderElect    = flag.Bool("leader-elect", inCluster, "hold a Lease so that only one replica reconciles (default true in a cluster, false outside)")
		leaderNS       = flag.String("leader-election-namespace", "", "namespace of the leader election Lease (default: the pod's namespace)")
		concurrency    = flag.Int("max-concurrent-reconciles", controller.DefaultMaxConcurrentReconciles, "policies reconciled in parallel")
		gracefulPeriod = flag.Duration("graceful-shutdown-timeout", 30*time.Second, "how long to wait for reconciles to finish on shutdown")
	)
	logLevel := flag.String("log-level", "info", "debug, info, warn or error")
	// --kubeconfig is registered by controller-runtime's config package.
	flag.Parse()
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(os.Stderr, "invalid --log-level %q: %v\n", *logLevel, err)
		return 2
	}
	// The agent logs the same way: slog JSON, "err" for errors (logr's key),
	// camelCase keys (controller-runtime's own).
	ctrl.SetLogger(logr.FromSlogHandler(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level})))
	log := ctrl.Log.WithName("setup")

	if *concurrency < 1 {
		log.Error(errors.New("must be at least 1"), "bad flag", "flag", "--max-concurrent-reconciles", "value", *concurrency)
		return 2
	}

	cfg, err := ctrl.GetConfig()
	if err != nil {
		log.Error(err, "cannot load kubeconfig")
		return 1
	}
	if err := controller.CheckCiliumCRDs(cfg); err != nil {
		log.Error(err, "cannot start", "host", cfg.Host)
		fmt.Fprintln(os.Stderr, "sidewall-controller:", err)
		return 1
	}

	scheme, err := controller.NewScheme()
	if err != nil {
		log.Error(err, "cannot build scheme")
		return 1
	}
	opts := ctrl.Options{
		Scheme:                  scheme,
		Metrics:                 metricsserver.Options{BindAddress: *metricsAddr},
		HealthProbeBindAddress:  *probeAddr,
		LeaderElection:          *leaderElect,
		LeaderElectionID:        "sidewall-controller.sidewall.io",
		LeaderElectionNamespace: *leaderNS,
		// The process exits right after the manager stops, so handing the
		// Lease over at once lets a new replica take over without waiting
		// for it to expire.
		LeaderElectionReleaseOnCancel: true,
		GracefulShutdownTimeout:       gracefulPeriod,
	}
	controller.ConfigureManager(&opts)
	mgr, err := ctrl.NewManager(cfg, opts)
	if err != nil {
		log.Error(err, "cannot create manager")
		return 1
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		log.Error(err, "cannot add health check")
		return 1
	}
	if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
		log.Error(err, "cannot add ready check")
		return 1
	}
	if err := controller.SetupWithManager(mgr, controller.Options{MaxConcurrentReconciles: *concurrency}); err != nil {
		log.Error(err, "cannot set up controller")
		return 1
	}

	log.Info("starting", "host", cfg.Host, "leaderElection", *leaderElect, "metrics", *metricsAddr, "probes", *probeAddr)
	if err := mgr.Start(ctrl.SetupSignalHandler()); err != nil {
		log.Error(err, "manager stopped")
		return 1
	}
	return 0
}
