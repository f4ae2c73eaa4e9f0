package bypass

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sidewall/sidewall/bpfext"
	"github.com/sidewall/sidewall/hack/harness/agentnode"
	"github.com/sidewall/sidewall/hack/harness/localnode"
)

func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == helperArg {
		os.Exit(runHelper(os.Args[2:]))
	}
	os.Exit(m.Run())
}

// suite is the shared agent node (agentnode: envtest, a local node and the
// agent started by agent.Start) and the test binary, which doubles as the
// attacker.
type suite struct {
	*agentnode.Node
	t   *testing.T
	exe string
}

func newSuite(t *testing.T) *suite {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	n := agentnode.New(t, agentnode.Options{Prefix: "bypass", LogLevel: slog.LevelWarn})
	return &suite{Node: n, t: t, exe: exe}
}

func (s *suite) stop() { s.StopAgent() }

func (s *suite) runPod(name, app string, sidecar bool) *localnode.Pod {
	s.t.Helper()
	return s.RunPod(name, map[string]string{"app": app}, sidecar)
}

func (s *suite) listen(p *localnode.Pod, container, proto string, port int) {
	s.t.Helper()
	s.Listen(p, container, proto, port)
}

// The sidecar may only reach app=a on TCP 8080 and UDP 8081; everything else it sends
// is default-denied.
const policy = `
metadata: {name: shipper}
spec:
  podSelector: {matchLabels: {app: web}}
  containers: {names: [log-shipper]}
  shareGrantsWithPod: true
  egress:
  - toEndpoints: [{matchLabels: {app: a}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}, {port: "8081", protocol: UDP}]}]
`

func (s *suite) applyPolicy() { s.t.Helper(); s.ApplyPolicy(policy) }

// start runs one helper op in a container without waiting.
func (s *suite) start(p *localnode.Pod, container string, args ...string) *localnode.Process {
	s.t.Helper()
	pr, err := s.Local.RunInContainer(p, container, append([]string{s.exe, helperArg}, args...))
	if err != nil {
		s.t.Fatalf("start %v in %s/%s: %v", args, p.Name, container, err)
	}
	s.t.Cleanup(func() { _ = pr.Stop() })
	return pr
}

// attack runs one helper op in a container and returns its steps by name.
func (s *suite) attack(p *localnode.Pod, container string, args ...string) map[string]step {
	s.t.Helper()
	pr := s.start(p, container, args...)
	select {
	case <-pr.Done():
	case <-time.After(30 * time.Second):
		s.t.Fatalf("%v in %s/%s did not finish: %s", args, p.Name, container, pr.Output())
	}
	return parseSteps(s.t, pr.Output())
}

func parseSteps(t *testing.T, out string) map[string]step {
	t.Helper()
	steps := map[string]step{}
	for _, l := range strings.Split(out, "\n") {
		if rest, ok := strings.CutPrefix(l, resultPrefix); ok {
			var st step
			if err := json.Unmarshal([]byte(rest), &st); err != nil {
				t.Fatalf("bad helper line %q: %v", l, err)
			}
			steps[st.Name] = st
		}
	}
	if len(steps) == 0 {
		t.Fatalf("helper reported nothing:\n%s", out)
	}
	return steps
}

func (s *suite) counters() bpfext.Counters {
	s.t.Helper()
	c, err := s.Agent.Datapath.Counters()
	if err != nil {
		s.t.Fatalf("counters: %v", err)
	}
	return c
}

// sidecarDenies is the agent's per-container deny count for log-shipper of
// pod web, from the datapath's events (socket hooks included).
func (s *suite) sidecarDenies() float64 {
	rec := httptest.NewRecorder()
	s.Agent.Agent.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	var sum float64
	for _, line := range strings.Split(rec.Body.String(), "\n") {
		if strings.HasPrefix(line, "sidewall_verdicts_total{") && strings.Contains(line, `container="log-shipper"`) &&
			strings.Contains(line, `verdict="deny"`) && strings.Contains(line, `pod="web"`) {
			f := strings.Fields(line)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			sum += v
		}
	}
	return sum
}

// expectDenyEvents waits until the agent has counted more denies of the
// sidecar than before (events are read asynchronously).
func (s *suite) expectDenyEvents(t *testing.T, before float64) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if s.sidecarDenies() > before {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no new deny event of web/log-shipper (still %v)", before)
		}
	}
}

// expectSkbDeny asserts the egress default-deny (or the given reason)
// counter of cgroup_skb grew.
func expectSkbDeny(t *testing.T, before, after bpfext.Counters, r bpfext.Reason) {
	t.Helper()
	b, a := before.Get(bpfext.Egress, bpfext.Deny, r), after.Get(bpfext.Egress, bpfext.Deny, r)
	if a <= b {
		t.Errorf("egress deny %s counter did not grow: %d -> %d", r, b, a)
	}
}

func wantEPERM(t *testing.T, what string, st step) {
	t.Helper()
	if st.OK || syscall.Errno(st.Errno) != syscall.EPERM {
		t.Errorf("%s from the sidecar: got %+v, want EPERM", what, st)
	}
}

func wantOK(t *testing.T, what string, st step) {
	t.Helper()
	if !st.OK {
		t.Errorf("control: %s from the app: got %+v, want success (nothing to compare the sidecar's denial with)", what, st)
	}
}

func TestBypass(t *testing.T) {
	s := newSuite(t)
	a := s.runPod("peer-a", "a", false)
	b := s.runPod("peer-b", "b", false)
	s.listen(a, "app", "tcp", 8080)
	s.listen(a, "app", "udp", 8081)
	s.listen(b, "app", "tcp", 8080)
	s.listen(b, "app", "udp", 8081)
	web := s.runPod("web", "web", true)
	// The app's own port, reachable over loopback. Bound before any policy,
	// so before the agent attaches the pod: no bind hook saw it, and the
	// socket hooks find its holder by looking the listener up
	// (TestBypassRound2 binds after the attachment).
	s.listen(web, "app", "tcp", 9090)
	bTCP := net.JoinHostPort(b.IP.String(), "8080")
	bUDP := net.JoinHostPort(b.IP.String(), "8081")

	// Sockets the sidecar opens before any policy exists.
	signal := filepath.Join(t.TempDir(), "policy-applied")
	pre := s.start(web, "log-shipper", "prepolicy", bUDP, bTCP, signal)
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(pre.Output(), readyLine); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("pre-policy sockets not ready: %s", pre.Output())
		}
	}

	s.applyPolicy()
	// Wait until the agent enforces: the sidecar's denied connect gets EPERM.
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		_, err := s.Local.Dial(context.Background(), web, "log-shipper", "tcp", bTCP, 2*time.Second)
		if errors.Is(err, syscall.EPERM) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("policy not enforced after 15s: %v", err)
		}
	}
	if _, err := s.Local.Dial(context.Background(), web, "log-shipper", "tcp", net.JoinHostPort(a.IP.String(), "8080"), 2*time.Second); err != nil {
		t.Fatalf("the sidecar's allowed connection to peer-a:8080 failed: %v", err)
	}

	t.Run("socket opened before the policy", func(t *testing.T) {
		before := s.counters()
		if err := os.WriteFile(signal, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		select {
		case <-pre.Done():
		case <-time.After(20 * time.Second):
			t.Fatalf("pre-policy helper did not finish: %s", pre.Output())
		}
		st := parseSteps(t, pre.Output())
		wantOK(t, "udp before the policy (same sidecar)", st["udp-before"])
		wantOK(t, "tcp before the policy (same sidecar)", st["tcp-before"])
		wantEPERM(t, "send on a connected UDP socket opened before the policy", st["udp-after"])
		if st["tcp-after"].OK {
			t.Errorf("TCP connection established before the policy still answers: %+v", st["tcp-after"])
		}
		expectSkbDeny(t, before, s.counters(), bpfext.ReasonDefaultDeny)
	})

	t.Run("IPv6 instead of IPv4", func(t *testing.T) {
		// Give the pod an IPv6 address (localnode pods have none) so the
		// sidecar has an IPv6 route off the pod.
		ip := exec.Command("ip", "-n", web.NetNSName, "-6", "addr", "add", "fd5e:5e::1/64", "dev", "eth0", "nodad")
		sysctl := exec.Command("ip", "netns", "exec", web.NetNSName, "sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=0")
		for _, c := range []*exec.Cmd{sysctl, ip} {
			if out, err := c.CombinedOutput(); err != nil {
				t.Fatalf("%v: %v: %s", c.Args, err, out)
			}
		}
		peer6 := "[fd5e:5e::2]:8081"
		ev := s.sidecarDenies()
		wantOK(t, "udp6 sendto", s.attack(web, "app", "udp", peer6)["udp"])
		wantEPERM(t, "udp6 sendto off the pod", s.attack(web, "log-shipper", "udp", peer6)["udp"])
		wantOK(t, "tcp6 to [::1]:9090", s.attack(web, "app", "tcp", "[::1]:9090")["send"])
		wantEPERM(t, "tcp6 connect to the app over [::1]", s.attack(web, "log-shipper", "tcp", "[::1]:9090")["connect"])
		s.expectDenyEvents(t, ev)
		before := s.counters()
		wantOK(t, "raw ICMPv6", s.attack(web, "app", "icmp6", "fd5e:5e::2")["icmp6"])
		wantEPERM(t, "raw ICMPv6 echo", s.attack(web, "log-shipper", "icmp6", "fd5e:5e::2")["icmp6"])
		expectSkbDeny(t, before, s.counters(), bpfext.ReasonDefaultDeny)
	})

	t.Run("UDP", func(t *testing.T) {
		ev := s.sidecarDenies()
		wantOK(t, "udp sendto peer-b", s.attack(web, "app", "udp", bUDP)["udp"])
		wantEPERM(t, "udp sendto peer-b", s.attack(web, "log-shipper", "udp", bUDP)["udp"])
		s.expectDenyEvents(t, ev)
	})

	t.Run("connected UDP versus sendto", func(t *testing.T) {
		ev := s.sidecarDenies()
		wantOK(t, "connected udp to peer-b", s.attack(web, "app", "udpconn", bUDP)["send"])
		wantEPERM(t, "connect() of a UDP socket to peer-b", s.attack(web, "log-shipper", "udpconn", bUDP)["connect"])
		wantEPERM(t, "sendto without connect to peer-b", s.attack(web, "log-shipper", "udp", bUDP)["udp"])
		s.expectDenyEvents(t, ev)
	})

	t.Run("ICMP", func(t *testing.T) {
		before := s.counters()
		wantOK(t, "ICMP echo to peer-b", s.attack(web, "app", "icmp", b.IP.String())["icmp"])
		wantEPERM(t, "ICMP echo to peer-b", s.attack(web, "log-shipper", "icmp", b.IP.String())["icmp"])
		expectSkbDeny(t, before, s.counters(), bpfext.ReasonDefaultDeny)
	})

	t.Run("SCTP", func(t *testing.T) {
		ctl := s.attack(web, "app", "sctp", bUDP)["sctp"]
		if ctl.Unsupported {
			t.Skipf("kernel has no SCTP (socket: %s): the SCTP case cannot run here", ctl.Error)
		}
		// No SCTP listener on peer-b: a reachable peer answers with ABORT.
		if syscall.Errno(ctl.Errno) != syscall.ECONNREFUSED {
			t.Fatalf("control: SCTP from the app: got %+v, want ECONNREFUSED (the peer's ABORT)", ctl)
		}
		before, ev := s.counters(), s.sidecarDenies()
		st := s.attack(web, "log-shipper", "sctp", bUDP)["sctp"]
		if st.OK || syscall.Errno(st.Errno) == syscall.ECONNREFUSED {
			t.Fatalf("SCTP from the sidecar reached peer-b: %+v", st)
		}
		if syscall.Errno(st.Errno) == syscall.EPERM {
			s.expectDenyEvents(t, ev)
		} else {
			expectSkbDeny(t, before, s.counters(), bpfext.ReasonDefaultDeny)
		}
		t.Logf("sidecar SCTP connect: %+v", st)
	})

	t.Run("raw socket with CAP_NET_RAW", func(t *testing.T) {
		// The helper runs as root with every capability, CAP_NET_RAW included.
		before := s.counters()
		wantOK(t, "hand-built UDP over IPPROTO_RAW", s.attack(web, "app", "raw", b.IP.String(), "8081")["raw"])
		wantEPERM(t, "hand-built UDP over IPPROTO_RAW", s.attack(web, "log-shipper", "raw", b.IP.String(), "8081")["raw"])
		expectSkbDeny(t, before, s.counters(), bpfext.ReasonDefaultDeny)
	})

	t.Run("AF_PACKET socket with CAP_NET_RAW", func(t *testing.T) {
		// Known gap (docs/threat-model.md): a packet socket writes frames
		// to the device below the IP stack, so no cgroup hook sees them.
		// The test asserts what happens: the frame reaches peer-b.
		out, err := exec.Command("ip", "-n", b.NetNSName, "-j", "link", "show", "eth0").Output()
		if err != nil {
			t.Fatalf("peer-b eth0: %v", err)
		}
		var links []struct{ Address string }
		if err := json.Unmarshal(out, &links); err != nil || len(links) != 1 {
			t.Fatalf("peer-b eth0: %v: %s", err, out)
		}
		recv := s.start(b, "app", "udprecv", "8082")
		for deadline := time.Now().Add(10 * time.Second); !strings.Contains(recv.Output(), readyLine); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("receiver not ready: %s", recv.Output())
			}
		}
		before := s.counters()
		st := s.attack(web, "log-shipper", "packet", links[0].Address, b.IP.String(), "8082")["packet"]
		if !st.OK {
			t.Fatalf("AF_PACKET send from the sidecar: %+v", st)
		}
		select {
		case <-recv.Done():
		case <-time.After(10 * time.Second):
			t.Fatal("receiver did not finish")
		}
		got := parseSteps(t, recv.Output())["recv"]
		if !got.OK || !strings.Contains(got.Reply, "bypass over AF_PACKET") {
			t.Fatalf("peer-b did not get the sidecar's AF_PACKET frame (%+v): the gap is closed — update docs/threat-model.md", got)
		}
		after := s.counters()
		if n, was := after.Get(bpfext.Egress, bpfext.Deny, bpfext.ReasonDefaultDeny), before.Get(bpfext.Egress, bpfext.Deny, bpfext.ReasonDefaultDeny); n != was {
			t.Errorf("default-deny counter moved (%d -> %d): a cgroup hook saw the frame", was, n)
		}
		t.Logf("peer-b received %q from the restricted sidecar over AF_PACKET: not enforced (drop CAP_NET_RAW)", got.Reply)
	})

	t.Run("IP fragments", func(t *testing.T) {
		// peer-a is an allowed peer (TCP 8080): the fragments go to it.
		before := s.counters()
		wantOK(t, "UDP fragments to peer-a:8080", s.attack(web, "app", "frag", a.IP.String(), "8080")["frag"])
		st := s.attack(web, "log-shipper", "frag", a.IP.String(), "8080")["frag"]
		if st.OK || !strings.Contains(st.Error, "non-first fragment") || syscall.Errno(st.Errno) != syscall.EPERM {
			t.Errorf("non-first fragment from the sidecar: got %+v, want EPERM", st)
		}
		after := s.counters()
		expectSkbDeny(t, before, after, bpfext.ReasonFragment)
		expectSkbDeny(t, before, after, bpfext.ReasonDefaultDeny) // the first fragment: UDP to 8080, not allowed

		// A datagram the kernel fragments (4000 bytes, DF off) is judged
		// whole, before fragmentation: allowed to peer-a:8081, denied to
		// peer-b:8081.
		ev := s.sidecarDenies()
		wantOK(t, "4000-byte UDP to peer-b:8081", s.attack(web, "app", "large", bUDP)["large"])
		if st := s.attack(web, "log-shipper", "large", net.JoinHostPort(a.IP.String(), "8081"))["large"]; !st.OK {
			t.Errorf("allowed 4000-byte UDP from the sidecar to peer-a:8081: got %+v, want an answer", st)
		}
		wantEPERM(t, "4000-byte UDP to peer-b:8081", s.attack(web, "log-shipper", "large", bUDP)["large"])
		s.expectDenyEvents(t, ev)
	})

	t.Run("loopback to another container's port", func(t *testing.T) {
		ev := s.sidecarDenies()
		wantOK(t, "127.0.0.1:9090", s.attack(web, "app", "tcp", "127.0.0.1:9090")["send"])
		wantEPERM(t, "tcp connect to the app's 127.0.0.1:9090", s.attack(web, "log-shipper", "tcp", "127.0.0.1:9090")["connect"])
		wantEPERM(t, "tcp connect to the app's pod-IP:9090", s.attack(web, "log-shipper", "tcp", net.JoinHostPort(web.IP.String(), "9090"))["connect"])
		s.expectDenyEvents(t, ev)
	})

	t.Run("child cgroup it creates itself", func(t *testing.T) {
		c, err := web.Container("log-shipper")
		if err != nil {
			t.Fatal(err)
		}
		appc, err := web.Container("app")
		if err != nil {
			t.Fatal(err)
		}
		for _, dir := range []string{c.CgroupDir, appc.CgroupDir} {
			child := filepath.Join(dir, "bypass-child")
			t.Cleanup(func() { _ = os.Remove(child) })
		}
		// Control: the app in a child cgroup of its own is still the
		// (unrestricted) app.
		if st := s.attack(web, "app", "childcg", appc.CgroupDir, bTCP); !st["move"].OK || !st["tcp"].OK {
			t.Fatalf("control: app from its own child cgroup: %+v", st)
		}
		ev := s.sidecarDenies()
		st := s.attack(web, "log-shipper", "childcg", c.CgroupDir, bTCP)
		if !st["move"].OK {
			t.Fatalf("sidecar could not move into its own child cgroup: %+v", st)
		}
		wantEPERM(t, "tcp to peer-b from a child cgroup", st["tcp"])
		s.expectDenyEvents(t, ev)
	})

	t.Run("socket passed from the app over SCM_RIGHTS", func(t *testing.T) {
		// Known limit: a socket belongs to the cgroup that created it. The
		// sidecar sending on the app's connected socket is the app, to
		// cgroup_skb; only sendto with an address runs the sendmsg hook,
		// which classifies the calling task.
		path := filepath.Join(t.TempDir(), "pass.sock")
		app := s.start(web, "app", "passfd", path, bUDP)
		for deadline := time.Now().Add(10 * time.Second); !strings.Contains(app.Output(), readyLine); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("app did not open its sockets: %s", app.Output())
			}
		}
		before := s.counters()
		st := s.attack(web, "log-shipper", "recvfd", path, bUDP)
		if n, was := s.counters().Get(bpfext.Egress, bpfext.Allow, bpfext.ReasonUnrestricted), before.Get(bpfext.Egress, bpfext.Allow, bpfext.ReasonUnrestricted); n <= was {
			t.Errorf("egress allow/unrestricted counter did not grow (%d -> %d): the passed socket's packet was not classified as the (unrestricted) app", was, n)
		}
		if !st["connected-send"].OK {
			t.Errorf("send on the app's connected socket: got %+v; the documented limit says it passes as the app — update docs/threat-model.md", st["connected-send"])
		}
		wantEPERM(t, "sendto on the app's unconnected socket", st["unconnected-sendto"])
		t.Logf("passed sockets: connected send %+v; unconnected sendto %+v", st["connected-send"], st["unconnected-sendto"])
	})

	t.Run("agent down", func(t *testing.T) {
		s.stop()
		for i := 0; i < 3; i++ {
			_, err := s.Local.Dial(context.Background(), web, "log-shipper", "tcp", bTCP, 2*time.Second)
			if !errors.Is(err, syscall.EPERM) {
				t.Fatalf("with the agent stopped, sidecar -> peer-b:8080: got %v, want EPERM", err)
			}
		}
		dp, err := bpfext.Load(bpfext.Options{PinDir: s.PinDir, KeepVerdicts: true})
		if err != nil {
			t.Fatalf("adopt pins: %v", err)
		}
		defer dp.Close()
		before, err := dp.Counters()
		if err != nil {
			t.Fatal(err)
		}
		wantEPERM(t, "raw UDP with the agent stopped", s.attack(web, "log-shipper", "raw", b.IP.String(), "8081")["raw"])
		after, err := dp.Counters()
		if err != nil {
			t.Fatal(err)
		}
		expectSkbDeny(t, before, after, bpfext.ReasonDefaultDeny)
		if _, err := s.Local.Dial(context.Background(), web, "log-shipper", "tcp", net.JoinHostPort(a.IP.String(), "8080"), 2*time.Second); err != nil {
			t.Errorf("with the agent stopped, the allowed connection failed: %v", err)
		}
	})
}
