package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"github.com/cilium/cilium/pkg/k8s/client/clientset/versioned"

	"github.com/sidewall/sidewall/hack/harness/agentnode"
	"github.com/sidewall/sidewall/hack/harness/localnode"
)

// ciliumFQDNPolicy lets log-shipper reach api.example.test on TCP 8080 by
// name, after a lookup through the dns pod; nothing restricts the app. The
// DNS grant is shared, so that the app keeps its DNS (an exclusive grant
// would take it away: docs/semantics.md, rule 2); toFQDNs grants are never
// exclusive.
const ciliumFQDNPolicy = `
metadata: {name: shipper-fqdn}
spec:
  podSelector: {matchLabels: {app: web}}
  containers: {names: [log-shipper]}
  shareGrantsWithPod: true
  egress:
  - toEndpoints: [{matchLabels: {app: dns}}]
    toPorts: [{ports: [{port: "53", protocol: UDP}, {port: "53", protocol: TCP}]}]
  - toFQDNs: [{matchName: api.example.test}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
  - toFQDNs: [{matchName: world.example.test}]
    toPorts: [{ports: [{port: "9443", protocol: TCP}]}]
`

// TestCiliumFQDN runs per-container toFQDNs beside a real cilium-agent with
// its L7 proxy on, so that the generated CNP's DNS rule puts Cilium's own
// DNS proxy (in the agent; no Envoy is needed for DNS) in the path of every
// lookup of the pod: sidewall's proxy in the pod forwards the sidecar's
// query from the pod's IP, Cilium's bpf_lxc redirects it to Cilium's DNS
// proxy, which learns the answer for the pod and relays it back.
func TestCiliumFQDN(t *testing.T) {
	n := agentnode.New(t, agentnode.Options{Prefix: "e2efqdn", CiliumNode: true, CiliumL7Proxy: true})
	n.StartController()
	web := n.RunPod("web", map[string]string{"app": "web"}, true)
	dnsPod := n.RunPod("dns", map[string]string{"app": "dns"}, false)
	api := n.RunPod("api", map[string]string{"app": "api"}, false)
	other := n.RunPod("other", map[string]string{"app": "other"}, false)
	for _, p := range []*localnode.Pod{api, other} {
		n.Listen(p, "app", "tcp", 8080)
	}
	// An address outside the cluster, where this test process listens.
	outside, unroute, err := n.Local.OutsideHost()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unroute() })
	world, err := net.Listen("tcp", netip.AddrPortFrom(outside, 9443).String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { world.Close() })
	go func() {
		for {
			c, err := world.Accept()
			if err != nil {
				return
			}
			go func() {
				// One line back, as the harness's servers answer.
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				line, _ := bufio.NewReader(c).ReadString('\n')
				fmt.Fprintf(c, "world %s", line)
			}()
		}
	}()
	// short.example.test and the race's names are unused here.
	startHelperServer(t, n, dnsPod, "app", "fqdnserve", api.IP.String(), other.IP.String(), api.IP.String(), n.Local.PodCIDR().Addr().String(),
		outside.String())
	server := netip.AddrPortFrom(dnsPod.IP, 53).String()
	start := time.Now()
	// ApplyPolicy waits until the cilium-agent imports the generated CNP,
	// DNS rule and toFQDNs included.
	n.ApplyPolicy(ciliumFQDNPolicy)
	// Cilium regenerates the web endpoint after the import: its DNS
	// proxy is in the path of the pod's lookups only after that.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	err = n.Local.WaitCiliumRedirect(ctx, web.IP, "dns", 53)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	waitDNSProxy(t, n)
	run := helperRunner(t, n, web)
	apiAnswer := "ANSWER " + api.IP.String() + " "

	t.Run("the sidecar reaches api.example.test by name", func(t *testing.T) {
		for _, proto := range []string{"udp", "tcp"} {
			waitFor(t, "log-shipper's lookup over "+proto, func() error {
				out := run("log-shipper", "fqdn", server, proto, "api.example.test", "A", "8080")
				if !strings.HasPrefix(out, apiAnswer) || !strings.Contains(out, "CONNECT OK") {
					return fmt.Errorf("got %q, want %s... and CONNECT OK", out, apiAnswer)
				}
				return nil
			})
		}
	})

	t.Run("Cilium's DNS proxy was in the path and learned the name for the pod", func(t *testing.T) {
		ctx := context.Background()
		waitFor(t, "api.example.test in Cilium's FQDN cache", func() error {
			cache, err := n.Local.CiliumFQDNCache(ctx)
			if err != nil {
				return err
			}
			for _, l := range cache {
				if l.Fqdn == "api.example.test." && slices.Contains(l.Ips, api.IP.String()) {
					return nil
				}
			}
			return fmt.Errorf("Cilium's FQDN cache holds no api.example.test -> %s: %d entries", api.IP, len(cache))
		})
		// Cilium's Hubble shows its DNS proxy's L7 record of the pod's lookup.
		waitFor(t, "Cilium's L7 DNS flow of the web pod", func() error {
			flows, err := n.Local.CiliumFlows(ctx, start, time.Time{}, &flowpb.FlowFilter{
				SourceIp: []string{web.IP.String()}, EventType: []*flowpb.EventTypeFilter{{Type: 129}}, // L7
			})
			if err != nil {
				return err
			}
			for _, f := range flows {
				if d := f.GetL7().GetDns(); d != nil && d.GetQuery() == "api.example.test." {
					return nil
				}
			}
			return fmt.Errorf("%d L7 flows from %s, none a DNS record of api.example.test", len(flows), web.IP)
		})
	})

	t.Run("the sidecar is refused other.example.test", func(t *testing.T) {
		// The lookup itself is allowed (port 53 to the dns pod); the
		// address it returns is not learned, and sidewall refuses at once.
		out := run("log-shipper", "fqdn", server, "udp", "other.example.test", "A", "8080")
		if !strings.HasPrefix(out, "ANSWER "+other.IP.String()+" ") || !strings.Contains(out, "CONNECT EPERM") {
			t.Fatalf("other.example.test: %q, want its answer and CONNECT EPERM", out)
		}
	})

	t.Run("the app is unaffected", func(t *testing.T) {
		// Not selected: its lookups are not redirected, and it reaches
		// both addresses, the one the sidecar is refused included.
		out := run("app", "fqdn", server, "udp", "other.example.test", "A", "8080")
		if !strings.HasPrefix(out, "ANSWER "+other.IP.String()+" ") || !strings.Contains(out, "CONNECT OK") {
			t.Fatalf("app, other.example.test: %q, want its answer and CONNECT OK", out)
		}
		n.Expect(web, "app", api, "8080", true)
		n.Expect(web, "app", other, "8080", true)
	})

	t.Run("under Cilium's default deny both layers decide", func(t *testing.T) {
		cc, err := versioned.NewForConfig(n.Env.Config)
		if err != nil {
			t.Fatal(err)
		}
		applyCNP(t, n, cc, defaultDeny)
		worldAddr := world.Addr().String()
		// An address outside the cluster passes both: Cilium's toFQDNs
		// (its DNS proxy gave the address an identity with the name's
		// label) and sidewall's, from the sidecar's own answer.
		since := time.Now()
		waitFor(t, "log-shipper's lookup of world.example.test and connection under default deny", func() error {
			out := run("log-shipper", "fqdn", server, "udp", "world.example.test", "A", "9443")
			if !strings.Contains(out, "CONNECT OK") {
				return fmt.Errorf("got %q, want CONNECT OK", out)
			}
			return nil
		})
		waitFor(t, "Cilium's verdict on it", func() error {
			flows, err := n.Local.CiliumFlows(context.Background(), since, time.Time{}, &flowpb.FlowFilter{
				SourceIp: []string{web.IP.String()}, DestinationIp: []string{outside.String()},
			})
			if err != nil {
				return err
			}
			for _, f := range flows {
				if f.GetVerdict() == flowpb.Verdict_FORWARDED && slices.Contains(f.GetDestination().GetLabels(), "fqdn:world.example.test") {
					return nil
				}
			}
			return fmt.Errorf("%d flows of Cilium's to %s, none FORWARDED to an identity labelled fqdn:world.example.test", len(flows), worldAddr)
		})
		// Cilium's toFQDNs is per pod: the sidecar's lookup opened the
		// address for the whole pod, and the app, which no
		// ContainerNetworkPolicy restricts, reaches it without a lookup
		// of its own.
		if _, err := n.Local.Dial(context.Background(), web, "app", "tcp", worldAddr, 2*time.Second); err != nil {
			t.Errorf("app -> %s (resolved only by the sidecar): %v, want Cilium's per-pod toFQDNs to let it through", worldAddr, err)
		}
		// Cilium's toFQDNs does not select addresses of its endpoints (its
		// pkg/fqdn: "toFQDNs can only handle non-cluster IPs", an
		// endpoint's identity clobbers the name's): the sidecar learned
		// api.example.test, sidewall lets it through, Cilium drops it.
		out := run("log-shipper", "fqdn", server, "udp", "api.example.test", "A")
		if !strings.HasPrefix(out, apiAnswer) {
			t.Fatalf("log-shipper api.example.test: %q, want its answer", out)
		}
		waitCiliumDrops(t, n, web, "log-shipper", api, "8080")
		// Nothing at pod level opens other's address: sidewall lets the
		// unrestricted app through, Cilium drops it.
		waitCiliumDrops(t, n, web, "app", other, "8080")
	})
}
