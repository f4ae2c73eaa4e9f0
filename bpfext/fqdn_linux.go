package bpfext

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/sidewall/sidewall/bpfext/objs"
)

// ErrFQDNFull is returned by LearnFQDN when the learned-address map has no
// room for a new address: the address stays unreachable (fail closed).
var ErrFQDNFull = errors.New("the FQDN map is full")

// MonotonicSeconds is the datapath's clock for FQDN expiry: CLOCK_MONOTONIC
// (bpf_ktime_get_ns) in whole seconds.
func MonotonicSeconds() uint32 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint32(ts.Sec)
}

func fqdnKey(cgroupID uint64, addr netip.Addr) objs.SkbFqdnKey {
	k := objs.SkbFqdnKey{CgroupId: cgroupID}
	addr = addr.Unmap()
	if addr.Is4() {
		k.Family = 4
		a := addr.As4()
		copy(k.Addr[:], a[:])
	} else {
		k.Family = 6
		k.Addr = addr.As16()
	}
	return k
}

// LearnFQDN lets the container of a classified cgroup reach addr as a peer
// of its policy's toFQDNs selector sel until the monotonic second until
// (exclusive, MonotonicSeconds). An earlier expiry never shortens a later
// one already learned.
func (d *Datapath) LearnFQDN(cgroupID uint64, addr netip.Addr, sel int, until uint32) error {
	if sel < 0 || sel >= FQDNSelectors {
		return fmt.Errorf("learn %s: selector index %d out of range 0..%d", addr, sel, FQDNSelectors-1)
	}
	if !addr.IsValid() {
		return fmt.Errorf("learn: invalid address")
	}
	k := fqdnKey(cgroupID, addr)
	d.fqdnMu.Lock()
	defer d.fqdnMu.Unlock()
	var v objs.SkbFqdnEntry
	err := d.skb.SwFqdn.Lookup(&k, &v)
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("learn %s: %w", addr, err)
	}
	if v.Expires[sel] >= until {
		return nil
	}
	v.Expires[sel] = until
	if err := d.skb.SwFqdn.Update(&k, &v, ebpf.UpdateAny); err != nil {
		if errors.Is(err, unix.E2BIG) || errors.Is(err, unix.ENOMEM) {
			return fmt.Errorf("learn %s: %w", addr, ErrFQDNFull)
		}
		return fmt.Errorf("learn %s: %w", addr, err)
	}
	return nil
}

// FQDNEntry is one learned address of one container.
type FQDNEntry struct {
	CgroupID uint64
	Addr     netip.Addr
	// Expires holds, per selector index, the monotonic second the address
	// stops being that selector's (0: never learned).
	Expires [FQDNSelectors]uint32
}

func fqdnEntry(k objs.SkbFqdnKey, v objs.SkbFqdnEntry) FQDNEntry {
	e := FQDNEntry{CgroupID: k.CgroupId, Expires: v.Expires}
	if k.Family == 4 {
		e.Addr = netip.AddrFrom4([4]byte(k.Addr[:4]))
	} else {
		e.Addr = netip.AddrFrom16(k.Addr)
	}
	return e
}

// FQDNEntries lists the learned addresses.
func (d *Datapath) FQDNEntries() ([]FQDNEntry, error) {
	keys, vals, err := readAll[objs.SkbFqdnKey, objs.SkbFqdnEntry](d.skb.SwFqdn, "fqdn")
	if err != nil {
		return nil, err
	}
	out := make([]FQDNEntry, 0, len(keys))
	for i, k := range keys {
		out = append(out, fqdnEntry(k, vals[i]))
	}
	return out, nil
}

// ExpireFQDN deletes the learned entries every selector of which expired
// by now (MonotonicSeconds), and those of cgroups keep does not hold (nil
// keeps every cgroup). It returns the entries that remain, from the same
// read of the map.
func (d *Datapath) ExpireFQDN(now uint32, keep func(cgroupID uint64) bool) ([]FQDNEntry, error) {
	d.fqdnMu.Lock()
	defer d.fqdnMu.Unlock()
	keys, vals, err := readAll[objs.SkbFqdnKey, objs.SkbFqdnEntry](d.skb.SwFqdn, "fqdn")
	if err != nil {
		return nil, err
	}
	var gone []objs.SkbFqdnKey
	var left []FQDNEntry
	for i, k := range keys {
		live := keep == nil || keep(k.CgroupId)
		if live {
			live = false
			for _, e := range vals[i].Expires {
				if e > now {
					live = true
					break
				}
			}
		}
		if live {
			left = append(left, fqdnEntry(k, vals[i]))
		} else {
			gone = append(gone, k)
		}
	}
	if err := batchDelete(d.skb.SwFqdn, "fqdn", gone); err != nil {
		return nil, err
	}
	return left, nil
}

// SetDNSProxy makes the connect and sendmsg hooks send the DNS of the
// pod's containers with toFQDNs rules to port on the pod's loopback
// (127.0.0.1, and ::1 when v6), where the agent's proxy listens.
func (d *Datapath) SetDNSProxy(podID uint32, port uint16, v6 bool) error {
	if port == 0 {
		return fmt.Errorf("dns proxy of pod %d: port 0", podID)
	}
	v := objs.SkbDnsProxy{Port: port}
	if v6 {
		v.V6 = 1
	}
	if err := d.skb.SwDnsProxy.Update(&podID, &v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("dns proxy of pod %d: %w", podID, err)
	}
	return nil
}

// DeleteDNSProxy stops redirecting the pod's DNS.
func (d *Datapath) DeleteDNSProxy(podID uint32) error {
	if err := d.skb.SwDnsProxy.Delete(&podID); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete dns proxy of pod %d: %w", podID, err)
	}
	return nil
}

// DNSProxies lists the pods whose DNS is redirected, with the port.
func (d *Datapath) DNSProxies() (map[uint32]uint16, error) {
	keys, vals, err := readAll[uint32, objs.SkbDnsProxy](d.skb.SwDnsProxy, "dns proxies")
	if err != nil {
		return nil, err
	}
	out := make(map[uint32]uint16, len(keys))
	for i, k := range keys {
		out[k] = vals[i].Port
	}
	return out, nil
}

// DNSQuery is what the datapath recorded of a redirected DNS query: the
// classified cgroup that sent it and the server it was sent to.
type DNSQuery struct {
	CgroupID uint64
	Server   netip.AddrPort
	// RuleID is the rule that allowed the container the server.
	RuleID uint32
}

// DNSPending returns the query the container socket with this source port
// sent to the pod's proxy (the datapath writes it before the proxy can
// receive the packet).
func (d *Datapath) DNSPending(podID uint32, proto uint8, port uint16) (DNSQuery, bool, error) {
	k := objs.SkbDnsPendingKey{PodId: podID, Port: port, Proto: proto}
	var v objs.SkbDnsPending
	if err := d.skb.SwDnsPending.Lookup(&k, &v); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return DNSQuery{}, false, nil
		}
		return DNSQuery{}, false, fmt.Errorf("dns query of pod %d port %d: %w", podID, port, err)
	}
	var addr netip.Addr
	if v.Family == 4 {
		addr = netip.AddrFrom4([4]byte(v.Addr[:4]))
	} else {
		addr = netip.AddrFrom16(v.Addr)
	}
	return DNSQuery{CgroupID: v.CgroupId, Server: netip.AddrPortFrom(addr, v.Port), RuleID: v.RuleId}, true, nil
}
