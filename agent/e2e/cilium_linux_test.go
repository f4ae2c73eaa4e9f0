package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/cilium/pkg/identity"
	ciliumv2 "github.com/cilium/cilium/pkg/k8s/apis/cilium.io/v2"
	"github.com/cilium/cilium/pkg/k8s/client/clientset/versioned"
	"github.com/cilium/cilium/pkg/maps/ipcache"
	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/sidewall/sidewall/agent"
	"github.com/sidewall/sidewall/hack/harness"
	"github.com/sidewall/sidewall/hack/harness/agentnode"
	"github.com/sidewall/sidewall/hack/harness/localnode"
	"github.com/sidewall/sidewall/translator"
)

// The sidecar may reach logging on TCP 8080, and nothing else; the grant is
// exclusive, so the app may not reach logging:8080.
const shipperPolicy = `
metadata: {name: shipper}
spec:
  podSelector: {matchLabels: {app: web}}
  containers: {names: [log-shipper]}
  egress:
  - toEndpoints: [{matchLabels: {app: logging}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
`

// defaultDeny puts every pod of the namespace into egress default deny at
// Cilium's level: only what some CNP grants passes.
const defaultDeny = `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: default-deny}
spec:
  endpointSelector: {}
  egress:
  - toEndpoints: [{matchLabels: {app: nobody}}]
`

func TestCiliumNode(t *testing.T) {
	certs := relayCerts(t)
	opts := agentnode.Options{Prefix: "e2e", CiliumNode: true}
	opts.HubbleTLS.CA, opts.HubbleTLS.Cert, opts.HubbleTLS.Key = certs.ca, certs.cert, certs.key
	// The Service whose EndpointSlices list every agent, for Relay.
	peerNS := fmt.Sprintf("swpeer-%d", time.Now().UnixNano()%1e9)
	opts.HubblePeerService = peerNS + "/hubble-peer"
	n := agentnode.New(t, opts)
	n.StartController()
	cc, err := versioned.NewForConfig(n.Env.Config)
	if err != nil {
		t.Fatal(err)
	}
	web := n.RunPod("web", map[string]string{"app": "web"}, true)
	logging := n.RunPod("logging", map[string]string{"app": "logging"}, false)
	payments := n.RunPod("payments", map[string]string{"app": "payments"}, false)
	pods := []*localnode.Pod{web, logging, payments}
	for _, p := range []*localnode.Pod{logging, payments} {
		n.Listen(p, "app", "tcp", 8080)
	}

	t.Run("identities", func(t *testing.T) {
		for _, p := range pods {
			cep := waitEndpoint(t, cc, p)
			want := uint32(cep.Status.Identity.ID)
			waitFor(t, fmt.Sprintf("sidewall's identity of %s (%s) = Cilium's %d", p.Name, p.IP, want), func() error {
				ids, err := n.Agent.Datapath.Identities()
				if err != nil {
					return err
				}
				for _, id := range ids {
					if id.Prefix == netip.PrefixFrom(p.IP, 32) {
						if id.Identity != want {
							return fmt.Errorf("sidewall holds %d", id.Identity)
						}
						return nil
					}
				}
				return errors.New("sidewall holds no identity for it")
			})
			cid, err := cc.CiliumV2().CiliumIdentities().Get(context.Background(), fmt.Sprint(want), metav1.GetOptions{})
			if err != nil {
				t.Fatalf("CiliumIdentity %d of %s: %v", want, p.Name, err)
			}
			for k, v := range map[string]string{"k8s:app": p.Name, "k8s:io.kubernetes.pod.namespace": n.Namespace} {
				if got, ok := cid.SecurityLabels[k]; !ok || got != v {
					t.Errorf("CiliumIdentity %d of %s: label %s = %q, want %q (labels %v)", want, p.Name, k, got, v, cid.SecurityLabels)
				}
			}
		}
	})

	t.Run("Cilium imports the generated policy", func(t *testing.T) {
		// ApplyPolicy waits for the cilium-agent to import the CNP.
		n.ApplyPolicy(shipperPolicy)
		name := translator.CNPName("shipper")
		if rules, err := n.Local.CiliumPolicyRules(context.Background(), n.Namespace, name); err != nil || rules == 0 {
			t.Fatalf("cilium-agent holds %d rules from CNP %s (%v), want some", rules, name, err)
		}
		n.Expect(web, "log-shipper", logging, "8080", true)
		n.Expect(web, "log-shipper", payments, "8080", false)
		n.Expect(web, "app", logging, "8080", false) // the sidecar's grant is exclusive
		n.Expect(web, "app", payments, "8080", true)
	})

	t.Run("the verdict reads Cilium's ipcache", func(t *testing.T) {
		if !n.Agent.Datapath.ReadsCiliumIPCache() {
			t.Fatal("the agent does not read the Cilium node's ipcache")
		}
		// The pinned map a real cilium-agent wrote passes sidewall's layout
		// check and holds what Cilium's endpoints say.
		m, err := agent.OpenCiliumIPCache(agent.CiliumIPCachePath(n.Local.CiliumBPFRoot()))
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		lookup := func(a netip.Addr) (uint32, error) {
			k := ipcache.NewKey(netip.PrefixFrom(a, a.BitLen()), 0)
			var v ipcache.RemoteEndpointInfo
			if err := m.Lookup(&k, &v); err != nil {
				return 0, err
			}
			return v.SecurityIdentity, nil
		}
		for _, p := range pods {
			want := uint32(waitEndpoint(t, cc, p).Status.Identity.ID)
			if got, err := lookup(p.IP); err != nil || got != want {
				t.Errorf("Cilium's ipcache: %s (%s) -> %d (%v), want its CiliumEndpoint's %d", p.Name, p.IP, got, err, want)
			}
		}
		if got, err := lookup(n.Local.HostIP()); err != nil || got != uint32(identity.ReservedIdentityHost) {
			t.Errorf("Cilium's ipcache: node %s -> %d (%v), want host (1)", n.Local.HostIP(), got, err)
		}
	})

	t.Run("a new peer's time to a correct verdict", func(t *testing.T) {
		// From the new pod's CNI ADD to the sidecar's first allowed
		// connection, with the verdict reading Cilium's ipcache and with
		// peers from CiliumEndpoints only (the agent restarted without the
		// map). Both include Cilium's own policy update for the new
		// identity; the second adds the CiliumEndpoint's trip through the
		// API server and sidewall's reconcile.
		measure := func(mode string, rounds int) []time.Duration {
			var out []time.Duration
			for i := range rounds {
				p := n.RunPod(fmt.Sprintf("late-%s-%d", mode, i), map[string]string{"app": "logging"}, false)
				start := time.Now()
				n.Listen(p, "app", "tcp", 8080)
				addr := net.JoinHostPort(p.IP.String(), "8080")
				for {
					_, err := n.Local.Dial(context.Background(), web, "log-shipper", "tcp", addr, 200*time.Millisecond)
					if err == nil {
						break
					}
					if time.Since(start) > 60*time.Second {
						t.Fatalf("%s: new peer %s still refused after 60s: %v", mode, p.Name, err)
					}
					time.Sleep(2 * time.Millisecond)
				}
				out = append(out, time.Since(start))
				if err := n.Local.DeletePod(context.Background(), p); err != nil {
					t.Fatal(err)
				}
			}
			slices.Sort(out)
			return out
		}
		fromMap := measure("ipcache", 5)
		n.StopAgent()
		n.SetCiliumIPCache(false)
		n.StartAgent()
		fromCEP := measure("cep", 5)
		n.StopAgent()
		n.SetCiliumIPCache(true)
		n.StartAgent()
		if !n.Agent.Datapath.ReadsCiliumIPCache() {
			t.Error("the restarted agent does not read Cilium's ipcache again")
		}
		t.Logf("new peer -> first allowed connection: Cilium's ipcache median %s max %s; CiliumEndpoints median %s max %s",
			fromMap[len(fromMap)/2].Round(time.Millisecond), fromMap[len(fromMap)-1].Round(time.Millisecond),
			fromCEP[len(fromCEP)/2].Round(time.Millisecond), fromCEP[len(fromCEP)-1].Round(time.Millisecond))
	})

	// This node runs Cilium without its L7 proxy (no Envoy here), so
	// Cilium refuses a CNP with HTTP rules, and one with toFQDNs: the
	// generated CNP gives its DNS grants Cilium's DNS rule, which needs
	// Cilium's DNS proxy, part of the L7 proxy (docs/semantics.md, "The
	// two layers"). The harness must say so, with Cilium's reason,
	// instead of waiting or passing.
	for _, tc := range []struct{ name, policy string }{
		{"refused-l7", `
metadata: {name: refused-l7}
spec:
  podSelector: {matchLabels: {app: payments}}
  containers: {names: [app]}
  egress:
  - toEndpoints: [{matchLabels: {app: logging}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}], rules: {http: [{method: POST, path: "^/ingest$"}]}}]
`},
		{"refused-fqdn", `
metadata: {name: refused-fqdn}
spec:
  podSelector: {matchLabels: {app: payments}}
  containers: {names: [app]}
  egress:
  - toEndpoints: [{matchLabels: {app: logging}}]
    toPorts: [{ports: [{port: "53", protocol: UDP}]}]
  - toFQDNs: [{matchName: api.example.test}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
`},
	} {
		t.Run("a CNP Cilium refuses fails with Cilium's message: "+tc.name, func(t *testing.T) {
			err := n.TryApplyPolicy(tc.policy)
			t.Cleanup(func() { n.DeletePolicy(tc.name) })
			var refusal *localnode.CiliumRefusal
			if !errors.As(err, &refusal) {
				t.Fatalf("applying %s on a Cilium node without L7 proxy: got %v, want Cilium's refusal", tc.name, err)
			}
			if want := "L7 policy is not supported since L7 proxy is not enabled"; !strings.Contains(refusal.Message, want) {
				t.Errorf("Cilium's message %q does not say %q", refusal.Message, want)
			}
			t.Logf("as reported: %v", err)
		})
	}

	t.Run("restarts lose no enforcement", func(t *testing.T) {
		exe, err := os.Executable()
		if err != nil {
			t.Fatal(err)
		}
		run := func(p *localnode.Pod, container string, args ...string) *localnode.Process {
			t.Helper()
			pr, err := n.Local.RunInContainer(p, container, append([]string{exe, helperArg}, args...))
			if err != nil {
				t.Fatalf("start %v in %s/%s: %v", args, p.Name, container, err)
			}
			t.Cleanup(func() { pr.Stop() })
			return pr
		}
		denied := run(payments, "app", "sink", "9000")
		control := run(payments, "app", "sink", "9001")
		waitFor(t, "sinks ready", func() error {
			if !strings.Contains(denied.Output(), "READY") || !strings.Contains(control.Output(), "READY") {
				return errors.New("not yet")
			}
			return nil
		})
		// The sidecar streams to a port its policy denies, and Cilium
		// allows: every datagram that arrives leaked through sidewall.
		stream := run(web, "log-shipper", "stream", net.JoinHostPort(payments.IP.String(), "9000"))
		// The app streams to one both allow: the path works throughout.
		ctl := run(web, "app", "stream", net.JoinHostPort(payments.IP.String(), "9001"))
		ctx := context.Background()
		restartSidewall := func() error { n.StopAgent(); n.StartAgent(); return nil }
		restartCilium := func() error { return n.Local.RestartCilium(ctx) }
		steps := []struct {
			name string
			do   []func() error
		}{
			{"sidewall agent", []func() error{restartSidewall}},
			{"cilium agent", []func() error{restartCilium}},
			{"cilium, then sidewall", []func() error{restartCilium, restartSidewall}},
			{"sidewall, then cilium", []func() error{restartSidewall, restartCilium}},
		}
		for _, st := range steps {
			_, before := streamCounts(stream.Output())
			for _, do := range st.do {
				if err := do(); err != nil {
					t.Fatalf("restart %s: %v", st.name, err)
				}
			}
			time.Sleep(500 * time.Millisecond)
			_, after := streamCounts(stream.Output())
			if rx := received(denied.Output()); len(rx) > 0 {
				t.Fatalf("restart %s: %d datagrams of the sidecar's denied stream arrived, want 0 (first: %s)", st.name, len(rx), rx[0])
			}
			if after <= before {
				t.Fatalf("restart %s: the sidecar's stream stopped getting EPERM (%d -> %d): is it running?\n%s", st.name, before, after, stream.Output())
			}
			t.Logf("restart %s: %d denied sends, 0 arrived", st.name, after-before)
			// Both stay attached: Cilium's socket LB at its cgroup root,
			// sidewall's entry programs on the pod's cgroup.
			waitFor(t, "restart "+st.name+": both datapaths attached", func() error {
				for _, want := range []struct {
					cgroup string
					attach ebpf.AttachType
					prefix string
				}{
					{n.Local.CiliumCgroupRoot(), ebpf.AttachCGroupInet4Connect, "cil_sock4_conn"},
					{n.Local.CiliumCgroupRoot(), ebpf.AttachCGroupUDP4Sendmsg, "cil_sock4_send"},
					{web.CgroupDir, ebpf.AttachCGroupInet4Connect, "sw_entry_"},
					{web.CgroupDir, ebpf.AttachCGroupInetEgress, "sw_entry_"},
					{web.CgroupDir, ebpf.AttachCGroupInetIngress, "sw_entry_"},
				} {
					names, err := attachedPrograms(want.cgroup, want.attach)
					if err != nil {
						return err
					}
					if !slices.ContainsFunc(names, func(n string) bool { return strings.HasPrefix(n, want.prefix) }) {
						return fmt.Errorf("%s on %s: attached %v, want a %s* program", want.attach, want.cgroup, names, want.prefix)
					}
				}
				return nil
			})
		}
		ctlRx := len(received(control.Output()))
		waitFor(t, "the app's stream arrives after the restarts", func() error {
			if n := len(received(control.Output())); n <= ctlRx {
				return fmt.Errorf("%d datagrams, no new ones", n)
			}
			return nil
		})
		if sent, eperm := streamCounts(ctl.Output()); eperm != 0 || sent == 0 {
			t.Errorf("the app's allowed stream: %d sent, %d EPERM; want all sent", sent, eperm)
		}
		n.Expect(web, "log-shipper", logging, "8080", true)
		n.Expect(web, "log-shipper", payments, "8080", false)
	})

	t.Run("Services are decided on their backends", func(t *testing.T) {
		logSvc := createService(t, n, "logging", logging)
		paySvc := createService(t, n, "payments", payments)
		dial := func(p *localnode.Pod, container string, svc netip.AddrPort, allowed bool) {
			t.Helper()
			expectTCP(t, n, p, container, svc.String(), allowed)
		}
		// Cilium's socket LB runs after sidewall's connect hook, so the
		// hook sees the ClusterIP: sidewall decides it on the backends.
		dial(web, "log-shipper", logSvc, true)
		dial(web, "log-shipper", paySvc, false)
		dial(web, "app", paySvc, true)  // unrestricted: Cilium's LB works here
		dial(web, "app", logSvc, false) // the sidecar's grant is exclusive
	})

	t.Run("node ports are decided on their backends", func(t *testing.T) {
		_, logNP := n.CreateNodePortService(n.Namespace, "logging-np", logging, "http", corev1.ProtocolTCP, 80, 8080)
		_, payNP := n.CreateNodePortService(n.Namespace, "payments-np", payments, "http", corev1.ProtocolTCP, 80, 8080)
		// The node's own address: Cilium's socket LB translates a connect
		// to it on a node port to a backend, after sidewall's hook saw it.
		node := n.Local.HostIP()
		dial := func(container string, port uint16, allowed bool) {
			t.Helper()
			expectTCP(t, n, web, container, netip.AddrPortFrom(node, port).String(), allowed)
		}
		dial("log-shipper", logNP, true)
		dial("log-shipper", payNP, false)
		dial("app", payNP, true)  // unrestricted: through Cilium's node port
		dial("app", logNP, false) // the sidecar's grant is exclusive
	})

	t.Run("DNS through the kube-dns Service", func(t *testing.T) {
		exe, err := os.Executable()
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		dnsPod, err := n.Local.RunPod(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "coredns-" + agentnode.RandHex(3), Labels: map[string]string{"k8s-app": "kube-dns"}},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "coredns"}}},
		})
		if err != nil {
			t.Fatalf("run dns pod: %v", err)
		}
		logSvc := createService(t, n, "logging-by-name", logging)
		name := "logging-by-name." + n.Namespace + ".svc.cluster.local"
		srv, err := n.Local.ServeDNS(ctx, dnsPod, "coredns", 53, map[string]netip.Addr{name: logSvc.Addr()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { srv.Stop() })
		kubeDNS := n.CreateService("kube-system", "kube-dns-"+agentnode.RandHex(3), dnsPod, "dns", corev1.ProtocolUDP, 53, 53)
		resolve := func(container string) (string, error) {
			pr, err := n.Local.RunInContainer(web, container, []string{exe, helperArg, "resolve", kubeDNS.String(), name})
			if err != nil {
				return "", err
			}
			err = pr.Wait()
			return strings.TrimSpace(pr.Output()), err
		}
		// The sidecar may not reach kube-dns yet: refused at once.
		waitFor(t, "log-shipper's lookup refused", func() error {
			out, _ := resolve("log-shipper")
			if !strings.HasPrefix(out, "EPERM") {
				return fmt.Errorf("got %q, want EPERM", out)
			}
			return nil
		})
		// Allowed kube-dns (by its labels, in its namespace), it resolves
		// through the Service and reaches the name's Service.
		n.ApplyPolicy(shipperPolicy + `
  - toEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: kube-system, k8s-app: kube-dns}}]
    toPorts: [{ports: [{port: "53", protocol: UDP}]}]
`)
		waitFor(t, "log-shipper resolves "+name, func() error {
			out, err := resolve("log-shipper")
			if err != nil || out != "ANSWER "+logSvc.Addr().String() {
				return fmt.Errorf("got %q (%v), want ANSWER %s", out, err, logSvc.Addr())
			}
			return nil
		})
		if _, err := n.Local.Dial(ctx, web, "log-shipper", "tcp", logSvc.String(), 2*time.Second); err != nil {
			t.Errorf("log-shipper -> %s (resolved) :80: %v", name, err)
		}
	})

	t.Run("the node's probes reach a container restricted on ingress", func(t *testing.T) {
		n.ApplyPolicy(`
metadata: {name: logging-ingress}
spec:
  podSelector: {matchLabels: {app: logging}}
  containers: {names: [app]}
  ingress:
  - fromEndpoints: [{matchLabels: {app: web}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
`)
		addr := net.JoinHostPort(logging.IP.String(), "8080")
		// payments may not reach it: the ingress rule is enforced...
		waitFor(t, "payments/app -> logging:8080 refused by logging's ingress rule", func() error {
			if err := n.Dial(payments, "app", logging, "8080"); err == nil {
				return errors.New("connected")
			}
			return nil
		})
		// ...and the node still may, as Cilium lets the local host reach
		// its pods (allow-localhost): kubelet's probes keep the pod Ready.
		waitFor(t, "node -> logging:8080 (a kubelet probe)", func() error {
			return n.Local.DialFromNode(context.Background(), addr, 2*time.Second)
		})
		n.Expect(web, "log-shipper", logging, "8080", true)
		n.DeletePolicy("logging-ingress")
	})

	t.Run("a selector on a namespace label selects as Cilium's identities do", func(t *testing.T) {
		// payments restricted on ingress to web only, selected by a label
		// of its namespace: Cilium puts namespace labels into identities.
		n.ApplyPolicy(`
metadata: {name: by-namespace}
spec:
  podSelector: {matchLabels: {app: payments, io.cilium.k8s.namespace.labels.team: shop-team}}
  containers: {names: [app]}
  ingress:
  - fromEndpoints: [{matchLabels: {app: web}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
`)
		t.Cleanup(func() { n.DeletePolicy("by-namespace") })
		// Not selected yet: logging reaches payments.
		if err := n.Dial(logging, "app", payments, "8080"); err != nil {
			t.Fatalf("logging -> payments:8080 before the namespace has the label: %v", err)
		}
		ns, err := n.Client.CoreV1().Namespaces().Get(context.Background(), n.Namespace, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ns.Labels["team"] = "shop-team"
		if _, err := n.Client.CoreV1().Namespaces().Update(context.Background(), ns, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "Cilium's identity of payments carries the namespace label", func() error {
			cep := waitEndpoint(t, cc, payments)
			cid, err := cc.CiliumV2().CiliumIdentities().Get(context.Background(), fmt.Sprint(cep.Status.Identity.ID), metav1.GetOptions{})
			if err != nil {
				return err
			}
			if cid.SecurityLabels["k8s:io.cilium.k8s.namespace.labels.team"] != "shop-team" {
				return fmt.Errorf("labels %v", cid.SecurityLabels)
			}
			return nil
		})
		// Selected now, through Cilium's identity labels: logging's
		// connection is dropped at payments' app (sidewall's ingress).
		waitFor(t, "logging -> payments:8080 dropped by payments' ingress rule", func() error {
			if err := n.Dial(logging, "app", payments, "8080"); err == nil {
				return errors.New("connected")
			}
			return nil
		})
		// Cilium re-creates its ipcache when its agent restarts ("restarts
		// lose no enforcement" restarted it): the verdict must read the map
		// Cilium pins now, or web's new identity (the namespace label gave
		// it one) is never seen.
		waitFor(t, "the verdict reads the ipcache Cilium pins now", func() error {
			m, err := agent.OpenCiliumIPCache(agent.CiliumIPCachePath(n.Local.CiliumBPFRoot()))
			if err != nil {
				return err
			}
			defer m.Close()
			pinned, _ := m.Info()
			used, _ := n.Agent.Datapath.MapsByName()["sw_cilium_ipcache"].Info()
			p, _ := pinned.ID()
			u, _ := used.ID()
			if p != u {
				return fmt.Errorf("pinned map %d, the verdict reads map %d", p, u)
			}
			return nil
		})
		n.Expect(web, "app", payments, "8080", true)
	})

	t.Run("Cilium's default deny and sidewall's grant", func(t *testing.T) {
		applyCNP(t, n, cc, defaultDeny)
		// Granted by the generated CNP at Cilium's level, and by sidewall
		// to the sidecar.
		n.Expect(web, "log-shipper", logging, "8080", true)
		// Denied by sidewall at once (exclusive grant, default deny).
		n.Expect(web, "app", logging, "8080", false)
		n.Expect(web, "log-shipper", payments, "8080", false)
		// Denied by Cilium: sidewall lets the app through, Cilium drops.
		waitCiliumDrops(t, n, web, "app", payments, "8080")
	})

	t.Run("Cilium's Hubble shows the pod's flows", func(t *testing.T) {
		bin, err := harness.Tool("hubble")
		if err != nil {
			t.Fatal(err)
		}
		// The drop of web/app -> payments:8080 above, as Cilium saw it.
		waitFor(t, "a DROPPED flow from web to payments in Cilium's Hubble", func() error {
			out, err := exec.Command(bin, "observe", "--server", "unix://"+n.Local.HubbleSocket(), "--last", "1000",
				"--verdict", "DROPPED", "--from-pod", n.Namespace+"/web", "--to-pod", n.Namespace+"/payments", "-o", "json").CombinedOutput()
			if err != nil {
				return fmt.Errorf("hubble observe: %v: %s", err, out)
			}
			if !strings.Contains(string(out), `"DROPPED"`) || !strings.Contains(string(out), payments.IP.String()) {
				return fmt.Errorf("no such flow yet: %.300s", out)
			}
			return nil
		})
	})

	t.Run("sidewall's Hubble names the container of Cilium's flows", func(t *testing.T) {
		ciliumFlowsNamed(t, n, cc, certs, peerNS, web, logging, payments)
	})
}

func waitEndpoint(t *testing.T, cc versioned.Interface, p *localnode.Pod) *ciliumv2.CiliumEndpoint {
	t.Helper()
	var cep *ciliumv2.CiliumEndpoint
	waitFor(t, "CiliumEndpoint of "+p.Name+" with an identity", func() error {
		var err error
		cep, err = cc.CiliumV2().CiliumEndpoints(p.Namespace).Get(context.Background(), p.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if cep.Status.Identity == nil || cep.Status.Identity.ID == 0 {
			return errors.New("no identity yet")
		}
		return nil
	})
	return cep
}

// waitCiliumDrops waits until Cilium drops a connection sidewall allows:
// the dial times out, not EPERM.
func waitCiliumDrops(t *testing.T, n *agentnode.Node, p *localnode.Pod, container string, peer *localnode.Pod, port string) {
	t.Helper()
	waitFor(t, fmt.Sprintf("Cilium drops %s/%s -> %s:%s", p.Name, container, peer.Name, port), func() error {
		err := n.Dial(p, container, peer, port)
		if err == nil {
			return errors.New("connected")
		}
		if errors.Is(err, syscall.EPERM) {
			return fmt.Errorf("sidewall denied it (%v); Cilium should have", err)
		}
		return nil
	})
}

// applyCNP creates a CNP and waits until the cilium-agent imports it.
func applyCNP(t *testing.T, n *agentnode.Node, cc versioned.Interface, doc string) {
	t.Helper()
	ns, start := n.Namespace, time.Now()
	var cnp ciliumv2.CiliumNetworkPolicy
	if err := yaml.UnmarshalStrict([]byte(doc), &cnp); err != nil {
		t.Fatalf("parse CNP: %v", err)
	}
	cnp.Namespace = ns
	if _, err := cc.CiliumV2().CiliumNetworkPolicies(ns).Create(context.Background(), &cnp, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create CNP %s: %v", cnp.Name, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := n.Local.WaitCiliumPolicy(ctx, ns, cnp.Name, start); err != nil {
		t.Fatal(err)
	}
}

// expectTCP waits until a TCP connection from a container of p to addr
// gets the wanted outcome: connected, or refused at once with EPERM.
func expectTCP(t *testing.T, n *agentnode.Node, p *localnode.Pod, container, addr string, allowed bool) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%s/%s -> %s (allowed=%t)", p.Name, container, addr, allowed), func() error {
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

func waitFor(t *testing.T, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// createService makes a ClusterIP Service on port 80 for a pod's port 8080.
func createService(t *testing.T, n *agentnode.Node, name string, backend *localnode.Pod) netip.AddrPort {
	t.Helper()
	return n.CreateService(n.Namespace, name, backend, "http", corev1.ProtocolTCP, 80, 8080)
}

// attachedPrograms names the programs the kernel runs at one cgroup hook.
func attachedPrograms(cgroup string, attach ebpf.AttachType) ([]string, error) {
	f, err := os.Open(cgroup)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	res, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: attach})
	if err != nil {
		return nil, fmt.Errorf("query %s programs of %s: %w", attach, cgroup, err)
	}
	var names []string
	for _, p := range res.Programs {
		prog, err := ebpf.NewProgramFromID(p.ID)
		if err != nil {
			return nil, err
		}
		info, err := prog.Info()
		prog.Close()
		if err != nil {
			return nil, err
		}
		names = append(names, info.Name)
	}
	return names, nil
}
