package bpfext

import (
	"errors"
	"fmt"

	"github.com/sidewall/sidewall/bpfext/objs"
)

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
