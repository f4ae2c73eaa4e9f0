package translator

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/cilium/cilium/pkg/identity"
	ciliumv2 "github.com/cilium/cilium/pkg/k8s/apis/cilium.io/v2"
	slimv1 "github.com/cilium/cilium/pkg/k8s/slim/k8s/apis/meta/v1"
	"github.com/cilium/cilium/pkg/labels"
	"github.com/cilium/cilium/pkg/policy/api"
	"github.com/cilium/cilium/pkg/u8proto"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/sidewall/sidewall/crds/v1alpha1"
	"github.com/sidewall/sidewall/hack/harness/ciliumengine"
)

// The engine suite runs every golden case's generated CNP through Cilium's
// own policy engine (hack/harness/ciliumengine: the repository,
// selector cache, distilled map state and the NPDS policy Envoy gets) in
// three cluster contexts, and compares what Cilium would do with
// engine.yaml. engine.yaml is written from sidewall's semantics by the
// oracle below (expectedCilium), never from the engine's output: `-update`
// rewrites it from the oracle.
//
// Contexts:
//   - alone: no other policy selects the pod;
//   - namespace-default-deny: a CNP puts every pod of the namespace into
//     default deny both ways, allowing nothing (the controller then
//     generates the CNP with OthersDefaultDeny);
//   - other-l7: a CNP without default deny has its own HTTP rule on every
//     L7 peer and port of the policy.
//
// For every L7 peer and port it also checks the property Envoy's additive
// rules make decisive: no NPDS rule allows the peer on the port without
// HTTP rules.
func TestCiliumEngine(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	for _, tc := range loadCases(t) {
		if strings.HasPrefix(tc.name, "reject-") {
			continue
		}
		t.Run(tc.name, func(t *testing.T) {
			rs, err := ToRuleSet(tc.policy)
			if err != nil {
				t.Fatal(err)
			}
			probes := engineProbes(rs)
			var got []probeResult
			for _, ctx := range engineContexts {
				cnp, l7, err := ToCNPWith(tc.policy, CNPOptions{OthersDefaultDeny: ctx.othersDefaultDeny})
				if err != nil {
					t.Fatal(err)
				}
				if cnp == nil {
					continue
				}
				e := ciliumengine.New(log)
				subject := e.AddIdentity("subject", witness(rs.PodSelector, tc.policy.Namespace))
				for _, p := range probes {
					if p.labels != nil {
						e.AddIdentity(p.peer, p.labels)
					}
				}
				if err := e.Add(cnp); err != nil {
					t.Fatalf("%s: %v", ctx.name, err)
				}
				if err := e.Add(ctx.others(tc.policy.Namespace, rs)...); err != nil {
					t.Fatal(err)
				}
				r, err := e.Resolve(subject)
				if err != nil {
					t.Fatal(err)
				}
				for _, p := range probes {
					id := p.reserved
					if p.labels != nil {
						id = e.ID(p.peer)
					}
					v := r.Lookup(p.dir == Egress, id, p.proto, p.port)
					res := probeResult{Context: ctx.name, Probe: p.String(), Cilium: v.String()}
					if v.Redirected && p.port == 53 && ruleSetHasFQDN(rs) {
						// The DNS rule the CNP adds for toFQDNs (every name).
						res.Cilium = "redirected to the DNS proxy"
					} else if v.Redirected {
						rules, wildcard := r.HTTPRules(p.dir == Egress, id, p.port)
						res.HTTP = rules
						if wildcard {
							res.Cilium = "redirected, but a rule without HTTP rules passes every request"
						}
					}
					got = append(got, res)
				}
				if (l7.Egress == L7NotEnforced || l7.Ingress == L7NotEnforced) && ctx.name == "alone" {
					t.Logf("HTTP rules not enforced alone: %s %s", l7.EgressReason, l7.IngressReason)
				}
			}
			want := expectedCilium(rs, probes)
			path := filepath.Join(tc.dir, "engine.yaml")
			if len(want) == 0 {
				removeStale(t, path)
				return
			}
			golden(t, path, toYAML(t, want))
			if *update {
				return
			}
			wantRaw, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if gotRaw := toYAML(t, got); string(gotRaw) != string(wantRaw) {
				t.Errorf("Cilium's engine does not do what the semantics say (%s):\n--- engine\n%s\n--- semantics\n%s", path, gotRaw, wantRaw)
			}
		})
	}
}

// probeResult is one line of engine.yaml.
type probeResult struct {
	Context string   `json:"context"`
	Probe   string   `json:"probe"`
	Cilium  string   `json:"cilium"`
	HTTP    []string `json:"http,omitempty"`
}

type engineContext struct {
	name              string
	othersDefaultDeny DefaultDeny
	others            func(ns string, rs *RuleSet) []*ciliumv2.CiliumNetworkPolicy
}

var engineContexts = []engineContext{
	{name: "alone", others: func(string, *RuleSet) []*ciliumv2.CiliumNetworkPolicy { return nil }},
	{name: "namespace-default-deny", othersDefaultDeny: DefaultDeny{Egress: true, Ingress: true}, others: namespaceDefaultDeny},
	{name: "other-l7", others: otherL7},
}

func cnpObject(ns, name string, spec *api.Rule) *ciliumv2.CiliumNetworkPolicy {
	return &ciliumv2.CiliumNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: spec}
}

// namespaceDefaultDeny selects every pod of the namespace and allows
// nothing in either direction.
func namespaceDefaultDeny(ns string, _ *RuleSet) []*ciliumv2.CiliumNetworkPolicy {
	nobody := []api.EndpointSelector{api.NewESFromMatchRequirements(map[string]string{"app": "nobody"}, nil)}
	return []*ciliumv2.CiliumNetworkPolicy{cnpObject(ns, "default-deny", &api.Rule{
		EndpointSelector: api.NewESFromMatchRequirements(nil, nil),
		Egress:           []api.EgressRule{{EgressCommonRule: api.EgressCommonRule{ToEndpoints: nobody}}},
		Ingress:          []api.IngressRule{{IngressCommonRule: api.IngressCommonRule{FromEndpoints: nobody}}},
	})}
}

// otherHTTP is the other policy's HTTP rule in the other-l7 context.
var otherHTTP = api.PortRuleHTTP{Method: "GET", Path: "^/other$"}

// otherL7 is a CNP without default deny that has its own HTTP rule on
// every L7 peer and port of the policy.
func otherL7(ns string, rs *RuleSet) []*ciliumv2.CiliumNetworkPolicy {
	rule := &api.Rule{
		EndpointSelector:  *rs.PodSelector.DeepCopy(),
		EnableDefaultDeny: api.DefaultDenyConfig{Egress: ptr.To(false), Ingress: ptr.To(false)},
	}
	for _, dir := range []Direction{Egress, Ingress} {
		for _, p := range l7Pairs(rs, dir) {
			if p.peer.Kind != PeerEndpoints {
				continue
			}
			var ports []api.PortProtocol
			for _, pr := range p.ports {
				ports = append(ports, api.PortProtocol{Port: fmt.Sprint(pr.From), Protocol: api.ProtoTCP})
			}
			toPorts := api.PortRules{{Ports: ports, Rules: &api.L7Rules{HTTP: []api.PortRuleHTTP{otherHTTP}}}}
			if dir == Egress {
				rule.Egress = append(rule.Egress, api.EgressRule{EgressCommonRule: api.EgressCommonRule{ToEndpoints: []api.EndpointSelector{*p.peer.Selector}}, ToPorts: toPorts})
			} else {
				rule.Ingress = append(rule.Ingress, api.IngressRule{IngressCommonRule: api.IngressCommonRule{FromEndpoints: []api.EndpointSelector{*p.peer.Selector}}, ToPorts: toPorts})
			}
		}
	}
	if len(rule.Egress)+len(rule.Ingress) == 0 {
		return nil
	}
	return []*ciliumv2.CiliumNetworkPolicy{cnpObject(ns, "other-l7", rule)}
}

// probe is one connection the suite asks the engine about.
type probe struct {
	dir   Direction
	peer  string
	proto u8proto.U8proto
	port  uint16
	// labels of the peer's identity; nil for a reserved identity.
	labels   labels.LabelArray
	reserved identity.NumericIdentity
}

func (p probe) String() string {
	return fmt.Sprintf("%s %s %s/%d", p.dir, p.peer, p.proto, p.port)
}

// engineProbes are, per direction with rules: every peer the rules name
// (a witness identity for each selector or entity) on each rule port and
// on an unrelated port, over UDP and ICMP too, and peers no rule names: a
// pod of the namespace, a pod elsewhere, kube-dns, the world, the host.
func engineProbes(rs *RuleSet) []probe {
	var out []probe
	seen := map[string]bool{}
	add := func(p probe) {
		if !seen[p.String()] {
			seen[p.String()] = true
			out = append(out, p)
		}
	}
	ns := rs.Policy.Namespace
	for _, dir := range []Direction{Egress, Ingress} {
		has := false
		for i, r := range rs.Rules {
			if r.Direction != dir || r.Peer.Kind == PeerContainers {
				continue
			}
			has = true
			var base probe
			switch r.Peer.Kind {
			case PeerEndpoints:
				base = probe{peer: fmt.Sprintf("peer-%d", i), labels: witness(*r.Peer.Selector, ns)}
			case PeerEntity:
				id, ok := entityIdentity[r.Peer.Entity]
				if !ok {
					continue
				}
				base = probe{peer: string(r.Peer.Entity), reserved: id}
			default:
				continue // CIDR and wildcard peers: probed through world below
			}
			base.dir = dir
			ports := []uint16{9999}
			for _, pr := range r.Ports {
				if pr.Protocol == ProtoTCP || pr.Protocol == ProtoAny {
					ports = append(ports, pr.From)
				}
			}
			for _, port := range ports {
				p := base
				p.proto, p.port = u8proto.TCP, port
				add(p)
			}
			p := base
			p.proto, p.port = u8proto.UDP, 53
			add(p)
			p.proto, p.port = u8proto.ICMP, 8
			add(p)
		}
		if !has {
			continue
		}
		for _, p := range []probe{
			{peer: "pod-of-namespace", labels: podLabels(ns, "stranger")},
			{peer: "pod-elsewhere", labels: podLabels("elsewhere", "stranger")},
			{peer: "kube-dns", labels: labels.LabelArray{
				labels.NewLabel("k8s-app", "kube-dns", labels.LabelSourceK8s),
				labels.NewLabel("io.kubernetes.pod.namespace", "kube-system", labels.LabelSourceK8s),
				labels.NewLabel("io.cilium.k8s.policy.cluster", "default", labels.LabelSourceK8s),
			}.Sort()},
			{peer: "world", reserved: identity.ReservedIdentityWorld},
			{peer: "host", reserved: identity.ReservedIdentityHost},
		} {
			p.dir = dir
			for _, pp := range []struct {
				proto u8proto.U8proto
				port  uint16
			}{{u8proto.TCP, 443}, {u8proto.TCP, 8080}, {u8proto.UDP, 53}} {
				p.proto, p.port = pp.proto, pp.port
				add(p)
			}
		}
	}
	return out
}

var entityIdentity = map[api.Entity]identity.NumericIdentity{
	api.EntityWorld:         identity.ReservedIdentityWorld,
	api.EntityHost:          identity.ReservedIdentityHost,
	api.EntityRemoteNode:    identity.ReservedIdentityRemoteNode,
	api.EntityKubeAPIServer: identity.ReservedIdentityKubeAPIServer,
	api.EntityHealth:        identity.ReservedIdentityHealth,
	api.EntityIngress:       identity.ReservedIdentityIngress,
}

func podLabels(ns, app string) labels.LabelArray {
	return labels.LabelArray{
		labels.NewLabel("app", app, labels.LabelSourceK8s),
		labels.NewLabel("io.kubernetes.pod.namespace", ns, labels.LabelSourceK8s),
		labels.NewLabel("io.cilium.k8s.policy.cluster", "default", labels.LabelSourceK8s),
	}.Sort()
}

// witness returns identity labels that a selector (Cilium's internal
// form) selects: its matchLabels, a value of each In, a value for each
// Exists; the namespace's when it names none.
func witness(sel api.EndpointSelector, ns string) labels.LabelArray {
	m := map[string]string{}
	if sel.LabelSelector != nil {
		for k, v := range sel.MatchLabels {
			m[k] = v
		}
		for _, e := range sel.MatchExpressions {
			switch e.Operator {
			case slimv1.LabelSelectorOpIn:
				m[e.Key] = e.Values[0]
			case slimv1.LabelSelectorOpExists:
				m[e.Key] = "x"
			}
		}
	}
	if _, ok := m[podNamespaceKey]; !ok {
		m[podNamespaceKey] = ns
	}
	var out labels.LabelArray
	for k, v := range m {
		src, key := labels.LabelSourceK8s, k
		if s, rest, ok := strings.Cut(k, ":"); ok {
			key = rest
			if s != labels.LabelSourceAny {
				src = s
			}
		}
		out = append(out, labels.NewLabel(key, v, src))
	}
	out = append(out, labels.NewLabel("io.cilium.k8s.policy.cluster", "default", labels.LabelSourceK8s))
	return out.Sort()
}

// expectedCilium is the oracle: what Cilium must do at pod level with
// each probe, from sidewall's semantics (docs/semantics.md, rules 1 and 3):
//   - a peer and port an allow rule with HTTP rules names: redirected to the
//     proxy, with exactly those HTTP rules (and, in other-l7, the other
//     policy's), never with a rule that passes every request;
//   - a peer and port another allow rule names: allowed;
//   - anything else: allowed (the pod's other containers keep their
//     traffic), except under the namespace's default deny: denied.
//
// The pod-level CNP carries no deny rules (the datapath enforces them per
// container), so they play no part here.
func expectedCilium(rs *RuleSet, probes []probe) []probeResult {
	var out []probeResult
	for _, ctx := range engineContexts {
		if modeOf(&v1alpha1.ContainerNetworkPolicySpec{Mode: rs.Mode}) == v1alpha1.ModeAudit || !hasCiliumRules(rs) {
			continue
		}
		for _, p := range probes {
			res := probeResult{Context: ctx.name, Probe: p.String()}
			lbls := p.labels
			if lbls == nil {
				lbls = labels.LabelArray(identity.LookupReservedIdentity(p.reserved).LabelArray)
			}
			tr := Traffic{Direction: p.dir, PeerLabels: lbls, Protocol: protoOf(p.proto), Port: p.port}
			var http []string
			l7, allowed := false, false
			for i := range rs.Rules {
				r := &rs.Rules[i]
				if r.Action != Allow || r.Direction != p.dir || r.Peer.Kind == PeerContainers || !peerMatches(r.Peer, tr) {
					continue
				}
				if len(r.Ports) == 0 {
					allowed = true
				}
				for _, pr := range r.Ports {
					if !portMatches(pr, tr) {
						continue
					}
					allowed = true
					if pr.L7 {
						l7 = true
						for _, h := range pr.HTTP {
							http = append(http, envoyHTTP(h))
						}
					}
				}
			}
			switch {
			case allowed && !l7 && p.dir == Egress && p.port == 53 && ruleSetHasFQDN(rs):
				res.Cilium = "redirected to the DNS proxy"
			case l7:
				if ctx.name == "other-l7" && p.labels != nil && ctx.others(rs.Policy.Namespace, rs) != nil {
					http = append(http, envoyHTTP(otherHTTP))
				}
				sort.Strings(http)
				res.Cilium, res.HTTP = "redirected", http
			case allowed:
				res.Cilium = "allowed"
			case ctx.name == "namespace-default-deny":
				res.Cilium = "denied"
			default:
				res.Cilium = "allowed"
			}
			out = append(out, res)
		}
	}
	return out
}

func hasCiliumRules(rs *RuleSet) bool {
	for _, r := range rs.Rules {
		if r.Action == Allow && r.Peer.Kind != PeerContainers {
			return true
		}
	}
	return false
}

func protoOf(p u8proto.U8proto) Protocol {
	switch p {
	case u8proto.TCP:
		return ProtoTCP
	case u8proto.UDP:
		return ProtoUDP
	case u8proto.ICMP:
		return Protocol("ICMP")
	}
	return ProtoAny
}

// envoyHTTP is an HTTP rule as Envoy's header matchers say it: method,
// path and host as regexes on the pseudo-headers, headers by name.
func envoyHTTP(h api.PortRuleHTTP) string {
	var parts []string
	if h.Method != "" {
		parts = append(parts, ":method="+h.Method)
	}
	if h.Path != "" {
		parts = append(parts, ":path="+h.Path)
	}
	if h.Host != "" {
		parts = append(parts, ":authority="+h.Host)
	}
	for _, hd := range h.Headers {
		name, value, _ := strings.Cut(hd, " ")
		parts = append(parts, strings.TrimSuffix(name, ":")+"="+strings.TrimSpace(value))
	}
	if len(parts) == 0 {
		return "*"
	}
	sort.Strings(parts)
	return strings.Join(parts, " ")
}

// ruleSetHasFQDN: the CNP gives the policy's port-53 grants Cilium's DNS rule.
func ruleSetHasFQDN(rs *RuleSet) bool {
	for _, r := range rs.Rules {
		if r.Peer.Kind == PeerFQDN {
			return true
		}
	}
	return false
}
