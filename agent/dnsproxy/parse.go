package dnsproxy

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/cilium/dns"
)

// MaxMessage is the largest DNS message (the TCP length prefix's range).
const MaxMessage = 65535

// Answer is what an answer says about the name that was asked.
type Answer struct {
	// Name is the queried name, lower-case and fully qualified.
	Name  string
	QType uint16
	RCode int
	// CNAMEs is the chain from Name, in order.
	CNAMEs []string
	// Addrs are the A and AAAA records of Name and of its CNAME chain.
	Addrs []netip.Addr
	// TTL is the lowest TTL of the records that lead to the addresses
	// (Cilium's "lowest applicable TTL"); 0 without addresses.
	TTL uint32
}

// ParseQuery parses a query a container sent: exactly one question, of
// class IN, not a response.
func ParseQuery(b []byte) (*dns.Msg, error) {
	if len(b) > MaxMessage {
		return nil, fmt.Errorf("query of %d bytes: over %d", len(b), MaxMessage)
	}
	m := new(dns.Msg)
	if err := m.Unpack(b); err != nil {
		return nil, fmt.Errorf("unpack query: %w", err)
	}
	switch {
	case m.Response:
		return nil, errors.New("not a query: the QR bit is set")
	case m.Opcode != dns.OpcodeQuery:
		return nil, fmt.Errorf("opcode %s: only QUERY is proxied", dns.OpcodeToString[m.Opcode])
	case len(m.Question) != 1:
		return nil, fmt.Errorf("%d questions: want exactly one", len(m.Question))
	case m.Question[0].Qclass != dns.ClassINET:
		return nil, fmt.Errorf("class %d: only IN is proxied", m.Question[0].Qclass)
	}
	return m, nil
}

// ParseAnswer parses b as the answer to q: a response with q's ID and q's
// question (the name compared case-insensitively, as DNS does). Only the
// A and AAAA records of the question's name and of the CNAME chain from it
// count; other records of the answer section teach nothing.
func ParseAnswer(q *dns.Msg, b []byte) (Answer, error) {
	if len(b) > MaxMessage {
		return Answer{}, fmt.Errorf("answer of %d bytes: over %d", len(b), MaxMessage)
	}
	m := new(dns.Msg)
	if err := m.Unpack(b); err != nil {
		return Answer{}, fmt.Errorf("unpack answer: %w", err)
	}
	if !m.Response {
		return Answer{}, errors.New("not an answer: the QR bit is clear")
	}
	if m.Id != q.Id {
		return Answer{}, fmt.Errorf("answer id %d: the query's is %d", m.Id, q.Id)
	}
	if len(m.Question) != 1 || len(q.Question) != 1 {
		return Answer{}, fmt.Errorf("%d questions in the answer: want the query's one", len(m.Question))
	}
	aq, qq := m.Question[0], q.Question[0]
	if !strings.EqualFold(aq.Name, qq.Name) || aq.Qtype != qq.Qtype || aq.Qclass != qq.Qclass {
		return Answer{}, fmt.Errorf("answer to %s %s: the query asked %s %s", aq.Name, dns.TypeToString[aq.Qtype], qq.Name, dns.TypeToString[qq.Qtype])
	}
	a := Answer{Name: dns.Fqdn(strings.ToLower(qq.Name)), QType: qq.Qtype, RCode: m.Rcode}
	if m.Rcode != dns.RcodeSuccess || m.Truncated {
		// A truncated answer is asked again over TCP; learn from that one.
		return a, nil
	}
	// Follow the chain: each step must start at the name reached so far.
	// Every record is used at most once, so the walk ends.
	name := a.Name
	ttl := ^uint32(0)
	used := make([]bool, len(m.Answer))
	for step := 0; step <= len(m.Answer); step++ {
		next := ""
		for i, rr := range m.Answer {
			if used[i] || rr == nil || rr.Header().Class != dns.ClassINET || !strings.EqualFold(rr.Header().Name, name) {
				continue
			}
			switch r := rr.(type) {
			case *dns.CNAME:
				if next == "" {
					used[i] = true
					next = dns.Fqdn(strings.ToLower(r.Target))
					ttl = min(ttl, r.Hdr.Ttl)
				}
			case *dns.A:
				used[i] = true
				if ip, ok := netip.AddrFromSlice(r.A.To4()); ok && r.A.To4() != nil {
					a.Addrs = append(a.Addrs, ip)
					ttl = min(ttl, r.Hdr.Ttl)
				}
			case *dns.AAAA:
				used[i] = true
				if ip, ok := netip.AddrFromSlice(r.AAAA.To16()); ok && r.AAAA.To16() != nil {
					a.Addrs = append(a.Addrs, ip)
					ttl = min(ttl, r.Hdr.Ttl)
				}
			}
		}
		if next == "" {
			break
		}
		a.CNAMEs = append(a.CNAMEs, next)
		name = next
	}
	if len(a.Addrs) > 0 {
		a.TTL = ttl
	}
	return a, nil
}
