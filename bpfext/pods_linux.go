package bpfext

import (
	"fmt"
	"net/netip"

	"github.com/sidewall/sidewall/bpfext/objs"
)

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

// nativeU32 reinterprets network-order bytes as the u32 the kernel stores
// (the C side compares raw network-order words).
func nativeU32(a [4]byte) uint32 {
	return uint32(a[0]) | uint32(a[1])<<8 | uint32(a[2])<<16 | uint32(a[3])<<24
}
