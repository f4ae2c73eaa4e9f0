package e2e

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/dns"

	"github.com/sidewall/sidewall/hack/harness/agentnode"
	"github.com/sidewall/sidewall/hack/harness/localnode"
)

// The FQDN test's DNS server answers, on UDP and TCP port 53:
//
//	api.example.test      A    the first IP argument (a real listener), TTL 30
//	other.example.test    A    the second IP argument, TTL 30
//	alias.example.test    CNAME api-cname.example.test, CNAME api.example.test's address (TTL 30)
//	v6.example.test       AAAA 2001:db8::7
//	many.example.test     40 A records in 203.0.113.0/24 (over 512 bytes: EDNS0 or TCP)
//	stray.example.test    A 198.51.100.1 and, off the chain, an A of unrelated.example.test 198.51.100.2
//	short.example.test    A the third IP argument, TTL 1
//	n<i>.race.example.test A a.b.(100+i/256).(i%256) in the fourth IP argument's /16
//	                      (the pods' subnet, unused there), TTL 60: a fresh name and address per cycle
//	wrongid.example.test  an answer with another id, then none
//	world.example.test    A    the fifth IP argument, if given, TTL 30 (an address
//	                      outside the cluster)
func serveFQDN(ips []string) int {
	addr := func(i int) net.IP { return net.ParseIP(ips[i]).To4() }
	rr := func(s string) dns.RR {
		r, err := dns.NewRR(s)
		if err != nil {
			panic(err)
		}
		return r
	}
	h := dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		m.Compress = true
		name := strings.ToLower(q.Question[0].Name)
		qt := q.Question[0].Qtype
		a := func(n string, ttl int, ip net.IP) {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: n, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: uint32(ttl)}, A: ip})
		}
		switch {
		case name == "api.example.test." && qt == dns.TypeA:
			a(name, 30, addr(0))
		case name == "other.example.test." && qt == dns.TypeA:
			a(name, 30, addr(1))
		case name == "short.example.test." && qt == dns.TypeA:
			a(name, 1, addr(2))
		case name == "alias.example.test." && qt == dns.TypeA:
			m.Answer = append(m.Answer, rr("alias.example.test. 30 IN CNAME api-cname.example.test."),
				rr("api-cname.example.test. 30 IN CNAME api.example.test."))
			a("api.example.test.", 30, addr(0))
		case name == "v6.example.test." && qt == dns.TypeAAAA:
			m.Answer = append(m.Answer, rr("v6.example.test. 30 IN AAAA 2001:db8::7"))
		case name == "many.example.test." && qt == dns.TypeA:
			for i := 1; i <= 40; i++ {
				a(name, 30, net.IPv4(203, 0, 113, byte(i)).To4())
			}
			if w.RemoteAddr().Network() == "udp" {
				size := 512
				if o := q.IsEdns0(); o != nil {
					size = int(o.UDPSize())
				}
				m.Truncate(size)
			}
		case name == "stray.example.test." && qt == dns.TypeA:
			a(name, 30, net.IPv4(198, 51, 100, 1).To4())
			a("unrelated.example.test.", 30, net.IPv4(198, 51, 100, 2).To4())
		case strings.HasSuffix(name, ".race.example.test.") && qt == dns.TypeA:
			i, _ := strconv.Atoi(strings.TrimPrefix(strings.TrimSuffix(name, ".race.example.test."), "n"))
			base := addr(3)
			a(name, 60, net.IPv4(base[0], base[1], byte(100+i/256), byte(i%256)).To4())
		case name == "world.example.test." && qt == dns.TypeA && len(ips) > 4:
			a(name, 30, addr(4))
		case name == "wrongid.example.test.":
			m.Id++
		default:
			m.Rcode = dns.RcodeNameError
		}
		_ = w.WriteMsg(m)
	})
	errc := make(chan error, 2)
	for _, network := range []string{"udp", "tcp"} {
		srv := &dns.Server{Addr: ":53", Net: network, Handler: h}
		go func() { errc <- srv.ListenAndServe() }()
	}
	time.Sleep(200 * time.Millisecond)
	fmt.Println("READY")
	fmt.Println("ERR", <-errc)
	return 1
}

func isEPERM(err error) bool {
	return errors.Is(err, syscall.EPERM) || (err != nil && strings.Contains(err.Error(), "operation not permitted"))
}

// exchange sends one query as a resolver does: a connected socket to the
// server, the reply read from it (its source address checked by the
// kernel for a connected UDP socket, and by us against the server).
func exchange(server, proto, name string, qtype uint16, edns bool) (*dns.Msg, error) {
	c := &dns.Client{Net: proto, Timeout: 3 * time.Second}
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	if edns {
		m.SetEdns0(4096, false)
	}
	conn, err := c.Dial(server)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	r, _, err := c.ExchangeWithConn(m, conn)
	return r, err
}

func fqdnLookup(args []string) int {
	server, proto, name := args[0], args[1], args[2]
	qtype := dns.StringToType[args[3]]
	edns := proto == "udp-edns"
	if edns {
		proto = "udp"
	}
	r, err := exchange(server, proto, name, qtype, edns)
	if err != nil {
		if isEPERM(err) {
			fmt.Println("DNSEPERM", err)
		} else {
			fmt.Println("DNSERR", err)
		}
		return 1
	}
	var addrs []string
	for _, rr := range r.Answer {
		switch x := rr.(type) {
		case *dns.A:
			addrs = append(addrs, x.A.String())
		case *dns.AAAA:
			addrs = append(addrs, x.AAAA.String())
		}
	}
	fmt.Printf("ANSWER %s tc=%t\n", strings.Join(addrs, ","), r.Truncated)
	if len(args) < 5 || len(addrs) == 0 {
		return 0
	}
	// Connect to the first address: TCP to a listener, so "OK" means the
	// connection was made; a refused connection would say EPERM at once.
	reportConnect(net.JoinHostPort(addrs[0], args[4]))
	return 0
}

// reportConnect connects over TCP and prints CONNECT OK, CONNECT EPERM (the
// datapath refused it at once) or CONNECT ERR.
func reportConnect(target string) {
	conn, err := net.DialTimeout("tcp", target, 2*time.Second)
	switch {
	case err == nil:
		conn.Close()
		fmt.Println("CONNECT OK")
	case isEPERM(err):
		fmt.Println("CONNECT EPERM")
	default:
		fmt.Println("CONNECT ERR", err)
	}
}

// fqdnHold looks up NAME, opens a TCP connection to its first address on
// PORT, exchanges a line with the echo server (OPEN), waits WAIT (the
// test lets the answer expire meanwhile) and exchanges another line on the
// same connection: HELD OK when the open connection outlived the answer.
func fqdnHold(args []string) int {
	server, name, port := args[0], args[1], args[2]
	wait, err := time.ParseDuration(args[3])
	if err != nil {
		fmt.Println("ERR", err)
		return 2
	}
	r, err := exchange(server, "udp", name, dns.TypeA, false)
	if err != nil || len(r.Answer) == 0 {
		fmt.Println("DNSERR", err)
		return 1
	}
	a, ok := r.Answer[0].(*dns.A)
	if !ok {
		fmt.Println("DNSERR not an A record:", r.Answer[0])
		return 1
	}
	conn, err := net.DialTimeout("tcp", net.JoinHostPort(a.A.String(), port), 2*time.Second)
	if err != nil {
		fmt.Println("CONNECT ERR", err)
		return 1
	}
	defer conn.Close()
	rd := bufio.NewReader(conn)
	line := func(s string) error {
		_ = conn.SetDeadline(time.Now().Add(3 * time.Second))
		if _, err := fmt.Fprintln(conn, s); err != nil {
			return err
		}
		got, err := rd.ReadString('\n')
		if err == nil && !strings.HasSuffix(got, " "+s+"\n") {
			err = fmt.Errorf("echo %q, want one ending in %q", got, s)
		}
		return err
	}
	if err := line("first"); err != nil {
		fmt.Println("OPEN ERR", err)
		return 1
	}
	fmt.Println("OPEN")
	time.Sleep(wait)
	if err := line("second"); err != nil {
		fmt.Println("HELD ERR", err)
		return 1
	}
	fmt.Println("HELD OK")
	return 0
}

// fqdnRace looks up N fresh names and, right after each answer, connects
// a UDP socket to the address and sends on it: connect() passes the
// socket hook and send() cgroup_skb, and either fails with EPERM if the
// address was not learned yet. (A TCP handshake needs a listener at each
// fresh address; UDP needs none and meets both checks.) W workers run the
// cycles concurrently.
func fqdnRace(args []string) int {
	server := args[0]
	n, _ := strconv.Atoi(args[1])
	workers, start := 1, 0
	if len(args) > 2 {
		workers, _ = strconv.Atoi(args[2])
	}
	if len(args) > 3 {
		start, _ = strconv.Atoi(args[3])
	}
	var mu sync.Mutex
	ok, fail := 0, 0
	var first string
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += workers {
				res := raceOnce(server, start+i)
				mu.Lock()
				if res == "" {
					ok++
				} else {
					fail++
					if first == "" {
						first = fmt.Sprintf("n%d: %s", i, res)
					}
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	fmt.Printf("RACE ok=%d fail=%d first=%q\n", ok, fail, first)
	return 0
}

func raceOnce(server string, i int) string {
	name := fmt.Sprintf("n%d.race.example.test", i)
	r, err := exchange(server, "udp", name, dns.TypeA, false)
	if err != nil {
		return "lookup: " + err.Error()
	}
	if len(r.Answer) != 1 {
		return fmt.Sprintf("%d answers", len(r.Answer))
	}
	a, ok := r.Answer[0].(*dns.A)
	if !ok {
		return "not an A record"
	}
	conn, err := net.Dial("udp", net.JoinHostPort(a.A.String(), "9"))
	if err != nil {
		return "connect: " + err.Error()
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("x")); err != nil {
		return "send: " + err.Error()
	}
	return ""
}

// fqdnForge tries what a compromised container would: send the proxy's
// port a DNS answer for IP without going through a redirect, and answer
// itself over loopback; then it tries to connect to IP.
func fqdnForge(args []string) int {
	port, ip := args[0], netip.MustParseAddr(args[1])
	m := new(dns.Msg)
	m.SetQuestion("api.example.test.", dns.TypeA)
	m.Response = true
	m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: "api.example.test.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 300}, A: ip.AsSlice()})
	b, _ := m.Pack()
	if c, err := net.Dial("udp", "127.0.0.1:"+port); err == nil {
		_, err = c.Write(b)
		fmt.Println("PROXYSEND", errString(err))
		c.Close()
	}
	// An "answer" to its own socket, over loopback.
	rx, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err == nil {
		tx, _ := net.Dial("udp", rx.LocalAddr().String())
		_, err = tx.Write(b)
		fmt.Println("SELFSEND", errString(err))
		tx.Close()
		rx.Close()
	}
	reportConnect(net.JoinHostPort(ip.String(), "8080"))
	return 0
}

func errString(err error) string {
	if err == nil {
		return "ok"
	}
	if isEPERM(err) {
		return "EPERM"
	}
	return err.Error()
}

// startHelperServer runs this test binary's helper mode args in a
// container of p (a server that prints READY when it serves) and waits
// until it is ready; the test's cleanup stops it.
func startHelperServer(t *testing.T, n *agentnode.Node, p *localnode.Pod, container string, args ...string) *localnode.Process {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	srv, err := n.Local.RunInContainer(p, container, append([]string{exe, helperArg}, args...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Stop() })
	waitFor(t, args[0]+" ready", func() error {
		if !strings.Contains(srv.Output(), "READY") {
			return fmt.Errorf("not yet: %s", srv.Output())
		}
		return nil
	})
	return srv
}

// helperRunner returns a function that runs a helper mode in a container
// of p to its end and returns what it printed.
func helperRunner(t *testing.T, n *agentnode.Node, p *localnode.Pod) func(container string, args ...string) string {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return func(container string, args ...string) string {
		t.Helper()
		pr, err := n.Local.RunInContainer(p, container, append([]string{exe, helperArg}, args...))
		if err != nil {
			t.Fatal(err)
		}
		_ = pr.Wait()
		return strings.TrimSpace(pr.Output())
	}
}

// waitDNSProxy waits until the agent redirects a pod's DNS to its proxy.
func waitDNSProxy(t *testing.T, n *agentnode.Node) {
	t.Helper()
	waitFor(t, "the pod's DNS proxy", func() error {
		ps, err := n.Agent.Datapath.DNSProxies()
		if err != nil || len(ps) == 0 {
			return fmt.Errorf("no DNS proxy in the datapath (%v)", err)
		}
		return nil
	})
}
