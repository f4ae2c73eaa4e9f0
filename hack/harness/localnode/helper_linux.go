package localnode

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/cilium/dns"
)

const (
	helperEnv    = "SIDEWALL_LOCALNODE_HELPER"
	identEnv     = "SIDEWALL_LOCALNODE_IDENT"
	readyMarker  = "READY"
	resultMarker = "RESULT "
)

// A binary that imports localnode is also its helper: started with
// SIDEWALL_LOCALNODE_HELPER=1 it runs the built-in server or client and
// exits before main (or the test framework) starts.
func init() {
	if os.Getenv(helperEnv) != "1" {
		return
	}
	os.Exit(helperMain(os.Args[1:]))
}

// result is the client's report, one JSON line after resultMarker.
type result struct {
	OK      bool   `json:"ok"`
	Op      string `json:"op,omitempty"`
	Errno   int    `json:"errno,omitempty"`
	Timeout bool   `json:"timeout,omitempty"`
	Error   string `json:"error,omitempty"`
	Status  int    `json:"status,omitempty"`
	Reply   string `json:"reply,omitempty"`
	// Addrs is what the lookup of a by-name request resolved to.
	Addrs []string `json:"addrs,omitempty"`
}

func helperMain(args []string) int {
	go exitWithParent()
	ident := os.Getenv(identEnv)
	usage := func() int {
		fmt.Fprintln(os.Stderr, "usage: serve tcp|udp|http PORT | serve dns PORT NAME=IPv4... | dial tcp|udp ADDR TIMEOUT | http METHOD URL TIMEOUT | httpdns SERVER METHOD URL TIMEOUT")
		return 2
	}
	if len(args) < 3 {
		return usage()
	}
	switch args[0] {
	case "serve":
		var err error
		if args[1] == "dns" {
			err = serveDNS(args[2], args[3:])
		} else {
			err = serve(args[1], args[2], ident)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "serve:", err)
			return 1
		}
		return 0
	case "dial", "http", "httpdns":
		// The clients' last argument is the timeout.
		n := 4
		if args[0] == "httpdns" {
			n = 5
		}
		if len(args) < n {
			return usage()
		}
		timeout, err := time.ParseDuration(args[n-1])
		if err != nil {
			fmt.Fprintln(os.Stderr, "timeout:", err)
			return 2
		}
		var r result
		switch args[0] {
		case "dial":
			r = dial(args[1], args[2], ident, timeout)
		case "http":
			r = httpRequest(args[1], args[2], timeout)
		default:
			r = httpByName(args[1], args[2], args[3], timeout)
		}
		b, _ := json.Marshal(r)
		fmt.Printf("%s%s\n", resultMarker, b)
		return 0
	}
	return usage()
}

// exitWithParent ends an orphaned helper: the harness that started it is
// gone (a test binary that crashed), so nobody would stop it.
func exitWithParent() {
	ppid := os.Getppid()
	for range time.Tick(250 * time.Millisecond) {
		if os.Getppid() != ppid {
			os.Exit(3)
		}
	}
}

func serve(proto, port, ident string) error {
	addr := ":" + port
	switch proto {
	case "tcp", "http":
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return err
		}
		fmt.Println(readyMarker, ln.Addr())
		if proto == "http" {
			return http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.Copy(io.Discard, r.Body)
				fmt.Fprintf(w, "%s %s %s", ident, r.Method, r.URL.Path)
			}))
		}
		for {
			c, err := ln.Accept()
			if err != nil {
				return err
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(30 * time.Second))
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					if _, err := fmt.Fprintf(c, "%s %s\n", ident, sc.Text()); err != nil {
						return
					}
				}
			}()
		}
	case "udp":
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			return err
		}
		fmt.Println(readyMarker, pc.LocalAddr())
		buf := make([]byte, 64*1024)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return err
			}
			_, _ = pc.WriteTo([]byte(ident+" "+strings.TrimSpace(string(buf[:n]))+"\n"), from)
		}
	}
	return fmt.Errorf("proto %q: want tcp, udp or http", proto)
}

func dial(network, addr, ident string, timeout time.Duration) result {
	deadline := time.Now().Add(timeout)
	if network == "sendto" {
		return sendto(addr, ident, deadline)
	}
	c, err := (&net.Dialer{Deadline: deadline}).Dial(network, addr)
	if err != nil {
		return failure("connect", err)
	}
	defer c.Close()
	_ = c.SetDeadline(deadline)
	if _, err := fmt.Fprintf(c, "hello from %s\n", ident); err != nil {
		return failure("send", err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return failure("receive", err)
	}
	return result{OK: true, Reply: strings.TrimSpace(line)}
}

// sendto sends one datagram with an unconnected UDP socket (sendmsg, not
// connect, is the hook that sees it) and waits for the echo.
func sendto(addr, ident string, deadline time.Time) result {
	to, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return failure("resolve", err)
	}
	pc, err := net.ListenPacket("udp", ":0")
	if err != nil {
		return failure("socket", err)
	}
	defer pc.Close()
	_ = pc.SetDeadline(deadline)
	if _, err := pc.WriteTo([]byte("hello from "+ident+"\n"), to); err != nil {
		return failure("sendto", err)
	}
	buf := make([]byte, 512)
	n, _, err := pc.ReadFrom(buf)
	if err != nil {
		return failure("receive", err)
	}
	return result{OK: true, Reply: strings.TrimSpace(string(buf[:n]))}
}

func httpRequest(method, url string, timeout time.Duration) result {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return doRequest(ctx, &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}, method, url)
}

func doRequest(ctx context.Context, client *http.Client, method, url string) result {
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		return result{Op: "request", Error: err.Error()}
	}
	resp, err := client.Do(req)
	if err != nil {
		r := failure("request", err)
		if errors.Is(err, context.DeadlineExceeded) {
			r.Timeout = true
		}
		return r
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64*1024))
	return result{OK: true, Status: resp.StatusCode, Reply: string(body)}
}

// serveDNS answers, on UDP and TCP port, the A query of each name given
// as NAME=IPv4 with that address (TTL 60 s), and any other query of such a
// name with no records; other names get NXDOMAIN.
func serveDNS(port string, records []string) error {
	addrs := map[string]net.IP{}
	for _, r := range records {
		name, ip, _ := strings.Cut(r, "=")
		a := net.ParseIP(ip).To4()
		if name == "" || a == nil {
			return fmt.Errorf("record %q: want NAME=IPv4", r)
		}
		addrs[dns.CanonicalName(name)] = a
	}
	h := dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		m.Compress = true
		if len(q.Question) != 1 {
			m.Rcode = dns.RcodeFormatError
			_ = w.WriteMsg(m)
			return
		}
		question := q.Question[0]
		switch a, ok := addrs[dns.CanonicalName(question.Name)]; {
		case !ok:
			m.Rcode = dns.RcodeNameError
		case question.Qtype == dns.TypeA:
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: question.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: a})
		}
		_ = w.WriteMsg(m)
	})
	pc, err := net.ListenPacket("udp", ":"+port)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", ":"+port)
	if err != nil {
		return err
	}
	errc := make(chan error, 2)
	go func() { errc <- (&dns.Server{PacketConn: pc, Handler: h}).ActivateAndServe() }()
	go func() { errc <- (&dns.Server{Listener: ln, Handler: h}).ActivateAndServe() }()
	fmt.Println(readyMarker, pc.LocalAddr())
	return <-errc
}

// httpByName resolves the URL's host as a pod's resolver does (Go's
// resolver, its queries over UDP to server, which a connected socket sends),
// then sends the request to the first address it got.
func httpByName(server, method, rawURL string, timeout time.Duration) result {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	u, err := url.Parse(rawURL)
	if err != nil {
		return result{Op: "request", Error: err.Error()}
	}
	resolver := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, server)
	}}
	ips, err := resolver.LookupNetIP(ctx, "ip4", u.Hostname())
	if err != nil {
		return failure("resolve", err)
	}
	var addrs []string
	for _, ip := range ips {
		addrs = append(addrs, ip.String())
	}
	client := &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			_, port, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, err
			}
			return (&net.Dialer{}).DialContext(ctx, "tcp4", net.JoinHostPort(addrs[0], port))
		}}}
	r := doRequest(ctx, client, method, rawURL)
	r.Addrs = addrs
	return r
}

func failure(op string, err error) result {
	r := result{Op: op, Error: err.Error()}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		r.Errno = int(errno)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		r.Timeout = true
	}
	return r
}
