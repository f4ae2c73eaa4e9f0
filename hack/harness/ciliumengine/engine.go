// Package ciliumengine runs Cilium's own policy engine (pkg/policy, and
// pkg/envoy for the policy Envoy gets) as a library, so tests can see what
// a real cilium-agent would make of generated CiliumNetworkPolicies
// without an Envoy, which cannot run on the project's machines.
//
// The path is the agent's: CiliumNetworkPolicy.Parse,
// policyutils.RulesToPolicyEntries, Repository.ReplaceByResource,
// ComputeSelectorPolicy for the subject's identity, DistillPolicy into the
// map state the datapath enforces, and envoy.GetNetworkPolicy for the NPDS
// policy Envoy enforces L7 with. Only the fakes the agent's own tests use
// stand in (identity manager, policy metrics, no secrets).
package ciliumengine

import (
	"fmt"
	"log/slog"
	"math"
	"sort"
	"strings"

	cilium "github.com/cilium/proxy/go/cilium/api"
	envoycore "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/cilium/cilium/pkg/endpoint/regeneration"
	"github.com/cilium/cilium/pkg/envoy"
	envoypolicy "github.com/cilium/cilium/pkg/envoy/policy"
	"github.com/cilium/cilium/pkg/identity"
	"github.com/cilium/cilium/pkg/identity/identitymanager"
	ipcachetypes "github.com/cilium/cilium/pkg/ipcache/types"
	ciliumv2 "github.com/cilium/cilium/pkg/k8s/apis/cilium.io/v2"
	"github.com/cilium/cilium/pkg/labels"
	"github.com/cilium/cilium/pkg/policy"
	policyutils "github.com/cilium/cilium/pkg/policy/utils"
	"github.com/cilium/cilium/pkg/proxy/accesslog"
	testidentity "github.com/cilium/cilium/pkg/testutils/identity"
	testpolicy "github.com/cilium/cilium/pkg/testutils/policy"
	"github.com/cilium/cilium/pkg/u8proto"
)

// Engine is one cluster's policy state: its identities and CNPs.
type Engine struct {
	log   *slog.Logger
	ids   map[identity.NumericIdentity]*identity.Identity
	next  identity.NumericIdentity
	cnps  []*ciliumv2.CiliumNetworkPolicy
	names map[string]identity.NumericIdentity
}

// New returns an engine that knows Cilium's reserved identities.
func New(log *slog.Logger) *Engine {
	e := &Engine{log: log, ids: map[identity.NumericIdentity]*identity.Identity{}, next: 1000, names: map[string]identity.NumericIdentity{}}
	for id, lbls := range identity.ListReservedIdentities() {
		e.ids[id] = identity.NewIdentity(id, labels.NewLabelsFromModel(lbls.GetModel()))
	}
	return e
}

// AddIdentity allocates an identity for labels (Cilium's identity labels,
// such as translator.IdentityLabels gives for a pod) under a name for
// later reference, and returns its number.
func (e *Engine) AddIdentity(name string, lbls labels.LabelArray) identity.NumericIdentity {
	id := e.next
	e.next++
	e.ids[id] = identity.NewIdentity(id, labels.NewLabelsFromModel(lbls.GetModel()))
	e.names[name] = id
	return id
}

// ID returns the identity added under name.
func (e *Engine) ID(name string) identity.NumericIdentity { return e.names[name] }

// Add loads CNPs as the agent imports them; an error is the agent's
// refusal.
func (e *Engine) Add(cnps ...*ciliumv2.CiliumNetworkPolicy) error {
	for _, cnp := range cnps {
		if _, err := cnp.Parse(e.log, "default"); err != nil {
			return fmt.Errorf("cilium refuses CNP %s/%s: %w", cnp.Namespace, cnp.Name, err)
		}
		e.cnps = append(e.cnps, cnp)
	}
	return nil
}

// Resolved is the policy Cilium computes for one endpoint identity.
type Resolved struct {
	epp  *policy.EndpointPolicy
	npds *cilium.NetworkPolicy
}

// Resolve computes the subject's policy from every identity and CNP.
func (e *Engine) Resolve(subject identity.NumericIdentity) (*Resolved, error) {
	idmap := identity.IdentityMap{}
	for id, ident := range e.ids {
		idmap[id] = ident.LabelArray
	}
	idmgr := identitymanager.NewIDManager(e.log)
	repo := policy.NewPolicyRepository(e.log, idmap, nil, envoypolicy.NewEnvoyL7RulesTranslator(e.log, nil), idmgr, testpolicy.NewPolicyMetricsNoop())
	repo.GetSelectorCache().SetLocalIdentityNotifier(testidentity.NewDummyIdentityNotifier())
	idmgr.Subscribe(testpolicy.SelectorCacheObserver{Cache: repo.GetSubjectSelectorCache()})
	for _, cnp := range e.cnps {
		rules, err := cnp.Parse(e.log, "default")
		if err != nil {
			return nil, err
		}
		repo.ReplaceByResource(policyutils.RulesToPolicyEntries(rules), ipcachetypes.NewResourceID(ipcachetypes.ResourceKindCNP, cnp.Namespace, cnp.Name))
	}
	ident, ok := e.ids[subject]
	if !ok {
		return nil, fmt.Errorf("no identity %d", subject)
	}
	idmgr.Add(ident)
	sp, _, err := repo.ComputeSelectorPolicy(ident)
	if err != nil {
		return nil, fmt.Errorf("compute policy of %d: %w", subject, err)
	}
	owner := &endpoint{id: uint64(subject)}
	// A redirect port for every listener, as the proxy would allocate.
	epp := sp.DistillPolicy(e.log, owner, map[string]uint16{policy.FallbackRedirectID: math.MaxUint16})
	// Before Ready, which releases the selector snapshot the NPDS policy
	// is computed from (the agent sends it to Envoy before too).
	npds := envoy.GetNetworkPolicy(owner, epp.SelectorPolicy.GetEgressNamedPorts, epp.GetPolicySelectors(), []string{"10.0.0.1"},
		&epp.SelectorPolicy.L4Policy, epp.SelectorPolicy.IngressPolicyEnabled, epp.SelectorPolicy.EgressPolicyEnabled,
		false, false, "", e.log, envoypolicy.NewEnvoyL7RulesTranslator(e.log, nil))
	if err := epp.Ready(); err != nil {
		return nil, fmt.Errorf("policy of %d: %w", subject, err)
	}
	if err := npds.Validate(); err != nil {
		return nil, fmt.Errorf("NPDS policy of %d does not validate: %w", subject, err)
	}
	return &Resolved{epp: epp, npds: npds}, nil
}

// Verdict is what Cilium's datapath does with a new connection.
type Verdict struct {
	Allowed bool
	// Redirected: to the proxy (Envoy for HTTP), which decides L7.
	Redirected bool
}

func (v Verdict) String() string {
	switch {
	case v.Redirected:
		return "redirected"
	case v.Allowed:
		return "allowed"
	}
	return "denied"
}

// Lookup is the map state's verdict for traffic of the subject with a
// peer identity, as bpf_lxc looks it up.
func (r *Resolved) Lookup(egress bool, peer identity.NumericIdentity, proto u8proto.U8proto, port uint16) Verdict {
	key := policy.IngressKey()
	if egress {
		key = policy.EgressKey()
	}
	entry, _, _ := r.epp.Lookup(key.WithIdentity(peer).WithPortProto(proto, port))
	if entry.IsDeny() {
		return Verdict{}
	}
	return Verdict{Allowed: true, Redirected: entry.IsRedirectEntry()}
}

// HTTPRules returns what Envoy would enforce for the subject's traffic
// with a peer on a TCP port: the HTTP rules (method and path, as Envoy's
// header matchers print), and whether some rule lets the peer through on
// that port without any HTTP rule (a port-specific wildcard, or a port-0
// rule, which Envoy adds to every port's list): Envoy's rules are
// additive, so any such rule passes every request.
func (r *Resolved) HTTPRules(egress bool, peer identity.NumericIdentity, port uint16) (rules []string, wildcard bool) {
	pols := r.npds.IngressPerPortPolicies
	if egress {
		pols = r.npds.EgressPerPortPolicies
	}
	for _, pp := range pols {
		if pp.Protocol != envoycore.SocketAddress_TCP {
			continue
		}
		end := pp.EndPort
		if end == 0 {
			end = pp.Port
		}
		if pp.Port != 0 && (port < uint16(pp.Port) || port > uint16(end)) {
			continue
		}
		for _, rule := range pp.Rules {
			if rule.GetDeny() || !selects(rule.RemotePolicies, uint32(peer)) {
				continue
			}
			http := rule.GetHttpRules()
			if http == nil || len(http.HttpRules) == 0 {
				wildcard = true
				continue
			}
			for _, hr := range http.HttpRules {
				rules = append(rules, httpRule(hr))
			}
		}
	}
	sort.Strings(rules)
	return rules, wildcard
}

func selects(remotes []uint32, peer uint32) bool {
	if len(remotes) == 0 {
		return true
	}
	for _, r := range remotes {
		if r == peer {
			return true
		}
	}
	return false
}

// httpRule prints one Envoy HTTP rule as "name=value" matchers joined by
// " ", sorted; an empty rule (which matches every request) prints as "*".
func httpRule(hr *cilium.HttpNetworkPolicyRule) string {
	var parts []string
	for _, h := range hr.Headers {
		v := h.GetStringMatch().GetExact()
		if re := h.GetStringMatch().GetSafeRegex(); re != nil {
			v = re.GetRegex()
		}
		parts = append(parts, h.Name+"="+v)
	}
	if len(parts) == 0 {
		return "*"
	}
	sort.Strings(parts)
	return strings.Join(parts, " ")
}

// endpoint is the subject endpoint, as much as the engine asks of it.
type endpoint struct{ id uint64 }

func (e *endpoint) GetID() uint64                                      { return e.id }
func (e *endpoint) GetIngressNamedPort(string, u8proto.U8proto) uint16 { return 0 }
func (e *endpoint) PolicyDebug(string, ...any)                         {}
func (e *endpoint) IsHost() bool                                       { return false }
func (e *endpoint) PreviousMapStateSizes() policy.MapStateSizes        { return policy.MapStateSizes{} }
func (e *endpoint) GetPolicyNames() []string                           { return []string{"10.0.0.1"} }
func (e *endpoint) GetIPv4Address() string                             { return "10.0.0.1" }
func (e *endpoint) GetIPv6Address() string                             { return "" }
func (e *endpoint) OnProxyPolicyUpdate(uint64)                         {}
func (e *endpoint) GetListenerProxyPort(string) uint16                 { return 0 }
func (e *endpoint) UpdateProxyStatistics(string, string, uint16, uint16, bool, bool, accesslog.FlowVerdict) {
}
func (e *endpoint) RegenerateIfAlive(*regeneration.ExternalRegenerationMetadata) <-chan bool {
	c := make(chan bool, 1)
	c <- false
	return c
}
