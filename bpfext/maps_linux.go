package bpfext

import (
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/sidewall/sidewall/bpfext/objs"
)

const localPeerUnknown = uint32(objs.SkbLocalPeerLOCAL_PEER_UNKNOWN)

// Flag bits of container_info.flags, rule_info.action and rule_key.flags,
// generated from the C enums of bpf/lib/common.h.
const (
	cfEgressRestricted  = uint32(objs.SkbContainerFlagCF_EGRESS_RESTRICTED)
	cfIngressRestricted = uint32(objs.SkbContainerFlagCF_INGRESS_RESTRICTED)
	cfAudit             = uint32(objs.SkbContainerFlagCF_AUDIT)
	cfDenyAll           = uint32(objs.SkbContainerFlagCF_DENY_ALL)
	cfFailOpen          = uint32(objs.SkbContainerFlagCF_FAIL_OPEN)
	cfFQDN              = uint32(objs.SkbContainerFlagCF_FQDN)

	raAllow     = uint8(objs.SkbRuleActionRA_ALLOW)
	raDeny      = uint8(objs.SkbRuleActionRA_DENY)
	raExclusive = uint8(objs.SkbRuleActionRA_EXCLUSIVE)

	rkIngress   = uint8(objs.SkbRuleKeyFlagRK_INGRESS)
	rkLocal     = uint8(objs.SkbRuleKeyFlagRK_LOCAL)
	rkPlenShift = uint8(objs.SkbRuleKeyFlagRK_PLEN_SHIFT)
)

// MapEntries counts the entries of each map by C name (fill levels for
// metrics, and tests that check garbage collection).
func (d *Datapath) MapEntries() (map[string]int, error) {
	out := map[string]int{}
	for name, m := range d.MapsByName() {
		if name == objs.SkbMapSwCiliumIpcache {
			continue // Cilium's map, or an empty stand-in: not sidewall's state
		}
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

// Capacity returns the max entries of a map by C name (0 for an unknown
// name).
func (d *Datapath) Capacity(name string) int {
	if m := d.MapsByName()[name]; m != nil {
		return int(m.MaxEntries())
	}
	return 0
}
