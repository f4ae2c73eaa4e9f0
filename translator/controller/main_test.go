package controller

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	ciliumv2 "github.com/cilium/cilium/pkg/k8s/apis/cilium.io/v2"
	slim_metav1 "github.com/cilium/cilium/pkg/k8s/slim/k8s/apis/meta/v1"
	"github.com/cilium/cilium/pkg/policy/api"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	"github.com/sidewall/sidewall/crds/v1alpha1"
	"github.com/sidewall/sidewall/hack/harness"
	"github.com/sidewall/sidewall/hack/harness/testenv"
	"github.com/sidewall/sidewall/translator"
)

// env is one real kube-apiserver + etcd shared by the tests of this
// package; each test works in its own namespace with its own controller
// whose cache sees only that namespace.
var env *testenv.Env

func TestMain(m *testing.M) {
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

// startController runs the controller, configured as the binary configures
// it, for namespace ns.
func startController(t *testing.T, ns string) {
	t.Helper()
	env.StartManager(t, func(mgr manager.Manager) error {
		return SetupWithManager(mgr, Options{})
	}, testenv.ManagerOptions{Namespaces: []string{ns}, Configure: ConfigureManager})
}

// eventually retries check until it returns nil or timeout passes, then
// fails the test with check's last error.
func eventually(t *testing.T, what string, check func() error) {
	t.Helper()
	const timeout = 30 * time.Second
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true after %s: %v", what, timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

var ctx = context.Background()

// getCNP returns the policy's generated CNP straight from the API server.
func getCNP(ns, policyName string) (*ciliumv2.CiliumNetworkPolicy, error) {
	cnp := &ciliumv2.CiliumNetworkPolicy{}
	err := env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: translator.CNPName(policyName)}, cnp)
	return cnp, err
}

func getPolicy(t *testing.T, ns, name string) *v1alpha1.ContainerNetworkPolicy {
	t.Helper()
	p := &v1alpha1.ContainerNetworkPolicy{}
	if err := env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, p); err != nil {
		t.Fatalf("get policy %s/%s: %v", ns, name, err)
	}
	return p
}

// conditionIs checks one condition of the current generation.
func conditionIs(p *v1alpha1.ContainerNetworkPolicy, typ string, status metav1.ConditionStatus, reason string) error {
	c := meta.FindStatusCondition(p.Status.Conditions, typ)
	switch {
	case c == nil:
		return fmt.Errorf("no %s condition in %+v", typ, p.Status.Conditions)
	case c.ObservedGeneration != p.Generation:
		return fmt.Errorf("%s observedGeneration %d, generation %d", typ, c.ObservedGeneration, p.Generation)
	case c.Status != status || c.Reason != reason:
		return fmt.Errorf("%s is %s/%s (%q), want %s/%s", typ, c.Status, c.Reason, c.Message, status, reason)
	}
	return nil
}

// waitCondition waits until the policy's condition has status and reason
// for its current generation and returns the policy.
func waitCondition(t *testing.T, ns, name, typ string, status metav1.ConditionStatus, reason string) *v1alpha1.ContainerNetworkPolicy {
	t.Helper()
	var p *v1alpha1.ContainerNetworkPolicy
	eventually(t, fmt.Sprintf("policy %s condition %s=%s/%s", name, typ, status, reason), func() error {
		p = getPolicy(t, ns, name)
		if p.Status.ObservedGeneration != p.Generation {
			return fmt.Errorf("status.observedGeneration %d, generation %d", p.Status.ObservedGeneration, p.Generation)
		}
		return conditionIs(p, typ, status, reason)
	})
	return p
}

// findEvent waits for an Event about the policy with this type and reason
// whose note contains every one of want.
func findEvent(t *testing.T, ns, policy, typ, reason string, want ...string) *eventsv1.Event {
	t.Helper()
	var found *eventsv1.Event
	eventually(t, fmt.Sprintf("%s Event %s about %s containing %q", typ, reason, policy, want), func() error {
		var list eventsv1.EventList
		if err := env.Client.List(ctx, &list, client.InNamespace(ns)); err != nil {
			return err
		}
		var seen []string
	next:
		for i := range list.Items {
			e := &list.Items[i]
			if e.Regarding.Kind != "ContainerNetworkPolicy" || e.Regarding.Name != policy {
				continue
			}
			seen = append(seen, e.Type+"/"+e.Reason+": "+e.Note)
			if e.Type != typ || e.Reason != reason {
				continue
			}
			for _, w := range want {
				if !strings.Contains(e.Note, w) {
					continue next
				}
			}
			found = e
			return nil
		}
		return fmt.Errorf("events so far: %q", seen)
	})
	return found
}

// webPolicy lets the log-shipper sidecar of app=web pods reach the
// endpoints app=logs on TCP port.
func webPolicy(ns, name, port string) *v1alpha1.ContainerNetworkPolicy {
	return &v1alpha1.ContainerNetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: v1alpha1.ContainerNetworkPolicySpec{
			PodSelector: slim_metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			Containers:  v1alpha1.ContainerSelector{Names: []string{"log-shipper"}},
			Egress: []v1alpha1.EgressRule{{
				EgressCommonRule: api.EgressCommonRule{
					ToEndpoints: []api.EndpointSelector{api.NewESFromMatchRequirements(map[string]string{"app": "logs"}, nil)},
				},
				ToPorts: []v1alpha1.PortRule{{Ports: []v1alpha1.PortProtocol{{Port: port, Protocol: api.ProtoTCP}}}},
			}},
		},
	}
}

// webPod is an app=web pod with a migrate init container, a log-shipper
// sidecar (init container with restartPolicy Always) and an app container.
func webPod(ns, name string, extra ...string) *corev1.Pod {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{
			InitContainers: []corev1.Container{
				{Name: "migrate", Image: "migrate"},
				// Drops every capability (NET_RAW included), so it is
				// no breakout risk.
				{Name: "log-shipper", Image: "shipper", RestartPolicy: ptr.To(corev1.ContainerRestartPolicyAlways),
					SecurityContext: &corev1.SecurityContext{Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}}},
			},
			Containers: []corev1.Container{{Name: "app", Image: "app"}},
		},
	}
	for _, c := range extra {
		pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: c, Image: c})
	}
	return pod
}

func create(t *testing.T, obj client.Object) {
	t.Helper()
	if err := env.Client.Create(ctx, obj); err != nil {
		t.Fatalf("create %T %s: %v", obj, obj.GetName(), err)
	}
}

func notFound(err error) error {
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err == nil {
		return fmt.Errorf("still exists")
	}
	return err
}

// requireEnv skips a test that needs the shared API server unless
// integration tests are asked for (then TestMain started it).
func requireEnv(t *testing.T) {
	t.Helper()
	harness.RequireIntegration(t)
}
