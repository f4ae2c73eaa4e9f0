package controller

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	ciliumv2 "github.com/cilium/cilium/pkg/k8s/apis/cilium.io/v2"
	slim_metav1 "github.com/cilium/cilium/pkg/k8s/slim/k8s/apis/meta/v1"
	"github.com/cilium/cilium/pkg/policy/api"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sidewall/sidewall/crds/v1alpha1"
	"github.com/sidewall/sidewall/translator"
)

// firstPort returns egress[0].toPorts[0].ports[0].port of a generated CNP.
func firstPort(cnp *ciliumv2.CiliumNetworkPolicy) (string, error) {
	if cnp.Spec == nil || len(cnp.Spec.Egress) == 0 || len(cnp.Spec.Egress[0].ToPorts) == 0 ||
		len(cnp.Spec.Egress[0].ToPorts[0].Ports) == 0 {
		return "", fmt.Errorf("CNP %s has no egress port: %+v", cnp.Name, cnp.Spec)
	}
	return cnp.Spec.Egress[0].ToPorts[0].Ports[0].Port, nil
}

func waitCNPPort(t *testing.T, ns, policy, port string) *ciliumv2.CiliumNetworkPolicy {
	t.Helper()
	var cnp *ciliumv2.CiliumNetworkPolicy
	eventually(t, fmt.Sprintf("CNP of %s with port %s", policy, port), func() error {
		var err error
		if cnp, err = getCNP(ns, policy); err != nil {
			return err
		}
		got, err := firstPort(cnp)
		if err != nil {
			return err
		}
		if got != port {
			return fmt.Errorf("port is %s", got)
		}
		return nil
	})
	return cnp
}

func TestPolicyLifecycle(t *testing.T) {
	requireEnv(t)
	ns := env.Namespace(t, t.Name())
	startController(t, ns)

	create(t, webPolicy(ns, "shipper", "5044"))
	cnp := waitCNPPort(t, ns, "shipper", "5044")
	p := waitCondition(t, ns, "shipper", v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonNoPodsSelected)

	// The CNP exists in the API server, so the real CNP CRD schema accepted
	// it. Check what it says.
	if cnp.Name != "sidewall-shipper" || cnp.Namespace != ns {
		t.Errorf("CNP is %s/%s, want %s/sidewall-shipper", cnp.Namespace, cnp.Name, ns)
	}
	if got := cnp.Spec.EndpointSelector.MatchLabels; len(got) != 1 || got["app"] != "web" {
		t.Errorf("CNP endpointSelector matchLabels %v, want app=web", got)
	}
	eg := cnp.Spec.Egress[0]
	if len(eg.ToEndpoints) != 1 || eg.ToEndpoints[0].MatchLabels["app"] != "logs" {
		t.Errorf("CNP egress[0].toEndpoints %v, want app=logs", eg.ToEndpoints)
	}
	if proto := eg.ToPorts[0].Ports[0].Protocol; proto != api.ProtoTCP {
		t.Errorf("CNP port protocol %s, want TCP", proto)
	}
	if cnp.Labels[translator.LabelManagedBy] != translator.ManagedBy || cnp.Labels[translator.LabelPolicy] != "shipper" {
		t.Errorf("CNP labels %v", cnp.Labels)
	}
	// envtest runs no kube-controller-manager, so garbage collection does
	// not run here; what can be checked is that the owner reference would
	// let it: the policy as controller, blocking its deletion in the
	// foreground.
	owner := metav1.GetControllerOf(cnp)
	if owner == nil || owner.UID != p.UID || owner.Kind != "ContainerNetworkPolicy" ||
		owner.APIVersion != "sidewall.io/v1alpha1" || owner.Name != "shipper" ||
		owner.BlockOwnerDeletion == nil || !*owner.BlockOwnerDeletion {
		t.Errorf("CNP controller owner reference %+v, want the policy (uid %s) with blockOwnerDeletion", owner, p.UID)
	}
	applied := false
	for _, mf := range cnp.ManagedFields {
		applied = applied || mf.Manager == FieldOwner && mf.Operation == metav1.ManagedFieldsOperationApply
	}
	if !applied {
		t.Errorf("CNP managedFields %v: no server-side apply by %s", cnp.ManagedFields, FieldOwner)
	}
	if err := conditionIs(p, v1alpha1.ConditionAccepted, metav1.ConditionTrue, v1alpha1.ReasonValid); err != nil {
		t.Error(err)
	}
	if err := conditionIs(p, v1alpha1.ConditionTranslated, metav1.ConditionTrue, v1alpha1.ReasonGenerated); err != nil {
		t.Error(err)
	}
	if p.Status.GeneratedPolicy != cnp.Name || p.Status.ContainerSummary != "log-shipper" {
		t.Errorf("status generatedPolicy %q containerSummary %q", p.Status.GeneratedPolicy, p.Status.ContainerSummary)
	}
	findEvent(t, ns, "shipper", corev1.EventTypeNormal, ReasonCreated, "created CiliumNetworkPolicy sidewall-shipper")

	// Update: the CNP follows the spec.
	p.Spec.Egress[0].ToPorts[0].Ports[0].Port = "5045"
	if err := env.Client.Update(ctx, p); err != nil {
		t.Fatalf("update policy: %v", err)
	}
	waitCNPPort(t, ns, "shipper", "5045")
	waitCondition(t, ns, "shipper", v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonNoPodsSelected)
	findEvent(t, ns, "shipper", corev1.EventTypeNormal, ReasonUpdated, "updated CiliumNetworkPolicy sidewall-shipper")

	// Audit mode needs no CNP: the generated one goes away.
	p = getPolicy(t, ns, "shipper")
	p.Spec.Mode = v1alpha1.ModeAudit
	if err := env.Client.Update(ctx, p); err != nil {
		t.Fatalf("update policy to Audit: %v", err)
	}
	eventually(t, "CNP deleted in Audit mode", func() error { _, err := getCNP(ns, "shipper"); return notFound(err) })
	p = waitCondition(t, ns, "shipper", v1alpha1.ConditionTranslated, metav1.ConditionTrue, v1alpha1.ReasonNotNeeded)
	if p.Status.GeneratedPolicy != "" {
		t.Errorf("generatedPolicy %q in Audit mode, want empty", p.Status.GeneratedPolicy)
	}

	p.Spec.Mode = v1alpha1.ModeEnforce
	if err := env.Client.Update(ctx, p); err != nil {
		t.Fatalf("update policy to Enforce: %v", err)
	}
	waitCNPPort(t, ns, "shipper", "5045")

	// Delete: the controller deletes the CNP itself on seeing the policy
	// gone (no finalizer). In a real cluster the garbage collector would
	// also do it through the owner reference; here only the controller can.
	if err := env.Client.Delete(ctx, p); err != nil {
		t.Fatalf("delete policy: %v", err)
	}
	eventually(t, "CNP deleted with its policy", func() error { _, err := getCNP(ns, "shipper"); return notFound(err) })
}

func TestHandEditAndDeletionRepaired(t *testing.T) {
	requireEnv(t)
	ns := env.Namespace(t, t.Name())
	startController(t, ns)
	create(t, webPolicy(ns, "shipper", "5044"))
	cnp := waitCNPPort(t, ns, "shipper", "5044")
	waitCondition(t, ns, "shipper", v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonNoPodsSelected)

	// A field sidewall owns, changed by someone else with an update.
	cnp.Spec.Egress[0].ToPorts[0].Ports[0].Port = "1"
	if err := env.Client.Update(ctx, cnp, client.FieldOwner("kubectl-edit")); err != nil {
		t.Fatalf("hand edit of the CNP: %v", err)
	}
	waitCNPPort(t, ns, "shipper", "5044")
	findEvent(t, ns, "shipper", corev1.EventTypeNormal, ReasonRepaired, "restored CiliumNetworkPolicy sidewall-shipper")

	// A rule added by hand, in a field sidewall never sets: server-side
	// apply alone would keep it; it must go, or the pod would be open to
	// the world.
	cnp, err := getCNP(ns, "shipper")
	if err != nil {
		t.Fatal(err)
	}
	cnp.Spec.Ingress = []api.IngressRule{{IngressCommonRule: api.IngressCommonRule{FromEntities: api.EntitySlice{api.EntityWorld}}}}
	if err := env.Client.Update(ctx, cnp, client.FieldOwner("kubectl-edit")); err != nil {
		t.Fatalf("hand addition to the CNP: %v", err)
	}
	eventually(t, "hand-added ingress rule removed", func() error {
		cnp, err := getCNP(ns, "shipper")
		if err != nil {
			return err
		}
		if len(cnp.Spec.Ingress) != 0 {
			return fmt.Errorf("ingress still %+v", cnp.Spec.Ingress)
		}
		return nil
	})

	// A CNP that lost sidewall's label is still the policy's (it controls
	// it): the controller puts the label back.
	cnp, err = getCNP(ns, "shipper")
	if err != nil {
		t.Fatal(err)
	}
	delete(cnp.Labels, translator.LabelManagedBy)
	if err := env.Client.Update(ctx, cnp, client.FieldOwner("kubectl-edit")); err != nil {
		t.Fatalf("remove label: %v", err)
	}
	eventually(t, "managed-by label restored", func() error {
		cnp, err := getCNP(ns, "shipper")
		if err != nil {
			return err
		}
		if cnp.Labels[translator.LabelManagedBy] != translator.ManagedBy {
			return fmt.Errorf("labels %v", cnp.Labels)
		}
		return nil
	})

	// Deletion.
	old := cnp.UID
	if err := env.Client.Delete(ctx, cnp); err != nil {
		t.Fatalf("delete CNP: %v", err)
	}
	eventually(t, "CNP re-created", func() error {
		cnp, err := getCNP(ns, "shipper")
		if err != nil {
			return err
		}
		if cnp.UID == old {
			return errors.New("still the old object")
		}
		if port, _ := firstPort(cnp); port != "5044" {
			return fmt.Errorf("re-created with port %q", port)
		}
		return nil
	})
}

func TestInvalidPolicyFailsClosed(t *testing.T) {
	requireEnv(t)
	ns := env.Namespace(t, t.Name())
	startController(t, ns)

	p := webPolicy(ns, "api", "80")
	p.Spec.Egress[0].ToPorts[0].Rules = &api.L7Rules{HTTP: []api.PortRuleHTTP{{Method: "GET", Path: "/v1/.*"}}}
	create(t, p)
	waitCNPPort(t, ns, "api", "80")
	waitCondition(t, ns, "api", v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonNoPodsSelected)

	// The schema cannot check a regular expression, so admission lets it
	// in; the controller must refuse it, name the field, and take the
	// generated CNP away rather than leave the old grants in force.
	p = getPolicy(t, ns, "api")
	p.Spec.Egress[0].ToPorts[0].Rules.HTTP[0].Path = "/v1/(unclosed"
	if err := env.Client.Update(ctx, p); err != nil {
		t.Fatalf("update with a bad path regex was refused at admission: %v", err)
	}
	const field = "spec.egress[0].toPorts[0].rules.http[0].path"
	p = waitCondition(t, ns, "api", v1alpha1.ConditionAccepted, metav1.ConditionFalse, v1alpha1.ReasonInvalid)
	if msg := cond(p, v1alpha1.ConditionAccepted).Message; !strings.Contains(msg, field) {
		t.Errorf("Accepted message %q does not name %s", msg, field)
	}
	if err := conditionIs(p, v1alpha1.ConditionReady, metav1.ConditionFalse, v1alpha1.ReasonNotReady); err != nil {
		t.Error(err)
	}
	if p.Status.GeneratedPolicy != "" {
		t.Errorf("generatedPolicy %q for an invalid policy", p.Status.GeneratedPolicy)
	}
	eventually(t, "CNP of the invalid policy deleted", func() error { _, err := getCNP(ns, "api"); return notFound(err) })
	findEvent(t, ns, "api", corev1.EventTypeWarning, v1alpha1.ReasonInvalid, field)
	findEvent(t, ns, "api", corev1.EventTypeWarning, ReasonDeleted, "deleted CiliumNetworkPolicy sidewall-api: the policy is invalid")

	// Fixed: accepted and translated again.
	p.Spec.Egress[0].ToPorts[0].Rules.HTTP[0].Path = "/v1/(closed)"
	if err := env.Client.Update(ctx, p); err != nil {
		t.Fatalf("fix policy: %v", err)
	}
	waitCondition(t, ns, "api", v1alpha1.ConditionAccepted, metav1.ConditionTrue, v1alpha1.ReasonValid)
	waitCNPPort(t, ns, "api", "80")

	// Invalid from the start: no CNP is ever created.
	bad := webPolicy(ns, "bad-from-start", "80")
	bad.Spec.Egress[0].ToPorts[0].Rules = &api.L7Rules{HTTP: []api.PortRuleHTTP{{Path: "(["}}}
	create(t, bad)
	waitCondition(t, ns, "bad-from-start", v1alpha1.ConditionAccepted, metav1.ConditionFalse, v1alpha1.ReasonInvalid)
	if _, err := getCNP(ns, "bad-from-start"); notFound(err) != nil {
		t.Errorf("CNP of a policy invalid from the start: %v", notFound(err))
	}
}

func TestCountsFollowPods(t *testing.T) {
	requireEnv(t)
	ns := env.Namespace(t, t.Name())
	startController(t, ns)

	sidecars := webPolicy(ns, "sidecars", "5044")
	sidecars.Spec.Containers = v1alpha1.ContainerSelector{Roles: []v1alpha1.ContainerRole{v1alpha1.RoleSidecar}}
	create(t, sidecars)
	others := webPolicy(ns, "others", "5044")
	others.Spec.Containers = v1alpha1.ContainerSelector{Roles: []v1alpha1.ContainerRole{v1alpha1.RoleApp, v1alpha1.RoleInit, v1alpha1.RoleEphemeral}}
	create(t, others)

	counts := func(name string, pods, containers int32, ready string) {
		t.Helper()
		eventually(t, fmt.Sprintf("%s selects %d pods, %d containers, Ready reason %s", name, pods, containers, ready), func() error {
			p := getPolicy(t, ns, name)
			if p.Status.SelectedPods != pods || p.Status.SelectedContainers != containers {
				return fmt.Errorf("selectedPods %d selectedContainers %d", p.Status.SelectedPods, p.Status.SelectedContainers)
			}
			return conditionIs(p, v1alpha1.ConditionReady, metav1.ConditionTrue, ready)
		})
	}
	counts("sidecars", 0, 0, v1alpha1.ReasonNoPodsSelected)

	// No scheduler or kubelet runs here: the pods are API objects only,
	// which is all the controller reads.
	web1 := webPod(ns, "web-1")
	create(t, web1)
	counts("sidecars", 1, 1, v1alpha1.ReasonReady)
	counts("others", 1, 2, v1alpha1.ReasonReady) // migrate (init) + app

	web2 := webPod(ns, "web-2", "metrics")
	create(t, web2)
	create(t, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "db-1", Labels: map[string]string{"app": "db"}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "db", Image: "db"}}},
	})
	counts("sidecars", 2, 2, v1alpha1.ReasonReady)
	counts("others", 2, 5, v1alpha1.ReasonReady)

	// An ephemeral (debug) container added through its subresource.
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(web2), web2); err != nil {
		t.Fatal(err)
	}
	web2.Spec.EphemeralContainers = append(web2.Spec.EphemeralContainers, corev1.EphemeralContainer{
		EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: "debugger", Image: "busybox"},
	})
	if err := env.Client.SubResource("ephemeralcontainers").Update(ctx, web2); err != nil {
		t.Fatalf("add ephemeral container: %v", err)
	}
	counts("others", 2, 6, v1alpha1.ReasonReady)

	// A pod relabelled out of the selection.
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(web2), web2); err != nil {
		t.Fatal(err)
	}
	web2.Labels["app"] = "other"
	if err := env.Client.Update(ctx, web2); err != nil {
		t.Fatalf("relabel pod: %v", err)
	}
	counts("sidecars", 1, 1, v1alpha1.ReasonReady)
	counts("others", 1, 2, v1alpha1.ReasonReady)

	// Pods deleted. Without a kubelet, deletion of a pod that was never
	// scheduled is immediate.
	if err := env.Client.Delete(ctx, web1); err != nil {
		t.Fatalf("delete pod: %v", err)
	}
	counts("sidecars", 0, 0, v1alpha1.ReasonNoPodsSelected)
}

// Pods are selected as Cilium selects endpoints, by identity labels: a
// selector on a namespace label follows the Namespace's labels, and one on
// a label Cilium filters out (pod-template-hash) selects nothing.
func TestSelectionByIdentityLabels(t *testing.T) {
	requireEnv(t)
	ns := env.Namespace(t, t.Name())
	startController(t, ns)
	web := webPod(ns, "web-1")
	web.Labels["pod-template-hash"] = "5d8f7c"
	create(t, web)

	byTeam := webPolicy(ns, "by-team", "5044")
	byTeam.Spec.PodSelector = slim_metav1.LabelSelector{MatchLabels: map[string]string{"io.cilium.k8s.namespace.labels.team": "payments"}}
	create(t, byTeam)
	byHash := webPolicy(ns, "by-hash", "5044")
	byHash.Spec.PodSelector = slim_metav1.LabelSelector{MatchLabels: map[string]string{"pod-template-hash": "5d8f7c"}}
	create(t, byHash)

	selects := func(name string, pods int32) {
		t.Helper()
		eventually(t, fmt.Sprintf("%s selects %d pods", name, pods), func() error {
			if p := getPolicy(t, ns, name); p.Status.SelectedPods != pods || p.Status.ObservedGeneration != p.Generation {
				return fmt.Errorf("selectedPods %d", p.Status.SelectedPods)
			}
			return nil
		})
	}
	selects("by-team", 0)
	eventually(t, "by-hash says why it selects nothing", func() error {
		c := meta.FindStatusCondition(getPolicy(t, ns, "by-hash").Status.Conditions, v1alpha1.ConditionReady)
		if c == nil || !strings.Contains(c.Message, "pod-template-hash") || !strings.Contains(c.Message, "label filter") {
			return fmt.Errorf("Ready condition %+v does not name the filtered label", c)
		}
		return nil
	})

	label := func(v string) {
		t.Helper()
		var n corev1.Namespace
		if err := env.Client.Get(ctx, client.ObjectKey{Name: ns}, &n); err != nil {
			t.Fatal(err)
		}
		if v == "" {
			delete(n.Labels, "team")
		} else {
			n.Labels["team"] = v
		}
		if err := env.Client.Update(ctx, &n); err != nil {
			t.Fatalf("label namespace: %v", err)
		}
	}
	label("payments")
	selects("by-team", 1)
	label("")
	selects("by-team", 0)
	selects("by-hash", 0)
}

func TestUnknownContainerReported(t *testing.T) {
	requireEnv(t)
	ns := env.Namespace(t, t.Name())
	startController(t, ns)

	p := webPolicy(ns, "proxy", "5044")
	p.Spec.Containers.Names = []string{"log-shipper", "envoy"}
	create(t, p)
	create(t, webPod(ns, "web-1"))

	// Not a rejection: the policy is valid and its CNP in place, but the
	// user is told that one of the names matches nothing.
	p = waitCondition(t, ns, "proxy", v1alpha1.ConditionReady, metav1.ConditionFalse, v1alpha1.ReasonUnknownContainer)
	if msg := cond(p, v1alpha1.ConditionReady).Message; !strings.Contains(msg, "spec.containers.names") || !strings.Contains(msg, "envoy") {
		t.Errorf("Ready message %q does not name spec.containers.names and envoy", msg)
	}
	if err := conditionIs(p, v1alpha1.ConditionAccepted, metav1.ConditionTrue, v1alpha1.ReasonValid); err != nil {
		t.Error(err)
	}
	if _, err := getCNP(ns, "proxy"); err != nil {
		t.Errorf("CNP: %v", err)
	}
	findEvent(t, ns, "proxy", corev1.EventTypeWarning, v1alpha1.ReasonUnknownContainer, "envoy")

	// A selected pod that has an envoy container resolves it.
	create(t, webPod(ns, "web-2", "envoy"))
	waitCondition(t, ns, "proxy", v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonReady)
}

func TestL7PreciseFollowsOtherPolicies(t *testing.T) {
	requireEnv(t)
	ns := env.Namespace(t, t.Name())
	startController(t, ns)

	l7 := func(name, container, method string) *v1alpha1.ContainerNetworkPolicy {
		p := webPolicy(ns, name, "8080")
		p.Spec.Containers.Names = []string{container}
		p.Spec.Egress[0].ToEndpoints = []api.EndpointSelector{{LabelSelector: &slim_metav1.LabelSelector{
			MatchLabels: map[string]string{"app": "log-store"},
		}}}
		p.Spec.Egress[0].ToPorts[0].Rules = &api.L7Rules{HTTP: []api.PortRuleHTTP{{Method: method, Path: "/v1/logs"}}}
		return p
	}
	create(t, webPod(ns, "web-1"))
	create(t, l7("shipper-posts", "log-shipper", "POST"))
	waitCondition(t, ns, "shipper-posts", v1alpha1.ConditionL7Precise, metav1.ConditionTrue, v1alpha1.ReasonExclusive)

	// Another policy gives the app container the same peer and port with
	// other L7 rules: Cilium's proxy, per pod, will enforce the union.
	// The first policy did not change, yet its condition must.
	appReads := l7("app-reads", "app", "GET")
	create(t, appReads)
	p := waitCondition(t, ns, "shipper-posts", v1alpha1.ConditionL7Precise, metav1.ConditionFalse, v1alpha1.ReasonSharedPort)
	if msg := cond(p, v1alpha1.ConditionL7Precise).Message; !strings.Contains(msg, "app") || !strings.Contains(msg, "8080") {
		t.Errorf("L7Precise message %q does not name the containers and port", msg)
	}
	findEvent(t, ns, "shipper-posts", corev1.EventTypeWarning, v1alpha1.ReasonSharedPort, "8080")

	if err := env.Client.Delete(ctx, appReads); err != nil {
		t.Fatalf("delete policy: %v", err)
	}
	waitCondition(t, ns, "shipper-posts", v1alpha1.ConditionL7Precise, metav1.ConditionTrue, v1alpha1.ReasonExclusive)
}

// cond returns a condition that the caller knows is there.
func cond(p *v1alpha1.ContainerNetworkPolicy, typ string) metav1.Condition {
	for _, c := range p.Status.Conditions {
		if c.Type == typ {
			return c
		}
	}
	return metav1.Condition{}
}

// The controller never writes over an object it does not control: a
// user's own CNP with the generated name, or one another policy controls.
// The policy reports NameConflict, grants nothing, and recovers once the
// object goes.
func TestNameConflict(t *testing.T) {
	requireEnv(t)
	ns := env.Namespace(t, t.Name())
	startController(t, ns)

	// A user's own CNP that happens to have the generated name.
	user := &ciliumv2.CiliumNetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: translator.CNPName("shipper")},
		Spec: &api.Rule{
			EndpointSelector: api.NewESFromMatchRequirements(map[string]string{"app": "mine"}, nil),
			Ingress:          []api.IngressRule{{IngressCommonRule: api.IngressCommonRule{FromEntities: api.EntitySlice{api.EntityHost}}}},
		},
	}
	create(t, user)
	create(t, webPolicy(ns, "shipper", "5044"))
	waitCondition(t, ns, "shipper", v1alpha1.ConditionTranslated, metav1.ConditionFalse, v1alpha1.ReasonNameConflict)
	findEvent(t, ns, "shipper", corev1.EventTypeWarning, v1alpha1.ReasonNameConflict, user.Name, "no owner")
	// Left exactly as the user wrote it, and not taken over.
	got, err := getCNP(ns, "shipper")
	if err != nil {
		t.Fatal(err)
	}
	if len(got.OwnerReferences) != 0 || got.Labels[translator.LabelManagedBy] != "" ||
		got.Spec == nil || len(got.Spec.Egress) != 0 || got.Spec.EndpointSelector.LabelSelector.MatchLabels["app"] != "mine" || got.Generation != 1 {
		t.Fatalf("the user's CNP was changed: %+v", got)
	}
	if p := getPolicy(t, ns, "shipper"); p.Status.GeneratedPolicy != "" {
		t.Errorf("status.generatedPolicy = %q during a conflict, want none", p.Status.GeneratedPolicy)
	}

	// The conflict goes: the policy generates its CNP by itself.
	if err := env.Client.Delete(ctx, got); err != nil {
		t.Fatal(err)
	}
	waitCNPPort(t, ns, "shipper", "5044")
	waitCondition(t, ns, "shipper", v1alpha1.ConditionTranslated, metav1.ConditionTrue, v1alpha1.ReasonGenerated)

	// A CNP of the next policy's name, controlled by another policy.
	owner := getPolicy(t, ns, "shipper")
	taken := &ciliumv2.CiliumNetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: translator.CNPName("metrics"),
			OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(owner, v1alpha1.GroupVersion.WithKind("ContainerNetworkPolicy"))}},
		Spec: &api.Rule{EndpointSelector: api.NewESFromMatchRequirements(map[string]string{"app": "other"}, nil),
			Ingress: []api.IngressRule{{IngressCommonRule: api.IngressCommonRule{FromEntities: api.EntitySlice{api.EntityHost}}}}},
	}
	create(t, taken)
	create(t, webPolicy(ns, "metrics", "9100"))
	waitCondition(t, ns, "metrics", v1alpha1.ConditionTranslated, metav1.ConditionFalse, v1alpha1.ReasonNameConflict)
	findEvent(t, ns, "metrics", corev1.EventTypeWarning, v1alpha1.ReasonNameConflict, "controlled by ContainerNetworkPolicy shipper")
	if got, err := getCNP(ns, "metrics"); err != nil || len(got.Spec.Egress) != 0 {
		t.Fatalf("the other policy's CNP was written over: %+v, %v", got, err)
	}
}

// The CNP of a policy with HTTP rules makes Cilium enforce them: alone it
// puts the pods into default deny with the complement of the L7 peers;
// where another policy default-denies the pods already (here a
// NetworkPolicy), it must not add the complement, which would open what
// that policy closes. It follows the other policy as it comes and goes.
func TestL7EnforcementFollowsOtherPolicies(t *testing.T) {
	requireEnv(t)
	ns := env.Namespace(t, t.Name())
	startController(t, ns)
	create(t, webPod(ns, "web-1"))
	p := webPolicy(ns, "shipper", "8080")
	p.Spec.Egress[0].ToPorts[0].Rules = &api.L7Rules{HTTP: []api.PortRuleHTTP{{Method: "POST", Path: "^/ingest$"}}}
	create(t, p)
	mode := func(want string, complement bool) {
		t.Helper()
		eventually(t, "CNP egress default deny = "+fmt.Sprint(complement), func() error {
			cnp, err := getCNP(ns, "shipper")
			if err != nil {
				return err
			}
			dd := cnp.Spec.EnableDefaultDeny.Egress
			if dd == nil || *dd != complement || (len(cnp.Spec.Egress) > 1) != complement {
				return fmt.Errorf("enableDefaultDeny.egress %v, %d egress rules", dd, len(cnp.Spec.Egress))
			}
			c := meta.FindStatusCondition(getPolicy(t, ns, "shipper").Status.Conditions, v1alpha1.ConditionTranslated)
			if c == nil || !strings.Contains(c.Message, want) {
				return fmt.Errorf("Translated %+v does not say %q", c, want)
			}
			return nil
		})
	}
	mode("the CNP puts the pods into egress default deny", true)

	knp := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "default-deny-egress"},
		Spec:       networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}},
	}
	create(t, knp)
	mode("other policies put the pods into egress default deny", false)

	if err := env.Client.Delete(ctx, knp); err != nil {
		t.Fatal(err)
	}
	mode("the CNP puts the pods into egress default deny", true)
}
