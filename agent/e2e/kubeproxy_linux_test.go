package e2e

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/sidewall/sidewall/hack/harness/agentnode"
	"github.com/sidewall/sidewall/hack/harness/localnode"
)

// TestCiliumNodeKubeProxy runs Cilium without kube-proxy replacement, with
// a kube-proxy stand-in (iptables DNAT in the node's network namespace) for
// the Services, as kube-proxy would program it. There is no socket LB: the
// pod's packets leave with the ClusterIP as destination, and both
// sidewall's connect hook and its cgroup_skb program see that address.
// Cilium still translates ClusterIPs per packet at the pod's veth once it
// has them (bpf_lxc compiles its per-packet LB in whenever the socket LB is
// not full), the stand-in whatever reaches the node untranslated; either
// way it happens after sidewall's hooks. sidewall must decide the address
// on the Service's backends, as with the socket LB.
func TestCiliumNodeKubeProxy(t *testing.T) {
	n := agentnode.New(t, agentnode.Options{Prefix: "e2ekp", CiliumNode: true, CiliumWithoutKPR: true})
	n.StartController()
	web := n.RunPod("web", map[string]string{"app": "web"}, true)
	logging := n.RunPod("logging", map[string]string{"app": "logging"}, false)
	payments := n.RunPod("payments", map[string]string{"app": "payments"}, false)
	for _, p := range []*localnode.Pod{logging, payments} {
		n.Listen(p, "app", "tcp", 8080)
	}
	n.ApplyPolicy(shipperPolicy)

	proxied := map[string]func() (int, error){}
	svcs := map[string]netip.AddrPort{}
	for _, s := range []struct {
		name    string
		backend *localnode.Pod
	}{{"logging", logging}, {"payments", payments}} {
		svc := createService(t, n, s.name, s.backend)
		count, err := n.Local.ProxyService("tcp", svc, netip.AddrPortFrom(s.backend.IP, 8080))
		if err != nil {
			t.Fatal(err)
		}
		proxied[s.name] = count
		svcs[s.name] = svc
	}
	dial := func(p *localnode.Pod, container, svc string, allowed bool) {
		t.Helper()
		expectTCP(t, n, p, container, svcs[svc].String(), allowed)
	}
	packets := func(svc string) int {
		t.Helper()
		c, err := proxied[svc]()
		if err != nil {
			t.Fatal(err)
		}
		return c
	}

	// No socket LB: nothing of Cilium's at its cgroup root's connect4.
	names, err := attachedPrograms(n.Local.CiliumCgroupRoot(), ebpf.AttachCGroupInet4Connect)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		if strings.HasPrefix(name, "cil_sock") {
			t.Fatalf("Cilium attached %s at its cgroup root with kube-proxy replacement off: the test does not test kube-proxy mode", name)
		}
	}

	dial(web, "app", "payments", true) // unrestricted
	dial(web, "log-shipper", "logging", true)
	// Refused at connect: no packet leaves the pod, none reaches the
	// stand-in.
	before := packets("payments")
	dial(web, "log-shipper", "payments", false)
	if after := packets("payments"); after != before {
		t.Errorf("web/log-shipper -> payments was refused, yet %d packet(s) reached the stand-in", after-before)
	}
	// The sidecar's grant is exclusive: the app may not reach logging.
	dial(web, "app", "logging", false)
	t.Logf("packets the kube-proxy stand-in translated: logging %d, payments %d (the rest Cilium's per-packet LB did)", packets("logging"), packets("payments"))
}
