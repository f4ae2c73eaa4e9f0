package dnsproxy

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/cilium/dns"
)

func query(name string, qt uint16) *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion(name, qt)
	return m
}

func pack(t testing.TB, m *dns.Msg) []byte {
	t.Helper()
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func answer(q *dns.Msg, rrs ...string) *dns.Msg {
	m := new(dns.Msg)
	m.SetReply(q)
	m.Compress = true
	for _, s := range rrs {
		rr, err := dns.NewRR(s)
		if err != nil {
			panic(err)
		}
		m.Answer = append(m.Answer, rr)
	}
	return m
}

func TestParseAnswer(t *testing.T) {
	q := query("API.example.test.", dns.TypeA)
	for _, tc := range []struct {
		name   string
		msg    func() *dns.Msg
		addrs  []string
		cnames []string
		ttl    uint32
		err    bool
	}{
		{name: "A, compressed, name case-insensitive", msg: func() *dns.Msg {
			return answer(q, "api.example.test. 30 IN A 192.0.2.1", "api.example.test. 10 IN A 192.0.2.2")
		}, addrs: []string{"192.0.2.1", "192.0.2.2"}, ttl: 10},
		{name: "CNAME chain, out of order", msg: func() *dns.Msg {
			return answer(q, "b.example.test. 50 IN A 192.0.2.9", "api.example.test. 40 IN CNAME a.example.test.",
				"a.example.test. 20 IN CNAME b.example.test.")
		}, addrs: []string{"192.0.2.9"}, cnames: []string{"a.example.test.", "b.example.test."}, ttl: 20},
		{name: "records off the chain are ignored", msg: func() *dns.Msg {
			return answer(q, "api.example.test. 30 IN A 192.0.2.1", "evil.example.test. 30 IN A 198.51.100.66")
		}, addrs: []string{"192.0.2.1"}, ttl: 30},
		{name: "a CNAME loop ends", msg: func() *dns.Msg {
			return answer(q, "api.example.test. 30 IN CNAME x.example.test.", "x.example.test. 30 IN CNAME api.example.test.")
		}, cnames: []string{"x.example.test.", "api.example.test."}},
		{name: "AAAA and EDNS0", msg: func() *dns.Msg {
			m := answer(q, "api.example.test. 30 IN AAAA 2001:db8::1")
			m.SetEdns0(4096, true)
			return m
		}, addrs: []string{"2001:db8::1"}, ttl: 30},
		{name: "NXDOMAIN teaches nothing", msg: func() *dns.Msg {
			m := answer(q, "api.example.test. 30 IN A 192.0.2.1")
			m.Rcode = dns.RcodeNameError
			return m
		}},
		{name: "truncated teaches nothing", msg: func() *dns.Msg {
			m := answer(q, "api.example.test. 30 IN A 192.0.2.1")
			m.Truncated = true
			return m
		}},
		{name: "another id", msg: func() *dns.Msg { m := answer(q); m.Id++; return m }, err: true},
		{name: "another question", msg: func() *dns.Msg { return answer(query("other.example.test.", dns.TypeA)) }, err: true},
		{name: "not a response", msg: func() *dns.Msg { return q.Copy() }, err: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := tc.msg()
			if tc.name == "another question" {
				m.Id = q.Id
			}
			a, err := ParseAnswer(q, pack(t, m))
			if (err != nil) != tc.err {
				t.Fatalf("err = %v, want error %t", err, tc.err)
			}
			if err != nil {
				return
			}
			var got []string
			for _, ip := range a.Addrs {
				got = append(got, ip.String())
			}
			if !slices.Equal(got, tc.addrs) || !slices.Equal(a.CNAMEs, tc.cnames) || a.TTL != tc.ttl || a.Name != "api.example.test." {
				t.Errorf("got %+v, want addrs %v cnames %v ttl %d", a, tc.addrs, tc.cnames, tc.ttl)
			}
		})
	}
}

func TestParseAnswerTruncatedBytes(t *testing.T) {
	q := query("api.example.test.", dns.TypeA)
	b := pack(t, answer(q, "api.example.test. 30 IN A 192.0.2.1"))
	for i := range len(b) {
		if a, err := ParseAnswer(q, b[:i]); err == nil && len(a.Addrs) > 0 {
			t.Fatalf("a prefix of %d bytes taught %v", i, a.Addrs)
		}
	}
}

func TestParseQuery(t *testing.T) {
	if _, err := ParseQuery(pack(t, query("a.example.test.", dns.TypeA))); err != nil {
		t.Fatal(err)
	}
	resp := answer(query("a.example.test.", dns.TypeA))
	if _, err := ParseQuery(pack(t, resp)); err == nil {
		t.Error("a response accepted as a query")
	}
	two := query("a.example.test.", dns.TypeA)
	two.Question = append(two.Question, two.Question[0])
	if _, err := ParseQuery(pack(t, two)); err == nil {
		t.Error("two questions accepted")
	}
}

// FuzzParseAnswer: no input crashes the parser, and what it accepts only
// teaches valid addresses of the query's own name.
func FuzzParseAnswer(f *testing.F) {
	q := query("api.example.test.", dns.TypeA)
	f.Add(pack(f, answer(q, "api.example.test. 30 IN A 192.0.2.1")))
	f.Add(pack(f, answer(q, "api.example.test. 30 IN CNAME b.example.test.", "b.example.test. 5 IN A 192.0.2.2")))
	f.Add(pack(f, answer(q, "api.example.test. 30 IN AAAA 2001:db8::1")))
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := ParseAnswer(q, b)
		if _, qerr := ParseQuery(b); qerr == nil && err == nil {
			t.Fatal("the same bytes parsed as a query and as an answer")
		}
		if err != nil {
			if len(a.Addrs) > 0 {
				t.Fatalf("an error with addresses: %v", a.Addrs)
			}
			return
		}
		if a.Name != "api.example.test." {
			t.Fatalf("answer for %q", a.Name)
		}
		for _, ip := range a.Addrs {
			if !ip.IsValid() {
				t.Fatal("invalid address learned")
			}
		}
		if len(a.Addrs) > len(b) {
			t.Fatalf("%d addresses from %d bytes", len(a.Addrs), len(b))
		}
	})
}

// BenchmarkParseAnswer is the userspace cost of one answer: parse, check
// against the query, walk the chain.
func BenchmarkParseAnswer(b *testing.B) {
	q := query("api.example.test.", dns.TypeA)
	one := pack(b, answer(q, "api.example.test. 30 IN A 192.0.2.1"))
	rrs := []string{"api.example.test. 30 IN CNAME edge.example.test."}
	for i := range 16 {
		rrs = append(rrs, "edge.example.test. 30 IN A "+netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}).String())
	}
	many := pack(b, answer(q, rrs...))
	for _, c := range []struct {
		name string
		b    []byte
	}{{"one-A", one}, {"cname-16A", many}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := ParseAnswer(q, c.b); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
