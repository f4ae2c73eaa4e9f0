package bpfext

// Test helpers: ways to change the maps that the agent does not use (it
// replaces whole policies with ReplaceRules and detaches by cgroup id).

import (
	"github.com/cilium/ebpf"

	"github.com/sidewall/sidewall/bpfext/objs"
)

// deleteRules removes the entries of rules. The policy's prefix-length
// masks are left as they are (a stale bit costs one missed probe); use
// replacePolicyRules to tighten them.
func (d *Datapath) deleteRules(rules []Rule) error {
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

// replacePolicyRules makes the rules of one policy exactly rules (nil drops
// the policy). It is ReplaceRules for one policy.
func (d *Datapath) replacePolicyRules(policyID uint32, rules []Rule) error {
	return d.ReplaceRules(map[uint32][]Rule{policyID: rules})
}

// detach removes the pinned links of a cgroup, which detaches the entry
// programs. For a cgroup already removed, use DetachID.
func (d *Datapath) detach(cgroupPath string) error {
	cgid, err := CgroupID(cgroupPath)
	if err != nil {
		return err
	}
	return d.DetachID(cgid)
}

// mapReplacements returns the pinned maps that spec declares, for
// ebpf.CollectionOptions.MapReplacements when loading a replacement verdict
// program that must share this datapath's maps. It sets the spec's sizes
// to the pinned maps' (a replacement must match its spec).
func (d *Datapath) mapReplacements(spec *ebpf.CollectionSpec) map[string]*ebpf.Map {
	out := map[string]*ebpf.Map{}
	for name, m := range d.MapsByName() {
		if ms, ok := spec.Maps[name]; ok {
			ms.MaxEntries = m.MaxEntries()
			out[name] = m
		}
	}
	return out
}
