package translator

import (
	"fmt"
	"log/slog"

	ciliumv2 "github.com/cilium/cilium/pkg/k8s/apis/cilium.io/v2"
	"github.com/cilium/cilium/pkg/policy/api"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/sidewall/sidewall/crds/v1alpha1"
)

// Direction of traffic relative to the subject container.
type Direction string

const (
	// Egress is traffic the container sends.
	Egress Direction = "Egress"
	// Ingress is traffic the container receives.
	Ingress Direction = "Ingress"
)

// Action is what a matching rule does.
type Action string

const (
	// Allow lets the traffic through unless a Deny matches.
	Allow Action = "Allow"
	// Deny drops the traffic; it wins over every Allow.
	Deny Action = "Deny"
)

// Protocol is an L4 protocol of a PortRange.
type Protocol string

const (
	ProtoTCP  Protocol = "TCP"
	ProtoUDP  Protocol = "UDP"
	ProtoSCTP Protocol = "SCTP"
	// ProtoAny matches TCP, UDP and SCTP, as Cilium's ANY does.
	ProtoAny Protocol = "ANY"
)

// PeerKind says which field of a Peer is set.
type PeerKind string

const (
	// PeerEndpoints: Peer.Selector, a Cilium EndpointSelector in Cilium's
	// internal form (label keys carry their source, e.g. "any:app", and the
	// policy's namespace is added as "k8s:io.kubernetes.pod.namespace" unless
	// the user selected a namespace). The agent matches it against the peer's
	// security identity labels, as Cilium does.
	PeerEndpoints PeerKind = "Endpoints"
	// PeerEntity: Peer.Entity, a Cilium entity (world, cluster, host, ...).
	// api.EntitySelectorMapping gives the selectors Cilium uses for it.
	PeerEntity PeerKind = "Entity"
	// PeerCIDR: Peer.CIDR minus Peer.Except.
	PeerCIDR PeerKind = "CIDR"
	// PeerContainers: Peer.Containers, containers of the same pod
	// (loopback or the pod's own IP). Only such peers match pod-local
	// traffic.
	PeerContainers PeerKind = "Containers"
	// PeerAny: any peer outside the pod, from a Cilium rule with toPorts and
	// no peer field.
	PeerAny PeerKind = "Any"
	// PeerFQDN: Peer.FQDN, a Cilium FQDNSelector (egress only): the
	// addresses that DNS answers the container itself received map a
	// matching name to, until the answers expire.
	PeerFQDN PeerKind = "FQDN"
)

// Peer is the other end of the traffic.
type Peer struct {
	Kind       PeerKind                    `json:"kind"`
	Selector   *api.EndpointSelector       `json:"selector,omitempty"`
	Entity     api.Entity                  `json:"entity,omitempty"`
	CIDR       string                      `json:"cidr,omitempty"`
	Except     []string                    `json:"except,omitempty"`
	Containers *v1alpha1.ContainerSelector `json:"containers,omitempty"`
	FQDN       *api.FQDNSelector           `json:"fqdn,omitempty"`
}

// PortRange is a protocol and an inclusive port range From..To. Cilium's port
// "0" (every port) becomes 0..65535.
type PortRange struct {
	Protocol Protocol `json:"protocol"`
	From     uint16   `json:"from"`
	To       uint16   `json:"to"`
	// L7 is true when Cilium's proxy enforces HTTP rules on this port for
	// the whole pod (HTTP holds them). The datapath still decides L3/L4 per
	// container; the HTTP decision is Cilium's.
	L7   bool              `json:"l7,omitempty"`
	HTTP api.PortRulesHTTP `json:"http,omitempty"`
}

// Rule is one normalized rule: a direction, a single peer, the ports (none
// means every port and protocol) and an action.
type Rule struct {
	Direction Direction   `json:"direction"`
	Action    Action      `json:"action"`
	Peer      Peer        `json:"peer"`
	Ports     []PortRange `json:"ports,omitempty"`
	// Origin is the field path of the rule in the policy, for events and
	// flow annotations.
	Origin string `json:"origin"`
}

// PolicyRef identifies the ContainerNetworkPolicy a RuleSet came from.
type PolicyRef struct {
	Namespace string    `json:"namespace"`
	Name      string    `json:"name"`
	UID       types.UID `json:"uid,omitempty"`
}

// DefaultDeny says in which directions the subject containers are
// default-deny: a direction is default-deny when the policy has allow or deny
// rules for it (as in Cilium).
type DefaultDeny struct {
	Egress  bool `json:"egress"`
	Ingress bool `json:"ingress"`
}

// RuleSet is the per-container form of one ContainerNetworkPolicy that the
// node agent compiles into BPF maps. For each pod that PodSelector selects:
//
//   - the subject containers are those that Containers selects (by name, or by
//     role: sidecar, init, app, ephemeral);
//   - in each direction where DefaultDeny is set, a subject container's traffic
//     is allowed only if an Allow rule of some RuleSet selecting it matches and
//     no Deny rule of any RuleSet selecting it matches;
//   - Exclusive rules are Deny rules for the pod's other containers that are
//     not default-deny in that direction under any policy: they keep the
//     grants of the generated CiliumNetworkPolicy for the subject containers
//     (rule 2 of docs/semantics.md). It is empty when the policy shares its
//     grants with the pod or runs in Audit mode;
//   - in Audit mode the agent reports the verdict and lets traffic through.
type RuleSet struct {
	Policy       PolicyRef                   `json:"policy"`
	Mode         v1alpha1.PolicyMode         `json:"mode"`
	Unclassified v1alpha1.UnclassifiedAction `json:"unclassified"`
	// PodSelector is the pod selector in Cilium's internal form, with the
	// policy's namespace added.
	PodSelector api.EndpointSelector       `json:"podSelector"`
	Containers  v1alpha1.ContainerSelector `json:"containers"`
	DefaultDeny DefaultDeny                `json:"defaultDeny"`
	Rules       []Rule                     `json:"rules,omitempty"`
	Exclusive   []Rule                     `json:"exclusive,omitempty"`
}

// discard is the logger for Cilium's parser, which only warns about inputs
// Validate has already refused.
var discard = slog.New(slog.DiscardHandler)

// ToRuleSet validates the policy and returns its RuleSet.
func ToRuleSet(p *v1alpha1.ContainerNetworkPolicy) (*RuleSet, error) {
	if errs := check(p); len(errs) > 0 {
		return nil, invalidPolicy(p, errs)
	}
	spec := &p.Spec
	rs := &RuleSet{
		Policy:       PolicyRef{Namespace: p.Namespace, Name: p.Name, UID: p.UID},
		Mode:         modeOf(spec),
		Unclassified: spec.Unclassified,
		Containers:   *spec.Containers.DeepCopy(),
		DefaultDeny: DefaultDeny{
			Egress:  len(spec.Egress)+len(spec.EgressDeny) > 0,
			Ingress: len(spec.Ingress)+len(spec.IngressDeny) > 0,
		},
	}
	if rs.Unclassified == "" {
		rs.Unclassified = v1alpha1.UnclassifiedDeny
	}

	// Cilium's parser gives the peers exactly the form Cilium's agent
	// matches identities with; feed it every rule that has Cilium peers and
	// remember where each came from.
	rule := &api.Rule{EndpointSelector: spec.EndpointSelector()}
	var egressOrigin, egressDenyOrigin, ingressOrigin, ingressDenyOrigin []int
	for i := range spec.Egress {
		if spec.Egress[i].ToContainers == nil {
			rule.Egress = append(rule.Egress, spec.Egress[i].CiliumRule())
			egressOrigin = append(egressOrigin, i)
		}
	}
	for i := range spec.EgressDeny {
		if spec.EgressDeny[i].ToContainers == nil {
			rule.EgressDeny = append(rule.EgressDeny, spec.EgressDeny[i].CiliumRule())
			egressDenyOrigin = append(egressDenyOrigin, i)
		}
	}
	for i := range spec.Ingress {
		if spec.Ingress[i].FromContainers == nil {
			rule.Ingress = append(rule.Ingress, spec.Ingress[i].CiliumRule())
			ingressOrigin = append(ingressOrigin, i)
		}
	}
	for i := range spec.IngressDeny {
		if spec.IngressDeny[i].FromContainers == nil {
			rule.IngressDeny = append(rule.IngressDeny, spec.IngressDeny[i].CiliumRule())
			ingressDenyOrigin = append(ingressDenyOrigin, i)
		}
	}
	parsed := &api.Rule{EndpointSelector: rule.EndpointSelector}
	if len(rule.Egress)+len(rule.EgressDeny)+len(rule.Ingress)+len(rule.IngressDeny) > 0 {
		cnp := &ciliumv2.CiliumNetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: p.Name, UID: p.UID},
			Spec:       rule,
		}
		// Parse runs Sanitize over every rule with Cilium peers: Validate's
		// sanitizeSpec, which names the failing rule, runs only on failure.
		rules, err := cnp.Parse(discard, "")
		if err != nil {
			if errs := sanitizeSpec(spec, field.NewPath("spec")); len(errs) > 0 {
				return nil, invalidPolicy(p, errs)
			}
			return nil, fmt.Errorf("parse rules of %s/%s: %w", p.Namespace, p.Name, err)
		}
		parsed = rules[0]
	} else {
		// Cilium's parser refuses a rule without rules; only the pod
		// selector needs parsing then.
		probe := &api.Rule{EndpointSelector: rule.EndpointSelector, Ingress: []api.IngressRule{{}}}
		cnp := &ciliumv2.CiliumNetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: p.Name, UID: p.UID},
			Spec:       probe,
		}
		rules, err := cnp.Parse(discard, "")
		if err != nil {
			return nil, fmt.Errorf("parse pod selector of %s/%s: %w", p.Namespace, p.Name, err)
		}
		parsed.EndpointSelector = rules[0].EndpointSelector
	}
	rs.PodSelector = parsed.EndpointSelector

	sp := field.NewPath("spec")
	for i, j := range egressOrigin {
		if fq := spec.Egress[j].ToFQDNs; fq != nil {
			rs.Rules = append(rs.Rules, fqdnRules(fq, portRanges(spec.Egress[j].ToPorts), sp.Child("egress").Index(j))...)
			continue
		}
		rs.Rules = append(rs.Rules, egressRules(Egress, Allow, &parsed.Egress[i].EgressCommonRule, portRanges(spec.Egress[j].ToPorts), sp.Child("egress").Index(j))...)
	}
	for i := range spec.Egress {
		if sel := spec.Egress[i].ToContainers; sel != nil {
			rs.Rules = append(rs.Rules, containerRule(Egress, Allow, sel, portRanges(spec.Egress[i].ToPorts), sp.Child("egress").Index(i)))
		}
	}
	for i, j := range egressDenyOrigin {
		rs.Rules = append(rs.Rules, egressRules(Egress, Deny, &parsed.EgressDeny[i].EgressCommonRule, denyPortRanges(spec.EgressDeny[j].ToPorts), sp.Child("egressDeny").Index(j))...)
	}
	for i := range spec.EgressDeny {
		if sel := spec.EgressDeny[i].ToContainers; sel != nil {
			rs.Rules = append(rs.Rules, containerRule(Egress, Deny, sel, denyPortRanges(spec.EgressDeny[i].ToPorts), sp.Child("egressDeny").Index(i)))
		}
	}
	for i, j := range ingressOrigin {
		rs.Rules = append(rs.Rules, ingressRules(Ingress, Allow, &parsed.Ingress[i].IngressCommonRule, portRanges(spec.Ingress[j].ToPorts), sp.Child("ingress").Index(j))...)
	}
	for i := range spec.Ingress {
		if sel := spec.Ingress[i].FromContainers; sel != nil {
			rs.Rules = append(rs.Rules, containerRule(Ingress, Allow, sel, portRanges(spec.Ingress[i].ToPorts), sp.Child("ingress").Index(i)))
		}
	}
	for i, j := range ingressDenyOrigin {
		rs.Rules = append(rs.Rules, ingressRules(Ingress, Deny, &parsed.IngressDeny[i].IngressCommonRule, denyPortRanges(spec.IngressDeny[j].ToPorts), sp.Child("ingressDeny").Index(j))...)
	}
	for i := range spec.IngressDeny {
		if sel := spec.IngressDeny[i].FromContainers; sel != nil {
			rs.Rules = append(rs.Rules, containerRule(Ingress, Deny, sel, denyPortRanges(spec.IngressDeny[i].ToPorts), sp.Child("ingressDeny").Index(i)))
		}
	}

	if exclusive(p) {
		for _, r := range rs.Rules {
			// Only grants that reach the generated CNP widen the pod;
			// pod-local traffic never passes Cilium's policy. A toFQDNs
			// grant is never exclusive: whether a sibling could reach an
			// address would then depend on the subject's lookups
			// (docs/semantics.md, toFQDNs).
			if r.Action != Allow || r.Peer.Kind == PeerContainers || r.Peer.Kind == PeerFQDN {
				continue
			}
			r.Action = Deny
			rs.Exclusive = append(rs.Exclusive, r)
		}
	}
	return rs, nil
}

// exclusive reports whether the policy's pod-level grants are denied to the
// pod's other containers.
func exclusive(p *v1alpha1.ContainerNetworkPolicy) bool {
	return modeOf(&p.Spec) == v1alpha1.ModeEnforce && !p.Spec.ShareGrantsWithPod
}

func modeOf(spec *v1alpha1.ContainerNetworkPolicySpec) v1alpha1.PolicyMode {
	if spec.Mode == "" {
		return v1alpha1.ModeEnforce
	}
	return spec.Mode
}

func containerRule(dir Direction, action Action, sel *v1alpha1.ContainerSelector, ports []PortRange, origin *field.Path) Rule {
	return Rule{Direction: dir, Action: action, Peer: Peer{Kind: PeerContainers, Containers: sel.DeepCopy()}, Ports: ports, Origin: origin.String()}
}

// fqdnRules gives one egress allow Rule per toFQDNs selector.
func fqdnRules(sels api.FQDNSelectorSlice, ports []PortRange, origin *field.Path) []Rule {
	out := make([]Rule, 0, len(sels))
	for i := range sels {
		sel := sels[i]
		out = append(out, Rule{Direction: Egress, Action: Allow, Peer: Peer{Kind: PeerFQDN, FQDN: &sel}, Ports: ports,
			Origin: origin.Child("toFQDNs").Index(i).String()})
	}
	return out
}

func egressRules(dir Direction, action Action, c *api.EgressCommonRule, ports []PortRange, origin *field.Path) []Rule {
	return peerRules(dir, action, c.ToEndpoints, c.ToEntities, c.ToCIDR, c.ToCIDRSet, ports, origin)
}

func ingressRules(dir Direction, action Action, c *api.IngressCommonRule, ports []PortRange, origin *field.Path) []Rule {
	return peerRules(dir, action, c.FromEndpoints, c.FromEntities, c.FromCIDR, c.FromCIDRSet, ports, origin)
}

// peerRules splits a Cilium rule into one Rule per peer. A rule with ports and
// no peer field matches any peer outside the pod (Cilium's implicit wildcard);
// a rule with neither matches nothing and yields no Rule, but still makes the
// direction default-deny.
func peerRules(dir Direction, action Action, eps []api.EndpointSelector, ents api.EntitySlice, cidrs api.CIDRSlice, sets api.CIDRRuleSlice, ports []PortRange, origin *field.Path) []Rule {
	var out []Rule
	add := func(p Peer) {
		out = append(out, Rule{Direction: dir, Action: action, Peer: p, Ports: ports, Origin: origin.String()})
	}
	for i := range eps {
		sel := eps[i]
		sel.LabelSelector = eps[i].LabelSelector.DeepCopy()
		add(Peer{Kind: PeerEndpoints, Selector: &sel})
	}
	for _, e := range ents {
		add(Peer{Kind: PeerEntity, Entity: e})
	}
	for _, c := range cidrs {
		pfx, _ := parseCIDR(string(c)) // Validate checked it
		add(Peer{Kind: PeerCIDR, CIDR: pfx.String()})
	}
	for _, s := range sets {
		pfx, _ := parseCIDR(string(s.Cidr))
		var except []string
		for _, e := range s.ExceptCIDRs {
			ex, _ := parseCIDR(string(e))
			except = append(except, ex.String())
		}
		add(Peer{Kind: PeerCIDR, CIDR: pfx.String(), Except: except})
	}
	if eps == nil && ents == nil && cidrs == nil && sets == nil && ports != nil {
		add(Peer{Kind: PeerAny})
	}
	return out
}

func protocolOf(p api.L4Proto) (Protocol, bool) {
	switch p {
	case "", api.ProtoAny:
		return ProtoAny, true
	case api.ProtoTCP:
		return ProtoTCP, true
	case api.ProtoUDP:
		return ProtoUDP, true
	case api.ProtoSCTP:
		return ProtoSCTP, true
	}
	return "", false
}

func portRange(pp v1alpha1.PortProtocol) PortRange {
	proto, _ := protocolOf(pp.Protocol)
	port, _ := parsePort(pp.Port)
	r := PortRange{Protocol: proto, From: port, To: port}
	switch {
	case port == 0:
		r.To = 65535
	case pp.EndPort > int32(port):
		r.To = uint16(pp.EndPort)
	}
	return r
}

// portRanges returns nil for no toPorts (every port) and a non-nil slice
// otherwise, so that peerRules can tell "toPorts given" from "not given".
func portRanges(rules []v1alpha1.PortRule) []PortRange {
	if rules == nil {
		return nil
	}
	out := []PortRange{}
	for i := range rules {
		var http api.PortRulesHTTP
		if rules[i].Rules != nil && len(rules[i].Rules.HTTP) > 0 {
			http = rules[i].Rules.HTTP
		}
		for _, pp := range rules[i].Ports {
			r := portRange(pp)
			if http != nil {
				r.L7 = true
				r.HTTP = http.DeepCopy()
			}
			out = append(out, r)
		}
	}
	return out
}

func denyPortRanges(rules []v1alpha1.PortDenyRule) []PortRange {
	if rules == nil {
		return nil
	}
	out := []PortRange{}
	for i := range rules {
		for _, pp := range rules[i].Ports {
			out = append(out, portRange(pp))
		}
	}
	return out
}
