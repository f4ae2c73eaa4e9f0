package translator

import (
	"net/netip"

	"github.com/cilium/cilium/pkg/labels"
	"github.com/cilium/cilium/pkg/policy/api"
	policytypes "github.com/cilium/cilium/pkg/policy/types"

	"github.com/sidewall/sidewall/crds/v1alpha1"
)

// Traffic is one flow as the datapath sees it, from the point of view of one
// container of a pod.
type Traffic struct {
	Direction Direction
	// PeerContainer is set for pod-local traffic (loopback or the pod's own
	// IP): the other container of the same pod.
	PeerContainer *Container
	// PeerLabels are the security identity labels of a peer outside the pod,
	// in Cilium's form (e.g. "k8s:app=db", "reserved:world").
	PeerLabels labels.LabelArray
	// PeerIP is the peer's address, for CIDR rules.
	PeerIP netip.Addr
	// PeerNames are the names that unexpired DNS answers the container
	// received map PeerIP to, for toFQDNs rules.
	PeerNames []string
	Protocol  Protocol
	Port      uint16
}

// Verdict is the decision for one Traffic.
type Verdict struct {
	// Allowed is whether the traffic passes.
	Allowed bool `json:"allowed"`
	// Audit is set when an Audit-mode policy decided: Reason then says
	// what it would have done (Denied, DefaultDeny and ExclusiveGrant mean
	// it would have dropped the traffic), and Allowed is true.
	Audit bool `json:"audit,omitempty"`
	// Policy and Origin name the deciding rule; empty for the default
	// verdicts (unrestricted, or default-deny with no rule matching).
	Policy PolicyRef `json:"policy,omitzero"`
	Origin string    `json:"origin,omitempty"`
	// L7 is set when an allow came from a port with HTTP rules: Cilium's
	// proxy then decides each request.
	L7     bool   `json:"l7,omitempty"`
	Reason string `json:"reason"`
}

// Reasons of a Verdict.
const (
	VerdictUnrestricted = "Unrestricted"   // no policy restricts the container in this direction
	VerdictAllowed      = "Allowed"        // an allow rule matched and no deny rule did
	VerdictDenied       = "Denied"         // a deny rule matched
	VerdictDefaultDeny  = "DefaultDeny"    // restricted and no allow rule matched
	VerdictExclusive    = "ExclusiveGrant" // the grant belongs to other containers of the pod
)

// Evaluate is the reference implementation of docs/semantics.md: the verdict
// for traffic of container c, given the RuleSets of every policy whose pod
// selector selects c's pod. The node agent's BPF maps must give the same
// answers; tests of the datapath can compare against it.
func Evaluate(sets []*RuleSet, c Container, t Traffic) Verdict {
	v := evaluate(sets, c, t, true)
	if !v.Allowed {
		return v
	}
	// Audit policies do not change traffic, but say what they would do:
	// drop it, or allow it where the enforced policies left it unrestricted.
	a := evaluate(sets, c, t, false)
	if !a.Allowed || v.Reason == VerdictUnrestricted && a.Reason != VerdictUnrestricted {
		a.Allowed, a.Audit = true, true
		return a
	}
	return v
}

func evaluate(sets []*RuleSet, c Container, t Traffic, enforcedOnly bool) Verdict {
	var applying []*RuleSet
	for _, rs := range sets {
		if enforcedOnly && rs.Mode == v1alpha1.ModeAudit {
			continue
		}
		applying = append(applying, rs)
	}

	restricted := false
	for _, rs := range applying {
		if rs.Containers.Selects(c.Name, c.Role) && rs.DefaultDeny.in(t.Direction) {
			restricted = true
		}
	}
	if !restricted {
		// Rule 2: the only limit on an unrestricted container is that it
		// may not use the pod-level grants of policies for other containers.
		for _, rs := range applying {
			if rs.Containers.Selects(c.Name, c.Role) {
				continue
			}
			if r, _, ok := firstMatch(rs.Exclusive, Deny, t); ok {
				return Verdict{Policy: rs.Policy, Origin: r.Origin, Reason: VerdictExclusive}
			}
		}
		return Verdict{Allowed: true, Reason: VerdictUnrestricted}
	}

	// Rule 1: deny wins, then some allow, else default deny.
	var allow *Verdict
	for _, rs := range applying {
		if !rs.Containers.Selects(c.Name, c.Role) {
			continue
		}
		if r, _, ok := firstMatch(rs.Rules, Deny, t); ok {
			return Verdict{Policy: rs.Policy, Origin: r.Origin, Reason: VerdictDenied}
		}
		if allow == nil {
			if r, pr, ok := firstMatch(rs.Rules, Allow, t); ok {
				allow = &Verdict{Allowed: true, Policy: rs.Policy, Origin: r.Origin, Reason: VerdictAllowed, L7: pr != nil && pr.L7}
			}
		}
	}
	if allow != nil {
		return *allow
	}
	return Verdict{Reason: VerdictDefaultDeny}
}

func (d DefaultDeny) in(dir Direction) bool {
	if dir == Egress {
		return d.Egress
	}
	return d.Ingress
}

// firstMatch returns the first rule with this action matching t, and the
// port range that matched (nil when the rule has no ports).
func firstMatch(rules []Rule, action Action, t Traffic) (*Rule, *PortRange, bool) {
	for i := range rules {
		r := &rules[i]
		if r.Action != action || r.Direction != t.Direction || !peerMatches(r.Peer, t) {
			continue
		}
		if len(r.Ports) == 0 {
			return r, nil, true
		}
		for j := range r.Ports {
			if portMatches(r.Ports[j], t) {
				return r, &r.Ports[j], true
			}
		}
	}
	return nil, nil, false
}

func peerMatches(p Peer, t Traffic) bool {
	if t.PeerContainer != nil {
		// Pod-local traffic matches only intra-pod rules.
		return p.Kind == PeerContainers && p.Containers.Selects(t.PeerContainer.Name, t.PeerContainer.Role)
	}
	switch p.Kind {
	case PeerAny:
		return true
	case PeerEndpoints:
		return p.Selector != nil && policytypes.NewLabelSelector(*p.Selector).Matches(t.PeerLabels)
	case PeerEntity:
		for _, sel := range api.EntitySelectorMapping[p.Entity] {
			if policytypes.NewLabelSelector(sel).Matches(t.PeerLabels) {
				return true
			}
		}
		return false
	case PeerFQDN:
		if p.FQDN == nil {
			return false
		}
		re, err := p.FQDN.ToRegex()
		if err != nil {
			return false
		}
		for _, n := range t.PeerNames {
			if MatchFQDN(re, n) {
				return true
			}
		}
		return false
	case PeerCIDR:
		pfx, err := netip.ParsePrefix(p.CIDR)
		if err != nil || !t.PeerIP.IsValid() || !pfx.Contains(t.PeerIP) {
			return false
		}
		for _, e := range p.Except {
			if ex, err := netip.ParsePrefix(e); err == nil && ex.Contains(t.PeerIP) {
				return false
			}
		}
		return true
	}
	return false
}

func portMatches(pr PortRange, t Traffic) bool {
	if pr.Protocol != ProtoAny && pr.Protocol != t.Protocol {
		return false
	}
	return pr.From <= t.Port && t.Port <= pr.To
}
