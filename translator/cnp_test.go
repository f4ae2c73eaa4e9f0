package translator

import (
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/sidewall/sidewall/crds/v1alpha1"
)

func TestCNPNameBounded(t *testing.T) {
	long := strings.Repeat("a", 250)
	long2 := strings.Repeat("a", 249) + "b"
	for _, name := range []string{"web", long, long2, strings.Repeat("ab.", 83) + "c"} {
		n := CNPName(name)
		if errs := validation.IsDNS1123Subdomain(n); len(errs) > 0 {
			t.Errorf("CNPName(%.20q...) = %q: %v", name, n, errs)
		}
		l := PolicyLabelValue(name)
		if errs := validation.IsValidLabelValue(l); len(errs) > 0 {
			t.Errorf("PolicyLabelValue(%.20q...) = %q: %v", name, l, errs)
		}
	}
	if CNPName("web") != "sidewall-web" {
		t.Errorf("CNPName(web) = %q", CNPName("web"))
	}
	if CNPName(long) == CNPName(long2) || PolicyLabelValue(long) == PolicyLabelValue(long2) {
		t.Error("two long names map to the same CNP name or label")
	}
	if CNPName(long) != CNPName(long) {
		t.Error("CNPName is not deterministic")
	}
}

func TestStatusKeepsTransitionTimes(t *testing.T) {
	p := casePolicy(t, "egress-entities")
	p.Generation = 3
	old := metav1.NewTime(metav1.Now().Add(-3600e9)).Rfc3339Copy()
	p.Status.Conditions = []metav1.Condition{
		{Type: v1alpha1.ConditionAccepted, Status: metav1.ConditionTrue, Reason: v1alpha1.ReasonValid, LastTransitionTime: old, ObservedGeneration: 2},
		{Type: v1alpha1.ConditionReady, Status: metav1.ConditionFalse, Reason: v1alpha1.ReasonNotReady, LastTransitionTime: old, ObservedGeneration: 2},
	}
	st := Status(p, StatusInput{CNPName: CNPName(p.Name), Analysis: Analysis{SelectedPods: 2, SelectedContainers: 2}})
	acc := meta.FindStatusCondition(st.Conditions, v1alpha1.ConditionAccepted)
	if !acc.LastTransitionTime.Equal(&old) || acc.ObservedGeneration != 3 {
		t.Errorf("Accepted kept its status but got %v, generation %d", acc.LastTransitionTime, acc.ObservedGeneration)
	}
	ready := meta.FindStatusCondition(st.Conditions, v1alpha1.ConditionReady)
	if ready.Status != metav1.ConditionTrue || ready.LastTransitionTime.Equal(&old) {
		t.Errorf("Ready = %+v, want True with a new transition time", ready)
	}
	if st.GeneratedPolicy != "sidewall-egress-entities" || st.ObservedGeneration != 3 || st.ContainerSummary != "role:sidecar" {
		t.Errorf("status = %+v", st)
	}
	if p.Status.Conditions[1].Status != metav1.ConditionFalse {
		t.Error("Status modified the policy's conditions in place")
	}

	st = Status(p, StatusInput{Invalid: Validate(casePolicy(t, "reject-tofqdns-bad-pattern"))})
	if c := meta.FindStatusCondition(st.Conditions, v1alpha1.ConditionAccepted); c.Status != metav1.ConditionFalse || !strings.Contains(c.Message, "spec.egress[0].toFQDNs") {
		t.Errorf("Accepted = %+v, want False naming spec.egress[0].toFQDNs", c)
	}
	if c := meta.FindStatusCondition(st.Conditions, v1alpha1.ConditionReady); c.Status != metav1.ConditionFalse {
		t.Errorf("Ready = %+v, want False", c)
	}
}
