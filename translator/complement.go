package translator

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"sync"

	slimv1 "github.com/cilium/cilium/pkg/k8s/slim/k8s/apis/meta/v1"
	"github.com/cilium/cilium/pkg/policy/api"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Cilium enforces an HTTP rule only where some rule selecting the endpoint
// puts it into default deny in that direction (pkg/policy/l4.go: otherwise
// it adds a wildcard HTTP rule, and the HTTP rules are visibility only).
// And Envoy's rules are additive: any rule that lets the L7 peer through on
// the L7 port without HTTP rules (a port-specific one, or a port-0 rule,
// which Envoy adds to every port) lets every request through.
//
// So where no other policy default-denies the pods, the generated CNP puts
// them into default deny in that direction and adds the complement of the
// L7 peers and ports: an allow of everything else, so the pod's other
// traffic keeps flowing, that never covers an L7 peer on an L7 port:
//   - every peer on every port but the L7 ports (TCP), and on UDP and SCTP;
//   - each L7 peer on the other policies' L7 ports that are not its own;
//   - every peer but the L7 peers at L3 (all ports): the entities that are
//     not pods, and the pods no L7 selector selects (negated selectors, in
//     every namespace);
//   - ICMP to the L7 peers.
// Cilium's engine proves it (the engine suite in this package's tests).
// What the complement cannot keep: IP protocols other than TCP, UDP, SCTP
// and ICMP to an L7 peer.

// errNoComplement says the L7 peers cannot be left out of an allow-all
// precisely: the CNP then keeps the HTTP rules without default deny.
var errNoComplement = errors.New("no complement")

// maxComplementSelectors bounds the negated selectors of the complement
// (their number is the product of the L7 selectors' requirements).
const maxComplementSelectors = 64

// l7Pair is one L7-restricted peer and its L7 ports (TCP).
type l7Pair struct {
	peer  Peer
	ports []PortRange
}

// l7Pairs lists the allow rules of a direction that carry HTTP rules.
func l7Pairs(rs *RuleSet, dir Direction) []l7Pair {
	var out []l7Pair
	for _, r := range rs.Rules {
		if r.Direction != dir || r.Action != Allow || r.Peer.Kind == PeerContainers {
			continue
		}
		var ports []PortRange
		for _, p := range r.Ports {
			if p.L7 {
				ports = append(ports, p)
			}
		}
		if len(ports) > 0 {
			out = append(out, l7Pair{peer: r.Peer, ports: ports})
		}
	}
	return out
}

// portSet is a set of TCP ports, as sorted disjoint ranges.
type portSet [][2]uint16

func newPortSet(prs []PortRange) portSet {
	var s portSet
	for _, p := range prs {
		s = append(s, [2]uint16{p.From, p.To})
	}
	sort.Slice(s, func(i, j int) bool { return s[i][0] < s[j][0] })
	var out portSet
	for _, r := range s {
		if n := len(out); n > 0 && uint32(r[0]) <= uint32(out[n-1][1])+1 {
			if r[1] > out[n-1][1] {
				out[n-1][1] = r[1]
			}
			continue
		}
		out = append(out, r)
	}
	return out
}

// minus returns the ports of s not in o, both sets of ranges within 1..65535.
func (s portSet) minus(o portSet) portSet {
	var out portSet
	for _, r := range s {
		lo := uint32(r[0])
		for _, x := range o {
			if uint32(x[1]) < lo || uint32(x[0]) > uint32(r[1]) {
				continue
			}
			if uint32(x[0]) > lo {
				out = append(out, [2]uint16{uint16(lo), x[0] - 1})
			}
			lo = uint32(x[1]) + 1
		}
		if lo <= uint32(r[1]) {
			out = append(out, [2]uint16{uint16(lo), r[1]})
		}
	}
	return out
}

func (s portSet) portRules(proto api.L4Proto) api.PortRules {
	var rules api.PortRules
	var cur []api.PortProtocol
	for _, r := range s {
		pp := api.PortProtocol{Port: strconv.Itoa(int(r[0])), Protocol: proto}
		if r[1] != r[0] {
			pp.EndPort = int32(r[1])
		}
		cur = append(cur, pp)
		if len(cur) == 40 { // Cilium's maxItems per port rule
			rules = append(rules, api.PortRule{Ports: cur})
			cur = nil
		}
	}
	if len(cur) > 0 {
		rules = append(rules, api.PortRule{Ports: cur})
	}
	return rules
}

// complementPeers is an allow-all's peer side without the L7 peers: the
// entities, CIDRs and pod selectors that select every identity but theirs.
type complementPeers struct {
	entities  api.EntitySlice
	cidrs     api.CIDRRuleSlice
	endpoints []api.EndpointSelector
}

// nonPodEntities are the entities whose identities are not pods'; with
// every pod they cover every identity.
var nonPodEntities = []api.Entity{
	api.EntityWorld, api.EntityHost, api.EntityRemoteNode, api.EntityKubeAPIServer,
	api.EntityHealth, api.EntityIngress, api.EntityInit, api.EntityUnmanaged,
}

func complementOf(pairs []l7Pair) (complementPeers, bool, error) {
	var c complementPeers
	excludeEntity := map[api.Entity]bool{}
	var sels []*api.EndpointSelector
	var cidrs []netip.Prefix
	for _, p := range pairs {
		switch p.peer.Kind {
		case PeerAny:
			return c, false, nil // every peer is an L7 peer: no L3 allow at all
		case PeerEndpoints:
			sels = append(sels, p.peer.Selector)
		case PeerEntity:
			switch p.peer.Entity {
			case api.EntityWorld, api.EntityWorldIPv4, api.EntityWorldIPv6:
				excludeEntity[api.EntityWorld] = true
			default:
				// cluster, host, remote-node...: a precise complement
				// would need every pod but some, and more.
				return c, false, fmt.Errorf("%w: HTTP rules on entity %s", errNoComplement, p.peer.Entity)
			}
		case PeerCIDR:
			pfx, err := netip.ParsePrefix(p.peer.CIDR)
			if err != nil || len(p.peer.Except) > 0 {
				return c, false, fmt.Errorf("%w: HTTP rules on a CIDR with except", errNoComplement)
			}
			cidrs = append(cidrs, pfx)
		}
	}
	for _, e := range nonPodEntities {
		if e == api.EntityWorld && (excludeEntity[e] || len(cidrs) > 0) {
			continue
		}
		c.entities = append(c.entities, e)
	}
	if len(cidrs) > 0 && !excludeEntity[api.EntityWorld] {
		// The world but the L7 CIDRs.
		var v4, v6 []api.CIDR
		for _, p := range cidrs {
			if p.Addr().Is4() {
				v4 = append(v4, api.CIDR(p.String()))
			} else {
				v6 = append(v6, api.CIDR(p.String()))
			}
		}
		c.cidrs = api.CIDRRuleSlice{{Cidr: "0.0.0.0/0", ExceptCIDRs: v4}, {Cidr: "::/0", ExceptCIDRs: v6}}
	}
	// Every pod no L7 selector selects: the conjunction of each
	// selector's negation, a disjunction of clauses.
	clauses := []clause{{}}
	for _, sel := range sels {
		neg, err := negate(sel)
		if err != nil {
			return c, false, err
		}
		var next []clause
		for _, a := range clauses {
			for _, b := range neg {
				if m, ok := a.and(b); ok {
					next = append(next, m)
				}
			}
		}
		if len(next) > maxComplementSelectors {
			return c, false, fmt.Errorf("%w: the L7 peers' selectors need over %d negated selectors", errNoComplement, maxComplementSelectors)
		}
		clauses = next
	}
	if len(sels) == 0 {
		clauses = []clause{{{key: podNamespaceKey, op: slimv1.LabelSelectorOpExists}}}
	}
	for _, cl := range clauses {
		c.endpoints = append(c.endpoints, cl.selector())
	}
	return c, true, nil
}

const podNamespaceKey = "k8s:io.kubernetes.pod.namespace"

// requirement is one label requirement, in Cilium's internal key form.
type requirement struct {
	key    string
	op     slimv1.LabelSelectorOperator
	values []string
}

// clause is a conjunction of requirements: one selector.
type clause []requirement

func (a clause) and(b clause) (clause, bool) {
	out := append(append(clause{}, a...), b...)
	// Contradictions on the same key and value select nothing: drop.
	for i, x := range out {
		for _, y := range out[i+1:] {
			if x.key != y.key {
				continue
			}
			if (x.op == slimv1.LabelSelectorOpExists && y.op == slimv1.LabelSelectorOpDoesNotExist) ||
				(x.op == slimv1.LabelSelectorOpDoesNotExist && y.op == slimv1.LabelSelectorOpExists) {
				return nil, false
			}
			if x.op == slimv1.LabelSelectorOpIn && y.op == slimv1.LabelSelectorOpNotIn && covers(y.values, x.values) ||
				y.op == slimv1.LabelSelectorOpIn && x.op == slimv1.LabelSelectorOpNotIn && covers(x.values, y.values) {
				return nil, false
			}
		}
	}
	return out, true
}

// covers reports whether every value of in is in of.
func covers(of, in []string) bool {
	set := map[string]bool{}
	for _, v := range of {
		set[v] = true
	}
	for _, v := range in {
		if !set[v] {
			return false
		}
	}
	return true
}

func (a clause) selector() api.EndpointSelector {
	ls := &slimv1.LabelSelector{}
	for _, r := range a {
		ls.MatchExpressions = append(ls.MatchExpressions, slimv1.LabelSelectorRequirement{Key: r.key, Operator: r.op, Values: r.values})
	}
	return api.EndpointSelector{LabelSelector: ls}
}

// negate returns the clauses whose disjunction selects exactly the
// identities sel does not: with sel = ns ∧ r1 ∧ ... ∧ rk (ns its namespace
// requirement, which the RuleSet always spells out), ¬ns, or ns ∧ ¬ri.
// Every clause names the namespace key, so Cilium adds no namespace of its
// own to it.
func negate(sel *api.EndpointSelector) ([]clause, error) {
	if sel == nil || sel.LabelSelector == nil {
		return nil, fmt.Errorf("%w: a peer without selector", errNoComplement)
	}
	var ns *requirement
	var rest []requirement
	for k, v := range sel.MatchLabels {
		r := requirement{key: k, op: slimv1.LabelSelectorOpIn, values: []string{v}}
		if k == podNamespaceKey {
			ns = &r
			continue
		}
		rest = append(rest, r)
	}
	for _, e := range sel.MatchExpressions {
		r := requirement{key: e.Key, op: e.Operator, values: append([]string(nil), e.Values...)}
		if e.Key == podNamespaceKey && ns == nil {
			ns = &r
			continue
		}
		rest = append(rest, r)
	}
	sort.Slice(rest, func(i, j int) bool { return rest[i].key < rest[j].key })
	if ns == nil {
		// A selector across namespaces (every namespace): its negation
		// is the negation of its other requirements, in any namespace.
		ns = &requirement{key: podNamespaceKey, op: slimv1.LabelSelectorOpExists}
	}
	nsNeg, err := ns.negated()
	if err != nil {
		return nil, err
	}
	out := []clause{{nsNeg}}
	for _, r := range rest {
		n, err := r.negated()
		if err != nil {
			return nil, err
		}
		out = append(out, clause{*ns, n})
	}
	return out, nil
}

func (r requirement) negated() (requirement, error) {
	out := requirement{key: r.key, values: r.values}
	switch r.op {
	case slimv1.LabelSelectorOpIn:
		out.op = slimv1.LabelSelectorOpNotIn
	case slimv1.LabelSelectorOpNotIn:
		out.op = slimv1.LabelSelectorOpIn
	case slimv1.LabelSelectorOpExists:
		out.op, out.values = slimv1.LabelSelectorOpDoesNotExist, nil
	case slimv1.LabelSelectorOpDoesNotExist:
		out.op, out.values = slimv1.LabelSelectorOpExists, nil
	default:
		return out, fmt.Errorf("%w: selector operator %q", errNoComplement, r.op)
	}
	return out, nil
}

// allICMP allows every ICMP and ICMPv6 type. The rules are built once;
// callers get their own slices (the fields' types are never written).
func allICMP() api.ICMPRules {
	icmpOnce.Do(func() {
		for _, fam := range []string{api.IPv4Family, api.IPv6Family} {
			var fields []api.ICMPField
			for t := 0; t < 256; t++ {
				typ := intstr.FromInt32(int32(t))
				fields = append(fields, api.ICMPField{Family: fam, Type: &typ})
				if len(fields) == 40 {
					icmpAll = append(icmpAll, api.ICMPRule{Fields: fields})
					fields = nil
				}
			}
			icmpAll = append(icmpAll, api.ICMPRule{Fields: fields})
		}
	})
	out := make(api.ICMPRules, len(icmpAll))
	for i, r := range icmpAll {
		out[i] = api.ICMPRule{Fields: append([]api.ICMPField(nil), r.Fields...)}
	}
	return out
}

var (
	icmpOnce sync.Once
	icmpAll  api.ICMPRules
)

// peerSide is the peer part of a rule: one L7 peer, or a set of peers.
type peerSide struct {
	endpoints []api.EndpointSelector
	entities  api.EntitySlice
	cidrs     api.CIDRSlice
}

func sideOf(p Peer) peerSide {
	switch p.Kind {
	case PeerEndpoints:
		return peerSide{endpoints: []api.EndpointSelector{*p.Selector}}
	case PeerEntity:
		return peerSide{entities: api.EntitySlice{p.Entity}}
	case PeerCIDR:
		return peerSide{cidrs: api.CIDRSlice{api.CIDR(p.CIDR)}}
	}
	return peerSide{entities: api.EntitySlice{api.EntityAll}}
}

// complementRules returns the egress and ingress rules of the complement
// for one direction's L7 pairs (own and siblings'), or errNoComplement.
func complementRules(dir Direction, pairs []l7Pair) ([]api.EgressRule, []api.IngressRule, error) {
	var all []PortRange
	for _, p := range pairs {
		all = append(all, p.ports...)
	}
	union := newPortSet(all)
	full := portSet{{1, 65535}}
	type rule struct {
		side  peerSide
		ports api.PortRules
		icmps api.ICMPRules
	}
	var rules []rule
	// Every peer, every port but the L7 ports; UDP and SCTP.
	ports := full.minus(union).portRules(api.ProtoTCP)
	ports = append(ports, api.PortRule{Ports: []api.PortProtocol{{Port: "0", Protocol: api.ProtoUDP}, {Port: "0", Protocol: api.ProtoSCTP}}})
	rules = append(rules, rule{side: peerSide{entities: api.EntitySlice{api.EntityAll}}, ports: ports})
	// Each L7 peer on the L7 ports that are others', and ICMP.
	for _, p := range pairs {
		if others := union.minus(newPortSet(p.ports)); len(others) > 0 {
			rules = append(rules, rule{side: sideOf(p.peer), ports: others.portRules(api.ProtoTCP)})
		}
		rules = append(rules, rule{side: sideOf(p.peer), icmps: allICMP()})
	}
	// Every peer but the L7 peers, at L3.
	c, ok, err := complementOf(pairs)
	if err != nil {
		return nil, nil, err
	}
	if ok {
		if len(c.entities) > 0 {
			rules = append(rules, rule{side: peerSide{entities: c.entities}})
		}
		if len(c.endpoints) > 0 {
			rules = append(rules, rule{side: peerSide{endpoints: c.endpoints}})
		}
	}
	var eg []api.EgressRule
	var in []api.IngressRule
	for _, r := range rules {
		if dir == Egress {
			er := api.EgressRule{EgressCommonRule: api.EgressCommonRule{ToEndpoints: r.side.endpoints, ToEntities: r.side.entities, ToCIDR: r.side.cidrs}, ToPorts: r.ports, ICMPs: r.icmps}
			eg = append(eg, er)
		} else {
			ir := api.IngressRule{IngressCommonRule: api.IngressCommonRule{FromEndpoints: r.side.endpoints, FromEntities: r.side.entities, FromCIDR: r.side.cidrs}, ToPorts: r.ports, ICMPs: r.icmps}
			in = append(in, ir)
		}
	}
	if ok && len(c.cidrs) > 0 {
		// The world but the L7 CIDRs.
		if dir == Egress {
			eg = append(eg, api.EgressRule{EgressCommonRule: api.EgressCommonRule{ToCIDRSet: c.cidrs}})
		} else {
			in = append(in, api.IngressRule{IngressCommonRule: api.IngressCommonRule{FromCIDRSet: c.cidrs}})
		}
	}
	return eg, in, nil
}
