package bpfext

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"

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

// ReservePorts writes the pods' declared ports (Pod.Ports) into the
// bound-port table; UpsertPods writes only addresses. A port already held
// by another container keeps its holder (a reservation never takes a port
// from a socket); a port held by its declaring container becomes reserved,
// so it stays that container's when its socket closes. Entries already as
// wanted are left alone, so calling it at every reconcile is cheap. The
// verdict caches do not depend on the table: no epoch bump.
func (d *Datapath) ReservePorts(ps []Pod) error {
	for _, p := range ps {
		for _, pp := range p.Ports {
			if pp.Port == 0 || (pp.Protocol != ProtoTCP && pp.Protocol != ProtoUDP) {
				return fmt.Errorf("pod %d: port %d/%d: want a TCP or UDP port above 0", p.ID, pp.Protocol, pp.Port)
			}
			k := objs.SkbLocalPortKey{PodId: p.ID, Port: pp.Port, Proto: pp.Protocol}
			flags := uint32(objs.SkbBoundFlagBP_RESERVED)
			if pp.Restricted {
				flags |= uint32(objs.SkbBoundFlagBP_RESTRICTED)
			}
			var cur objs.SkbBoundPort
			err := d.skb.SwBound.Lookup(&k, &cur)
			switch {
			case err == nil:
				want := cur.Flags&^uint32(objs.SkbBoundFlagBP_RESTRICTED) | flags
				if cur.ContainerId != pp.ContainerID || cur.Flags == want {
					continue
				}
				cur.Flags = want
				if err := d.skb.SwBound.Update(&k, &cur, ebpf.UpdateExist); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
					return fmt.Errorf("reserve port %d/%d of pod %d: %w", pp.Protocol, pp.Port, p.ID, err)
				}
			case errors.Is(err, ebpf.ErrKeyNotExist):
				v := objs.SkbBoundPort{ContainerId: pp.ContainerID, Flags: flags}
				if err := d.skb.SwBound.Update(&k, &v, ebpf.UpdateNoExist); err != nil && !errors.Is(err, ebpf.ErrKeyExist) {
					return fmt.Errorf("reserve port %d/%d of pod %d: %w", pp.Protocol, pp.Port, p.ID, err)
				}
			default:
				return fmt.Errorf("reserve port %d/%d of pod %d: %w", pp.Protocol, pp.Port, p.ID, err)
			}
		}
	}
	return nil
}

// DeletePods removes pods by id, with their bound-port entries.
func (d *Datapath) DeletePods(ids []uint32) error {
	set := make(map[uint32]bool, len(ids))
	for _, id := range ids {
		set[id] = true
	}
	var bound []objs.SkbLocalPortKey
	var k objs.SkbLocalPortKey
	var v objs.SkbBoundPort
	it := d.skb.SwBound.Iterate()
	for it.Next(&k, &v) {
		if set[k.PodId] {
			bound = append(bound, k)
		}
	}
	if err := it.Err(); err != nil {
		return d.changed(fmt.Errorf("list bound ports: %w", err))
	}
	return d.changed(errors.Join(
		batchDelete(d.skb.SwBound, "bound ports", bound),
		batchDelete(d.skb.SwPodPorts, "pod port counts", ids),
		batchDelete(d.skb.SwPods, "pods", ids)))
}

// BoundPort is one entry of the pod's bound-port table.
type BoundPort struct {
	PodID       uint32
	Protocol    uint8
	Port        uint16
	CgroupID    uint64 // leaf cgroup of the holder's first socket; 0: reserved only
	ContainerID uint32
	Sockets     uint32
	Reserved    bool
	Restricted  bool
}

// BoundPorts lists the bound-port table (for tests and debugging).
func (d *Datapath) BoundPorts() ([]BoundPort, error) {
	keys, vals, err := readAll[objs.SkbLocalPortKey, objs.SkbBoundPort](d.skb.SwBound, "bound ports")
	if err != nil {
		return nil, err
	}
	out := make([]BoundPort, 0, len(keys))
	for i, k := range keys {
		v := vals[i]
		out = append(out, BoundPort{
			PodID: k.PodId, Protocol: k.Proto, Port: k.Port, CgroupID: v.CgroupId, ContainerID: v.ContainerId,
			Sockets: v.Sockets, Reserved: v.Flags&uint32(objs.SkbBoundFlagBP_RESERVED) != 0,
			Restricted: v.Flags&uint32(objs.SkbBoundFlagBP_RESTRICTED) != 0,
		})
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

// nativeU32 reinterprets network-order bytes as the u32 the kernel stores
// (the C side compares raw network-order words).
func nativeU32(a [4]byte) uint32 {
	return uint32(a[0]) | uint32(a[1])<<8 | uint32(a[2])<<16 | uint32(a[3])<<24
}
