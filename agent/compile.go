package agent

import (
	"fmt"
	"maps"
	"net/netip"
	"regexp"
	"slices"
	"sort"

	"github.com/cilium/cilium/pkg/labels"
	"github.com/cilium/cilium/pkg/policy/api"
	policytypes "github.com/cilium/cilium/pkg/policy/types"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/sidewall/sidewall/agent/identity"
	"github.com/sidewall/sidewall/bpfext"
	"github.com/sidewall/sidewall/crds/v1alpha1"
	"github.com/sidewall/sidewall/translator"
)

// CIDRIdentityBase is the first identity allocated for CIDR peers: Cilium's
// local identity scope, which never collides with cluster identities.
const CIDRIdentityBase uint32 = 1 << 24

// podEntryContainerID is the container id of the pod cgroup's entry; the
// datapath reserves 0 and 0xffffffff, and real containers count from 1.
const podEntryContainerID uint32 = 0xfffffffe

// PodState is one pod of the node with the cgroups found for it.
type PodState struct {
	Pod *corev1.Pod
	// CgroupPath and CgroupID of the pod cgroup; CgroupID 0 while kubelet
	// has not created it.
	CgroupPath string
	CgroupID   uint64
	// Containers maps container name to the cgroup id of its running
	// instance; a container not (yet) found is absent and falls to the pod
	// cgroup's entry.
	Containers map[string]uint64
}

// Input is everything Compile needs.
type Input struct {
	Pods       []PodState
	RuleSets   []*translator.RuleSet
	Identities *identity.Snapshot
	// Services are decided on their backends (services.go).
	Services []Service
	// HostByPolicy makes the local host need a rule to reach a container
	// restricted on ingress, as Cilium's allow-localhost=policy. By default
	// the host always may, as Cilium does in Kubernetes (kubelet probes).
	HostByPolicy bool
}

// CgroupInfo names what a classified cgroup is, for events and metrics.
type CgroupInfo struct {
	Namespace, Pod, Container string
	PodUID                    types.UID
	// Labels of the pod, in Cilium's "source:key=value" form.
	Labels   []string
	Identity uint32
	// PodCgroup is set on the pod cgroup's own entry.
	PodCgroup bool
}

// RuleInfo names the policy and rule a datapath rule id came from.
type RuleInfo struct {
	Policy translator.PolicyRef
	Origin string
}

// State is a complete desired (or applied) datapath state.
type State struct {
	// Containers by cgroup id.
	Containers map[uint64]bpfext.Container
	Pods       map[uint32]bpfext.Pod
	Identities map[netip.Prefix]uint32
	// Rules by policy id; every policy id a container uses has an entry
	// (possibly empty).
	Rules map[uint32][]bpfext.Rule
	// Attach lists the pod cgroups to attach to, by cgroup id.
	Attach map[uint64]string
	// PolicyPods gives the pod id of each policy id: the agent fits the
	// state into the maps pod by pod.
	PolicyPods map[uint32]uint32
	// FailClosed lists the selected pods the datapath could not hold, with
	// the reason: their restricted containers deny everything.
	FailClosed map[types.UID]string

	// Cgroups, Policies and RuleInfos describe the state for events.
	Cgroups map[uint64]CgroupInfo
	// Policies lists, per datapath policy id, the policies compiled into it.
	Policies  map[uint32][]translator.PolicyRef
	RuleInfos map[uint32]RuleInfo
	// CIDRLabels are the labels of the CIDR identities.
	CIDRLabels map[uint32]labels.LabelArray
	// FQDN lists, per datapath policy id, the toFQDNs selectors of the
	// container's policy, by their index (bpfext.FQDNPeer): what the
	// pod's DNS proxy learns addresses for.
	FQDN map[uint32][]FQDNSelector
	// Warnings are non-fatal compile problems.
	Warnings []string
}

// FQDNSelector is one toFQDNs selector of a container's policy.
type FQDNSelector struct {
	// Index is the selector's number in the datapath (bpfext.FQDNPeer).
	Index    int
	Selector api.FQDNSelector
	// Rules are the rules that carry it (policy and field path).
	Rules []RuleInfo
	// Regexp is Cilium's matcher of the selector (FQDNSelector.ToRegex):
	// it matches a lower-case fully qualified name.
	Regexp *regexp.Regexp
}

// Matches reports whether the selector matches a DNS name, as Cilium's
// name manager matches it: lower-cased and fully qualified.
func (s FQDNSelector) Matches(name string) bool {
	return translator.MatchFQDN(s.Regexp, name)
}

// String is the selector as written: the name, or the pattern.
func (s FQDNSelector) String() string { return translator.FQDNString(&s.Selector) }

// IDs allocates the numbers the datapath uses, keyed by what they stand
// for, so that a number stays the same across compiles (and, seeded from the
// pinned maps, across agent restarts) and is never reused for something else.
type IDs struct {
	pods, policies, rules, cidrs  map[string]uint32
	nextPod, nextPolicy, nextRule uint32
	nextCIDR                      uint32
	// adopted holds, by cgroup id, the entries found in the pinned maps
	// until the first compile, which keeps their pod and policy ids: a
	// restarted agent then rewrites each policy over its own entries,
	// where new ids would need room for every policy twice.
	adopted map[uint64]bpfext.Container
	// kept are the adopted ids given out, so no two keys share one.
	kept map[[2]uint32]bool
}

// NewIDs returns an empty allocator.
func NewIDs() *IDs {
	return &IDs{
		pods: map[string]uint32{}, policies: map[string]uint32{}, rules: map[string]uint32{}, cidrs: map[string]uint32{},
		nextPod: 1, nextPolicy: 1, nextRule: 1, nextCIDR: CIDRIdentityBase,
	}
}

// Seed makes the allocator continue after numbers already in use in the
// pinned maps, and keep the CIDR identities they hold, so a restarted agent
// never gives a number in use a new meaning.
func (ids *IDs) Seed(podIDs, policyIDs []uint32, cidrs map[netip.Prefix]uint32) {
	for _, id := range podIDs {
		ids.nextPod = max(ids.nextPod, id+1)
	}
	for _, id := range policyIDs {
		ids.nextPolicy = max(ids.nextPolicy, id+1)
	}
	for p, id := range cidrs {
		if id >= CIDRIdentityBase {
			ids.cidrs[p.String()] = id
			ids.nextCIDR = max(ids.nextCIDR, id+1)
		}
	}
}

// Adopt makes the next Compile keep the pod and policy ids of the
// classified cgroups cs (read from the pinned maps); call it after Seed.
func (ids *IDs) Adopt(cs []bpfext.Container) {
	ids.adopted = map[uint64]bpfext.Container{}
	ids.kept = map[[2]uint32]bool{}
	for _, c := range cs {
		ids.adopted[c.CgroupID] = c
	}
}

// keep gives key the adopted id (of kind 0 pod, 1 policy) when it has none
// yet and no other key took that id. Seed made the allocator continue after
// every adopted id, so a new allocation never collides with one.
func (ids *IDs) keep(kind uint32, m map[string]uint32, key string, id uint32) {
	if _, ok := m[key]; ok || id == 0 || ids.kept[[2]uint32{kind, id}] {
		return
	}
	ids.kept[[2]uint32{kind, id}] = true
	m[key] = id
}

func alloc(m map[string]uint32, next *uint32, key string, used map[string]bool) uint32 {
	used[key] = true
	if id, ok := m[key]; ok {
		return id
	}
	id := *next
	*next++
	if *next == 0 || *next == podEntryContainerID {
		*next = 1
	}
	m[key] = id
	return id
}

func release(m map[string]uint32, used map[string]bool) {
	for k := range m {
		if !used[k] {
			delete(m, k)
		}
	}
}

type compiler struct {
	in   Input
	ids  *IDs
	out  *State
	used struct{ pods, policies, rules, cidrs map[string]bool }
	// cidrPrefixes are the allocated CIDR identities, sorted by prefix.
	cidrPrefixes []netip.Prefix
	// peerIPs are addresses of known endpoints: a CIDR identity never
	// shadows them.
	peerIPs map[netip.Addr]bool
	// podSelectors and peerCache keep, for one compile, what does not
	// depend on the pod: the parsed pod selectors and the identities each
	// rule's peer selects.
	podSelectors map[*translator.RuleSet]*policytypes.LabelSelector
	peerCache    map[*translator.Rule][]peer
}

// Compile computes the complete desired datapath state. It allocates
// numbers from ids and releases those no longer used.
func Compile(in Input, ids *IDs) *State {
	if in.Identities == nil {
		in.Identities = &identity.Snapshot{}
	}
	c := &compiler{in: in, ids: ids, out: &State{
		Containers: map[uint64]bpfext.Container{},
		Pods:       map[uint32]bpfext.Pod{},
		Identities: map[netip.Prefix]uint32{},
		Rules:      map[uint32][]bpfext.Rule{},
		Attach:     map[uint64]string{},
		PolicyPods: map[uint32]uint32{},
		FailClosed: map[types.UID]string{},
		Cgroups:    map[uint64]CgroupInfo{},
		Policies:   map[uint32][]translator.PolicyRef{},
		RuleInfos:  map[uint32]RuleInfo{},
		CIDRLabels: map[uint32]labels.LabelArray{},
		FQDN:       map[uint32][]FQDNSelector{},
	}}
	c.used.pods, c.used.policies, c.used.rules, c.used.cidrs = map[string]bool{}, map[string]bool{}, map[string]bool{}, map[string]bool{}
	c.podSelectors = map[*translator.RuleSet]*policytypes.LabelSelector{}
	c.peerCache = map[*translator.Rule][]peer{}
	for _, rs := range in.RuleSets {
		c.podSelectors[rs] = policytypes.NewLabelSelector(rs.PodSelector)
	}
	c.identities()
	pods := slices.Clone(in.Pods)
	sort.Slice(pods, func(i, j int) bool { return pods[i].Pod.UID < pods[j].Pod.UID })
	for i := range pods {
		c.pod(&pods[i])
	}
	c.services()
	ids.adopted, ids.kept = nil, nil
	release(ids.pods, c.used.pods)
	release(ids.policies, c.used.policies)
	release(ids.rules, c.used.rules)
	release(ids.cidrs, c.used.cidrs)
	return c.out
}

func (c *compiler) identities() {
	c.peerIPs = map[netip.Addr]bool{}
	for ip, p := range c.in.Identities.Peers {
		ip = ip.Unmap()
		c.peerIPs[ip] = true
		c.out.Identities[netip.PrefixFrom(ip, ip.BitLen())] = uint32(p.Identity)
	}
	seen := map[netip.Prefix]bool{}
	for _, rs := range c.in.RuleSets {
		for _, rules := range [][]translator.Rule{rs.Rules, rs.Exclusive} {
			for _, r := range rules {
				if r.Peer.Kind != translator.PeerCIDR {
					continue
				}
				for _, s := range append([]string{r.Peer.CIDR}, r.Peer.Except...) {
					p, err := netip.ParsePrefix(s)
					if err != nil {
						c.warn("policy %s/%s %s: cidr %q: %v", rs.Policy.Namespace, rs.Policy.Name, r.Origin, s, err)
						continue
					}
					p = p.Masked()
					if p.Addr().Is4In6() {
						p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
					}
					if p.IsSingleIP() && c.peerIPs[p.Addr()] {
						continue
					}
					seen[p] = true
				}
			}
		}
	}
	for p := range seen {
		c.cidrPrefixes = append(c.cidrPrefixes, p)
	}
	sort.Slice(c.cidrPrefixes, func(i, j int) bool { return c.cidrPrefixes[i].String() < c.cidrPrefixes[j].String() })
	for _, p := range c.cidrPrefixes {
		id := alloc(c.ids.cidrs, &c.ids.nextCIDR, p.String(), c.used.cidrs)
		c.out.Identities[p] = id
		world := labels.IDNameWorldIPv4
		if p.Addr().Is6() {
			world = labels.IDNameWorldIPv6
		}
		c.out.CIDRLabels[id] = labels.LabelArray{
			labels.NewLabel(p.String(), "", labels.LabelSourceCIDR),
			labels.NewLabel(labels.IDNameWorld, "", labels.LabelSourceReserved),
			labels.NewLabel(world, "", labels.LabelSourceReserved),
		}.Sort()
	}
}

func (c *compiler) warn(format string, args ...any) {
	c.out.Warnings = append(c.out.Warnings, fmt.Sprintf(format, args...))
}

// podIdentityLabels are the labels a pod is selected by, as Cilium selects
// an endpoint: its identity's labels (pod labels after Cilium's label
// filter, namespace labels, service account, cluster), from the identity
// source. A pod whose identity is not known yet falls back to the labels
// Cilium would derive from the pod alone (translator.IdentityLabels,
// without its namespace's labels).
func (c *compiler) podIdentityLabels(pod *corev1.Pod) labels.LabelArray {
	for _, ip := range pod.Status.PodIPs {
		a, err := netip.ParseAddr(ip.IP)
		if err != nil {
			continue
		}
		if peer, ok := c.in.Identities.Lookup(a.Unmap()); ok && peer.Namespace == pod.Namespace && peer.Name == pod.Name {
			if l, ok := c.in.Identities.Labels(peer.Identity); ok && len(l) > 0 {
				return l
			}
		}
	}
	return translator.IdentityLabels(pod, nil, translator.DefaultClusterName)
}

// container is one container of a pod with its number in the pod.
type container struct {
	translator.Container
	id uint32
}

func (c *compiler) pod(ps *PodState) {
	pod := ps.Pod
	if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return
	}
	var sets []*translator.RuleSet
	podLabels := c.podIdentityLabels(pod)
	for _, rs := range c.in.RuleSets {
		if rs.Policy.Namespace == pod.Namespace && c.podSelectors[rs].Matches(podLabels) {
			sets = append(sets, rs)
		}
	}
	if len(sets) == 0 {
		return
	}
	if c.ids.adopted != nil {
		for _, cg := range append([]uint64{ps.CgroupID}, slices.Collect(maps.Values(ps.Containers))...) {
			if e, ok := c.ids.adopted[cg]; ok && cg != 0 {
				c.ids.keep(0, c.ids.pods, string(pod.UID), e.PodID)
				break
			}
		}
	}
	podID := alloc(c.ids.pods, &c.ids.nextPod, string(pod.UID), c.used.pods)
	p := bpfext.Pod{ID: podID}
	for _, ip := range pod.Status.PodIPs {
		a, err := netip.ParseAddr(ip.IP)
		if err != nil {
			c.warn("pod %s/%s: status.podIPs: %v", pod.Namespace, pod.Name, err)
			continue
		}
		a = a.Unmap()
		if a.Is4() && !p.IPv4.IsValid() {
			p.IPv4 = a
		} else if a.Is6() && !p.IPv6.IsValid() {
			p.IPv6 = a
		}
	}
	c.out.Pods[podID] = p

	info := CgroupInfo{Namespace: pod.Namespace, Pod: pod.Name, PodUID: pod.UID, Labels: podLabels.GetModel()}
	if peer, ok := c.in.Identities.Lookup(p.IPv4); p.IPv4.IsValid() && ok {
		info.Identity = uint32(peer.Identity)
	} else if peer, ok := c.in.Identities.Lookup(p.IPv6); p.IPv6.IsValid() && ok {
		info.Identity = uint32(peer.Identity)
	}

	var containers []container
	for i, ct := range translator.PodContainers(pod) {
		containers = append(containers, container{Container: ct, id: uint32(i + 1)})
	}
	if len(containers) == 0 {
		// The API server refuses such a pod; a stale or hand-made object
		// still gets its pod cgroup's entry, which denies everything in it.
		c.warn("pod %s/%s: spec.containers: no containers; only the pod cgroup's deny-all entry applies", pod.Namespace, pod.Name)
	}

	if ps.CgroupID != 0 {
		c.out.Attach[ps.CgroupID] = ps.CgroupPath
		denyAll := false
		for _, rs := range sets {
			if rs.Mode != v1alpha1.ModeAudit && rs.Unclassified != v1alpha1.UnclassifiedAllow {
				denyAll = true
			}
		}
		if denyAll {
			c.out.Containers[ps.CgroupID] = bpfext.Container{CgroupID: ps.CgroupID, PodID: podID, ContainerID: podEntryContainerID, DenyAll: true}
			pi := info
			pi.PodCgroup = true
			c.out.Cgroups[ps.CgroupID] = pi
		}
	}

	for _, ct := range containers {
		if e, ok := c.ids.adopted[ps.Containers[ct.Name]]; ok && e.PodID == podID {
			c.ids.keep(1, c.ids.policies, string(pod.UID)+"/"+ct.Name, e.PolicyID)
		}
		entry, rules, refs := c.container(pod, sets, containers, ct, podID)
		for _, pp := range declaredPorts(pod, ct.Name) {
			pp.ContainerID, pp.Restricted = ct.id, entry.EgressRestricted || entry.IngressRestricted
			p.Ports = append(p.Ports, pp)
		}
		c.out.Pods[podID] = p
		if entry.PolicyID != 0 {
			c.out.Rules[entry.PolicyID] = rules
			c.out.Policies[entry.PolicyID] = refs
			c.out.PolicyPods[entry.PolicyID] = podID
		}
		cg, ok := ps.Containers[ct.Name]
		if !ok || cg == 0 {
			continue
		}
		entry.CgroupID = cg
		c.out.Containers[cg] = entry
		ci := info
		ci.Container = ct.Name
		c.out.Cgroups[cg] = ci
	}
}

// container compiles one container: its classification (without cgroup id)
// and its policy's rules.
func (c *compiler) container(pod *corev1.Pod, sets []*translator.RuleSet, all []container, ct container, podID uint32) (bpfext.Container, []bpfext.Rule, []translator.PolicyRef) {
	entry := bpfext.Container{PodID: podID, ContainerID: ct.id}
	selects := func(rs *translator.RuleSet) bool { return rs.Containers.Selects(ct.Name, ct.Role) }

	var enforced, audit []*translator.RuleSet
	for _, rs := range sets {
		if !selects(rs) {
			continue
		}
		if rs.Mode == v1alpha1.ModeAudit {
			audit = append(audit, rs)
		} else {
			enforced = append(enforced, rs)
		}
	}
	restricted := func(sets []*translator.RuleSet, dir translator.Direction) bool {
		for _, rs := range sets {
			if dir == translator.Egress && rs.DefaultDeny.Egress || dir == translator.Ingress && rs.DefaultDeny.Ingress {
				return true
			}
		}
		return false
	}

	type source struct {
		rs        *translator.RuleSet
		rule      *translator.Rule
		exclusive bool
	}
	var srcs []source
	own := enforced
	egress, ingress := restricted(enforced, translator.Egress), restricted(enforced, translator.Ingress)
	// Rule 2: in a direction where no policy restricts the container, the
	// exclusive grants of the policies that do not select it are denied.
	hasExclusive := false
	for _, rs := range sets {
		if selects(rs) || rs.Mode == v1alpha1.ModeAudit {
			continue
		}
		for i := range rs.Exclusive {
			r := &rs.Exclusive[i]
			if r.Direction == translator.Egress && egress || r.Direction == translator.Ingress && ingress {
				continue
			}
			srcs = append(srcs, source{rs: rs, rule: r, exclusive: true})
			hasExclusive = true
		}
	}
	if len(enforced) == 0 && len(audit) > 0 {
		if hasExclusive {
			c.warn("pod %s/%s container %s: audit-mode policies ignored: the container carries exclusive denies, which are enforced", pod.Namespace, pod.Name, ct.Name)
		} else {
			own = audit
			egress, ingress = restricted(audit, translator.Egress), restricted(audit, translator.Ingress)
			entry.Audit = true
		}
	} else if len(enforced) > 0 && len(audit) > 0 {
		c.warn("pod %s/%s container %s: audit-mode policies ignored: enforcing policies select the container", pod.Namespace, pod.Name, ct.Name)
	}
	for _, rs := range own {
		for i := range rs.Rules {
			r := &rs.Rules[i]
			if r.Direction == translator.Egress && egress || r.Direction == translator.Ingress && ingress {
				srcs = append(srcs, source{rs: rs, rule: r})
			}
		}
	}
	entry.EgressRestricted, entry.IngressRestricted = egress, ingress
	if !egress && !ingress && len(srcs) == 0 {
		return entry, nil, nil
	}

	entry.PolicyID = alloc(c.ids.policies, &c.ids.nextPolicy, string(pod.UID)+"/"+ct.Name, c.used.policies)
	var refs []translator.PolicyRef
	for _, rs := range own {
		refs = append(refs, rs.Policy)
	}
	var rules []bpfext.Rule
	var fqdns []FQDNSelector
	for _, s := range srcs {
		if s.exclusive && !slices.Contains(refs, s.rs.Policy) {
			refs = append(refs, s.rs.Policy)
		}
		key := s.rs.Policy.Namespace + "/" + s.rs.Policy.Name + "/" + string(s.rs.Policy.UID) + "/" + s.rule.Origin
		if s.exclusive {
			key += "/exclusive"
		}
		ruleID := alloc(c.ids.rules, &c.ids.nextRule, key, c.used.rules)
		info := RuleInfo{Policy: s.rs.Policy, Origin: s.rule.Origin}
		c.out.RuleInfos[ruleID] = info
		if s.rule.Peer.Kind == translator.PeerFQDN {
			idx, ok := fqdnIndex(&fqdns, s.rule.Peer.FQDN, info)
			if !ok {
				// Fail closed: the rule allows nothing.
				c.warn("pod %s/%s container %s: %s of %s/%s not enforced: more than %d distinct toFQDNs selectors",
					pod.Namespace, pod.Name, ct.Name, s.rule.Origin, s.rs.Policy.Namespace, s.rs.Policy.Name, bpfext.FQDNSelectors)
				continue
			}
			rules = append(rules, c.portRules(s.rule, []peer{{id: bpfext.FQDNPeer(idx)}}, entry.PolicyID, ruleID, false)...)
			continue
		}
		rules = append(rules, c.rules(s.rule, entry.PolicyID, ruleID, s.exclusive, all)...)
		if c.in.HostByPolicy && !s.exclusive {
			rules = append(rules, proxiedIngress(s.rule, entry.PolicyID, ruleID)...)
		}
	}
	if len(fqdns) > 0 && egress {
		entry.FQDN = true
		c.out.FQDN[entry.PolicyID] = fqdns
	}
	if ingress && !c.in.HostByPolicy {
		// Cilium's allow-localhost: with ingress default deny, Cilium adds
		// an ingress allow of the host (pkg/policy repository.go), so the
		// kubelet's probes reach the pod. Deny rules still win.
		rules = append(rules, bpfext.Rule{PolicyID: entry.PolicyID, Direction: bpfext.Ingress,
			Peer: bpfext.IdentityHost, Action: bpfext.ActionAllow})
	}
	return entry, rules, refs
}

// proxiedIngress lets Cilium's proxy deliver what an ingress allow rule
// with HTTP rules admits. Cilium redirects that port to its Envoy, which
// connects to the pod from the node (it keeps the original source address
// on egress only: pkg/proxy/envoyproxy.go), so the container sees the
// host, not the peer. The peer and the HTTP rules are Cilium's to check
// there; at the cgroup, sidewall decides only which container may receive
// on the port: the containers this rule selects. Without HostByPolicy the
// host is allowed anyway (allow-localhost) and this adds nothing.
func proxiedIngress(r *translator.Rule, policyID, ruleID uint32) []bpfext.Rule {
	if r.Direction != translator.Ingress || r.Action != translator.Allow || r.Peer.Kind == translator.PeerContainers {
		return nil
	}
	var out []bpfext.Rule
	for _, p := range r.Ports {
		if !p.L7 {
			continue
		}
		proto := bpfext.ProtoTCP // HTTP rules are TCP only (Validate)
		out = append(out, bpfext.Rule{
			RuleID: ruleID, PolicyID: policyID, Direction: bpfext.Ingress, Peer: bpfext.IdentityHost,
			Protocol: proto, PortLow: p.From, PortHigh: p.To, Action: bpfext.ActionAllow,
		})
	}
	return out
}

type peer struct {
	local bool
	id    uint32
}

// rules expands one translator rule into datapath rules: one per peer
// identity (or container) and port range.
func (c *compiler) rules(r *translator.Rule, policyID, ruleID uint32, exclusive bool, all []container) []bpfext.Rule {
	var peers []peer
	if r.Peer.Kind == translator.PeerContainers {
		peers = c.peers(r.Peer, all)
	} else if cached, ok := c.peerCache[r]; ok {
		peers = cached
	} else {
		peers = c.peers(r.Peer, nil)
		c.peerCache[r] = peers
	}
	return c.portRules(r, peers, policyID, ruleID, exclusive)
}

// fqdnIndex gives a toFQDNs selector its index among the container's
// (the same selector in several rules shares one), or false when the
// container has FQDNSelectors others already.
func fqdnIndex(sels *[]FQDNSelector, sel *api.FQDNSelector, info RuleInfo) (int, bool) {
	for i := range *sels {
		if (*sels)[i].Selector == *sel {
			(*sels)[i].Rules = append((*sels)[i].Rules, info)
			return i, true
		}
	}
	if len(*sels) >= bpfext.FQDNSelectors {
		return 0, false
	}
	re, err := sel.ToRegex()
	if err != nil {
		// Validate refused such a selector already; match nothing.
		re = nil
	}
	*sels = append(*sels, FQDNSelector{Index: len(*sels), Selector: *sel, Rules: []RuleInfo{info}, Regexp: re})
	return len(*sels) - 1, true
}

// portRules gives one datapath rule per peer and port range of r.
func (c *compiler) portRules(r *translator.Rule, peers []peer, policyID, ruleID uint32, exclusive bool) []bpfext.Rule {
	if len(peers) == 0 {
		return nil
	}
	type ports struct {
		proto  uint8
		lo, hi uint16
	}
	var pr []ports
	if len(r.Ports) == 0 {
		pr = []ports{{}}
	}
	for _, p := range r.Ports {
		x := ports{lo: p.From, hi: p.To}
		switch p.Protocol {
		case translator.ProtoTCP:
			x.proto = bpfext.ProtoTCP
		case translator.ProtoUDP:
			x.proto = bpfext.ProtoUDP
		case translator.ProtoSCTP:
			x.proto = bpfext.ProtoSCTP
		}
		if x.lo == 0 && x.hi == 65535 {
			x.lo, x.hi = 0, 0
		}
		pr = append(pr, x)
	}
	dir := bpfext.Egress
	if r.Direction == translator.Ingress {
		dir = bpfext.Ingress
	}
	action := bpfext.ActionAllow
	if r.Action == translator.Deny {
		action = bpfext.ActionDeny
	}
	var out []bpfext.Rule
	for _, p := range peers {
		for _, x := range pr {
			out = append(out, bpfext.Rule{
				RuleID: ruleID, PolicyID: policyID, Direction: dir, Local: p.local, Peer: p.id,
				Protocol: x.proto, PortLow: x.lo, PortHigh: x.hi, Action: action, Exclusive: exclusive,
			})
		}
	}
	return out
}

func (c *compiler) peers(p translator.Peer, all []container) []peer {
	var out []peer
	addIDs := func(ids []identity.NumericIdentity) {
		for _, id := range ids {
			out = append(out, peer{id: uint32(id)})
		}
	}
	// matchCIDRs adds the CIDR identities any selector selects (they carry
	// reserved:world, so the world entity selects them, as in Cilium).
	matchCIDRs := func(sels []api.EndpointSelector) {
		if len(c.cidrPrefixes) == 0 {
			return
		}
		// Parsed once: parsing per prefix was most of the compile time.
		matchers := make([]*policytypes.LabelSelector, 0, len(sels))
		for _, sel := range sels {
			matchers = append(matchers, policytypes.NewLabelSelector(sel))
		}
		for _, pfx := range c.cidrPrefixes {
			id := c.out.Identities[pfx]
			for _, m := range matchers {
				if m.Matches(c.out.CIDRLabels[id]) {
					out = append(out, peer{id: id})
					break
				}
			}
		}
	}
	switch p.Kind {
	case translator.PeerAny:
		return []peer{{}}
	case translator.PeerContainers:
		for _, ct := range all {
			if p.Containers != nil && p.Containers.Selects(ct.Name, ct.Role) {
				out = append(out, peer{local: true, id: ct.id})
			}
		}
	case translator.PeerEndpoints:
		if p.Selector == nil {
			return nil
		}
		if p.Selector.IsWildcard() {
			return []peer{{}}
		}
		addIDs(c.in.Identities.Select(*p.Selector))
		matchCIDRs([]api.EndpointSelector{*p.Selector})
	case translator.PeerEntity:
		sels := api.EntitySelectorMapping[p.Entity]
		for _, sel := range sels {
			if sel.IsWildcard() {
				return []peer{{}}
			}
		}
		addIDs(c.in.Identities.Select(sels...))
		matchCIDRs(sels)
	case translator.PeerCIDR:
		cidr, err := netip.ParsePrefix(p.CIDR)
		if err != nil {
			return nil
		}
		cidr = cidr.Masked()
		var excepts []netip.Prefix
		for _, e := range p.Except {
			if ex, err := netip.ParsePrefix(e); err == nil {
				excepts = append(excepts, ex.Masked())
			}
		}
		for _, pfx := range c.cidrPrefixes {
			if !within(pfx, cidr) {
				continue
			}
			excluded := false
			for _, ex := range excepts {
				if within(pfx, ex) {
					excluded = true
				}
			}
			if !excluded {
				out = append(out, peer{id: c.out.Identities[pfx]})
			}
		}
	}
	slices.SortFunc(out, func(a, b peer) int { return int(a.id) - int(b.id) })
	return slices.Compact(out)
}

// within reports whether inner lies inside outer.
func within(inner, outer netip.Prefix) bool {
	return inner.Addr().Is4() == outer.Addr().Is4() && inner.Bits() >= outer.Bits() && outer.Contains(inner.Addr())
}

// declaredPorts are the TCP and UDP containerPorts a container of the pod
// declares (SCTP has no bound-port entry). Each is reserved for it in the
// pod's bound-port table.
func declaredPorts(pod *corev1.Pod, name string) []bpfext.PodPort {
	var out []bpfext.PodPort
	for _, cs := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for _, ct := range cs {
			if ct.Name != name {
				continue
			}
			for _, port := range ct.Ports {
				pp := bpfext.PodPort{Port: uint16(port.ContainerPort)}
				switch port.Protocol {
				case corev1.ProtocolTCP, "":
					pp.Protocol = bpfext.ProtoTCP
				case corev1.ProtocolUDP:
					pp.Protocol = bpfext.ProtoUDP
				default:
					continue
				}
				if port.ContainerPort <= 0 || port.ContainerPort > 65535 {
					continue
				}
				out = append(out, pp)
			}
		}
	}
	return out
}
