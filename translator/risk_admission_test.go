package translator

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	slim_metav1 "github.com/cilium/cilium/pkg/k8s/slim/k8s/apis/meta/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sidewall/sidewall/crds/v1alpha1"
	"github.com/sidewall/sidewall/hack/harness/testenv"
)

// TestAdmissionPolicyMatchesAnalysis installs the ValidatingAdmissionPolicy
// and binding that AdmissionPolicy generates on a real kube-apiserver and
// creates every pod of riskCases: the API server must refuse exactly the
// pods PodRisks finds risky, with a message naming the container and the
// same reasons, and admit the others (including a risky container the
// policy does not restrict and a risky pod the selector does not select).
func TestAdmissionPolicyMatchesAnalysis(t *testing.T) {
	env := testenv.New(t, testenv.Options{})
	ns := env.Namespace(t, "risk")
	ctx := context.Background()

	p := &v1alpha1.ContainerNetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "shipper"},
		Spec: v1alpha1.ContainerNetworkPolicySpec{
			PodSelector: slim_metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			Containers:  shipperSelector,
			Admission:   v1alpha1.AdmissionEnforce,
		},
	}
	vap, binding, err := AdmissionPolicy(p)
	if err != nil {
		t.Fatal(err)
	}
	for _, obj := range []client.Object{vap, binding} {
		if err := env.Client.Create(ctx, obj); err != nil {
			t.Fatalf("create %T: %v", obj, err)
		}
		t.Cleanup(func() { _ = env.Client.Delete(context.Background(), obj) })
	}

	// The API server picks up a new admission policy after a moment.
	n := 0
	probe := func() error {
		n++
		pod := riskPod(fmt.Sprintf("probe-%d", n))
		pod.Namespace = ns
		shipper(pod).SecurityContext.Privileged = ptr.To(true)
		err := env.Client.Create(ctx, pod)
		if err == nil {
			return fmt.Errorf("privileged probe pod admitted")
		}
		if !strings.Contains(err.Error(), "ValidatingAdmissionPolicy") {
			t.Fatalf("probe pod refused, but not by the admission policy: %v", err)
		}
		return nil
	}
	deadline := time.Now().Add(30 * time.Second)
	for err := probe(); err != nil; err = probe() {
		if time.Now().After(deadline) {
			t.Fatalf("admission policy not in effect after 30s: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}

	for _, tc := range riskCases {
		t.Run(tc.name, func(t *testing.T) {
			pod := riskPod(tc.name)
			pod.Namespace = ns
			tc.pod(pod)
			risks := PodRisks(&shipperSelector, pod)
			err := env.Client.Create(ctx, pod)
			if len(risks) == 0 {
				if err != nil {
					t.Fatalf("compliant pod refused: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("risky pod admitted; analysis: %v", risks)
			}
			want := "container shipper: " + strings.Join(risks[0].Reasons, ", ")
			if !strings.Contains(err.Error(), "ValidatingAdmissionPolicy") || !strings.HasSuffix(err.Error(), want) {
				t.Fatalf("refusal %q\ndoes not end with %q", err, want)
			}
		})
	}

	t.Run("not-selected", func(t *testing.T) {
		pod := riskPod("other-app")
		pod.Namespace = ns
		pod.Labels = map[string]string{"app": "db"}
		shipper(pod).SecurityContext.Privileged = ptr.To(true)
		if err := env.Client.Create(ctx, pod); err != nil {
			t.Fatalf("pod outside the pod selector refused: %v", err)
		}
	})

	t.Run("selector-forms-accepted", func(t *testing.T) {
		q := p.DeepCopy()
		q.Name = "selector-forms"
		q.Spec.PodSelector = slim_metav1.LabelSelector{
			MatchLabels: map[string]string{"k8s:app": "web", "io.cilium.k8s.namespace.labels.team": "a"},
			MatchExpressions: []slim_metav1.LabelSelectorRequirement{
				{Key: "io.cilium.k8s.policy.serviceaccount", Operator: slim_metav1.LabelSelectorOpNotIn, Values: []string{"default"}},
				{Key: "k8s:io.kubernetes.pod.namespace", Operator: slim_metav1.LabelSelectorOpIn, Values: []string{ns}},
			},
		}
		q.Spec.Containers = v1alpha1.ContainerSelector{Names: []string{"a", "b"}, Roles: []v1alpha1.ContainerRole{v1alpha1.RoleSidecar, v1alpha1.RoleInit}}
		vap, binding, err := AdmissionPolicy(q)
		if err != nil {
			t.Fatal(err)
		}
		if len(vap.Spec.MatchConditions) != 1 {
			t.Fatalf("match conditions %+v, want one for the service account", vap.Spec.MatchConditions)
		}
		for _, obj := range []client.Object{vap, binding} {
			if err := env.Client.Create(ctx, obj, client.DryRunAll); err != nil {
				t.Fatalf("API server refuses %T: %v", obj, err)
			}
		}
	})

	t.Run("ephemeral-container", func(t *testing.T) {
		byRole := p.DeepCopy()
		byRole.Name = "debuggers"
		byRole.Spec.Containers = v1alpha1.ContainerSelector{Roles: []v1alpha1.ContainerRole{v1alpha1.RoleEphemeral}}
		vap, binding, err := AdmissionPolicy(byRole)
		if err != nil {
			t.Fatal(err)
		}
		for _, obj := range []client.Object{vap, binding} {
			if err := env.Client.Create(ctx, obj); err != nil {
				t.Fatalf("create %T: %v", obj, err)
			}
			t.Cleanup(func() { _ = env.Client.Delete(context.Background(), obj) })
		}
		pod := riskPod("debug-target")
		pod.Namespace = ns
		if err := env.Client.Create(ctx, pod); err != nil {
			t.Fatalf("create pod: %v", err)
		}
		deadline := time.Now().Add(30 * time.Second)
		for i := 0; ; i++ {
			if err := env.Client.Get(ctx, client.ObjectKeyFromObject(pod), pod); err != nil {
				t.Fatal(err)
			}
			pod.Spec.EphemeralContainers = []corev1.EphemeralContainer{{EphemeralContainerCommon: corev1.EphemeralContainerCommon{
				Name: fmt.Sprintf("debug-%d", i), Image: "busybox",
				SecurityContext: &corev1.SecurityContext{Capabilities: &corev1.Capabilities{Add: []corev1.Capability{"SYS_PTRACE", "SYS_ADMIN"}}},
			}, TargetContainerName: "app"}}
			err := env.Client.SubResource("ephemeralcontainers").Update(ctx, pod)
			if err != nil && strings.Contains(err.Error(), fmt.Sprintf("container debug-%d: %s, %s, %s", i, RiskSysAdmin, RiskNetRawKept, RiskRootWritable)) {
				return
			}
			if err != nil && !strings.Contains(err.Error(), "ValidatingAdmissionPolicy") {
				t.Fatalf("add debug container: %v", err)
			}
			if time.Now().After(deadline) {
				t.Fatalf("risky debug container not refused after 30s: %v", err)
			}
			if err == nil {
				// Admitted before the policy was in effect: only
				// a new pod can show it now.
				pod = riskPod(fmt.Sprintf("debug-target-%d", i))
				pod.Namespace = ns
				if err := env.Client.Create(ctx, pod); err != nil {
					t.Fatalf("create pod: %v", err)
				}
			}
			time.Sleep(200 * time.Millisecond)
		}
	})
}
