package e2e

import (
	"context"
	"fmt"
	"net/http/httptest"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"

	"k8s.io/client-go/kubernetes"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sidewall/sidewall/agent"

	"github.com/sidewall/sidewall/bpfext"
	"github.com/sidewall/sidewall/hack/harness/agentnode"
	"github.com/sidewall/sidewall/hack/harness/localnode"
)

// fqdnPolicy lets log-shipper reach, by name, api.example.test and the
// race test's names on their ports, after a lookup through the dns pod;
// the app is restricted to DNS only, so whatever the sidecar learns must
// open nothing for it.
const fqdnPolicy = `
metadata: {name: fqdn}
spec:
  podSelector: {matchLabels: {app: web}}
  containers: {names: [log-shipper]}
  egress:
  - toEndpoints: [{matchLabels: {app: dns}}]
    toPorts: [{ports: [{port: "53", protocol: UDP}, {port: "53", protocol: TCP}]}]
  - toFQDNs:
    - matchName: api.example.test
    - matchName: alias.example.test
    - matchName: v6.example.test
    - matchName: many.example.test
    - matchName: stray.example.test
    - matchName: short.example.test
    - matchName: wrongid.example.test
    - matchPattern: "*.race.example.test"
    toPorts: [{ports: [{port: "8080", protocol: TCP}, {port: "9", protocol: UDP}]}]
---
metadata: {name: app-dns-only}
spec:
  podSelector: {matchLabels: {app: web}}
  containers: {names: [app]}
  egress:
  - toEndpoints: [{matchLabels: {app: dns}}]
    toPorts: [{ports: [{port: "53", protocol: UDP}, {port: "53", protocol: TCP}]}]
`

// TestFQDN runs per-container toFQDNs on the real kernel: a real DNS
// server in a peer pod, the agent's DNS proxy in the web pod's network
// namespace, real lookups and connections from the containers.
func TestFQDN(t *testing.T) {
	// Room for the race's 10,000 addresses and the other cases', not for
	// the last case's 1,000 more.
	const share = 10500
	n := agentnode.New(t, agentnode.Options{Prefix: "fqdn", FQDNMaxPerContainer: share})
	web := n.RunPod("web", map[string]string{"app": "web"}, true)
	dnsPod := n.RunPod("dns", map[string]string{"app": "dns"}, false)
	api := n.RunPod("api", map[string]string{"app": "api"}, false)
	other := n.RunPod("other", map[string]string{"app": "other"}, false)
	short := n.RunPod("short", map[string]string{"app": "short"}, false)
	for _, p := range []*localnode.Pod{api, other, short} {
		n.Listen(p, "app", "tcp", 8080)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	startHelperServer(t, n, dnsPod, "app", "fqdnserve", api.IP.String(), other.IP.String(), short.IP.String(), n.Local.PodCIDR().Addr().String())
	server := netip.AddrPortFrom(dnsPod.IP, 53).String()
	for _, doc := range strings.Split(fqdnPolicy, "---\n") {
		n.ApplyPolicy(doc)
	}
	dp := n.Agent.Datapath
	waitDNSProxy(t, n)
	run := helperRunner(t, n, web)
	learned := func(ip netip.Addr) bool {
		es, err := dp.FQDNEntries()
		if err != nil {
			t.Fatal(err)
		}
		now := bpfext.MonotonicSeconds()
		for _, e := range es {
			if e.Addr == ip {
				for _, x := range e.Expires {
					if x > now {
						return true
					}
				}
			}
		}
		return false
	}

	t.Run("a name outside the policy opens nothing", func(t *testing.T) {
		out := run("log-shipper", "fqdn", server, "udp", "other.example.test", "A", "8080")
		if !strings.Contains(out, "ANSWER "+other.IP.String()) || !strings.Contains(out, "CONNECT EPERM") {
			t.Fatalf("log-shipper other.example.test: %q, want the answer and a refused connect", out)
		}
	})
	t.Run("hubble observe shows the lookup and names the missed rule", func(t *testing.T) {
		var lookup, drop *flowpb.Flow
		waitFor(t, "the DNS flow and the drop in hubble observe", func() error {
			lookup, drop = nil, nil
			for _, f := range observeSidewall(t, n) {
				if d := f.GetL7().GetDns(); d != nil && d.GetQuery() == "other.example.test." && slices.Contains(d.GetIps(), other.IP.String()) &&
					containerOf(f.GetDestination()) == "log-shipper" {
					lookup = f
				}
				if f.GetVerdict() == flowpb.Verdict_DROPPED && f.GetIP().GetDestination() == other.IP.String() &&
					containerOf(f.GetSource()) == "log-shipper" {
					drop = f
				}
			}
			if lookup == nil || drop == nil {
				return fmt.Errorf("lookup %v, drop %v", lookup != nil, drop != nil)
			}
			return nil
		})
		for _, want := range []string{"spec.egress[1].toFQDNs[0] (api.example.test)", "last resolved as other.example.test."} {
			if !strings.Contains(drop.GetSummary(), want) {
				t.Errorf("drop summary %q does not contain %q", drop.GetSummary(), want)
			}
		}
	})
	t.Run("a CNAME chain from an allowed name", func(t *testing.T) {
		out := run("log-shipper", "fqdn", server, "udp", "alias.example.test", "A", "8080")
		if !strings.Contains(out, "ANSWER "+api.IP.String()) || !strings.Contains(out, "CONNECT OK") {
			t.Fatalf("log-shipper alias.example.test: %q, want the chain's address and a connection", out)
		}
	})
	t.Run("the sidecar's lookup opens nothing for the app", func(t *testing.T) {
		out := run("app", "fqdn", server, "udp", "api.example.test", "A", "8080")
		if !strings.Contains(out, "ANSWER "+api.IP.String()) || !strings.Contains(out, "CONNECT EPERM") {
			t.Fatalf("app api.example.test: %q, want the answer and a refused connect", out)
		}
	})
	t.Run("TCP DNS", func(t *testing.T) {
		out := run("log-shipper", "fqdn", server, "tcp", "api.example.test", "A", "8080")
		if !strings.Contains(out, "ANSWER "+api.IP.String()) || !strings.Contains(out, "CONNECT OK") {
			t.Fatalf("log-shipper api.example.test over TCP: %q", out)
		}
	})
	t.Run("many answers: truncated over UDP, whole over TCP and with EDNS0", func(t *testing.T) {
		out := run("log-shipper", "fqdn", server, "udp", "many.example.test", "A")
		if !strings.Contains(out, "tc=true") {
			t.Errorf("plain UDP: %q, want a truncated answer", out)
		}
		for _, proto := range []string{"tcp", "udp-edns"} {
			out := run("log-shipper", "fqdn", server, proto, "many.example.test", "A")
			if got := strings.Count(out, "203.0.113."); got != 40 {
				t.Errorf("%s: %d addresses in %q, want 40", proto, got, out)
			}
		}
		for i := 1; i <= 40; i++ {
			if ip := netip.AddrFrom4([4]byte{203, 0, 113, byte(i)}); !learned(ip) {
				t.Errorf("%s not learned", ip)
			}
		}
	})
	t.Run("IPv6 answers", func(t *testing.T) {
		out := run("log-shipper", "fqdn", server, "udp", "v6.example.test", "AAAA")
		if !strings.Contains(out, "ANSWER 2001:db8::7") {
			t.Fatalf("v6.example.test AAAA: %q", out)
		}
		if !learned(netip.MustParseAddr("2001:db8::7")) {
			t.Error("2001:db8::7 not learned")
		}
	})
	t.Run("only the chain of the asked name is learned", func(t *testing.T) {
		run("log-shipper", "fqdn", server, "udp", "stray.example.test", "A")
		if !learned(netip.MustParseAddr("198.51.100.1")) {
			t.Error("stray.example.test's own address not learned")
		}
		if learned(netip.MustParseAddr("198.51.100.2")) {
			t.Error("an address of unrelated.example.test, off the chain, was learned")
		}
	})
	t.Run("an answer with another id teaches nothing", func(t *testing.T) {
		out := run("log-shipper", "fqdn", server, "udp", "wrongid.example.test", "A")
		if !strings.HasPrefix(out, "DNSERR") {
			t.Errorf("wrongid.example.test: %q, want no answer", out)
		}
	})
	t.Run("a forged answer teaches nothing", func(t *testing.T) {
		port, ok := uint16(0), false
		for _, p := range mustProxies(t, dp) {
			port, ok = p, true
		}
		if !ok {
			t.Fatal("no proxy port")
		}
		out := run("log-shipper", "fqdnforge", fmt.Sprint(port), other.IP.String())
		if !strings.Contains(out, "PROXYSEND EPERM") || !strings.Contains(out, "CONNECT EPERM") {
			t.Fatalf("forge: %q, want the send to the proxy refused and no connection", out)
		}
	})
	t.Run("a server the policy does not allow", func(t *testing.T) {
		out := run("log-shipper", "fqdn", netip.AddrPortFrom(other.IP, 53).String(), "udp", "api.example.test", "A")
		if !strings.HasPrefix(out, "DNSEPERM") {
			t.Fatalf("lookup through a server not allowed: %q, want EPERM", out)
		}
	})
	t.Run("an expired answer: the open connection lives on, no new one", func(t *testing.T) {
		ctx := context.Background()
		// short.example.test has a TTL of 1 s. The held connection waits
		// long enough for the test to see the entry gone and a new
		// connection refused (a dropped SYN: up to 2 s) before it talks again.
		hold, err := n.Local.RunInContainer(web, "log-shipper", []string{exe, helperArg, "fqdnhold", server, "short.example.test", "8080", "9s"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { hold.Stop() })
		waitFor(t, "the held connection open", func() error {
			if out := hold.Output(); !strings.Contains(out, "OPEN\n") {
				if strings.Contains(out, "ERR") {
					t.Fatalf("fqdnhold: %s", out)
				}
				return fmt.Errorf("not yet: %q", out)
			}
			return nil
		})
		time.Sleep(2500 * time.Millisecond)
		n.Agent.Agent.SweepFQDN()
		if learned(short.IP) {
			t.Fatal("short.example.test's address is still learned after its TTL and a sweep")
		}
		// A new epoch: the held socket's cached verdict is void, so its next
		// packet takes the whole verdict and passes only by its flow.
		if err := dp.SetSocketCache(true); err != nil {
			t.Fatal(err)
		}
		if _, err := n.Local.Dial(ctx, web, "log-shipper", "tcp", netip.AddrPortFrom(short.IP, 8080).String(), 2*time.Second); err == nil {
			t.Error("a new connection to short.example.test's address after its TTL succeeded")
		}
		_ = hold.Wait()
		if out := hold.Output(); !strings.Contains(out, "HELD OK") {
			t.Errorf("the connection opened while the answer was valid did not outlive it: %q", out)
		}
	})
	t.Run("10,000 lookups, each followed at once by a connection", func(t *testing.T) {
		out := run("log-shipper", "fqdnrace", server, "10000")
		if !strings.Contains(out, "RACE ok=10000 fail=0") {
			t.Fatalf("race: %s", out)
		}
	})
	t.Run("the same under load", func(t *testing.T) {
		// The app floods the dns pod with lookups while the sidecar races.
		load, err := n.Local.RunInContainer(web, "app", []string{exe, helperArg, "fqdnrace", server, "1000000", "4"})
		if err != nil {
			t.Fatal(err)
		}
		defer load.Stop()
		out := run("log-shipper", "fqdnrace", server, "10000", "4")
		if !strings.Contains(out, "RACE ok=10000 fail=0") {
			t.Fatalf("race under load: %s", out)
		}
	})
	t.Run("a full share fails closed and is reported", func(t *testing.T) {
		kc, err := kubernetes.NewForConfig(n.Env.Config)
		if err != nil {
			t.Fatal(err)
		}
		out := run("log-shipper", "fqdnrace", server, "1000", "1", "10000")
		var ok, fail int
		if _, err := fmt.Sscanf(out[strings.Index(out, "RACE"):], "RACE ok=%d fail=%d", &ok, &fail); err != nil {
			t.Fatalf("race: %q: %v", out, err)
		}
		if fail == 0 || ok+fail != 1000 {
			t.Fatalf("race past the share of %d: ok=%d fail=%d, want some refused", share, ok, fail)
		}
		waitFor(t, "the pod's condition "+agent.PodConditionFQDN+"=False", func() error {
			p, err := kc.CoreV1().Pods(n.Namespace).Get(context.Background(), web.Name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			for _, c := range p.Status.Conditions {
				if c.Type == agent.PodConditionFQDN && c.Status == corev1.ConditionFalse && strings.Contains(c.Message, "log-shipper") {
					return nil
				}
			}
			return fmt.Errorf("conditions %v", p.Status.Conditions)
		})
		waitFor(t, "the Event "+agent.EventReasonFQDNFull, func() error {
			evs, err := kc.EventsV1().Events(n.Namespace).List(context.Background(), metav1.ListOptions{})
			if err != nil {
				return err
			}
			for _, e := range evs.Items {
				if e.Reason == agent.EventReasonFQDNFull && e.Regarding.Name == web.Name {
					return nil
				}
			}
			return fmt.Errorf("no such event among %d", len(evs.Items))
		})
		rec := httptest.NewRecorder()
		n.Agent.Agent.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		if !strings.Contains(rec.Body.String(), `sidewall_dns_answers_total{result="full"}`) {
			t.Error("no sidewall_dns_answers_total{result=\"full\"} in /metrics")
		}
	})
}

func mustProxies(t *testing.T, dp *bpfext.Datapath) map[uint32]uint16 {
	t.Helper()
	ps, err := dp.DNSProxies()
	if err != nil {
		t.Fatal(err)
	}
	return ps
}
