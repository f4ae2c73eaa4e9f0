package bypass

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http/httptest"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/sidewall/sidewall/agent/hubble"
	"github.com/sidewall/sidewall/bpfext"
	"github.com/sidewall/sidewall/hack/harness/localnode"
)

func netipAddrPort(s string) (netip.AddrPort, error) { return netip.ParseAddrPort(s) }

// The sidecar of web2 may reach the world (any address no pod or node
// holds) on any port, and nothing of the pod: the grant that the first
// round's pod-local escapes needed. flood's sidecar may reach nothing
// but peer-b's TCP 8080.
const (
	worldPolicy = `
metadata: {name: shipper-world}
spec:
  podSelector: {matchLabels: {app: web2}}
  containers: {names: [log-shipper]}
  shareGrantsWithPod: true
  egress:
  - toEntities: [world]
`
	floodPolicy = `
metadata: {name: flooder}
spec:
  podSelector: {matchLabels: {app: flood}}
  containers: {names: [log-shipper]}
  shareGrantsWithPod: true
  egress:
  - toEndpoints: [{matchLabels: {app: b}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
`
)

// denies is the agent's per-container deny count (from the events).
func (s *suite) denies(pod, container string) float64 {
	rec := httptest.NewRecorder()
	s.Agent.Agent.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	var sum float64
	for _, line := range strings.Split(rec.Body.String(), "\n") {
		if strings.HasPrefix(line, "sidewall_verdicts_total{") && strings.Contains(line, `container="`+container+`"`) &&
			strings.Contains(line, `verdict="deny"`) && strings.Contains(line, `pod="`+pod+`"`) {
			f := strings.Fields(line)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			sum += v
		}
	}
	return sum
}

func (s *suite) waitDenies(t *testing.T, pod, container string, before float64) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if s.denies(pod, container) > before {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no new deny event of %s/%s in Hubble's source (still %v)", pod, container, before)
		}
	}
}

// ready waits for a helper's READY line and returns its fields after it.
func ready(t *testing.T, pr *localnode.Process) []string {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		for _, l := range strings.Split(pr.Output(), "\n") {
			if rest, ok := strings.CutPrefix(l, readyLine); ok {
				return strings.Fields(rest)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("helper not ready: %s", pr.Output())
		}
	}
}

func nsRun(t *testing.T, netns string, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"netns", "exec", netns}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("%v in %s: %v: %s", args, netns, err, out)
	}
	return string(out)
}

func wantDenied(t *testing.T, what string, st step) {
	t.Helper()
	if st.OK {
		t.Errorf("%s from the sidecar: got %+v, want it denied", what, st)
	}
}

func wantErrno(t *testing.T, what string, st step, errno syscall.Errno) {
	t.Helper()
	if st.OK || syscall.Errno(st.Errno) != errno {
		t.Errorf("%s: got %+v, want %v", what, st, errno)
	}
}

func TestBypassRound2(t *testing.T) {
	s := newSuite(t)
	b := s.runPod("peer-b", "b", false)
	s.listen(b, "app", "tcp", 8080)
	s.listen(b, "app", "udp", 8081)
	declared := func(p *corev1.Pod) {
		p.Spec.Containers[0].Ports = []corev1.ContainerPort{{ContainerPort: 9090}, {ContainerPort: 9091}}
	}
	web := s.RunPod("web2", map[string]string{"app": "web2"}, true, declared)
	flood := s.RunPod("flood", map[string]string{"app": "flood"}, true)
	s.ApplyPolicy(worldPolicy)
	s.ApplyPolicy(floodPolicy)
	bTCP := net.JoinHostPort(b.IP.String(), "8080")
	bUDP := net.JoinHostPort(b.IP.String(), "8081")
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		_, err1 := s.Local.Dial(context.Background(), web, "log-shipper", "tcp", bTCP, 2*time.Second)
		_, err2 := s.Local.Dial(context.Background(), flood, "log-shipper", "tcp", net.JoinHostPort(b.IP.String(), "9"), 2*time.Second)
		if errors.Is(err1, syscall.EPERM) && errors.Is(err2, syscall.EPERM) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("policies not enforced after 15s: web2 %v, flood %v", err1, err2)
		}
	}
	// The app's servers, bound once the pod is attached.
	s.listen(web, "app", "tcp", 9090)
	s.listen(web, "app", "udp", 8082)
	appC, err := web.Container("app")
	if err != nil {
		t.Fatal(err)
	}
	appCg, err := bpfext.CgroupID(appC.CgroupDir)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("port ownership: a bind that fails makes no owner", func(t *testing.T) {
		// The first round's hook recorded every bind() attempt before the
		// kernel refused it: the sidecar became the owner of 9090.
		ev := s.denies("web2", "log-shipper")
		st := s.attack(web, "log-shipper", "failbind", "9090", "127.0.0.1:9090")
		wantErrno(t, "the sidecar's bind of the app's port", st["bind"], syscall.EADDRINUSE)
		wantEPERM(t, "tcp to the app's 127.0.0.1:9090 after the failed bind", st["connect"])
		wantOK(t, "127.0.0.1:9090", s.attack(web, "app", "tcp", "127.0.0.1:9090")["send"])
		s.waitDenies(t, "web2", "log-shipper", ev)
		bound, err := s.Agent.Datapath.BoundPorts()
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, bp := range bound {
			if bp.Port == 9090 && bp.Protocol == bpfext.ProtoTCP && bp.Sockets > 0 {
				found = true
				if bp.CgroupID != appCg {
					t.Errorf("TCP 9090 is held by cgroup %d, want the app's %d: %+v", bp.CgroupID, appCg, bp)
				}
			}
		}
		if !found {
			t.Errorf("TCP 9090 has no holder in the bound-port table: %+v", bound)
		}
	})

	t.Run("pod-local by real delivery: every local address, multicast and broadcast", func(t *testing.T) {
		ns := web.NetNSName
		nsRun(t, ns, "sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=0")
		nsRun(t, ns, "ip", "addr", "add", "198.51.100.20/32", "dev", "eth0")
		// Routes a pod of a CNI with a default route has anyway.
		nsRun(t, ns, "ip", "route", "add", "224.0.0.0/4", "dev", "eth0")
		nsRun(t, ns, "ip", "route", "add", "255.255.255.255/32", "dev", "eth0")
		var ll string
		for deadline := time.Now().Add(10 * time.Second); ll == ""; time.Sleep(100 * time.Millisecond) {
			out := nsRun(t, ns, "ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "link")
			if f := strings.Fields(out); len(f) > 3 && !strings.Contains(out, "tentative") {
				ll = strings.SplitN(f[3], "/", 2)[0]
			}
			if time.Now().After(deadline) {
				t.Fatalf("eth0 has no IPv6 link-local address: %s", out)
			}
		}
		// An IPv4 socket: multicast reaches it without a group join.
		ready(t, s.start(web, "app", "udpecho4", "8083"))
		before := s.counters()
		for _, c := range []struct{ what, op, addr string }{
			{"the pod's IPv6 link-local address", "tcp", "[" + ll + "%eth0]:9090"},
			{"a second address of the pod", "tcp", "198.51.100.20:9090"},
			{"multicast to all hosts", "bcast", "224.0.0.1:8083"},
			{"limited broadcast", "bcast", "255.255.255.255:8083"},
		} {
			app := s.attack(web, "app", c.op, c.addr)
			side := s.attack(web, "log-shipper", c.op, c.addr)
			key := "send"
			if !app[key].OK {
				t.Errorf("control: %s (%s) from the app: %+v", c.what, c.addr, app)
				continue
			}
			wantDenied(t, c.what+" ("+c.addr+")", side[key])
			if side["connect"].OK {
				t.Errorf("%s: the sidecar connected to the app", c.what)
			}
		}
		expectSkbDeny(t, before, s.counters(), bpfext.ReasonDefaultDeny)
	})

	t.Run("shared PID namespace: the sidecar sends through the app's socket", func(t *testing.T) {
		// The harness's containers share one PID namespace (the node's), as
		// shareProcessNamespace pods do. Same uid, no capabilities: the
		// sidecar takes the app's connected socket with pidfd_getfd and
		// reaches peer-b:8081, which its policy denies. BypassRisk reports
		// this for every restricted container of such a pod.
		app := s.start(web, "app", "holdsock", "1000", bUDP)
		f := ready(t, app)
		if len(f) != 2 {
			t.Fatalf("holdsock printed %v", f)
		}
		wantEPERM(t, "udp to peer-b:8081 from the sidecar's own socket", s.attack(web, "log-shipper", "udpconn", bUDP)["connect"])
		st := s.attack(web, "log-shipper", "stealfd", "1000", f[0], f[1])
		if !st["getfd"].OK || !st["send"].OK {
			t.Fatalf("the documented escape did not happen (pidfd_getfd %+v, send %+v): update docs/threat-model.md", st["getfd"], st["send"])
		}
		t.Logf("escape shown: the sidecar (uid 1000, no capabilities) sent as the app: %+v", st["send"])
	})

	t.Run("shared PID namespace: a sidecar of another uid cannot take the socket", func(t *testing.T) {
		app := s.start(web, "app", "holdsock", "1001", bUDP)
		f := ready(t, app)
		st := s.attack(web, "log-shipper", "stealfd", "1000", f[0], f[1])
		wantErrno(t, "pidfd_getfd of the app's socket by another uid", st["getfd"], syscall.EPERM)
	})

	t.Run("bind and SO_REUSEPORT: the app's ports stay the app's", func(t *testing.T) {
		ev := s.denies("web2", "log-shipper")
		hub := s.followHubble(t, "--pod", s.Namespace+"/web2", "--verdict", "DROPPED")
		// 9091 is declared by the app and not bound yet: a sidecar that
		// starts first must not take it.
		wantEPERM(t, "bind of the app's declared, unbound TCP 9091", s.attack(web, "log-shipper", "bindport", "tcp", "9091")["bind"])
		wantOK(t, "bind of its own declared 9091", s.attack(web, "app", "bindport", "tcp", "9091")["bind"])
		// 9092 is not declared; the app serves it as a SO_REUSEPORT group.
		ready(t, s.start(web, "app", "reuselisten", "9092"))
		wantEPERM(t, "joining the app's SO_REUSEPORT group on 9092", s.attack(web, "log-shipper", "reusebind", "9092")["bind"])
		wantOK(t, "a second app socket joining its own group", s.attack(web, "app", "reusebind", "9092")["bind"])
		// Its own free port is the sidecar's.
		wantOK(t, "bind of a free port (sidecar)", s.attack(web, "log-shipper", "bindport", "udp", "7001")["bind"])
		s.waitDenies(t, "web2", "log-shipper", ev)
		// The refused bind is a flow in Hubble: to the sidecar that tried,
		// from the container that holds (here: declares) the port.
		container := "k8s:" + hubble.ContainerLabel + "="
		fl := hub.wait(t, "the refused bind of 9091", func(f hubbleFlow) bool {
			return f.ext("hook") == "bind" && f.dport() == 9091
		})
		if fl.ext("reason") != "port-taken" || fl.ext("container") != "log-shipper" ||
			!hasLabel(fl.Flow.Destination.Labels, container+"log-shipper") || !hasLabel(fl.Flow.Source.Labels, container+"app") {
			t.Errorf("the refused bind's flow: reason %q, container %q, from %v to %v; want port-taken, to log-shipper from app",
				fl.ext("reason"), fl.ext("container"), fl.Flow.Source.Labels, fl.Flow.Destination.Labels)
		}
		hub.wait(t, "the refused SO_REUSEPORT join of 9092", func(f hubbleFlow) bool {
			return f.ext("hook") == "bind" && f.dport() == 9092 && f.ext("reason") == "port-taken"
		})
	})

	t.Run("one container cannot exhaust node-wide state", func(t *testing.T) {
		// Ports: the flooder binds more than its pod's share.
		hold := s.start(flood, "log-shipper", "bindmany", "20000", "1500")
		ready(t, hold)
		st := parseSteps(t, hold.Output())["bindmany"]
		n, _ := strconv.Atoi(st.Reply)
		if n > bpfext.DefaultPodPortShare || syscall.Errno(st.Errno) != syscall.EPERM {
			t.Errorf("flooder bound %d ports (first error %+v), want at most the pod share %d and then EPERM", n, st, bpfext.DefaultPodPortShare)
		}
		// Another pod's pod-local rules and binds are untouched.
		wantEPERM(t, "web2 sidecar to the app's 127.0.0.1:9090 during the port flood", s.attack(web, "log-shipper", "tcp", "127.0.0.1:9090")["connect"])
		wantOK(t, "web2 app to its 127.0.0.1:9090 during the port flood", s.attack(web, "app", "tcp", "127.0.0.1:9090")["send"])
		wantOK(t, "web2 sidecar binds a free port during the port flood", s.attack(web, "log-shipper", "bindport", "udp", "7002")["bind"])

		// Events: the flooder sends denied datagrams as fast as it can,
		// each to a new port; web2's one deny must still reach Hubble.
		c0 := s.counters()
		hub := s.followHubble(t, "--pod", s.Namespace+"/web2", "--verdict", "DROPPED")
		fl := s.start(flood, "log-shipper", "udpflood", b.IP.String(), "3")
		ready(t, fl)
		time.Sleep(500 * time.Millisecond)
		ev := s.denies("web2", "log-shipper")
		wantEPERM(t, "web2 sidecar's one denied connect during the event flood", s.attack(web, "log-shipper", "tcp", net.JoinHostPort(b.IP.String(), "9999"))["connect"])
		s.waitDenies(t, "web2", "log-shipper", ev)
		hub.wait(t, "web2's deny during the event flood", func(f hubbleFlow) bool {
			return f.dport() == 9999 && f.Flow.Source.PodName == "web2" && f.ext("container") == "log-shipper"
		})
		select {
		case <-fl.Done():
		case <-time.After(20 * time.Second):
			t.Fatal("flooder did not finish")
		}
		sent, _ := strconv.Atoi(parseSteps(t, fl.Output())["flood"].Reply)
		c1 := s.counters()
		floodC, err := flood.Container("log-shipper")
		if err != nil {
			t.Fatal(err)
		}
		floodCg, err := bpfext.CgroupID(floodC.CgroupDir)
		if err != nil {
			t.Fatal(err)
		}
		budgets, err := s.Agent.Datapath.EventBudgets()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("flooder sent %d denied datagrams; rate-limited %d events (flooder's budget dropped %d), ring buffer lost %d",
			sent, c1.EventsRateLimited-c0.EventsRateLimited, budgets[floodCg], c1.EventsLost-c0.EventsLost)
		if budgets[floodCg] == 0 {
			t.Errorf("the flooder's event budget dropped nothing after %d denies", sent)
		}
		rec := httptest.NewRecorder()
		s.Agent.Agent.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		if !strings.Contains(rec.Body.String(), `sidewall_events_rate_limited{container="log-shipper",namespace="`+s.Namespace+`",pod="flood"}`) {
			t.Errorf("no sidewall_events_rate_limited metric names the flooder")
		}
		if c1.EventsLost != c0.EventsLost {
			t.Errorf("ring buffer lost %d events during the flood: the budget did not protect it", c1.EventsLost-c0.EventsLost)
		}
	})

	t.Run("keep holding: IPv4-mapped IPv6", func(t *testing.T) {
		addr := "[::ffff:" + b.IP.String() + "]:8080"
		wantOK(t, addr, s.attack(web, "app", "tcp", addr)["send"])
		wantEPERM(t, "tcp to peer-b as IPv4-mapped IPv6", s.attack(web, "log-shipper", "tcp", addr)["connect"])
	})

	t.Run("keep holding: 0.0.0.0 and [::] as destinations", func(t *testing.T) {
		for _, addr := range []string{"0.0.0.0:9090", "[::]:9090"} {
			wantOK(t, addr, s.attack(web, "app", "tcp", addr)["send"])
			wantEPERM(t, "tcp to the app at "+addr, s.attack(web, "log-shipper", "tcp", addr)["connect"])
		}
	})

	t.Run("keep holding: UDP-Lite, MPTCP and ping sockets", func(t *testing.T) {
		nsRun(t, web.NetNSName, "sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647")
		wantOK(t, "ping socket", s.attack(web, "app", "pingsock", b.IP.String())["pingsock"])
		wantEPERM(t, "ping socket echo to peer-b", s.attack(web, "log-shipper", "pingsock", b.IP.String())["pingsock"])
		before := s.counters()
		wantEPERM(t, "UDP-Lite to peer-b:8081", s.attack(web, "log-shipper", "udplite", bUDP)["udplite"])
		expectSkbDeny(t, before, s.counters(), bpfext.ReasonUnknownL4)
		app := s.attack(web, "app", "mptcp", bTCP)["mptcp"]
		if app.Unsupported {
			t.Logf("MPTCP: not available in this kernel (%s); not run", app.Error)
			return
		}
		wantOK(t, "MPTCP to peer-b:8080", app)
		wantDenied(t, "MPTCP to peer-b:8080", s.attack(web, "log-shipper", "mptcp", bTCP)["mptcp"])
	})

	t.Run("keep holding: TCP Fast Open", func(t *testing.T) {
		wantOK(t, "TFO to peer-b:8080", s.attack(web, "app", "tfo", bTCP)["tfo"])
		wantEPERM(t, "TFO to peer-b:8080", s.attack(web, "log-shipper", "tfo", bTCP)["tfo"])
	})

	t.Run("keep holding: IPv6 extension headers, a segment routing header", func(t *testing.T) {
		// flood's sidecar may reach nothing but peer-b's TCP 8080.
		nsRun(t, flood.NetNSName, "sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=0")
		nsRun(t, flood.NetNSName, "ip", "-6", "addr", "add", "fd5e:77::1/64", "dev", "eth0", "nodad")
		wantOK(t, "UDP with an SRH", s.attack(flood, "app", "srh", "[fd5e:77::2]:8081", "fd5e:77::3")["srh"])
		wantEPERM(t, "UDP with an SRH through another segment", s.attack(flood, "log-shipper", "srh", "[fd5e:77::2]:8081", "fd5e:77::3")["srh"])
	})

	t.Run("keep holding: io_uring, normal and SQPOLL", func(t *testing.T) {
		for _, mode := range []string{"normal", "sqpoll"} {
			wantOK(t, "io_uring ("+mode+") connect to peer-b:8080", s.attack(web, "app", "uring", bTCP, mode)["uring"])
			wantEPERM(t, "io_uring ("+mode+") connect to peer-b:8080", s.attack(web, "log-shipper", "uring", bTCP, mode)["uring"])
		}
	})

	// Last: it restarts the agent.
	t.Run("keep holding: policy rewrites and an agent restart under a continuous denied stream", func(t *testing.T) {
		recv := s.start(b, "app", "udpcount", "8090", "12")
		ready(t, recv)
		target := net.JoinHostPort(b.IP.String(), "8090")
		s.attack(web, "app", "udpstream", target, "app", "1") // control: the receiver counts
		stream := s.start(web, "log-shipper", "udpstream", target, "sidecar", "8")
		ready(t, stream)
		// Rewrites: the world grant is replaced by a peer-b TCP grant and back.
		narrowed := strings.Replace(worldPolicy, "  - toEntities: [world]\n",
			"  - toEndpoints: [{matchLabels: {app: b}}]\n    toPorts: [{ports: [{port: \"8080\", protocol: TCP}]}]\n", 1)
		for i := 0; i < 3; i++ {
			s.ApplyPolicy(narrowed)
			time.Sleep(300 * time.Millisecond)
			s.ApplyPolicy(worldPolicy)
			time.Sleep(300 * time.Millisecond)
		}
		s.StopAgent()
		time.Sleep(time.Second)
		s.StartAgent()
		select {
		case <-stream.Done():
		case <-time.After(30 * time.Second):
			t.Fatal("stream did not finish")
		}
		s.attack(web, "app", "udpstream", target, "app", "1")
		select {
		case <-recv.Done():
		case <-time.After(30 * time.Second):
			t.Fatal("receiver did not finish")
		}
		counts := map[string]int{}
		if err := json.Unmarshal([]byte(parseSteps(t, recv.Output())["count"].Reply), &counts); err != nil {
			t.Fatalf("receiver: %v: %s", err, recv.Output())
		}
		t.Logf("peer-b received %v; the sidecar's stream (sent, refused): %s", counts, parseSteps(t, stream.Output())["stream"].Reply)
		if counts["app"] == 0 {
			t.Errorf("control: peer-b received nothing from the app: %v", counts)
		}
		if counts["sidecar"] != 0 {
			t.Errorf("%d of the sidecar's denied datagrams reached peer-b during the rewrites and the restart", counts["sidecar"])
		}
	})
}
