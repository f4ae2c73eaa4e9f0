package install

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	ciliumv2 "github.com/cilium/cilium/pkg/k8s/apis/cilium.io/v2"
	ciliumclient "github.com/cilium/cilium/pkg/k8s/client/clientset/versioned"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"github.com/sidewall/sidewall/agent/identity"
	"github.com/sidewall/sidewall/crds/v1alpha1"
	"github.com/sidewall/sidewall/hack/harness"
	"github.com/sidewall/sidewall/hack/harness/testenv"
	"github.com/sidewall/sidewall/translator/controller"
)

// env is one real kube-apiserver + etcd (with sidewall's and Cilium's
// CRDs) shared by the tests of this package.
var env *testenv.Env

func TestMain(m *testing.M) {
	if os.Getenv(envCapPin) != "" {
		// The capability helper process needs no API server.
		os.Exit(m.Run())
	}
	if !harness.Integration() {
		// Each test skips itself (requireEnv), saying why.
		os.Exit(m.Run())
	}
	var err error
	env, err = testenv.Start(testenv.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "start envtest:", err)
		os.Exit(1)
	}
	code := m.Run()
	if err := env.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "stop envtest:", err)
	}
	os.Exit(code)
}

const fieldManager = "sidewall-install-test"

// apply server-side applies obj with cfg; dryRun only validates it.
func apply(ctx context.Context, cfg *rest.Config, obj *unstructured.Unstructured, dryRun bool) error {
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return err
	}
	gvk := obj.GroupVersionKind()
	m, err := env.Client.RESTMapper().RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return fmt.Errorf("map %s: %w", gvk, err)
	}
	opts := metav1.ApplyOptions{FieldManager: fieldManager, Force: true}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	var ri dynamic.ResourceInterface = dyn.Resource(m.Resource)
	if ns := obj.GetNamespace(); ns != "" {
		ri = dyn.Resource(m.Resource).Namespace(ns)
	}
	_, err = ri.Apply(ctx, obj.GetName(), obj, opts)
	return err
}

func ensureNamespace(t *testing.T, name string, labels map[string]string) {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	if err := env.Client.Create(context.Background(), ns); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("create namespace %s: %v", name, err)
	}
	// Without kube-controller-manager no namespace gets its default
	// ServiceAccount, and pods need one to be admitted.
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default", Namespace: name}}
	if err := env.Client.Create(context.Background(), sa); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("create default service account in %s: %v", name, err)
	}
}

// TestInstallDryRun: the real API server accepts every object the chart
// renders, with the defaults and with every optional part switched.
func TestInstallDryRun(t *testing.T) {
	requireEnv(t)
	ctx := context.Background()
	ensureNamespace(t, DefaultNamespace, nil)
	for _, tc := range []struct {
		name   string
		values map[string]any
	}{
		{"defaults", nil},
		{"local identities, no hubble, no metrics service, pinned image", map[string]any{
			"image": map[string]any{"registry": "registry.example:5000/team", "tag": "v0.1.0-rc.1"},
			"controller": map[string]any{
				"replicas": 2, "metrics": map[string]any{"service": false},
				"nodeSelector": map[string]any{"node-role.kubernetes.io/control-plane": ""},
				"tolerations":  []any{map[string]any{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}},
			},
			"agent": map[string]any{
				"identitySource": "local", "hubble": map[string]any{"enabled": false},
				"cgroup":            map[string]any{"hostRoot": "/sys/fs/cgroup/unified", "driver": "systemd", "kubepodsRoot": "kubepods.slice"},
				"extraCapabilities": []any{"SYS_RESOURCE"},
			},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := render(t, tc.values)
			// CRDs for real, as Helm installs crds/ first.
			for _, crd := range r.CRDs {
				if err := apply(ctx, env.Config, crd, false); err != nil {
					t.Fatalf("apply CRD %s: %v", crd.GetName(), err)
				}
			}
			for _, obj := range r.Objects {
				if err := apply(ctx, env.Config, obj, true); err != nil {
					t.Errorf("dry-run %s %s: %v", obj.GetKind(), obj.GetName(), err)
				}
			}
		})
	}
}

// podFrom returns the pod a workload would create, in namespace ns.
func podFrom(t *testing.T, r *Rendered, kind, name, ns string) *corev1.Pod {
	t.Helper()
	var tmpl corev1.PodTemplateSpec
	switch kind {
	case "Deployment":
		var d appsv1.Deployment
		find(t, r, kind, name, &d)
		tmpl = d.Spec.Template
	case "DaemonSet":
		var d appsv1.DaemonSet
		find(t, r, kind, name, &d)
		tmpl = d.Spec.Template
	}
	pod := &corev1.Pod{ObjectMeta: tmpl.ObjectMeta, Spec: tmpl.Spec}
	pod.Name, pod.Namespace = name+"-pod", ns
	pod.Spec.ServiceAccountName = "default"
	return pod
}

// TestPodSecurity: the API server's PodSecurity admission admits the
// controller under the "restricted" standard, and the agent only in a
// namespace that allows "privileged" (its host mounts and capabilities),
// as docs/install.md says.
func TestPodSecurity(t *testing.T) {
	requireEnv(t)
	ctx := context.Background()
	r := render(t, nil)
	for _, tc := range []struct {
		kind, name, level string
		admitted          bool
	}{
		{"Deployment", "sidewall-controller", "restricted", true},
		{"DaemonSet", "sidewall-agent", "privileged", true},
		{"DaemonSet", "sidewall-agent", "baseline", false},
	} {
		t.Run(tc.name+" "+tc.level, func(t *testing.T) {
			ns := "pss-" + tc.level
			ensureNamespace(t, ns, map[string]string{"pod-security.kubernetes.io/enforce": tc.level})
			pod := podFrom(t, r, tc.kind, tc.name, ns)
			err := env.Client.Create(ctx, pod, client.DryRunAll)
			switch {
			case tc.admitted && err != nil:
				t.Errorf("%s pod rejected at %s: %v", tc.name, tc.level, err)
			case !tc.admitted && err == nil:
				t.Errorf("%s pod admitted at %s, want rejected", tc.name, tc.level)
			case !tc.admitted && !strings.Contains(err.Error(), "violates PodSecurity"):
				t.Errorf("%s pod rejected at %s for another reason: %v", tc.name, tc.level, err)
			}
		})
	}
}

// impersonate returns cfg acting as a ServiceAccount.
func impersonate(ns, sa string) *rest.Config {
	cfg := rest.CopyConfig(env.Config)
	cfg.Impersonate = rest.ImpersonationConfig{
		UserName: "system:serviceaccount:" + ns + ":" + sa,
		Groups:   []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"},
	}
	return cfg
}

func applyRBAC(t *testing.T, r *Rendered) {
	t.Helper()
	for _, obj := range r.Objects {
		switch obj.GetKind() {
		case "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding":
			if err := apply(context.Background(), env.Config, obj, false); err != nil {
				t.Fatalf("apply %s %s: %v", obj.GetKind(), obj.GetName(), err)
			}
		}
	}
}

// TestAgentRBACLive runs the agent's real identity sources, and the
// agent's own informer calls, as the agent's ServiceAccount with the
// chart's RBAC on a real API server.
func TestAgentRBACLive(t *testing.T) {
	requireEnv(t)
	ensureNamespace(t, DefaultNamespace, nil)
	applyRBAC(t, render(t, map[string]any{"agent": map[string]any{"identitySource": "auto"}}))
	cfg := impersonate(DefaultNamespace, "sidewall-agent")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	kc := kubernetes.NewForConfigOrDie(cfg)
	cc := ciliumclient.NewForConfigOrDie(cfg)
	log := slog.New(slog.DiscardHandler)
	sources := map[string]identity.Source{
		"cilium": identity.NewCiliumSource(cc, log),
		"local":  identity.NewPodSource(kc, nil, "default", log),
	}
	for name, src := range sources {
		errc := make(chan error, 1)
		go func() { errc <- src.Run(ctx) }()
		select {
		case <-src.Synced():
		case err := <-errc:
			t.Errorf("%s identity source stopped: %v", name, err)
		case <-time.After(30 * time.Second):
			t.Errorf("%s identity source did not sync in 30s as sidewall-agent: RBAC misses what it reads", name)
		}
	}
	// Discovery of cilium.io/v2 (--identity-source auto).
	if _, err := identity.CiliumInstalled(kc.Discovery()); err != nil {
		t.Errorf("detect cilium as sidewall-agent: %v", err)
	}
	// What agent's informers do: pods of its node, every policy.
	podOpts := metav1.ListOptions{FieldSelector: "spec.nodeName=node-1"}
	if _, err := kc.CoreV1().Pods("").List(ctx, podOpts); err != nil {
		t.Errorf("list pods of the node: %v", err)
	}
	if w, err := kc.CoreV1().Pods("").Watch(ctx, podOpts); err != nil {
		t.Errorf("watch pods of the node: %v", err)
	} else {
		w.Stop()
	}
	// Services and EndpointSlices of every namespace.
	if _, err := kc.CoreV1().Services("").List(ctx, metav1.ListOptions{}); err != nil {
		t.Errorf("list services: %v", err)
	}
	if _, err := kc.DiscoveryV1().EndpointSlices("").List(ctx, metav1.ListOptions{}); err != nil {
		t.Errorf("list endpointslices: %v", err)
	}
	dyn := dynamic.NewForConfigOrDie(cfg)
	policies := dyn.Resource(v1alpha1.GroupVersion.WithResource("containernetworkpolicies"))
	if _, err := policies.List(ctx, metav1.ListOptions{}); err != nil {
		t.Errorf("list containernetworkpolicies: %v", err)
	}
	if w, err := policies.Watch(ctx, metav1.ListOptions{}); err != nil {
		t.Errorf("watch containernetworkpolicies: %v", err)
	} else {
		w.Stop()
	}
	// The Events it records on pods failing closed: create, and patch (an
	// absent Event is not found only once RBAC let the patch through).
	ev := &eventsv1.Event{
		ObjectMeta: metav1.ObjectMeta{Namespace: DefaultNamespace, Name: "web.rbac"},
		EventTime:  metav1.NowMicro(), Type: corev1.EventTypeWarning, Reason: "MapFull", Action: "FailClosed",
		ReportingController: "sidewall-agent", ReportingInstance: "node-1",
		Regarding: corev1.ObjectReference{Kind: "Pod", APIVersion: "v1", Namespace: DefaultNamespace, Name: "web"},
	}
	if _, err := kc.EventsV1().Events(DefaultNamespace).Create(ctx, ev, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}); err != nil {
		t.Errorf("create an events.k8s.io Event: %v", err)
	}
	_, err := kc.EventsV1().Events(DefaultNamespace).Patch(ctx, "absent.rbac", types.MergePatchType, []byte(`{"series":{"count":2}}`), metav1.PatchOptions{DryRun: []string{metav1.DryRunAll}})
	if !apierrors.IsNotFound(err) {
		t.Errorf("patch an absent events.k8s.io Event: err %v, want not found (forbidden means RBAC misses patch)", err)
	}
	// And nothing more: the agent writes nothing else, nor reads secrets.
	_, err = kc.CoreV1().Secrets(DefaultNamespace).List(ctx, metav1.ListOptions{})
	if !apierrors.IsForbidden(err) {
		t.Errorf("sidewall-agent listing secrets: err %v, want forbidden", err)
	}
	_, err = policies.Namespace(DefaultNamespace).Create(ctx, &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "sidewall.io/v1alpha1", "kind": "ContainerNetworkPolicy",
		"metadata": map[string]any{"name": "x"}, "spec": map[string]any{},
	}}, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	if !apierrors.IsForbidden(err) {
		t.Errorf("sidewall-agent creating a policy: err %v, want forbidden", err)
	}
}

// shopObjects builds demo/shop with kustomize, as `kubectl apply -k` does.
func shopObjects(t *testing.T) []*unstructured.Unstructured {
	t.Helper()
	resMap, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), "../demo/shop")
	if err != nil {
		t.Fatalf("kustomize build demo/shop: %v", err)
	}
	var out []*unstructured.Unstructured
	for _, res := range resMap.Resources() {
		m, err := res.Map()
		if err != nil {
			t.Fatalf("demo/shop resource %s: %v", res.CurId(), err)
		}
		out = append(out, &unstructured.Unstructured{Object: m})
	}
	return out
}

// TestControllerRBACLive runs the real controller as its ServiceAccount,
// configured as the chart runs it (leader election in the release
// namespace), with only the chart's RBAC, and checks that it translates
// the shop scenario of demo/shop into its CiliumNetworkPolicy.
func TestControllerRBACLive(t *testing.T) {
	requireEnv(t)
	ensureNamespace(t, DefaultNamespace, nil)
	applyRBAC(t, render(t, nil))
	cfg := impersonate(DefaultNamespace, "sidewall-controller")

	if err := controller.CheckCiliumCRDs(cfg); err != nil {
		t.Fatalf("controller's Cilium check as sidewall-controller: %v", err)
	}
	scheme, err := controller.NewScheme()
	if err != nil {
		t.Fatal(err)
	}
	skip := true
	opts := ctrl.Options{
		Scheme:                        scheme,
		Metrics:                       metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress:        "0",
		LeaderElection:                true,
		LeaderElectionID:              "sidewall-controller.sidewall.io",
		LeaderElectionNamespace:       DefaultNamespace,
		LeaderElectionReleaseOnCancel: true,
		Controller:                    config.Controller{SkipNameValidation: &skip},
	}
	controller.ConfigureManager(&opts)
	mgr, err := ctrl.NewManager(cfg, opts)
	if err != nil {
		t.Fatalf("create manager: %v", err)
	}
	if err := controller.SetupWithManager(mgr, controller.Options{}); err != nil {
		t.Fatalf("set up controller: %v", err)
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
			t.Errorf("manager did not stop in 30s")
		}
	})
	select {
	case <-mgr.Elected():
	case err := <-done:
		t.Fatalf("manager stopped before leading: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("controller did not win leader election in 30s as sidewall-controller")
	}
	// client-go's leader elector records a core Event on the Lease; the
	// API server refuses it without RBAC for events in the "" group.
	waitFor(t, 30*time.Second, "LeaderElection event on the Lease (needs create events in API group \"\")", func() error {
		evs := &corev1.EventList{}
		if err := env.Client.List(ctx, evs, client.InNamespace(DefaultNamespace)); err != nil {
			return err
		}
		for _, e := range evs.Items {
			if e.Reason == "LeaderElection" && e.InvolvedObject.Kind == "Lease" && e.InvolvedObject.Name == opts.LeaderElectionID {
				return nil
			}
		}
		return fmt.Errorf("%d events, none for the Lease", len(evs.Items))
	})

	ensureNamespace(t, "shop", nil)
	for _, obj := range shopObjects(t) {
		if err := apply(ctx, env.Config, obj, false); err != nil {
			t.Fatalf("apply demo/shop %s %s: %v", obj.GetKind(), obj.GetName(), err)
		}
	}

	deadline := time.Now().Add(60 * time.Second)
	for {
		cnp := &ciliumv2.CiliumNetworkPolicy{}
		err := env.Client.Get(ctx, types.NamespacedName{Namespace: "shop", Name: "sidewall-log-shipper-egress"}, cnp)
		if err == nil {
			if got := httpRules(cnp); got != "POST ^/ingest$" {
				t.Errorf("generated CNP HTTP rules %q, want POST ^/ingest$", got)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no CNP for demo/shop's log-shipper-egress after 60s as sidewall-controller: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, name := range []string{"log-shipper-egress", "app-admin-port"} {
		p := &v1alpha1.ContainerNetworkPolicy{}
		deadline := time.Now().Add(30 * time.Second)
		for {
			err := env.Client.Get(ctx, types.NamespacedName{Namespace: "shop", Name: name}, p)
			if err == nil && accepted(p) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("policy %s has no Accepted=True status after 30s (status writes need the chart's RBAC): %v %+v", name, err, p.Status.Conditions)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
}

func waitFor(t *testing.T, timeout time.Duration, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true after %s: %v", what, timeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func accepted(p *v1alpha1.ContainerNetworkPolicy) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == v1alpha1.ConditionAccepted && c.Status == metav1.ConditionTrue {
			return true
		}
	}
	return false
}

func httpRules(cnp *ciliumv2.CiliumNetworkPolicy) string {
	var out []string
	if cnp.Spec == nil {
		return ""
	}
	for _, eg := range cnp.Spec.Egress {
		for _, pr := range eg.ToPorts {
			if pr.Rules == nil {
				continue
			}
			for _, h := range pr.Rules.HTTP {
				out = append(out, h.Method+" "+h.Path)
			}
		}
	}
	return strings.Join(out, ", ")
}

// requireEnv skips a test that needs the shared API server unless
// integration tests are asked for (then TestMain started it).
func requireEnv(t *testing.T) {
	t.Helper()
	harness.RequireIntegration(t)
}
