package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/sidewall/sidewall/hack/harness/agentnode"
	"github.com/sidewall/sidewall/hack/harness/localnode"
)

// TestCiliumNodeKubeProxy runs Cilium without kube-proxy replacement, with
// a kube-proxy stand-in (iptables DNAT in the node's network namespace)
// load-balancing the Services. There is no socket LB: the pod's packets
// leave with the ClusterIP as destination, and both sidewall's connect
// hook and its cgroup_skb program see that address. sidewall must decide
// it on the Service's backends, as with Cilium's socket LB.
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
		addr := svcs[svc].String()
		waitFor(t, fmt.Sprintf("%s/%s -> Service %s %s (allowed=%t)", p.Name, container, svc, addr, allowed), func() error {
			_, err := n.Local.Dial(context.Background(), p, container, "tcp", addr, 2*time.Second)
			switch {
			case allowed && err != nil:
				return err
			case !allowed && !errors.Is(err, syscall.EPERM):
				return fmt.Errorf("got %v, want EPERM", err)
			}
			return nil
		})
	}
	packets := func(svc string) int {
		t.Helper()
		c, err := proxied[svc]()
		if err != nil {
			t.Fatal(err)
		}
		return c
	}

	// The app is unrestricted: its connection through the stand-in shows
	// the stand-in, not Cilium, translates the Service address.
	before := packets("payments")
	dial(web, "app", "payments", true)
	if after := packets("payments"); after <= before {
		t.Fatalf("the kube-proxy stand-in translated no packet of web/app -> payments (%d -> %d): Cilium load-balanced it, so this test does not test kube-proxy mode", before, after)
	}
	// The sidecar reaches the Service whose backend its policy allows...
	before = packets("logging")
	dial(web, "log-shipper", "logging", true)
	if after := packets("logging"); after <= before {
		t.Errorf("web/log-shipper -> logging: the stand-in translated no packet (%d -> %d)", before, after)
	}
	// ...and is refused, at connect, the one whose backend it may not
	// reach: no packet reaches the stand-in.
	before = packets("payments")
	dial(web, "log-shipper", "payments", false)
	if after := packets("payments"); after != before {
		t.Errorf("web/log-shipper -> payments was refused, yet %d packet(s) reached the stand-in", after-before)
	}
	// The sidecar's grant is exclusive: the app may not reach logging.
	dial(web, "app", "logging", false)
}
