package translator

import (
	"fmt"
	"strings"

	k8sconst "github.com/cilium/cilium/pkg/k8s/apis/cilium.io"
	slim_metav1 "github.com/cilium/cilium/pkg/k8s/slim/k8s/apis/meta/v1"
	admissionv1 "k8s.io/api/admissionregistration/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/utils/ptr"

	"github.com/sidewall/sidewall/crds/v1alpha1"
)

const (
	// LabelPolicyNamespace holds the namespace of the policy a
	// cluster-scoped admission policy or binding was generated for.
	LabelPolicyNamespace = "sidewall.io/policy-namespace"
	// namespaceNameLabel is set by the API server on every namespace.
	namespaceNameLabel = "kubernetes.io/metadata.name"
)

// AdmissionPolicyName returns the name of the ValidatingAdmissionPolicy and
// of its binding generated for the policy ns/name. Both are cluster-scoped,
// so the namespace is part of the name; a namespace has no dot, so the name
// is unambiguous.
func AdmissionPolicyName(ns, name string) string {
	return bounded("sidewall."+ns+"."+name, validation.DNS1123SubdomainMaxLength, ns+"/"+name)
}

// AdmissionLabels are the labels of the generated admission objects.
func AdmissionLabels(p *v1alpha1.ContainerNetworkPolicy) map[string]string {
	return map[string]string{
		LabelManagedBy:       ManagedBy,
		LabelPolicyNamespace: p.Namespace,
		LabelPolicy:          PolicyLabelValue(p.Name),
	}
}

// AdmissionPolicy returns the ValidatingAdmissionPolicy and binding that
// make the API server check new pods against the policy's breakout-risk
// reasons, or nil, nil when spec.admission is None (or empty). The binding
// matches the pods of the policy's namespace that its pod selector selects;
// the CEL looks only at the containers the policy restricts and names each
// risky container and its reasons, with the same reason strings as the
// BypassRisk condition. Admission objects are cluster-scoped and cannot be
// owned by the namespaced policy, so they carry AdmissionLabels and the
// controller deletes them itself.
func AdmissionPolicy(p *v1alpha1.ContainerNetworkPolicy) (*admissionv1.ValidatingAdmissionPolicy, *admissionv1.ValidatingAdmissionPolicyBinding, error) {
	var actions []admissionv1.ValidationAction
	switch p.Spec.Admission {
	case "", v1alpha1.AdmissionNone:
		return nil, nil, nil
	case v1alpha1.AdmissionEnforce:
		actions = []admissionv1.ValidationAction{admissionv1.Deny}
	case v1alpha1.AdmissionAudit:
		actions = []admissionv1.ValidationAction{admissionv1.Warn, admissionv1.Audit}
	default:
		return nil, nil, fmt.Errorf("spec.admission: unsupported value %q: must be Enforce, Audit or None", p.Spec.Admission)
	}
	objSel, nsSel, conds, err := admissionSelectors(p)
	if err != nil {
		return nil, nil, err
	}
	name := AdmissionPolicyName(p.Namespace, p.Name)
	meta := metav1.ObjectMeta{
		Name:        name,
		Labels:      AdmissionLabels(p),
		Annotations: map[string]string{LabelPolicy: p.Namespace + "/" + p.Name},
	}

	vap := &admissionv1.ValidatingAdmissionPolicy{
		TypeMeta:   metav1.TypeMeta{APIVersion: admissionv1.SchemeGroupVersion.String(), Kind: "ValidatingAdmissionPolicy"},
		ObjectMeta: meta,
		Spec: admissionv1.ValidatingAdmissionPolicySpec{
			FailurePolicy: ptr.To(admissionv1.Fail),
			MatchConstraints: &admissionv1.MatchResources{
				ResourceRules: []admissionv1.NamedRuleWithOperations{
					{RuleWithOperations: admissionv1.RuleWithOperations{
						Operations: []admissionv1.OperationType{admissionv1.Create},
						Rule:       admissionv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}},
					}},
					// A debug container is added with an update of this
					// subresource, not at pod creation.
					{RuleWithOperations: admissionv1.RuleWithOperations{
						Operations: []admissionv1.OperationType{admissionv1.Update},
						Rule:       admissionv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods/ephemeralcontainers"}},
					}},
				},
			},
			MatchConditions: conds,
			Variables:       admissionVariables(&p.Spec.Containers),
			Validations: []admissionv1.Validation{{
				Expression: "size(variables.findings) == 0",
				MessageExpression: fmt.Sprintf("%s + variables.findings.join('; ')",
					celString(fmt.Sprintf("ContainerNetworkPolicy %s/%s (admission %s) refuses containers that could escape container-level enforcement: ",
						p.Namespace, p.Name, p.Spec.Admission))),
				Reason: ptr.To(metav1.StatusReasonForbidden),
			}},
		},
	}
	meta.Labels = AdmissionLabels(p)
	meta.Annotations = map[string]string{LabelPolicy: p.Namespace + "/" + p.Name}
	binding := &admissionv1.ValidatingAdmissionPolicyBinding{
		TypeMeta:   metav1.TypeMeta{APIVersion: admissionv1.SchemeGroupVersion.String(), Kind: "ValidatingAdmissionPolicyBinding"},
		ObjectMeta: meta,
		Spec: admissionv1.ValidatingAdmissionPolicyBindingSpec{
			PolicyName: name,
			MatchResources: &admissionv1.MatchResources{
				NamespaceSelector: nsSel,
				ObjectSelector:    objSel,
			},
			ValidationActions: actions,
		},
	}
	return vap, binding, nil
}

// celString quotes s as a CEL string literal.
func celString(s string) string {
	return fmt.Sprintf("%q", s)
}

func celList(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = celString(s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// admissionVariables computes, in CEL, variables.findings: one
// "container NAME: reason, reason" string per restricted container with a
// breakout risk. It follows ContainerRiskReasons step by step; the envtest
// test runs both on the same pods and compares.
func admissionVariables(sel *v1alpha1.ContainerSelector) []admissionv1.Variable {
	var paths []string
	for _, r := range RiskyHostPaths {
		paths = append(paths, r+"/")
	}
	// Doubled slashes are treated as risky rather than normalized, as in
	// RiskyHostPath.
	q := "(v.hostPath.path.endsWith('/') ? v.hostPath.path : v.hostPath.path + '/')"
	riskyPath := fmt.Sprintf("(v.hostPath.path.contains('//') || %s.exists(r, r.startsWith(%s) || %s.startsWith(r)))", celList(paths), q, q)

	add := "c.?securityContext.?capabilities.?add.orValue([])"
	capAdded := func(c string) string {
		return fmt.Sprintf("%s.exists(a, a.upperAscii() in [%q, %q])", add, c, "CAP_"+c)
	}
	var caps []string
	for _, rc := range riskyCaps {
		caps = append(caps, fmt.Sprintf("(%s ? [%q] : [])", capAdded(rc.cap), rc.reason))
	}
	drop := "c.?securityContext.?capabilities.?drop.orValue([])"
	caps = append(caps, fmt.Sprintf("(!%s && !%s.exists(d, d.upperAscii() in ['ALL', 'NET_RAW', 'CAP_NET_RAW']) ? [%q] : [])",
		capAdded("NET_RAW"), drop, RiskNetRawKept))
	caps = append(caps, fmt.Sprintf("(variables.sharePID && %s ? [%q] : [])", capAdded("SYS_PTRACE"), RiskPtraceShared))
	// uidApart of risk.go: c runs as a uid of its own that it cannot leave.
	uidOf := func(x string) string {
		return fmt.Sprintf("%s.?securityContext.?runAsUser.orValue(object.spec.?securityContext.?runAsUser.orValue(-1))", x)
	}
	others := func(field string) string {
		return fmt.Sprintf("object.spec.?%s.orValue([]).all(o, o.name == c.name || (%s != -1 && %s != %s))", field, uidOf("o"), uidOf("o"), uidOf("c"))
	}
	apart := fmt.Sprintf("(%s > 0 && c.?securityContext.?allowPrivilegeEscalation.orValue(true) == false && %s && %s && %s)",
		uidOf("c"), others("initContainers"), others("containers"), others("ephemeralContainers"))
	sharedPID := fmt.Sprintf("(variables.sharePID && !%s && !%s && !%s ? [%q] : [])", capAdded("SYS_PTRACE"), capAdded("ALL"), apart, RiskSharedPID)
	reasons := strings.Join([]string{
		fmt.Sprintf("(c.?securityContext.?privileged.orValue(false) ? [%q] : [])", RiskPrivileged),
		fmt.Sprintf("(%s ? [%q] : %s)", capAdded("ALL"), RiskAllCaps, strings.Join(caps, " + ")),
		sharedPID,
		"variables.podReasons",
		fmt.Sprintf("variables.riskyVolumes.filter(v, c.?volumeMounts.orValue([]).exists(m, m.name == v.name)).map(v, %q + v.hostPath.path)", RiskHostPathPfx),
	}, " + ")
	uid := "c.?securityContext.?runAsUser.orValue(object.spec.?securityContext.?runAsUser.orValue(-1))"
	nonRoot := "c.?securityContext.?runAsNonRoot.orValue(object.spec.?securityContext.?runAsNonRoot.orValue(false))"
	rootWritable := fmt.Sprintf("((%s == 0 || (%s == -1 && !%s)) && !c.?securityContext.?readOnlyRootFilesystem.orValue(false) ? [%q] : [])",
		uid, uid, nonRoot, RiskRootWritable)
	// Kubernetes CEL has no cel.bind: each container maps to the list
	// ["container NAME", reasons..., root-writable?], lists with no reason
	// other than root-writable are dropped, and the rest are joined with
	// ", " and the first ", " turned into ": " (container names have none).
	finding := fmt.Sprintf("['container ' + c.name] + %s + %s", reasons, rootWritable)

	names := celList(sel.Names)
	has := func(role v1alpha1.ContainerRole) bool {
		for _, r := range sel.Roles {
			if r == role {
				return true
			}
		}
		return false
	}
	always := "c.?restartPolicy.orValue('') == 'Always'"
	initSel := []string{"c.name in " + names}
	if has(v1alpha1.RoleSidecar) {
		initSel = append(initSel, always)
	}
	if has(v1alpha1.RoleInit) {
		initSel = append(initSel, "!("+always+")")
	}
	sel1 := func(role v1alpha1.ContainerRole) string {
		if has(role) {
			return "true"
		}
		return "c.name in " + names
	}
	// Each container list has its own type, so each is mapped to strings
	// before the lists are joined.
	list := func(field, pred string) string {
		return fmt.Sprintf("object.spec.?%s.orValue([]).filter(c, %s).map(c, %s)", field, pred, finding)
	}
	findings := fmt.Sprintf("(%s + %s + %s).filter(l, size(l) > 1 && !(size(l) == 2 && l[1] == %q)).map(l, l.join(', ').replace(', ', ': ', 1))",
		list("initContainers", strings.Join(initSel, " || ")),
		list("containers", sel1(v1alpha1.RoleApp)),
		list("ephemeralContainers", sel1(v1alpha1.RoleEphemeral)), RiskRootWritable)

	return []admissionv1.Variable{
		{Name: "sharePID", Expression: "object.spec.?shareProcessNamespace.orValue(false)"},
		{Name: "podReasons", Expression: fmt.Sprintf("(object.spec.?hostNetwork.orValue(false) ? [%q] : []) + (object.spec.?hostPID.orValue(false) ? [%q] : [])",
			RiskHostNetwork, RiskHostPID)},
		{Name: "riskyVolumes", Expression: fmt.Sprintf("object.spec.?volumes.orValue([]).filter(v, has(v.hostPath) && %s)", riskyPath)},
		{Name: "findings", Expression: findings},
	}
}

// admissionSelectors turns the policy's pod selector, which has Cilium's
// meaning, into the binding's object and namespace selectors: plain label
// keys (with or without Cilium's "any:"/"k8s:" source) select pod labels,
// the pod-namespace label and io.cilium.k8s.namespace.labels.* select the
// namespace, and the service-account label becomes a match condition.
func admissionSelectors(p *v1alpha1.ContainerNetworkPolicy) (obj, ns *metav1.LabelSelector, conds []admissionv1.MatchCondition, err error) {
	obj = &metav1.LabelSelector{}
	ns = &metav1.LabelSelector{MatchLabels: map[string]string{namespaceNameLabel: p.Namespace}}
	sel := &p.Spec.PodSelector
	type target int
	const (
		toPod target = iota
		toNamespace
		toServiceAccount
	)
	route := func(field, k string) (target, string, error) {
		if src, rest, ok := strings.Cut(k, ":"); ok {
			if src != "any" && src != "k8s" {
				return 0, "", fmt.Errorf("%s: label source %q cannot be matched at admission", field, src)
			}
			k = rest
		}
		switch {
		case k == k8sconst.PodNamespaceLabel:
			return toNamespace, namespaceNameLabel, nil
		case strings.HasPrefix(k, k8sconst.PodNamespaceMetaLabelsPrefix):
			return toNamespace, strings.TrimPrefix(k, k8sconst.PodNamespaceMetaLabelsPrefix), nil
		case k == k8sconst.PolicyLabelServiceAccount:
			return toServiceAccount, k, nil
		case strings.HasPrefix(k, "io.cilium.k8s."):
			return 0, "", fmt.Errorf("%s: label %q cannot be matched at admission", field, k)
		}
		return toPod, k, nil
	}
	sa := "object.spec.?serviceAccountName.orValue('default')"
	for k, v := range sel.MatchLabels {
		t, key, err := route("spec.podSelector.matchLabels", k)
		if err != nil {
			return nil, nil, nil, err
		}
		switch t {
		case toPod:
			if obj.MatchLabels == nil {
				obj.MatchLabels = map[string]string{}
			}
			obj.MatchLabels[key] = v
		case toNamespace:
			if old, ok := ns.MatchLabels[key]; ok && old != v {
				// Both must hold: select nothing.
				ns.MatchExpressions = append(ns.MatchExpressions, metav1.LabelSelectorRequirement{Key: key, Operator: metav1.LabelSelectorOpIn, Values: []string{v}})
				continue
			}
			ns.MatchLabels[key] = v
		case toServiceAccount:
			conds = append(conds, admissionv1.MatchCondition{Name: fmt.Sprintf("service-account-%d", len(conds)), Expression: fmt.Sprintf("%s == %s", sa, celString(v))})
		}
	}
	for i, r := range sel.MatchExpressions {
		field := fmt.Sprintf("spec.podSelector.matchExpressions[%d]", i)
		t, key, err := route(field, r.Key)
		if err != nil {
			return nil, nil, nil, err
		}
		req := metav1.LabelSelectorRequirement{Key: key, Operator: metav1.LabelSelectorOperator(r.Operator), Values: append([]string(nil), r.Values...)}
		switch t {
		case toPod:
			obj.MatchExpressions = append(obj.MatchExpressions, req)
		case toNamespace:
			ns.MatchExpressions = append(ns.MatchExpressions, req)
		case toServiceAccount:
			var expr string
			switch r.Operator {
			case slim_metav1.LabelSelectorOpIn:
				expr = fmt.Sprintf("%s in %s", sa, celList(r.Values))
			case slim_metav1.LabelSelectorOpNotIn:
				expr = fmt.Sprintf("!(%s in %s)", sa, celList(r.Values))
			case slim_metav1.LabelSelectorOpExists:
				expr = "true"
			case slim_metav1.LabelSelectorOpDoesNotExist:
				expr = "false"
			default:
				return nil, nil, nil, fmt.Errorf("%s.operator: unsupported operator %q", field, r.Operator)
			}
			conds = append(conds, admissionv1.MatchCondition{Name: fmt.Sprintf("service-account-%d", len(conds)), Expression: expr})
		}
	}
	return obj, ns, conds, nil
}
