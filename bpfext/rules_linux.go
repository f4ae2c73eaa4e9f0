package bpfext

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/sidewall/sidewall/bpfext/objs"
)

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
// all rules of a policy in one call, or use ReplaceRules.
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

// PolicyIDs lists the policies that have rules (for adoption and GC; drop
// a policy with ReplaceRules(map[uint32][]Rule{id: nil})).
func (d *Datapath) PolicyIDs() ([]uint32, error) {
	out, _, err := readAll[uint32, objs.SkbPolicyInfo](d.skb.SwPolicies, "policies")
	return out, err
}

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
