package bpfext

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"sync"
	"testing"

	"github.com/sidewall/sidewall/bpfext/objs"
)

// Test packets for BPF_PROG_TEST_RUN of cgroup_skb programs: the data starts
// with a 14-byte Ethernet header, which the kernel strips before the
// program sees the IP header.

type pktOpt func(*pktSpec)

type pktSpec struct {
	fragOff   uint16 // IPv4 fragment offset in 8-byte units; IPv6 fragment header offset
	v6Frag    bool
	v6HopByOp bool
	truncL4   bool
	version   uint8
}

func fragment(off uint16) pktOpt { return func(p *pktSpec) { p.fragOff = off; p.v6Frag = true } }
func hopByHop() pktOpt           { return func(p *pktSpec) { p.v6HopByOp = true } }
func truncated() pktOpt          { return func(p *pktSpec) { p.truncL4 = true } }
func version(v uint8) pktOpt     { return func(p *pktSpec) { p.version = v } }

func l4Header(proto uint8, sport, dport uint16) []byte {
	var h []byte
	switch proto {
	case ProtoTCP:
		h = make([]byte, 20)
		h[12] = 5 << 4
		h[13] = 0x02 // SYN
	case ProtoUDP:
		h = make([]byte, 8)
	case ProtoSCTP:
		h = make([]byte, 12)
	case ProtoICMP, ProtoICMPv6:
		h = make([]byte, 8)
		h[0] = 8
		if proto == ProtoICMPv6 {
			h[0] = 128
		}
		return h
	default:
		return make([]byte, 8)
	}
	binary.BigEndian.PutUint16(h[0:], sport)
	binary.BigEndian.PutUint16(h[2:], dport)
	return h
}

func packet(src, dst string, proto uint8, sport, dport uint16, opts ...pktOpt) []byte {
	var spec pktSpec
	for _, o := range opts {
		o(&spec)
	}
	s, d := netip.MustParseAddr(src), netip.MustParseAddr(dst)
	l4 := l4Header(proto, sport, dport)
	if spec.truncL4 {
		l4 = l4[:2]
	}
	eth := make([]byte, 14)
	copy(eth[0:6], []byte{2, 0, 0, 0, 0, 1})
	copy(eth[6:12], []byte{2, 0, 0, 0, 0, 2})
	if s.Is4() {
		binary.BigEndian.PutUint16(eth[12:], 0x0800)
		ip := make([]byte, 20)
		ip[0] = 0x45
		if spec.version != 0 {
			ip[0] = spec.version<<4 | 5
		}
		binary.BigEndian.PutUint16(ip[2:], uint16(20+len(l4)))
		binary.BigEndian.PutUint16(ip[6:], spec.fragOff&0x1fff)
		ip[8] = 64
		ip[9] = proto
		a, b := s.As4(), d.As4()
		copy(ip[12:16], a[:])
		copy(ip[16:20], b[:])
		return append(append(eth, ip...), l4...)
	}
	binary.BigEndian.PutUint16(eth[12:], 0x86dd)
	ip := make([]byte, 40)
	ip[0] = 0x60
	ip[7] = 64
	a, b := s.As16(), d.As16()
	copy(ip[8:24], a[:])
	copy(ip[24:40], b[:])
	var ext []byte
	next := proto
	if spec.v6Frag {
		f := make([]byte, 8)
		f[0] = next
		binary.BigEndian.PutUint16(f[2:], spec.fragOff<<3)
		ext = append(f, ext...)
		next = 44
	}
	if spec.v6HopByOp {
		h := make([]byte, 8)
		h[0] = next
		h[2] = 1 // PadN
		h[3] = 4
		ext = append(h, ext...)
		next = 0
	}
	ip[6] = next
	binary.BigEndian.PutUint16(ip[4:], uint16(len(ext)+len(l4)))
	return append(append(append(eth, ip...), ext...), l4...)
}

// skbContext is a struct __sk_buff for RunOptions.Context carrying what
// the entry program hands the verdict in cb[] (offset 48): the classified
// cgroup and its entry. A cgroup without an entry gets no handoff, so the
// verdict classifies the packet itself.
//
// The packet is one that leaves or arrives on a device other than loopback
// (ifindex and ingress_ifindex of an interface of the test's namespace):
// not delivered inside the pod. skbLocalContext makes it one that is.
func skbContext(tb testing.TB, d *Datapath, cgroupID uint64) []byte {
	tb.Helper()
	ctx := skbCbContext(tb, d, cgroupID)
	ifi := outerIfindex(tb)
	binary.NativeEndian.PutUint32(ctx[36:], ifi) // ingress_ifindex
	binary.NativeEndian.PutUint32(ctx[40:], ifi) // ifindex
	return ctx
}

// skbLocalContext is skbContext for a packet delivered over loopback.
func skbLocalContext(tb testing.TB, d *Datapath, cgroupID uint64) []byte {
	tb.Helper()
	ctx := skbCbContext(tb, d, cgroupID)
	binary.NativeEndian.PutUint32(ctx[36:], 1)
	binary.NativeEndian.PutUint32(ctx[40:], 1)
	return ctx
}

var outerIfindexOnce = sync.OnceValues(func() (uint32, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return 0, err
	}
	for _, i := range ifs {
		if i.Flags&net.FlagLoopback == 0 && i.Index > 1 {
			return uint32(i.Index), nil
		}
	}
	return 0, errors.New("no interface other than loopback in the test's network namespace")
})

// outerIfindex is an interface of the test's namespace that is not
// loopback: BPF_PROG_TEST_RUN sends the packet from it.
func outerIfindex(tb testing.TB) uint32 {
	tb.Helper()
	i, err := outerIfindexOnce()
	if err != nil {
		tb.Fatalf("test packets need a non-loopback device: %v", err)
	}
	return i
}

func skbCbContext(tb testing.TB, d *Datapath, cgroupID uint64) []byte {
	tb.Helper()
	ctx := make([]byte, 192)
	var ci objs.SkbContainerInfo
	if err := d.skb.SwContainers.Lookup(cgroupID, &ci); err != nil {
		return ctx
	}
	binary.NativeEndian.PutUint32(ctx[48:], uint32(cgroupID))
	binary.NativeEndian.PutUint32(ctx[52:], uint32(cgroupID>>32))
	binary.NativeEndian.PutUint32(ctx[56:], ci.PolicyId)
	binary.NativeEndian.PutUint32(ctx[60:], ci.PodId)
	binary.NativeEndian.PutUint32(ctx[64:], ci.Flags&0xffff|0x5357<<16)
	return ctx
}
