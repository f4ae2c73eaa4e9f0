package nettest

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

const helperEnv = "SIDEWALL_NETTEST_HELPER=1"

// HelperEnv is the environment that makes a test binary run as the helper.
var HelperEnv = []string{helperEnv}

// HelperArgv returns the argv that runs this test binary as the traffic
// helper with args:
//
//	connect tcp|udp HOST:PORT TIMEOUT   connect (UDP: connect, send, await echo)
//	sendto HOST:PORT TIMEOUT            unconnected UDP sendto, await echo
//	ping HOST TIMEOUT                   one ICMP/ICMPv6 echo
//	serve tcp|udp HOST:PORT             TCP: greet and close; UDP: echo
//	udpsession HOST:PORT TIMEOUT        one connected UDP socket; per stdin
//	                                    line, send and await the echo
//
// Each one-shot command prints "ok" or "err ERRNO" (e.g. "err EPERM",
// "err timeout").
func HelperArgv(args ...string) []string {
	exe, _ := os.Executable()
	return append([]string{exe}, args...)
}

// MaybeRunHelper runs the helper and exits when the binary was started by
// HelperArgv; otherwise it returns at once. Call it first in TestMain.
func MaybeRunHelper() {
	if os.Getenv(strings.Split(helperEnv, "=")[0]) != "1" {
		return
	}
	os.Exit(helperMain(os.Args[1:]))
}

func helperMain(args []string) int {
	if len(args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: connect|sendto|ping|serve ...")
		return 2
	}
	var err error
	switch args[0] {
	case "serve":
		if len(args) != 3 {
			return 2
		}
		return serve(args[1], args[2])
	case "connect":
		if len(args) != 4 {
			return 2
		}
		err = connect(args[1], args[2], duration(args[3]))
	case "sendto":
		if len(args) != 3 {
			return 2
		}
		err = sendto(args[1], duration(args[2]))
	case "udpsession":
		if len(args) != 3 {
			return 2
		}
		return udpSession(args[1], duration(args[2]))
	case "ping":
		if len(args) != 3 {
			return 2
		}
		err = ping(args[1], duration(args[2]))
	default:
		fmt.Fprintf(os.Stderr, "unknown helper command %q\n", args[0])
		return 2
	}
	fmt.Println(resultString(err))
	return 0
}

func duration(s string) time.Duration {
	d, err := time.ParseDuration(s)
	if err != nil {
		return 2 * time.Second
	}
	return d
}

func resultString(err error) string {
	if err == nil {
		return "ok"
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		switch errno {
		case syscall.EPERM:
			return "err EPERM"
		case syscall.ECONNREFUSED:
			return "err ECONNREFUSED"
		}
		return "err " + errno.Error()
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "err timeout"
	}
	return "err " + err.Error()
}

func connect(proto, addr string, timeout time.Duration) error {
	c, err := net.DialTimeout(proto, addr, timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if proto == "udp" {
		if _, err := c.Write([]byte("ping")); err != nil {
			return err
		}
	}
	buf := make([]byte, 64)
	if _, err := c.Read(buf); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	return nil
}

func sendto(addr string, timeout time.Duration) error {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return err
	}
	network := "udp4"
	if ua.IP.To4() == nil {
		network = "udp6"
	}
	c, err := net.ListenUDP(network, nil)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.WriteTo([]byte("ping"), ua); err != nil {
		return err
	}
	buf := make([]byte, 64)
	_, _, err = c.ReadFrom(buf)
	return err
}

func ping(host string, timeout time.Duration) error {
	ip := net.ParseIP(host)
	if ip == nil {
		return fmt.Errorf("bad address %q", host)
	}
	network, listen := "ip4:icmp", "0.0.0.0"
	var typ icmp.Type = ipv4.ICMPTypeEcho
	proto := 1
	if ip.To4() == nil {
		network, listen, typ, proto = "ip6:ipv6-icmp", "::", ipv6.ICMPTypeEchoRequest, 58
	}
	c, err := icmp.ListenPacket(network, listen)
	if err != nil {
		return err
	}
	defer c.Close()
	id := os.Getpid() & 0xffff
	msg := icmp.Message{Type: typ, Body: &icmp.Echo{ID: id, Seq: 1, Data: []byte("sidewall")}}
	b, err := msg.Marshal(nil)
	if err != nil {
		return err
	}
	if _, err := c.WriteTo(b, &net.IPAddr{IP: ip}); err != nil {
		return err
	}
	c.SetDeadline(time.Now().Add(timeout))
	buf := make([]byte, 1500)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			return err
		}
		m, err := icmp.ParseMessage(proto, buf[:n])
		if err != nil || from.String() != ip.String() {
			continue
		}
		if e, ok := m.Body.(*icmp.Echo); ok && (m.Type == ipv4.ICMPTypeEchoReply || m.Type == ipv6.ICMPTypeEchoReply) && e.ID == id {
			return nil
		}
	}
}

func serve(proto, addr string) int {
	if proto == "udp" {
		c, err := net.ListenPacket("udp", addr)
		if err != nil {
			fmt.Println("err", err)
			return 1
		}
		fmt.Println("ready")
		buf := make([]byte, 2048)
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				return 1
			}
			c.WriteTo(buf[:n], from)
		}
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Println("err", err)
		return 1
	}
	fmt.Println("ready")
	for {
		c, err := l.Accept()
		if err != nil {
			return 1
		}
		c.Write([]byte("hello\n"))
		c.Close()
	}
}

// Result is the outcome of a one-shot helper command.
type Result struct {
	OK      bool
	Err     string // "EPERM", "timeout", ... when not OK
	Elapsed time.Duration
	Output  string
}

// RunHelper runs a one-shot helper command in cgroup and ns.
func RunHelper(t testing.TB, cgroup string, ns *Netns, args ...string) Result {
	t.Helper()
	start := time.Now()
	out, err := Run(cgroup, ns, HelperEnv, HelperArgv(args...)...)
	r := Result{Elapsed: time.Since(start), Output: out}
	if err != nil {
		t.Fatalf("helper %v in %s: %v: %s", args, cgroup, err, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	last := lines[len(lines)-1]
	r.OK = last == "ok"
	r.Err = strings.TrimPrefix(last, "err ")
	return r
}

// StartServer starts `serve` in cgroup and ns and waits until it listens.
func StartServer(t testing.TB, cgroup string, ns *Netns, proto, addr string) {
	t.Helper()
	cmd := command(cgroup, ns, HelperEnv, HelperArgv("serve", proto, addr)...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start server %s %s: %v", proto, addr, err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "ready" {
		t.Fatalf("server %s %s did not start: %q %v", proto, addr, line, err)
	}
}

// udpSession keeps one connected UDP socket (whose verdicts the datapath
// may cache) and exchanges one datagram per line read from stdin.
func udpSession(addr string, timeout time.Duration) int {
	c, err := net.Dial("udp", addr)
	if err != nil {
		fmt.Println(resultString(err))
		return 0
	}
	defer c.Close()
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	buf := make([]byte, 64)
	for in.Scan() {
		c.SetDeadline(time.Now().Add(timeout))
		_, err := c.Write([]byte("ping"))
		if err == nil {
			_, err = c.Read(buf)
		}
		fmt.Println(resultString(err))
	}
	return 0
}

// Session is a running udpsession helper.
type Session struct {
	in  io.WriteCloser
	out *bufio.Reader
}

// StartUDPSession starts a udpsession helper in cgroup and ns.
func StartUDPSession(t testing.TB, cgroup string, ns *Netns, addr string) *Session {
	t.Helper()
	cmd := command(cgroup, ns, HelperEnv, HelperArgv("udpsession", addr, "1s")...)
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start udp session to %s: %v", addr, err)
	}
	t.Cleanup(func() {
		in.Close()
		cmd.Process.Kill()
		cmd.Wait()
	})
	s := &Session{in: in, out: bufio.NewReader(out)}
	if line, err := s.out.ReadString('\n'); err != nil || strings.TrimSpace(line) != "ready" {
		t.Fatalf("udp session to %s did not start: %q %v", addr, line, err)
	}
	return s
}

// Exchange sends one datagram on the session's socket and returns the result.
func (s *Session) Exchange(t testing.TB) Result {
	t.Helper()
	start := time.Now()
	if _, err := io.WriteString(s.in, "x\n"); err != nil {
		t.Fatalf("udp session: %v", err)
	}
	line, err := s.out.ReadString('\n')
	if err != nil {
		t.Fatalf("udp session: %v", err)
	}
	line = strings.TrimSpace(line)
	return Result{OK: line == "ok", Err: strings.TrimPrefix(line, "err "), Elapsed: time.Since(start), Output: line}
}
