package translator

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	ciliumv2 "github.com/cilium/cilium/pkg/k8s/apis/cilium.io/v2"
	"github.com/cilium/cilium/pkg/policy/api"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/utils/ptr"

	"github.com/sidewall/sidewall/crds/v1alpha1"
)

// Labels and values that mark a generated CiliumNetworkPolicy.
const (
	// LabelManagedBy is the standard label naming the managing tool.
	LabelManagedBy = "app.kubernetes.io/managed-by"
	// ManagedBy is LabelManagedBy's value on generated policies.
	ManagedBy = "sidewall"
	// LabelPolicy holds the name of the ContainerNetworkPolicy a CNP was
	// generated from (shortened with a hash when longer than a label value
	// may be; the owner reference always has the full name).
	LabelPolicy = "sidewall.io/policy"
	// NamePrefix starts the name of every generated CNP.
	NamePrefix = "sidewall-"
)

// CNPName returns the name of the CiliumNetworkPolicy generated from the
// ContainerNetworkPolicy with this name: NamePrefix + name, shortened with a
// hash of the name when that would exceed the 253 characters of an object name.
func CNPName(policyName string) string {
	return bounded(NamePrefix+policyName, validation.DNS1123SubdomainMaxLength, policyName)
}

// PolicyLabelValue returns LabelPolicy's value for a policy name.
func PolicyLabelValue(policyName string) string {
	return bounded(policyName, validation.LabelValueMaxLength, policyName)
}

// bounded shortens s to max characters, replacing its tail with a hash of key
// so that different long names stay different.
func bounded(s string, max int, key string) string {
	if len(s) <= max {
		return s
	}
	sum := sha256.Sum256([]byte(key))
	h := hex.EncodeToString(sum[:])[:10]
	head := s[:max-len(h)-1]
	// Names and label values must end with an alphanumeric character.
	for len(head) > 0 && !isAlnum(head[len(head)-1]) {
		head = head[:len(head)-1]
	}
	return head + "-" + h
}

func isAlnum(b byte) bool {
	return b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9'
}

// CNPOptions is what the generated CNP depends on beyond the policy: how
// the other policies of the cluster treat the same pods.
type CNPOptions struct {
	// OthersDefaultDeny says, per direction, that policies other than
	// sidewall's (CNPs, CCNPs, NetworkPolicies) already put every selected
	// pod into default deny there: Cilium then enforces the HTTP rules as
	// they are, and the CNP must not allow anything more.
	OthersDefaultDeny DefaultDeny
	// Siblings are the RuleSets of the other ContainerNetworkPolicies that
	// select some of the same pods: their L7 peers and ports are left out
	// of this CNP's complement too, or it would switch their HTTP rules off.
	Siblings []*RuleSet
}

// L7Enforcement says, for one direction, how the generated CNP makes
// Cilium enforce the policy's HTTP rules.
type L7Enforcement string

const (
	// L7None: the direction has no HTTP rules.
	L7None L7Enforcement = ""
	// L7Complement: the CNP puts the pods into default deny and allows
	// everything but the L7 peers and ports, so Cilium enforces the HTTP
	// rules and the pods' other traffic flows.
	L7Complement L7Enforcement = "Complement"
	// L7OthersDefaultDeny: other policies default-deny the pods, which
	// makes Cilium enforce the HTTP rules as they are.
	L7OthersDefaultDeny L7Enforcement = "OthersDefaultDeny"
	// L7NotEnforced: no complement could be built (see the reason); Cilium
	// treats the HTTP rules as visibility only, unless another policy
	// default-denies the pods.
	L7NotEnforced L7Enforcement = "NotEnforced"
)

// L7Result is how each direction's HTTP rules are enforced, and why not
// when they are not.
type L7Result struct {
	Egress, Ingress             L7Enforcement
	EgressReason, IngressReason string
	// UndeniedEgress and UndeniedIngress name, under L7OthersDefaultDeny,
	// the selected pods that no other policy default-denies: the HTTP
	// rules are not enforced on them. The controller fills them.
	UndeniedEgress, UndeniedIngress []string
}

// Message says how the CNP makes Cilium enforce the HTTP rules, for the
// Translated condition; empty without HTTP rules.
func (r L7Result) Message() string {
	var parts []string
	say := func(dir string, mode L7Enforcement, reason string, undenied []string) {
		switch mode {
		case L7Complement:
			parts = append(parts, dir+" HTTP rules enforced: the CNP puts the pods into "+dir+" default deny and allows all but the L7 peers and ports")
		case L7OthersDefaultDeny:
			if len(undenied) > 0 {
				parts = append(parts, fmt.Sprintf("%s HTTP rules NOT enforced by Cilium on %s: other policies default-deny the other selected pods, so the CNP cannot add its complement",
					dir, strings.Join(undenied, ", ")))
			} else {
				parts = append(parts, dir+" HTTP rules enforced: other policies put the pods into "+dir+" default deny")
			}
		case L7NotEnforced:
			parts = append(parts, dir+" HTTP rules NOT enforced by Cilium unless another policy default-denies the pods ("+reason+")")
		}
	}
	say("egress", r.Egress, r.EgressReason, r.UndeniedEgress)
	say("ingress", r.Ingress, r.IngressReason, r.UndeniedIngress)
	return strings.Join(parts, "; ")
}

// ToCNP is ToCNPWith without other policies: no other policy
// default-denies the pods, and no sibling has L7 rules.
func ToCNP(p *v1alpha1.ContainerNetworkPolicy) (*ciliumv2.CiliumNetworkPolicy, error) {
	cnp, _, err := ToCNPWith(p, CNPOptions{})
	return cnp, err
}

// ToCNPWith validates the policy and returns the CiliumNetworkPolicy that
// makes Cilium enforce its pod-level part, or nil when none is needed.
//
// The CNP has the policy's namespace and pod selector and its allow rules with
// peers outside the pod, L7 HTTP rules included, so that Cilium lets the
// traffic of the selected containers through and its proxy enforces the HTTP
// rules. Without HTTP rules it sets enableDefaultDeny to false in both
// directions: the CNP only adds grants and never puts the pod into
// default-deny, because the other containers of the pod are not restricted
// by sidewall (docs/semantics.md, rule 2). With HTTP rules in a direction,
// and no other policy default-denying the pods there, it puts the pods into
// default deny in that direction and allows everything but the L7 peers and
// ports (complement.go): only then does Cilium enforce HTTP rules. Deny rules
// and intra-pod rules are not in the CNP: a deny at pod level would hit every
// container, and pod-local traffic never reaches Cilium's policy; sidewall's
// datapath enforces both per container.
//
// ToCNPWith returns (nil, nil), and the controller must delete any CNP it
// generated before, when the policy is in Audit mode (Cilium has no
// per-policy audit and its proxy would enforce the L7 rules) or has no allow
// rule with a peer outside the pod.
//
// Every CNP returned has passed Cilium's Rule.Sanitize (run on a copy, as it
// rewrites selectors into Cilium's internal form).
func ToCNPWith(p *v1alpha1.ContainerNetworkPolicy, opts CNPOptions) (*ciliumv2.CiliumNetworkPolicy, L7Result, error) {
	var l7 L7Result
	if errs := check(p); len(errs) > 0 {
		return nil, l7, invalidPolicy(p, errs)
	}
	rule := &api.Rule{
		EndpointSelector:  p.Spec.EndpointSelector(),
		EnableDefaultDeny: api.DefaultDenyConfig{Ingress: ptr.To(false), Egress: ptr.To(false)},
		Description:       fmt.Sprintf("Generated by sidewall from ContainerNetworkPolicy %s/%s; do not edit.", p.Namespace, p.Name),
	}
	for i := range p.Spec.Egress {
		r := &p.Spec.Egress[i]
		if r.ToContainers != nil || (!hasEgressPeer(&r.EgressCommonRule) && r.ToPorts == nil && r.ToFQDNs == nil) {
			continue
		}
		rule.Egress = append(rule.Egress, r.CiliumRule())
	}
	if hasFQDNs(&p.Spec) {
		dnsVisibility(rule.Egress)
	}
	for i := range p.Spec.Ingress {
		r := &p.Spec.Ingress[i]
		if r.FromContainers != nil || (!hasIngressPeer(&r.IngressCommonRule) && r.ToPorts == nil) {
			continue
		}
		rule.Ingress = append(rule.Ingress, r.CiliumRule())
	}
	// Cilium's Sanitize over the CNP's rule plus the deny rules is
	// Validate's sanitizeSpec in one pass; Sanitize rewrites what it checks,
	// so it gets a copy.
	probe := rule.DeepCopy()
	for i := range p.Spec.EgressDeny {
		if p.Spec.EgressDeny[i].ToContainers == nil {
			probe.EgressDeny = append(probe.EgressDeny, p.Spec.EgressDeny[i].CiliumRule())
		}
	}
	for i := range p.Spec.IngressDeny {
		if p.Spec.IngressDeny[i].FromContainers == nil {
			probe.IngressDeny = append(probe.IngressDeny, p.Spec.IngressDeny[i].CiliumRule())
		}
	}
	if len(probe.Egress)+len(probe.Ingress)+len(probe.EgressDeny)+len(probe.IngressDeny) > 0 {
		if err := probe.Sanitize(); err != nil {
			if errs := sanitizeSpec(&p.Spec, field.NewPath("spec")); len(errs) > 0 {
				return nil, l7, invalidPolicy(p, errs)
			}
			return nil, l7, fmt.Errorf("invalid policy %s/%s: refused by Cilium: %w", p.Namespace, p.Name, err)
		}
	}
	if modeOf(&p.Spec) == v1alpha1.ModeAudit || len(rule.Egress)+len(rule.Ingress) == 0 {
		return nil, l7, nil
	}
	if err := enforceL7(p, rule, opts, &l7); err != nil {
		return nil, l7, err
	}
	cnp := &ciliumv2.CiliumNetworkPolicy{
		TypeMeta: metav1.TypeMeta{APIVersion: ciliumv2.SchemeGroupVersion.String(), Kind: ciliumv2.CNPKindDefinition},
		ObjectMeta: metav1.ObjectMeta{
			Name:      CNPName(p.Name),
			Namespace: p.Namespace,
			Labels: map[string]string{
				LabelManagedBy: ManagedBy,
				LabelPolicy:    PolicyLabelValue(p.Name),
			},
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion:         v1alpha1.GroupVersion.String(),
				Kind:               "ContainerNetworkPolicy",
				Name:               p.Name,
				UID:                p.UID,
				Controller:         ptr.To(true),
				BlockOwnerDeletion: ptr.To(true),
			}},
		},
		Spec: rule,
	}
	return cnp, l7, nil
}

// hasFQDNs reports whether an egress rule of the spec has toFQDNs.
func hasFQDNs(spec *v1alpha1.ContainerNetworkPolicySpec) bool {
	for i := range spec.Egress {
		if spec.Egress[i].ToFQDNs != nil {
			return true
		}
	}
	return false
}

// dnsVisibility gives the policy's DNS grants (port 53 exactly, UDP, TCP or
// ANY, without HTTP rules) Cilium's DNS rule matchPattern "*", so that
// Cilium's DNS proxy sees the pod's lookups and opens the toFQDNs names at
// pod level too; every name may still be looked up. Ports of the same
// toPorts entry other than 53 keep an entry of their own, without it.
func dnsVisibility(rules []api.EgressRule) {
	for i := range rules {
		r := &rules[i]
		if r.ToFQDNs != nil {
			continue
		}
		var out api.PortRules
		for _, pr := range r.ToPorts {
			if pr.Rules != nil && !pr.Rules.IsEmpty() {
				out = append(out, pr)
				continue
			}
			var dns, other []api.PortProtocol
			for _, pp := range pr.Ports {
				if pp.Port == "53" && (pp.EndPort == 0 || pp.EndPort == 53) && pp.Protocol != api.ProtoSCTP {
					dns = append(dns, pp)
				} else {
					other = append(other, pp)
				}
			}
			if len(dns) == 0 {
				out = append(out, pr)
				continue
			}
			if len(other) > 0 {
				rest := pr
				rest.Ports = other
				out = append(out, rest)
			}
			out = append(out, api.PortRule{Ports: dns, Rules: &api.L7Rules{DNS: []api.PortRuleDNS{{MatchPattern: "*"}}}})
		}
		r.ToPorts = out
	}
}

// hasHTTPRules reports whether an allow rule of the spec has HTTP rules.
func hasHTTPRules(spec *v1alpha1.ContainerNetworkPolicySpec) bool {
	for i := range spec.Egress {
		for _, pr := range spec.Egress[i].ToPorts {
			if pr.Rules != nil && len(pr.Rules.HTTP) > 0 {
				return true
			}
		}
	}
	for i := range spec.Ingress {
		for _, pr := range spec.Ingress[i].ToPorts {
			if pr.Rules != nil && len(pr.Rules.HTTP) > 0 {
				return true
			}
		}
	}
	return false
}

// enforceL7 adds, per direction with HTTP rules, what makes Cilium enforce
// them: default deny and the complement of the L7 peers and ports, unless
// other policies default-deny the pods already.
func enforceL7(p *v1alpha1.ContainerNetworkPolicy, rule *api.Rule, opts CNPOptions, l7 *L7Result) error {
	if !hasHTTPRules(&p.Spec) {
		return nil
	}
	rs, err := ToRuleSet(p)
	if err != nil {
		return err
	}
	added := &api.Rule{EndpointSelector: rule.EndpointSelector}
	for _, dir := range []Direction{Egress, Ingress} {
		own := l7Pairs(rs, dir)
		if len(own) == 0 {
			continue
		}
		mode, reason := L7Complement, ""
		others := opts.OthersDefaultDeny.Egress
		if dir == Ingress {
			others = opts.OthersDefaultDeny.Ingress
		}
		if others {
			mode = L7OthersDefaultDeny
		} else {
			pairs := own
			for _, sib := range opts.Siblings {
				pairs = append(pairs, l7Pairs(sib, dir)...)
			}
			eg, in, err := complementRules(dir, pairs)
			switch {
			case errors.Is(err, errNoComplement):
				mode, reason = L7NotEnforced, err.Error()
			case err != nil:
				return err
			case dir == Egress:
				rule.EnableDefaultDeny.Egress = ptr.To(true)
				rule.Egress = append(rule.Egress, eg...)
				added.Egress = append(added.Egress, eg...)
			default:
				rule.EnableDefaultDeny.Ingress = ptr.To(true)
				rule.Ingress = append(rule.Ingress, in...)
				added.Ingress = append(added.Ingress, in...)
			}
		}
		if dir == Egress {
			l7.Egress, l7.EgressReason = mode, reason
		} else {
			l7.Ingress, l7.IngressReason = mode, reason
		}
	}
	// The complement must pass Cilium's own checks as the rest did (the
	// policy's own rules passed them before).
	if len(added.Egress)+len(added.Ingress) == 0 {
		return nil
	}
	if err := added.DeepCopy().Sanitize(); err != nil {
		return fmt.Errorf("policy %s/%s: the complement of its L7 peers is refused by Cilium: %w", p.Namespace, p.Name, err)
	}
	return nil
}

func invalidPolicy(p *v1alpha1.ContainerNetworkPolicy, errs field.ErrorList) error {
	return fmt.Errorf("invalid policy %s/%s: %w", p.Namespace, p.Name, errs.ToAggregate())
}

// SanitizeCNP runs Cilium's own parser on a copy of the CNP, as the Cilium
// agent does on every CNP it receives: Rule.Sanitize, then the translation of
// selectors into Cilium's internal form.
func SanitizeCNP(cnp *ciliumv2.CiliumNetworkPolicy) error {
	_, err := cnp.DeepCopy().Parse(discard, "")
	return err
}
