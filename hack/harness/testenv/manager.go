package testenv

import (
	"context"
	"errors"
	"regexp"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
)

// ManagerOptions tune StartManager.
type ManagerOptions struct {
	// Namespaces restricts the manager's cache, and so its controllers, to
	// these namespaces, so that tests sharing one Env do not reconcile each
	// other's objects. Empty means every namespace.
	Namespaces []string
	// Configure, if set, adjusts the manager options before the manager
	// is built (e.g. controller.ConfigureManager for its cache settings).
	Configure func(*manager.Options)
}

// StartManager builds a controller-runtime manager against e (no leader
// election, no metrics or probe listeners), lets setup register controllers
// on it, starts it and waits for its caches to sync. The manager stops in
// t.Cleanup, before the Env stops when the Env was created first in the
// same test; a manager that exits with an error fails the test.
func (e *Env) StartManager(t testing.TB, setup func(manager.Manager) error, opts ManagerOptions) manager.Manager {
	t.Helper()
	mopts := manager.Options{
		Scheme:                 e.Scheme,
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		LeaderElection:         false,
		// Several tests in one process register the same controller
		// names; names only need to be unique within one manager.
		Controller: config.Controller{SkipNameValidation: ptr(true)},
	}
	if len(opts.Namespaces) > 0 {
		mopts.Cache.DefaultNamespaces = map[string]cache.Config{}
		for _, ns := range opts.Namespaces {
			mopts.Cache.DefaultNamespaces[ns] = cache.Config{}
		}
	}
	if opts.Configure != nil {
		opts.Configure(&mopts)
	}
	mgr, err := manager.New(e.Config, mopts)
	if err != nil {
		t.Fatalf("create manager: %v", err)
	}
	if err := setup(mgr); err != nil {
		t.Fatalf("set up manager: %v", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil && !errors.Is(err, context.Canceled) {
				t.Errorf("manager exited: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("manager did not stop within 30s")
		}
	})

	syncCtx, syncCancel := context.WithTimeout(ctx, 30*time.Second)
	defer syncCancel()
	select {
	case <-mgr.Elected():
	case err := <-done:
		t.Fatalf("manager exited before starting: %v", err)
	case <-syncCtx.Done():
		t.Fatalf("manager did not start within 30s")
	}
	if !mgr.GetCache().WaitForCacheSync(syncCtx) {
		t.Fatalf("manager caches did not sync within 30s")
	}
	return mgr
}

// Namespace creates a namespace with a unique name starting with prefix
// and deletes it in t.Cleanup. Without kube-controller-manager the
// namespace only reaches Terminating, which is enough to keep tests apart.
func (e *Env) Namespace(t testing.TB, prefix string) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		GenerateName: namePrefix(prefix),
	}}
	if err := e.Client.Create(context.Background(), ns); err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	t.Cleanup(func() {
		if err := e.Client.Delete(context.Background(), ns); err != nil {
			t.Errorf("delete namespace %s: %v", ns.Name, err)
		}
	})
	return ns.Name
}

func ptr[T any](v T) *T { return &v }

var notDNSLabel = regexp.MustCompile(`[^a-z0-9-]+`)

// namePrefix turns a test name such as "TestPolicy/update" into a valid
// generateName prefix.
func namePrefix(s string) string {
	s = notDNSLabel.ReplaceAllString(strings.ToLower(s), "-")
	if len(s) > 40 {
		s = s[:40]
	}
	s = strings.Trim(s, "-")
	if s == "" {
		s = "test"
	}
	return s + "-"
}
