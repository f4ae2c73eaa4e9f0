package bpfext

import (
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"time"

	"github.com/cilium/ebpf"

	"github.com/sidewall/sidewall/bpfext/objs"
)

const localPeerUnknown = 0xffffffff

// Flag bits of container_info.flags, rule_info.action and rule_key.flags
// (bpf/lib/common.h).
const (
	cfEgressRestricted  = 1 << 0
	cfIngressRestricted = 1 << 1
	cfAudit             = 1 << 2
	cfDenyAll           = 1 << 3
	cfFailOpen          = 1 << 4

	raAllow     = 1 << 0
	raDeny      = 1 << 1
	raExclusive = 1 << 2

	rkIngress   = 1 << 0
	rkLocal     = 1 << 1
	rkPlenShift = 2
)

// batchPut writes keys[i] -> values[i] in one syscall where the map type
// supports batches, element by element otherwise.
func batchPut(m *ebpf.Map, what string, keys, values any) error {
	kv, vv := reflect.ValueOf(keys), reflect.ValueOf(values)
	if kv.Len() == 0 {
		return nil
	}
	_, err := m.BatchUpdate(keys, values, nil)
	if err == nil {
		return nil
	}
	if !errors.Is(err, ebpf.ErrNotSupported) {
		return fmt.Errorf("update %s: %w", what, err)
	}
	for i := 0; i < kv.Len(); i++ {
		if err := m.Put(kv.Index(i).Interface(), vv.Index(i).Interface()); err != nil {
			return fmt.Errorf("update %s: %w", what, err)
		}
	}
	return nil
}

// batchDelete removes keys; keys that are absent are not an error.
func batchDelete(m *ebpf.Map, what string, keys any) error {
	kv := reflect.ValueOf(keys)
	if kv.Len() == 0 {
		return nil
	}
	if _, err := m.BatchDelete(keys, nil); err == nil {
		return nil
	}
	// A batch stops at the first missing key; finish one by one.
	for i := 0; i < kv.Len(); i++ {
		if err := m.Delete(kv.Index(i).Interface()); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete %s: %w", what, err)
		}
	}
	return nil
}

func (c Container) info() (objs.SkbContainerInfo, error) {
	if c.CgroupID == 0 {
		return objs.SkbContainerInfo{}, fmt.Errorf("container: cgroup id must not be 0")
	}
	if !c.DenyAll && (c.ContainerID == 0 || c.ContainerID == localPeerUnknown) {
		return objs.SkbContainerInfo{}, fmt.Errorf("container of cgroup %d: container id %d is reserved", c.CgroupID, c.ContainerID)
	}
	var f uint32
	if c.EgressRestricted {
		f |= cfEgressRestricted
	}
	if c.IngressRestricted {
		f |= cfIngressRestricted
	}
	if c.Audit {
		f |= cfAudit
	}
	if c.DenyAll {
		f |= cfDenyAll
	}
	if c.FailOpen {
		f |= cfFailOpen
	}
	return objs.SkbContainerInfo{PolicyId: c.PolicyID, PodId: c.PodID, ContainerId: c.ContainerID, Flags: f}, nil
}

// UpsertContainers writes cgroup -> container classification entries.
func (d *Datapath) UpsertContainers(cs []Container) error {
	keys := make([]uint64, 0, len(cs))
	vals := make([]objs.SkbContainerInfo, 0, len(cs))
	for _, c := range cs {
		v, err := c.info()
		if err != nil {
			return err
		}
		keys = append(keys, c.CgroupID)
		vals = append(vals, v)
	}
	return d.changed(batchPut(d.skb.SwContainers, "containers", keys, vals))
}

// DeleteContainers removes the classification of cgroups.
func (d *Datapath) DeleteContainers(cgroupIDs []uint64) error {
	return d.changed(batchDelete(d.skb.SwContainers, "containers", cgroupIDs))
}

// Containers lists the classification entries (for adoption and GC).
func (d *Datapath) Containers() ([]Container, error) {
	keys, vals, err := readAll[uint64, objs.SkbContainerInfo](d.skb.SwContainers, "containers")
	if err != nil {
		return nil, err
	}
	out := make([]Container, 0, len(keys))
	for i, k := range keys {
		v := vals[i]
		out = append(out, Container{
			CgroupID: k, PolicyID: v.PolicyId, PodID: v.PodId, ContainerID: v.ContainerId,
			EgressRestricted: v.Flags&cfEgressRestricted != 0, IngressRestricted: v.Flags&cfIngressRestricted != 0,
			Audit: v.Flags&cfAudit != 0, DenyAll: v.Flags&cfDenyAll != 0, FailOpen: v.Flags&cfFailOpen != 0,
		})
	}
	return out, nil
}

// UpsertPods writes the pods' own addresses.
func (d *Datapath) UpsertPods(ps []Pod) error {
	keys := make([]uint32, 0, len(ps))
	vals := make([]objs.SkbPodInfo, 0, len(ps))
	for _, p := range ps {
		var v objs.SkbPodInfo
		if p.IPv4.IsValid() {
			if !p.IPv4.Is4() {
				return fmt.Errorf("pod %d: ipv4 %s is not an IPv4 address", p.ID, p.IPv4)
			}
			a := p.IPv4.As4()
			v.Ip4 = nativeU32(a)
		}
		if p.IPv6.IsValid() {
			if !p.IPv6.Is6() || p.IPv6.Is4In6() {
				return fmt.Errorf("pod %d: ipv6 %s is not an IPv6 address", p.ID, p.IPv6)
			}
			v.Ip6 = p.IPv6.As16()
		}
		keys = append(keys, p.ID)
		vals = append(vals, v)
	}
	return d.changed(batchPut(d.skb.SwPods, "pods", keys, vals))
}

// DeletePods removes pods by id.
func (d *Datapath) DeletePods(ids []uint32) error {
	return d.changed(batchDelete(d.skb.SwPods, "pods", ids))
}

// nativeU32 reinterprets network-order bytes as the u32 the kernel stores
// (the C side compares raw network-order words).
func nativeU32(a [4]byte) uint32 {
	return uint32(a[0]) | uint32(a[1])<<8 | uint32(a[2])<<16 | uint32(a[3])<<24
}

// UpsertIdentities writes peer address/CIDR -> identity entries.
func (d *Datapath) UpsertIdentities(ids []PeerIdentity) error {
	var k4 []uint32
	var v4 []uint32
	var k6 []objs.SkbIp6Addr
	var v6 []uint32
	var l4 []objs.SkbIp4LpmKey
	var lv4 []uint32
	var l6 []objs.SkbIp6LpmKey
	var lv6 []uint32
	for _, id := range ids {
		p := id.Prefix.Masked()
		if !p.IsValid() {
			return fmt.Errorf("identity %d: invalid prefix %s", id.Identity, id.Prefix)
		}
		if id.Identity == IdentityUnknown {
			return fmt.Errorf("identity for %s: identity 0 is reserved", p)
		}
		switch {
		case p.Addr().Is4() && p.Bits() == 32:
			k4 = append(k4, nativeU32(p.Addr().As4()))
			v4 = append(v4, id.Identity)
		case p.Addr().Is4():
			l4 = append(l4, objs.SkbIp4LpmKey{Prefixlen: uint32(p.Bits()), Addr: nativeU32(p.Addr().As4())})
			lv4 = append(lv4, id.Identity)
		case p.Addr().Is4In6():
			return fmt.Errorf("identity %d: prefix %s: use the IPv4 form", id.Identity, p)
		case p.Bits() == 128:
			k6 = append(k6, objs.SkbIp6Addr{Addr: p.Addr().As16()})
			v6 = append(v6, id.Identity)
		default:
			l6 = append(l6, objs.SkbIp6LpmKey{Prefixlen: uint32(p.Bits()), Addr: p.Addr().As16()})
			lv6 = append(lv6, id.Identity)
		}
	}
	return d.changed(errors.Join(
		batchPut(d.skb.SwIdent4, "ipv4 identities", k4, v4),
		batchPut(d.skb.SwIdent6, "ipv6 identities", k6, v6),
		batchPut(d.skb.SwCidr4, "ipv4 cidr identities", l4, lv4),
		batchPut(d.skb.SwCidr6, "ipv6 cidr identities", l6, lv6),
	))
}

// DeleteIdentities removes peer entries by prefix.
func (d *Datapath) DeleteIdentities(prefixes []netip.Prefix) error {
	var k4 []uint32
	var k6 []objs.SkbIp6Addr
	var l4 []objs.SkbIp4LpmKey
	var l6 []objs.SkbIp6LpmKey
	for _, p := range prefixes {
		p = p.Masked()
		switch {
		case !p.IsValid():
			return fmt.Errorf("delete identity: invalid prefix %s", p)
		case p.Addr().Is4() && p.Bits() == 32:
			k4 = append(k4, nativeU32(p.Addr().As4()))
		case p.Addr().Is4():
			l4 = append(l4, objs.SkbIp4LpmKey{Prefixlen: uint32(p.Bits()), Addr: nativeU32(p.Addr().As4())})
		case p.Bits() == 128:
			k6 = append(k6, objs.SkbIp6Addr{Addr: p.Addr().As16()})
		default:
			l6 = append(l6, objs.SkbIp6LpmKey{Prefixlen: uint32(p.Bits()), Addr: p.Addr().As16()})
		}
	}
	return d.changed(errors.Join(
		batchDelete(d.skb.SwIdent4, "ipv4 identities", k4),
		batchDelete(d.skb.SwIdent6, "ipv6 identities", k6),
		batchDelete(d.skb.SwCidr4, "ipv4 cidr identities", l4),
		batchDelete(d.skb.SwCidr6, "ipv6 cidr identities", l6),
	))
}

func hasPorts(proto uint8) bool {
	return proto == ProtoAny || proto == ProtoTCP || proto == ProtoUDP || proto == ProtoSCTP
}

// ruleEntry is one hash entry of a rule, plus the mask bit it needs.
type ruleEntry struct {
	key   objs.SkbRuleKey
	val   objs.SkbRuleInfo
	index int // index into policy_info.plens
	plen  uint8
}

func (r Rule) entries() ([]ruleEntry, error) {
	where := fmt.Sprintf("rule %d of policy %d", r.RuleID, r.PolicyID)
	if r.Direction != Egress && r.Direction != Ingress {
		return nil, fmt.Errorf("%s: direction %d is neither egress nor ingress", where, r.Direction)
	}
	if r.Action != ActionAllow && r.Action != ActionDeny {
		return nil, fmt.Errorf("%s: action %d is neither allow nor deny", where, r.Action)
	}
	if r.Exclusive && r.Action != ActionDeny {
		return nil, fmt.Errorf("%s: exclusive is only meaningful on a deny", where)
	}
	if r.Local && r.Peer == localPeerUnknown {
		return nil, fmt.Errorf("%s: peer container id %d is reserved", where, r.Peer)
	}
	lo, hi := r.PortLow, r.PortHigh
	if hi == 0 {
		hi = lo
	}
	if lo == 0 && hi == 0 {
		hi = 0xffff
	}
	if hi < lo {
		return nil, fmt.Errorf("%s: port range %d-%d ends before it starts", where, lo, hi)
	}
	if !hasPorts(r.Protocol) && !(lo == 0 && hi == 0xffff) {
		return nil, fmt.Errorf("%s: protocol %d has no ports", where, r.Protocol)
	}
	var flags uint8
	idx := 0
	if r.Direction == Ingress {
		flags |= rkIngress
		idx += 8
	}
	if r.Local {
		flags |= rkLocal
		idx += 4
	}
	if r.Peer == 0 {
		idx += 2
	}
	if r.Protocol == ProtoAny {
		idx++
	}
	val := objs.SkbRuleInfo{RuleId: r.RuleID}
	if r.Action == ActionAllow {
		val.Action = raAllow
	} else {
		val.Action = raDeny
		if r.Exclusive {
			val.Action |= raExclusive
		}
	}
	var out []ruleEntry
	for _, p := range portPrefixes(lo, hi) {
		out = append(out, ruleEntry{
			key: objs.SkbRuleKey{PolicyId: r.PolicyID, Peer: r.Peer, Port: p.port, Proto: r.Protocol,
				Flags: flags | p.plen<<rkPlenShift},
			val:   val,
			index: idx,
			plen:  p.plen,
		})
	}
	return out, nil
}

// compile merges rules sharing a key (deny wins; the deny's rule id is kept)
// and computes the per-policy masks of the port prefix lengths in use.
func compile(rules []Rule) (map[objs.SkbRuleKey]objs.SkbRuleInfo, map[uint32]*objs.SkbPolicyInfo, error) {
	entries := map[objs.SkbRuleKey]objs.SkbRuleInfo{}
	masks := map[uint32]*objs.SkbPolicyInfo{}
	for _, r := range rules {
		es, err := r.entries()
		if err != nil {
			return nil, nil, err
		}
		for _, e := range es {
			if old, ok := entries[e.key]; ok {
				merged := old
				merged.Action |= e.val.Action
				if e.val.Action&raDeny != 0 && old.Action&raDeny == 0 {
					merged.RuleId = e.val.RuleId
				}
				e.val = merged
			}
			entries[e.key] = e.val
			m := masks[r.PolicyID]
			if m == nil {
				m = &objs.SkbPolicyInfo{}
				masks[r.PolicyID] = m
			}
			m.Plens[e.index] |= 1 << e.plen
		}
	}
	return entries, masks, nil
}

// UpsertRules adds rules. Rules of one batch that share a key are merged
// (deny wins); an existing entry with the same key is overwritten, so give
// all rules of a policy in one call, or use ReplacePolicyRules.
func (d *Datapath) UpsertRules(rules []Rule) error {
	entries, masks, err := compile(rules)
	if err != nil {
		return err
	}
	// Masks first: a probe for a key not yet written is a harmless miss.
	for id, m := range masks {
		var old objs.SkbPolicyInfo
		if err := d.skb.SwPolicies.Lookup(id, &old); err == nil {
			for i := range m.Plens {
				m.Plens[i] |= old.Plens[i]
			}
		}
		if err := d.skb.SwPolicies.Put(id, m); err != nil {
			return fmt.Errorf("update policy %d masks: %w", id, err)
		}
	}
	keys := make([]objs.SkbRuleKey, 0, len(entries))
	vals := make([]objs.SkbRuleInfo, 0, len(entries))
	for k, v := range entries {
		keys = append(keys, k)
		vals = append(vals, v)
	}
	return d.changed(batchPut(d.skb.SwRules, "rules", keys, vals))
}

// DeleteRules removes the entries of rules. The policy's prefix-length
// masks are left as they are (a stale bit costs one missed probe); use
// ReplacePolicyRules to tighten them.
func (d *Datapath) DeleteRules(rules []Rule) error {
	entries, _, err := compile(rules)
	if err != nil {
		return err
	}
	keys := make([]objs.SkbRuleKey, 0, len(entries))
	for k := range entries {
		keys = append(keys, k)
	}
	return d.changed(batchDelete(d.skb.SwRules, "rules", keys))
}

// ReplacePolicyRules makes the rules of one policy exactly rules (nil drops
// the policy). It is ReplaceRules for one policy.
func (d *Datapath) ReplacePolicyRules(policyID uint32, rules []Rule) error {
	return d.ReplaceRules(map[uint32][]Rule{policyID: rules})
}

// ReplaceRules makes the rules of every policy in policies exactly its
// slice; an empty slice drops the policy. Policies not in the map are left
// alone. It writes the new entries (under the union of the old and new
// masks), then removes the stale ones and tightens the masks, so a probe
// never misses a rule that both the old and the new set hold. It scans the
// rules map once for all policies, so an agent restart that rewrites every
// policy costs O(rules), not O(policies x rules).
func (d *Datapath) ReplaceRules(policies map[uint32][]Rule) error {
	if len(policies) == 0 {
		return nil
	}
	var all []Rule
	for id, rules := range policies {
		for _, r := range rules {
			if r.PolicyID != id {
				return fmt.Errorf("replace rules of policy %d: rule %d belongs to policy %d", id, r.RuleID, r.PolicyID)
			}
		}
		all = append(all, rules...)
	}
	entries, masks, err := compile(all)
	if err != nil {
		return err
	}

	var stale []objs.SkbRuleKey
	have, _, err := readAll[objs.SkbRuleKey, objs.SkbRuleInfo](d.skb.SwRules, "rules")
	if err != nil {
		return err
	}
	for _, k := range have {
		if _, listed := policies[k.PolicyId]; !listed {
			continue
		}
		if _, keep := entries[k]; !keep {
			stale = append(stale, k)
		}
	}

	// The union of old and new masks while both key sets may exist.
	var unionIDs, finalIDs, dropIDs []uint32
	var unionVals, finalVals []objs.SkbPolicyInfo
	for id := range policies {
		var m objs.SkbPolicyInfo
		if nm := masks[id]; nm != nil {
			m = *nm
		}
		union := m
		var old objs.SkbPolicyInfo
		if err := d.skb.SwPolicies.Lookup(id, &old); err == nil {
			for i := range union.Plens {
				union.Plens[i] |= old.Plens[i]
			}
		} else if !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("read policy %d masks: %w", id, err)
		}
		unionIDs = append(unionIDs, id)
		unionVals = append(unionVals, union)
		if masks[id] == nil {
			dropIDs = append(dropIDs, id)
		} else {
			finalIDs = append(finalIDs, id)
			finalVals = append(finalVals, m)
		}
	}
	if err := batchPut(d.skb.SwPolicies, "policy masks", unionIDs, unionVals); err != nil {
		return err
	}
	keys := make([]objs.SkbRuleKey, 0, len(entries))
	vals := make([]objs.SkbRuleInfo, 0, len(entries))
	for k, v := range entries {
		keys = append(keys, k)
		vals = append(vals, v)
	}
	if err := batchPut(d.skb.SwRules, "rules", keys, vals); err != nil {
		return d.changed(err)
	}
	if err := d.changed(batchDelete(d.skb.SwRules, "rules", stale)); err != nil {
		return err
	}
	return errors.Join(
		batchDelete(d.skb.SwPolicies, "policy masks", dropIDs),
		batchPut(d.skb.SwPolicies, "policy masks", finalIDs, finalVals),
	)
}

// MapEntries counts the entries of each map by C name (fill levels for
// metrics, and tests that check garbage collection).
func (d *Datapath) MapEntries() (map[string]int, error) {
	out := map[string]int{}
	for name, m := range d.MapsByName() {
		switch m.Type() {
		case ebpf.Hash, ebpf.LRUHash, ebpf.LPMTrie:
		default:
			continue
		}
		n, err := countEntries(m)
		if err != nil {
			return nil, fmt.Errorf("count %s: %w", name, err)
		}
		out[name] = n
	}
	return out, nil
}

// Pods lists the pod entries (for adoption and GC).
func (d *Datapath) Pods() ([]Pod, error) {
	keys, vals, err := readAll[uint32, objs.SkbPodInfo](d.skb.SwPods, "pods")
	if err != nil {
		return nil, err
	}
	out := make([]Pod, 0, len(keys))
	for i, k := range keys {
		v := vals[i]
		p := Pod{ID: k}
		if v.Ip4 != 0 {
			p.IPv4 = netip.AddrFrom4([4]byte{byte(v.Ip4), byte(v.Ip4 >> 8), byte(v.Ip4 >> 16), byte(v.Ip4 >> 24)})
		}
		if v.Ip6 != [16]byte{} {
			p.IPv6 = netip.AddrFrom16(v.Ip6)
		}
		out = append(out, p)
	}
	return out, nil
}

// Identities lists the peer entries, exact and CIDR (for adoption and GC).
func (d *Datapath) Identities() ([]PeerIdentity, error) {
	var out []PeerIdentity
	var id uint32
	k4, v4, err := readAll[uint32, uint32](d.skb.SwIdent4, "ipv4 identities")
	if err != nil {
		return nil, err
	}
	for i, a4 := range k4 {
		out = append(out, PeerIdentity{netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(a4), byte(a4 >> 8), byte(a4 >> 16), byte(a4 >> 24)}), 32), v4[i]})
	}
	k6, v6, err := readAll[objs.SkbIp6Addr, uint32](d.skb.SwIdent6, "ipv6 identities")
	if err != nil {
		return nil, err
	}
	for i, a6 := range k6 {
		out = append(out, PeerIdentity{netip.PrefixFrom(netip.AddrFrom16(a6.Addr), 128), v6[i]})
	}
	var l4 objs.SkbIp4LpmKey
	it := d.skb.SwCidr4.Iterate()
	for it.Next(&l4, &id) {
		a := l4.Addr
		out = append(out, PeerIdentity{netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(a), byte(a >> 8), byte(a >> 16), byte(a >> 24)}), int(l4.Prefixlen)), id})
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list ipv4 cidr identities: %w", err)
	}
	var l6 objs.SkbIp6LpmKey
	it = d.skb.SwCidr6.Iterate()
	for it.Next(&l6, &id) {
		out = append(out, PeerIdentity{netip.PrefixFrom(netip.AddrFrom16(l6.Addr), int(l6.Prefixlen)), id})
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list ipv6 cidr identities: %w", err)
	}
	return out, nil
}

// PolicyIDs lists the policies that have rules (for adoption and GC; drop
// a policy with ReplaceRules or ReplacePolicyRules(id, nil)).
func (d *Datapath) PolicyIDs() ([]uint32, error) {
	out, _, err := readAll[uint32, objs.SkbPolicyInfo](d.skb.SwPolicies, "policies")
	return out, err
}

// ForgetFlows removes the flow state (reply allowances) and pod-local port
// ownerships of the given classified cgroups: call it when a container goes
// away or its policy shrinks, so replies of flows it may no longer open stop
// passing. It scans the two LRU maps.
func (d *Datapath) ForgetFlows(cgroupIDs []uint64) error {
	set := make(map[uint64]bool, len(cgroupIDs))
	for _, id := range cgroupIDs {
		set[id] = true
	}
	var flows []objs.SkbFlowKey
	var fk objs.SkbFlowKey
	var fv objs.SkbFlowInfo
	it := d.skb.SwFlows.Iterate()
	for it.Next(&fk, &fv) {
		if set[fk.CgroupId] {
			flows = append(flows, fk)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("list flows: %w", err)
	}
	var ports []objs.SkbLocalPortKey
	var pk objs.SkbLocalPortKey
	var owner uint64
	it = d.skb.SwLocalPorts.Iterate()
	for it.Next(&pk, &owner) {
		if set[owner] {
			ports = append(ports, pk)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("list local ports: %w", err)
	}
	return d.changed(errors.Join(batchDelete(d.skb.SwFlows, "flows", flows), batchDelete(d.skb.SwLocalPorts, "local ports", ports)))
}

// changed bumps the epoch after a map change (also a failed one, which may
// have written part of a batch), so sockets decide again instead of using
// their cached verdicts.
func (d *Datapath) changed(err error) error {
	return errors.Join(err, d.bumpEpoch())
}

func (d *Datapath) bumpEpoch() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var c objs.SkbConfig
	if err := d.skb.SwConfig.Lookup(uint32(0), &c); err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	// Strictly increasing across agent restarts too.
	c.Epoch = max(c.Epoch+1, uint64(time.Now().UnixNano()))
	if err := d.skb.SwConfig.Put(uint32(0), &c); err != nil {
		return fmt.Errorf("bump epoch: %w", err)
	}
	return nil
}

// SetSocketCache turns the per-socket verdict cache on (the default) or
// off. Off, every packet takes the full verdict: for measurements, and as a
// switch should the cache ever be suspected.
func (d *Datapath) SetSocketCache(enabled bool) error {
	d.mu.Lock()
	var c objs.SkbConfig
	if err := d.skb.SwConfig.Lookup(uint32(0), &c); err != nil {
		d.mu.Unlock()
		return fmt.Errorf("read config: %w", err)
	}
	if enabled {
		c.Flags &^= configNoSocketCache
	} else {
		c.Flags |= configNoSocketCache
	}
	if err := d.skb.SwConfig.Put(uint32(0), &c); err != nil {
		d.mu.Unlock()
		return fmt.Errorf("set socket cache: %w", err)
	}
	d.mu.Unlock()
	return d.bumpEpoch()
}

const configNoSocketCache = 1 << 0

// RuleEntries counts, per policy, the rules map entries rules take once
// written: a port range takes one entry per port prefix, and rules sharing a
// key share an entry. The agent checks capacity with it before writing, so a
// full map never leaves a policy half written.
func RuleEntries(rules []Rule) (map[uint32]int, error) {
	entries, _, err := compile(rules)
	if err != nil {
		return nil, err
	}
	out := map[uint32]int{}
	for k := range entries {
		out[k.PolicyId]++
	}
	return out, nil
}

// AddedRuleEntries tells what ReplaceRules(policies) would add to the
// rules map: per policy, the entries its rules take that the map does not
// hold yet, and how many entries the map holds now. ReplaceRules writes the
// new entries before it removes stale ones, so inUse plus the sum of added
// is the most the map holds during the call.
func (d *Datapath) AddedRuleEntries(policies map[uint32][]Rule) (added map[uint32]int, inUse int, err error) {
	var all []Rule
	for _, rules := range policies {
		all = append(all, rules...)
	}
	entries, _, err := compile(all)
	if err != nil {
		return nil, 0, err
	}
	have, _, err := readAll[objs.SkbRuleKey, objs.SkbRuleInfo](d.skb.SwRules, "rules")
	if err != nil {
		return nil, 0, err
	}
	held := make(map[objs.SkbRuleKey]bool, len(have))
	for _, k := range have {
		held[k] = true
	}
	added = map[uint32]int{}
	for k := range entries {
		if !held[k] {
			added[k.PolicyId]++
		}
	}
	return added, len(have), nil
}

// Capacity returns the max entries of a map by C name (0 for an unknown
// name).
func (d *Datapath) Capacity(name string) int {
	if m := d.MapsByName()[name]; m != nil {
		return int(m.MaxEntries())
	}
	return 0
}
