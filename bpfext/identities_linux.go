package bpfext

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/sidewall/sidewall/bpfext/objs"
)

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
