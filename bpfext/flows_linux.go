package bpfext

import (
	"errors"
	"fmt"

	"github.com/sidewall/sidewall/bpfext/objs"
)

// ForgetFlows removes the flow state (reply allowances) of the given
// classified cgroups: call it when a container goes away or its policy
// shrinks, so replies of flows it may no longer open stop passing. It scans
// the flow map and the deny aggregation map. (Bound ports live and die
// with their sockets.)
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
	// The deny aggregation state of these cgroups goes too: a container
	// that comes back reports its first deny again.
	var seen []objs.SkbFlowKey
	var last uint64
	it = d.skb.SwDenySeen.Iterate()
	for it.Next(&fk, &last) {
		if set[fk.CgroupId] {
			seen = append(seen, fk)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("list deny aggregation: %w", err)
	}
	return d.changed(errors.Join(batchDelete(d.skb.SwFlows, "flows", flows), batchDelete(d.skb.SwDenySeen, "deny aggregation", seen)))
}
