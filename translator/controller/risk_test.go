package controller

import (
	"fmt"
	"strings"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sidewall/sidewall/crds/v1alpha1"
	"github.com/sidewall/sidewall/translator"
)

// TestBypassRiskFollowsPods checks the BypassRisk condition and the
// Warning Event as a risky pod comes and goes.
func TestBypassRiskFollowsPods(t *testing.T) {
	requireEnv(t)
	ns := env.Namespace(t, t.Name())
	startController(t, ns)

	create(t, webPolicy(ns, "shipper", "5044"))
	waitCondition(t, ns, "shipper", v1alpha1.ConditionBypassRisk, metav1.ConditionFalse, v1alpha1.ReasonNoBreakoutRisk)

	create(t, webPod(ns, "web-safe"))
	risky := webPod(ns, "web-risky")
	// The app container is not restricted: its privileges are no risk.
	risky.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{Privileged: ptr.To(true)}
	risky.Spec.InitContainers[1].SecurityContext = &corev1.SecurityContext{
		RunAsNonRoot:           ptr.To(true),
		ReadOnlyRootFilesystem: ptr.To(true),
		Capabilities:           &corev1.Capabilities{Add: []corev1.Capability{"NET_ADMIN"}, Drop: []corev1.Capability{"ALL"}},
	}
	create(t, risky)

	p := waitCondition(t, ns, "shipper", v1alpha1.ConditionBypassRisk, metav1.ConditionTrue, v1alpha1.ReasonBreakoutRisk)
	c := meta.FindStatusCondition(p.Status.Conditions, v1alpha1.ConditionBypassRisk)
	if want := "pod web-risky container log-shipper: " + translator.RiskNetAdmin; c.Message != want {
		t.Fatalf("BypassRisk message %q, want %q", c.Message, want)
	}
	e := findEvent(t, ns, "shipper", corev1.EventTypeWarning, v1alpha1.ReasonBreakoutRisk,
		"pod web-risky", "container log-shipper", translator.RiskNetAdmin)
	if e.Related == nil || e.Related.Kind != "Pod" || e.Related.Name != "web-risky" {
		t.Errorf("Event related object %+v, want pod web-risky", e.Related)
	}

	if err := env.Client.Delete(ctx, risky); err != nil {
		t.Fatalf("delete pod: %v", err)
	}
	waitCondition(t, ns, "shipper", v1alpha1.ConditionBypassRisk, metav1.ConditionFalse, v1alpha1.ReasonNoBreakoutRisk)
	findEvent(t, ns, "shipper", corev1.EventTypeNormal, v1alpha1.ReasonNoBreakoutRisk)
}

// getAdmission returns the generated admission policy and binding of the
// policy, straight from the API server.
func getAdmission(ns, name string) (*admissionv1.ValidatingAdmissionPolicy, *admissionv1.ValidatingAdmissionPolicyBinding, error, error) {
	key := types.NamespacedName{Name: translator.AdmissionPolicyName(ns, name)}
	vap := &admissionv1.ValidatingAdmissionPolicy{}
	binding := &admissionv1.ValidatingAdmissionPolicyBinding{}
	return vap, binding, env.Client.Get(ctx, key, vap), env.Client.Get(ctx, key, binding)
}

func waitAdmissionGone(t *testing.T, ns, name string) {
	t.Helper()
	eventually(t, "admission policy and binding deleted", func() error {
		_, _, err1, err2 := getAdmission(ns, name)
		if err := notFound(err1); err != nil {
			return fmt.Errorf("admission policy: %w", err)
		}
		if err := notFound(err2); err != nil {
			return fmt.Errorf("binding: %w", err)
		}
		return nil
	})
}

// TestAdmissionEnforce runs the generated admission policy on the real API
// server: a pod whose restricted sidecar is risky is refused with a
// message naming the container and the reason; a compliant pod and a pod
// whose risky container is not restricted are admitted; switching
// admission off and deleting the policy remove the admission objects
// (envtest runs no garbage collector: the controller deletes them).
func TestAdmissionEnforce(t *testing.T) {
	requireEnv(t)
	ns := env.Namespace(t, t.Name())
	startController(t, ns)

	p := webPolicy(ns, "shipper", "5044")
	p.Spec.Admission = v1alpha1.AdmissionEnforce
	create(t, p)
	t.Cleanup(func() { _ = env.Client.Delete(ctx, p) })

	eventually(t, "admission policy and binding generated", func() error {
		vap, binding, err1, err2 := getAdmission(ns, "shipper")
		if err1 != nil || err2 != nil {
			return fmt.Errorf("%v; %v", err1, err2)
		}
		for _, o := range []client.Object{vap, binding} {
			if o.GetLabels()[translator.LabelPolicyNamespace] != ns || o.GetAnnotations()[translator.LabelPolicy] != ns+"/shipper" {
				return fmt.Errorf("%s labels %v annotations %v", o.GetName(), o.GetLabels(), o.GetAnnotations())
			}
		}
		if got := binding.Spec.ValidationActions; len(got) != 1 || got[0] != admissionv1.Deny {
			return fmt.Errorf("validationActions %v", got)
		}
		return nil
	})

	riskyPod := func(name string) *corev1.Pod {
		pod := webPod(ns, name)
		pod.Spec.HostNetwork = true
		pod.Spec.InitContainers[1].SecurityContext = &corev1.SecurityContext{RunAsUser: ptr.To(int64(1000)),
			Capabilities: &corev1.Capabilities{Add: []corev1.Capability{"SYS_ADMIN"}, Drop: []corev1.Capability{"ALL"}}}
		return pod
	}
	// The API server applies a new admission policy after a moment.
	var refusal error
	deadline := time.Now().Add(30 * time.Second)
	for i := 0; refusal == nil; i++ {
		pod := riskyPod(fmt.Sprintf("risky-%d", i))
		if err := env.Client.Create(ctx, pod); err != nil {
			refusal = err
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("risky pod still admitted after 30s")
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, want := range []string{"container log-shipper: " + translator.RiskSysAdmin + ", " + translator.RiskHostNetwork, "ContainerNetworkPolicy " + ns + "/shipper"} {
		if !strings.Contains(refusal.Error(), want) {
			t.Errorf("refusal %q lacks %q", refusal, want)
		}
	}

	create(t, webPod(ns, "compliant"))
	// The runtime default: nothing added, NET_RAW not dropped.
	keeps := webPod(ns, "keeps-net-raw")
	keeps.Spec.InitContainers[1].SecurityContext = nil
	if err := env.Client.Create(ctx, keeps); err == nil {
		t.Error("pod whose restricted sidecar keeps NET_RAW admitted")
	} else if want := "container log-shipper: " + translator.RiskNetRawKept + ", " + translator.RiskRootWritable; !strings.HasSuffix(err.Error(), want) {
		t.Errorf("refusal %q does not end with %q", err, want)
	}
	unrestricted := webPod(ns, "risky-app")
	unrestricted.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{Privileged: ptr.To(true)}
	create(t, unrestricted)
	other := riskyPod("other-app")
	other.Labels = map[string]string{"app": "db"}
	create(t, other)

	// Audit admits with a warning.
	setAdmission := func(mode v1alpha1.AdmissionMode) {
		t.Helper()
		cur := getPolicy(t, ns, "shipper")
		orig := cur.DeepCopy()
		cur.Spec.Admission = mode
		if err := env.Client.Patch(ctx, cur, client.MergeFrom(orig)); err != nil {
			t.Fatalf("set admission %s: %v", mode, err)
		}
	}
	setAdmission(v1alpha1.AdmissionAudit)
	eventually(t, "binding switched to Warn, Audit", func() error {
		_, binding, _, err := getAdmission(ns, "shipper")
		if err != nil {
			return err
		}
		if got := binding.Spec.ValidationActions; len(got) != 2 || got[0] != admissionv1.Warn {
			return fmt.Errorf("validationActions %v", got)
		}
		return nil
	})

	setAdmission(v1alpha1.AdmissionNone)
	waitAdmissionGone(t, ns, "shipper")
	findEvent(t, ns, "shipper", corev1.EventTypeNormal, ReasonAdmissionRemoved)

	setAdmission(v1alpha1.AdmissionEnforce)
	eventually(t, "admission policy generated again", func() error {
		_, _, err1, err2 := getAdmission(ns, "shipper")
		if err1 != nil || err2 != nil {
			return fmt.Errorf("%v; %v", err1, err2)
		}
		return nil
	})
	// A hand deletion is undone.
	key := types.NamespacedName{Name: translator.AdmissionPolicyName(ns, "shipper")}
	if err := env.Client.Delete(ctx, &admissionv1.ValidatingAdmissionPolicyBinding{ObjectMeta: metav1.ObjectMeta{Name: key.Name}}); err != nil {
		t.Fatalf("delete binding: %v", err)
	}
	eventually(t, "binding restored", func() error {
		_, _, _, err := getAdmission(ns, "shipper")
		return err
	})

	if err := env.Client.Delete(ctx, p); err != nil {
		t.Fatalf("delete policy: %v", err)
	}
	waitAdmissionGone(t, ns, "shipper")
}

// A ValidatingAdmissionPolicy of the generated name that sidewall did not
// generate for this policy is left alone, with a NameConflict Event.
func TestAdmissionNameConflict(t *testing.T) {
	requireEnv(t)
	ns := env.Namespace(t, t.Name())
	startController(t, ns)
	name := translator.AdmissionPolicyName(ns, "shipper")
	user := &admissionv1.ValidatingAdmissionPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: admissionv1.ValidatingAdmissionPolicySpec{
			MatchConstraints: &admissionv1.MatchResources{ResourceRules: []admissionv1.NamedRuleWithOperations{{
				RuleWithOperations: admissionv1.RuleWithOperations{
					Operations: []admissionv1.OperationType{admissionv1.Create},
					Rule:       admissionv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"configmaps"}},
				},
			}}},
			Validations: []admissionv1.Validation{{Expression: "true"}},
		},
	}
	create(t, user)
	t.Cleanup(func() { _ = env.Client.Delete(ctx, user) })
	p := webPolicy(ns, "shipper", "5044")
	p.Spec.Admission = v1alpha1.AdmissionEnforce
	create(t, p)
	t.Cleanup(func() { _ = env.Client.Delete(ctx, p) })
	findEvent(t, ns, "shipper", corev1.EventTypeWarning, v1alpha1.ReasonNameConflict, name, "not sidewall's")
	var got admissionv1.ValidatingAdmissionPolicy
	if err := env.Client.Get(ctx, client.ObjectKey{Name: name}, &got); err != nil {
		t.Fatal(err)
	}
	if got.Generation != 1 || len(got.Spec.Validations) != 1 || got.Spec.Validations[0].Expression != "true" || got.Labels[translator.LabelManagedBy] != "" {
		t.Fatalf("the user's ValidatingAdmissionPolicy was written over: %+v", got)
	}
	// The CNP is the policy's own, and goes ahead.
	waitCondition(t, ns, "shipper", v1alpha1.ConditionTranslated, metav1.ConditionTrue, v1alpha1.ReasonGenerated)
}
