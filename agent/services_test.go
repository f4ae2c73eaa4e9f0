package agent

import (
	"log/slog"
	"net/netip"
	"testing"

	"github.com/cilium/cilium/pkg/labels"
	"github.com/cilium/cilium/pkg/u8proto"
	"sigs.k8s.io/yaml"

	"github.com/sidewall/sidewall/bpfext"
	"github.com/sidewall/sidewall/crds/v1alpha1"
	"github.com/sidewall/sidewall/hack/harness/ciliumengine"
	"github.com/sidewall/sidewall/translator"
)

// A Service address is decided on its backends: reachable when the policy
// allows every backend on its target port, denied when a rule denies any.
func TestCompileServices(t *testing.T) {
	rs := ruleSet(t, `
metadata: {name: shipper}
spec:
  podSelector: {matchLabels: {app: web}}
  containers: {names: [log-shipper]}
  egress:
  - toEndpoints: [{matchLabels: {app: a}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
`)
	backend := func(ip netip.Addr, port uint16) netip.AddrPort { return netip.AddrPortFrom(ip, port) }
	svc := func(name, vip string, backends ...netip.AddrPort) Service {
		return Service{Namespace: "shop", Name: name, Addrs: []netip.Addr{netip.MustParseAddr(vip)},
			Ports: []ServicePort{{Protocol: bpfext.ProtoTCP, Port: 80, Backends: backends}}}
	}
	services := []Service{
		svc("a", "10.96.0.10", backend(ipA, 8080)),
		svc("b", "10.96.0.20", backend(ipB, 8080)),
		svc("mixed", "10.96.0.30", backend(ipA, 8080), backend(ipB, 8080)),
		svc("a-other-port", "10.96.0.40", backend(ipA, 9090)),
		svc("empty", "10.96.0.50"),
	}
	s := Compile(Input{Pods: []PodState{webPod(ipWeb.String())}, RuleSets: []*translator.RuleSet{rs}, Identities: snapshot(), Services: services}, NewIDs())

	for _, sv := range services {
		id, ok := s.Identities[netip.PrefixFrom(sv.Addrs[0], 32)]
		if !ok || id < CIDRIdentityBase {
			t.Errorf("service %s: address identity %d (found %t), want a local identity", sv.Name, id, ok)
		}
		if l := s.CIDRLabels[id]; !l.Has("k8s:io.kubernetes.service.name") {
			t.Errorf("service %s: labels %v name no service", sv.Name, l)
		}
	}
	const shipper, app = 101, 102
	for _, c := range []struct {
		cgroup  uint64
		vip     string
		allowed bool
	}{
		{shipper, "10.96.0.10", true},  // its one backend is granted
		{shipper, "10.96.0.20", false}, // not granted: default deny
		{shipper, "10.96.0.30", false}, // one backend is not granted
		{shipper, "10.96.0.40", false}, // the backend's port is not granted
		{shipper, "10.96.0.50", false}, // no backend
		{app, "10.96.0.10", false},     // the sidecar's grant is exclusive
		{app, "10.96.0.20", true},      // unrestricted
		{app, "10.96.0.30", false},     // one backend is exclusive to the sidecar
		{app, "10.96.0.40", true},      // unrestricted on that port
	} {
		got, why := datapathVerdict(s, c.cgroup, bpfext.Egress, false, 0, netip.MustParseAddr(c.vip), bpfext.ProtoTCP, 80)
		if got != c.allowed {
			t.Errorf("container cgroup %d -> %s:80: allowed=%t (%s), want %t", c.cgroup, c.vip, got, why, c.allowed)
		}
	}
	// The backends themselves are decided as before.
	if got, _ := datapathVerdict(s, shipper, bpfext.Egress, false, 0, ipA, bpfext.ProtoTCP, 8080); !got {
		t.Error("log-shipper -> a:8080 denied")
	}
}

// As Cilium's allow-localhost (always, in Kubernetes): the node reaches a
// container restricted on ingress, so the kubelet's probes pass; with
// allow-localhost=policy only a rule lets it.
func TestCompileAllowsLocalhostIngress(t *testing.T) {
	rs := ruleSet(t, `
metadata: {name: admin}
spec:
  podSelector: {matchLabels: {app: web}}
  containers: {names: [app]}
  ingress:
  - fromEndpoints: [{matchLabels: {app: a}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
`)
	for _, byPolicy := range []bool{false, true} {
		s := Compile(Input{Pods: []PodState{webPod(ipWeb.String())}, RuleSets: []*translator.RuleSet{rs}, Identities: snapshot(), HostByPolicy: byPolicy}, NewIDs())
		const app = 102
		if !s.Containers[app].IngressRestricted {
			t.Fatalf("app entry %+v: want ingress restricted", s.Containers[app])
		}
		host := netip.MustParseAddr("192.0.2.1")
		s.Identities[netip.PrefixFrom(host, 32)] = bpfext.IdentityHost
		got, why := datapathVerdict(s, app, bpfext.Ingress, false, 0, host, bpfext.ProtoTCP, 8080)
		if got == byPolicy {
			t.Errorf("HostByPolicy=%t: host -> app:8080 allowed=%t (%s)", byPolicy, got, why)
		}
		if got, _ := datapathVerdict(s, app, bpfext.Ingress, false, 0, ipB, bpfext.ProtoTCP, 8080); got {
			t.Errorf("HostByPolicy=%t: b -> app:8080 allowed: the ingress rule is not enforced", byPolicy)
		}
	}
}

// Pods are selected as Cilium selects endpoints: by their identity's
// labels. A label Cilium's filter drops (pod-template-hash) selects
// nothing, and a namespace label selects the pods of that namespace.
func TestCompileSelectsByIdentityLabels(t *testing.T) {
	snap := snapshot()
	// Cilium's labels of web's identity: no pod-template-hash (filtered),
	// the namespace's team label.
	snap.Identities[1000] = labels.Map2Labels(map[string]string{
		"app": "web", "io.kubernetes.pod.namespace": "shop", "io.cilium.k8s.namespace.labels.team": "payments",
	}, labels.LabelSourceK8s).LabelArray()
	pod := webPod(ipWeb.String())
	pod.Pod.Labels["pod-template-hash"] = "5d8f7c"
	for _, c := range []struct {
		selector string
		selected bool
	}{
		{`{matchLabels: {app: web}}`, true},
		{`{matchLabels: {pod-template-hash: 5d8f7c}}`, false},
		{`{matchLabels: {io.cilium.k8s.namespace.labels.team: payments}}`, true},
	} {
		rs := ruleSet(t, `
metadata: {name: shipper}
spec:
  podSelector: `+c.selector+`
  containers: {names: [log-shipper]}
  egress:
  - toEndpoints: [{matchLabels: {app: a}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
`)
		s := Compile(Input{Pods: []PodState{pod}, RuleSets: []*translator.RuleSet{rs}, Identities: snap}, NewIDs())
		if _, got := s.Containers[101]; got != c.selected {
			t.Errorf("podSelector %s: web selected=%t, want %t", c.selector, got, c.selected)
		}
	}
}

// A node port is decided on the Service's backends on every node address
// (host and remote-node identities), even where the policy grants the host
// for other ports: Cilium translates a connect to nodeIP:nodePort to a
// backend before its policy sees it.
func TestCompileNodePorts(t *testing.T) {
	rs := ruleSet(t, `
metadata: {name: shipper}
spec:
  podSelector: {matchLabels: {app: web}}
  containers: {names: [log-shipper]}
  egress:
  - toEndpoints: [{matchLabels: {app: a}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
  - toEntities: [host, remote-node]
`)
	np := func(name, vip string, nodePort uint16, backend netip.Addr) Service {
		return Service{Namespace: "shop", Name: name, Addrs: []netip.Addr{netip.MustParseAddr(vip)},
			Ports: []ServicePort{{Protocol: bpfext.ProtoTCP, Port: 80, NodePort: nodePort, Backends: []netip.AddrPort{netip.AddrPortFrom(backend, 8080)}}}}
	}
	services := []Service{np("a", "10.96.0.10", 30080, ipA), np("b", "10.96.0.20", 30081, ipB)}
	s := Compile(Input{Pods: []PodState{webPod(ipWeb.String())}, RuleSets: []*translator.RuleSet{rs}, Identities: snapshot(), Services: services}, NewIDs())
	host, remote := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	s.Identities[netip.PrefixFrom(host, 32)] = bpfext.IdentityHost
	s.Identities[netip.PrefixFrom(remote, 32)] = bpfext.IdentityRemoteNode
	const shipper, app = 101, 102
	for _, c := range []struct {
		cgroup  uint64
		node    netip.Addr
		port    uint16
		allowed bool
	}{
		{shipper, host, 30080, true},    // its backend a:8080 is granted
		{shipper, remote, 30080, true},  // on every node
		{shipper, host, 30081, false},   // b is not, though the host is granted
		{shipper, remote, 30081, false}, //
		{shipper, host, 22, true},       // the host grant holds on other ports
		{app, host, 30080, false},       // a:8080 is the sidecar's, exclusively
	} {
		got, why := datapathVerdict(s, c.cgroup, bpfext.Egress, false, 0, c.node, bpfext.ProtoTCP, c.port)
		if got != c.allowed {
			t.Errorf("container cgroup %d -> %s:%d: allowed=%t (%s), want %t", c.cgroup, c.node, c.port, got, why, c.allowed)
		}
	}
}

// Cilium's Envoy delivers what an ingress HTTP rule admits from the node
// (it keeps the original source only on egress), so where the host needs a
// rule (HostByPolicy) the containers that rule selects may receive from
// the host on that port, and only there; the peer check is Cilium's.
func TestCompileProxiedIngress(t *testing.T) {
	rs := ruleSet(t, `
metadata: {name: admin}
spec:
  podSelector: {matchLabels: {app: web}}
  containers: {names: [app]}
  ingress:
  - fromEndpoints: [{matchLabels: {app: a}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}], rules: {http: [{method: GET, path: "^/status$"}]}}]
  - fromEndpoints: [{matchLabels: {app: a}}]
    toPorts: [{ports: [{port: "9090", protocol: TCP}]}]
`)
	s := Compile(Input{Pods: []PodState{webPod(ipWeb.String())}, RuleSets: []*translator.RuleSet{rs}, Identities: snapshot(), HostByPolicy: true}, NewIDs())
	host := netip.MustParseAddr("192.0.2.1")
	s.Identities[netip.PrefixFrom(host, 32)] = bpfext.IdentityHost
	const shipper, app = 101, 102
	for _, c := range []struct {
		cgroup  uint64
		from    netip.Addr
		port    uint16
		allowed bool
		why     string
	}{
		{app, host, 8080, true, "Envoy, from the node, on the HTTP port"},
		{app, host, 9090, false, "no HTTP rule on 9090: not proxied, the host needs a rule"},
		{app, ipA, 8080, true, "the peer itself, if Cilium does not redirect"},
		{app, ipB, 8080, false, "a peer the rule does not name"},
	} {
		got, why := datapathVerdict(s, c.cgroup, bpfext.Ingress, false, 0, c.from, bpfext.ProtoTCP, c.port)
		if got != c.allowed {
			t.Errorf("%s -> container %d:%d: allowed=%t (%s), want %t: %s", c.from, c.cgroup, c.port, got, why, c.allowed, c.why)
		}
	}
	if !s.Containers[app].IngressRestricted {
		t.Fatal("app is not restricted on ingress")
	}
	if s.Containers[shipper].IngressRestricted {
		t.Fatal("log-shipper is restricted on ingress, the policy selects only app")
	}
}

// The ports sidewall opens to the host (Envoy) on ingress are exactly the
// ones Cilium redirects to its proxy for the generated CNP, as Cilium's own
// policy engine resolves it (hack/harness/ciliumengine).
func TestProxiedIngressFollowsCiliumRedirects(t *testing.T) {
	doc := `
metadata: {name: admin, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  containers: {names: [app]}
  ingress:
  - fromEndpoints: [{matchLabels: {app: a}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}], rules: {http: [{method: GET, path: "^/status$"}]}}]
  - fromEndpoints: [{matchLabels: {app: a}}]
    toPorts: [{ports: [{port: "9090", protocol: TCP}, {port: "7000", endPort: 7010, protocol: TCP}]}]
`
	var p v1alpha1.ContainerNetworkPolicy
	if err := yaml.UnmarshalStrict([]byte(doc), &p); err != nil {
		t.Fatal(err)
	}
	cnp, err := translator.ToCNP(&p)
	if err != nil {
		t.Fatal(err)
	}
	e := ciliumengine.New(slog.New(slog.DiscardHandler))
	snap := snapshot()
	// As Cilium labels them: with the cluster.
	cluster := labels.NewLabel("io.cilium.k8s.policy.cluster", "default", labels.LabelSourceK8s)
	web := e.AddIdentity("web", append(append(labels.LabelArray{}, snap.Identities[1000]...), cluster).Sort())
	a := e.AddIdentity("a", append(append(labels.LabelArray{}, snap.Identities[1001]...), cluster).Sort())
	if err := e.Add(cnp); err != nil {
		t.Fatal(err)
	}
	r, err := e.Resolve(web)
	if err != nil {
		t.Fatal(err)
	}
	rs := ruleSet(t, doc)
	s := Compile(Input{Pods: []PodState{webPod(ipWeb.String())}, RuleSets: []*translator.RuleSet{rs}, Identities: snap, HostByPolicy: true}, NewIDs())
	host := netip.MustParseAddr("192.0.2.1")
	s.Identities[netip.PrefixFrom(host, 32)] = bpfext.IdentityHost
	const app = 102
	redirected := 0
	for _, port := range []uint16{8080, 9090, 7005, 443} {
		proxied := r.Lookup(false, a, u8proto.TCP, port).Redirected
		if proxied {
			redirected++
		}
		got, why := datapathVerdict(s, app, bpfext.Ingress, false, 0, host, bpfext.ProtoTCP, port)
		if got != proxied {
			t.Errorf("port %d: Cilium redirects it to its proxy: %t; sidewall lets the host (the proxy) in: %t (%s)", port, proxied, got, why)
		}
	}
	if redirected == 0 {
		t.Fatal("Cilium redirects no port: the test proves nothing")
	}
}
