package translator

import (
	"errors"
	"fmt"
	"strings"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/sidewall/sidewall/crds/v1alpha1"
)

// maxMessage bounds condition messages (the apiserver allows 32768 bytes).
const maxMessage = 4096

// NameConflictError says an object the controller would write exists
// and is not the policy's: a user's own object, or one another policy
// controls. The controller never writes over it.
type NameConflictError struct {
	Kind, Namespace, Name string
	// Holder says whose the object is: "no owner", or the controlling
	// owner's kind and name.
	Holder string
}

func (e *NameConflictError) Error() string {
	name := e.Name
	if e.Namespace != "" {
		name = e.Namespace + "/" + e.Name
	}
	return fmt.Sprintf("%s %s already exists and is not this policy's (%s): left as it is, nothing granted; delete or rename it, or rename this policy",
		e.Kind, name, e.Holder)
}

// StatusInput is what the controller learned while reconciling a policy.
type StatusInput struct {
	// Invalid is Validate's result.
	Invalid field.ErrorList
	// CNPName is the name of the applied CiliumNetworkPolicy, empty when
	// ToCNP returned none.
	CNPName string
	// TranslateErr is ToCNP's error, if any.
	TranslateErr error
	// ApplyErr is the error of applying the CNP to the apiserver, if any.
	ApplyErr error
	// Analysis is Analyze's result.
	Analysis Analysis
	// L7Message says how the CNP makes Cilium enforce the HTTP rules.
	L7Message string
}

// Status returns the policy's new status: counts, the generated CNP's name
// and the Accepted, Translated, L7Precise, BypassRisk and Ready conditions, each with the
// policy's generation. Conditions whose status did not change keep their
// lastTransitionTime from p.Status.
func Status(p *v1alpha1.ContainerNetworkPolicy, in StatusInput) v1alpha1.ContainerNetworkPolicyStatus {
	st := v1alpha1.ContainerNetworkPolicyStatus{
		ObservedGeneration: p.Generation,
		SelectedPods:       in.Analysis.SelectedPods,
		SelectedContainers: in.Analysis.SelectedContainers,
		ContainerSummary:   ContainerSummary(&p.Spec.Containers),
		Conditions:         append([]metav1.Condition(nil), p.Status.Conditions...),
	}
	gen := p.Generation
	set := func(typ string, ok metav1.ConditionStatus, reason, msg string) {
		if len(msg) > maxMessage {
			msg = msg[:maxMessage-3] + "..."
		}
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: typ, Status: ok, Reason: reason, Message: msg, ObservedGeneration: gen})
	}

	accepted := len(in.Invalid) == 0
	if accepted {
		msg := "policy is valid for container scope"
		if w := TLSPortWarnings(p); len(w) > 0 {
			msg += "; warning: " + strings.Join(w, "; ")
		}
		set(v1alpha1.ConditionAccepted, metav1.ConditionTrue, v1alpha1.ReasonValid, msg)
	} else {
		set(v1alpha1.ConditionAccepted, metav1.ConditionFalse, v1alpha1.ReasonInvalid, in.Invalid.ToAggregate().Error())
	}

	translated := false
	switch {
	case !accepted:
		set(v1alpha1.ConditionTranslated, metav1.ConditionFalse, v1alpha1.ReasonInvalid, "policy is not accepted")
	case in.TranslateErr != nil:
		set(v1alpha1.ConditionTranslated, metav1.ConditionFalse, v1alpha1.ReasonTranslationFailed, in.TranslateErr.Error())
	case errors.As(in.ApplyErr, new(*NameConflictError)):
		set(v1alpha1.ConditionTranslated, metav1.ConditionFalse, v1alpha1.ReasonNameConflict, in.ApplyErr.Error())
	case in.ApplyErr != nil:
		set(v1alpha1.ConditionTranslated, metav1.ConditionFalse, v1alpha1.ReasonApplyFailed, in.ApplyErr.Error())
	case in.CNPName == "":
		translated = true
		set(v1alpha1.ConditionTranslated, metav1.ConditionTrue, v1alpha1.ReasonNotNeeded, "no CiliumNetworkPolicy needed: audit mode, or only deny and intra-pod rules")
	default:
		translated = true
		st.GeneratedPolicy = in.CNPName
		msg := "CiliumNetworkPolicy " + in.CNPName + " applied"
		if in.L7Message != "" {
			msg += "; " + in.L7Message
		}
		set(v1alpha1.ConditionTranslated, metav1.ConditionTrue, v1alpha1.ReasonGenerated, msg)
	}

	a := &in.Analysis
	switch {
	case !accepted:
		set(v1alpha1.ConditionL7Precise, metav1.ConditionUnknown, v1alpha1.ReasonInvalid, "policy is not accepted")
	case !a.HasL7:
		set(v1alpha1.ConditionL7Precise, metav1.ConditionTrue, v1alpha1.ReasonNoL7Rules, "policy has no L7 rules")
	case a.L7Precise():
		set(v1alpha1.ConditionL7Precise, metav1.ConditionTrue, v1alpha1.ReasonExclusive, "only the selected containers reach the L7-restricted peers and ports")
	default:
		set(v1alpha1.ConditionL7Precise, metav1.ConditionFalse, v1alpha1.ReasonSharedPort, L7ConflictMessage(a.L7Conflicts))
	}

	switch {
	case !accepted:
		set(v1alpha1.ConditionBypassRisk, metav1.ConditionUnknown, v1alpha1.ReasonInvalid, "policy is not accepted")
	case len(a.Risks) > 0:
		set(v1alpha1.ConditionBypassRisk, metav1.ConditionTrue, v1alpha1.ReasonBreakoutRisk, RiskMessage(a.Risks))
	default:
		set(v1alpha1.ConditionBypassRisk, metav1.ConditionFalse, v1alpha1.ReasonNoBreakoutRisk, "no restricted container can escape container-level enforcement")
	}

	switch {
	case !accepted || !translated:
		set(v1alpha1.ConditionReady, metav1.ConditionFalse, v1alpha1.ReasonNotReady, "policy is not accepted and translated")
	case len(a.UnknownContainers) > 0:
		set(v1alpha1.ConditionReady, metav1.ConditionFalse, v1alpha1.ReasonUnknownContainer,
			fmt.Sprintf("spec.containers.names %s: no such container in the %d selected pods", strings.Join(a.UnknownContainers, ","), a.SelectedPods))
	case a.SelectedPods == 0 && len(a.FilteredSelectorKeys) > 0:
		set(v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonNoPodsSelected,
			fmt.Sprintf("policy is in force; no pod is selected: spec.podSelector uses %s, which Cilium's label filter leaves out of identities, so neither Cilium nor sidewall selects pods by it",
				strings.Join(a.FilteredSelectorKeys, ", ")))
	case a.SelectedPods == 0:
		set(v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonNoPodsSelected, "policy is in force; no pod is selected yet")
	default:
		set(v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonReady,
			fmt.Sprintf("policy is in force for %d containers of %d pods", a.SelectedContainers, a.SelectedPods))
	}
	return st
}

// L7ConflictMessage describes L7 conflicts for the L7Precise condition.
func L7ConflictMessage(cs []L7Conflict) string {
	parts := make([]string, 0, len(cs))
	for _, c := range cs {
		parts = append(parts, fmt.Sprintf("containers %s of pod %s share %s %s to %s with different L7 rules",
			strings.Join(c.Containers, ","), c.Pod, strings.ToLower(string(c.Direction)), c.Port, c.Peer))
	}
	return strings.Join(parts, "; ") + "; Cilium's proxy enforces the union of their L7 rules"
}
