package agent

import (
	"net/netip"
	"testing"

	"github.com/cilium/cilium/pkg/labels"
	"github.com/cilium/cilium/pkg/policy/api"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/yaml"

	"github.com/sidewall/sidewall/agent/identity"
	"github.com/sidewall/sidewall/bpfext"
	"github.com/sidewall/sidewall/crds/v1alpha1"
	"github.com/sidewall/sidewall/translator"
)

func init() { api.InitEntities("default") }

func ruleSet(t *testing.T, doc string) *translator.RuleSet {
	t.Helper()
	var p v1alpha1.ContainerNetworkPolicy
	if err := yaml.UnmarshalStrict([]byte(doc), &p); err != nil {
		t.Fatalf("parse policy: %v", err)
	}
	if p.Namespace == "" {
		p.Namespace = "shop"
	}
	p.UID = types.UID("uid-" + p.Name)
	rs, err := translator.ToRuleSet(&p)
	if err != nil {
		t.Fatalf("ToRuleSet: %v", err)
	}
	return rs
}

// webPod has a native sidecar log-shipper and an app container.
func webPod(ip string) PodState {
	always := corev1.ContainerRestartPolicyAlways
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web", UID: "uid-web", Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{
			InitContainers: []corev1.Container{{Name: "log-shipper", RestartPolicy: &always}},
			Containers:     []corev1.Container{{Name: "app"}, {Name: "admin"}},
		},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}},
	}
	return PodState{Pod: pod, CgroupPath: "/sys/fs/cgroup/kubepods/podweb", CgroupID: 100,
		Containers: map[string]uint64{"log-shipper": 101, "app": 102, "admin": 103}}
}

var (
	ipWeb = netip.MustParseAddr("10.244.0.10")
	ipA   = netip.MustParseAddr("10.244.0.20")
	ipB   = netip.MustParseAddr("10.244.0.30")
)

func snapshot() *identity.Snapshot {
	lbl := func(app string) labels.LabelArray {
		return labels.Map2Labels(map[string]string{"app": app, "io.kubernetes.pod.namespace": "shop"}, labels.LabelSourceK8s).LabelArray()
	}
	return &identity.Snapshot{
		Peers: map[netip.Addr]identity.Peer{
			ipWeb: {IP: ipWeb, Identity: 1000, Namespace: "shop", Name: "web"},
			ipA:   {IP: ipA, Identity: 1001, Namespace: "shop", Name: "a"},
			ipB:   {IP: ipB, Identity: 1002, Namespace: "shop", Name: "b"},
		},
		Identities: map[identity.NumericIdentity]labels.LabelArray{1000: lbl("web"), 1001: lbl("a"), 1002: lbl("b")},
	}
}

// datapathVerdict mirrors bpf/lib/verdict.h over a compiled State: it is
// the test's model of the datapath, used to compare the compiled maps with
// the reference semantics (translator.Evaluate). The real datapath is
// checked against the same maps by the integration test.
func datapathVerdict(s *State, cgroup uint64, dir bpfext.Direction, local bool, peerContainer uint32, peerIP netip.Addr, proto uint8, port uint16) (allowed bool, why string) {
	ci, ok := s.Containers[cgroup]
	if !ok {
		return true, "unknown cgroup"
	}
	if ci.DenyAll {
		return false, "deny all"
	}
	if local && peerContainer == ci.ContainerID {
		return true, "self"
	}
	peer := peerContainer
	if !local {
		peer = bpfext.IdentityWorld
		best := -1
		for p, id := range s.Identities {
			if p.Contains(peerIP) && p.Bits() > best {
				best, peer = p.Bits(), id
			}
		}
	}
	allow, deny := false, false
	for _, r := range s.Rules[ci.PolicyID] {
		if r.Direction != dir || r.Local != local || (r.Peer != 0 && r.Peer != peer) {
			continue
		}
		if r.Protocol != 0 && r.Protocol != proto {
			continue
		}
		lo, hi := r.PortLow, r.PortHigh
		if hi == 0 {
			hi = lo
		}
		if lo == 0 && hi == 0 {
			hi = 65535
		}
		if port < lo || port > hi {
			continue
		}
		if r.Action == bpfext.ActionDeny {
			deny = true
		} else {
			allow = true
		}
	}
	restricted := dir == bpfext.Egress && ci.EgressRestricted || dir == bpfext.Ingress && ci.IngressRestricted
	switch {
	case deny:
		return ci.Audit, "deny rule"
	case allow:
		return true, "allow rule"
	case restricted:
		return ci.Audit, "default deny"
	}
	return true, "unrestricted"
}

func TestCompileSidecarPolicy(t *testing.T) {
	rs := ruleSet(t, `
metadata: {name: shipper}
spec:
  podSelector: {matchLabels: {app: web}}
  containers: {names: [log-shipper]}
  egress:
  - toEndpoints: [{matchLabels: {app: a}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
`)
	ids := NewIDs()
	s := Compile(Input{Pods: []PodState{webPod(ipWeb.String())}, RuleSets: []*translator.RuleSet{rs}, Identities: snapshot()}, ids)

	if got := s.Attach[100]; got != "/sys/fs/cgroup/kubepods/podweb" {
		t.Errorf("attach pod cgroup = %q", got)
	}
	podEntry := s.Containers[100]
	if !podEntry.DenyAll {
		t.Errorf("pod cgroup entry %+v: want DenyAll (fail closed)", podEntry)
	}
	shipper, app := s.Containers[101], s.Containers[102]
	if !shipper.EgressRestricted || shipper.IngressRestricted || shipper.PolicyID == 0 {
		t.Errorf("log-shipper entry %+v: want egress restricted with a policy", shipper)
	}
	if app.EgressRestricted || app.PolicyID == 0 || app.PolicyID == shipper.PolicyID {
		t.Errorf("app entry %+v: want unrestricted with its own policy for the exclusive denies", app)
	}
	if shipper.PodID != app.PodID || s.Pods[shipper.PodID].IPv4 != ipWeb {
		t.Errorf("pods %+v, entries %+v %+v", s.Pods, shipper, app)
	}
	want := []bpfext.Rule{{PolicyID: shipper.PolicyID, Direction: bpfext.Egress, Peer: 1001, Protocol: bpfext.ProtoTCP, PortLow: 8080, PortHigh: 8080, Action: bpfext.ActionAllow}}
	if got := s.Rules[shipper.PolicyID]; len(got) != 1 || got[0].RuleID == 0 || func() bpfext.Rule { g := got[0]; g.RuleID = 0; return g }() != want[0] {
		t.Errorf("log-shipper rules = %+v, want %+v", got, want)
	}
	if got := s.Rules[app.PolicyID]; len(got) != 1 || !got[0].Exclusive || got[0].Action != bpfext.ActionDeny || got[0].Peer != 1001 {
		t.Errorf("app rules = %+v, want one exclusive deny of identity 1001", got)
	}
	if ri := s.RuleInfos[s.Rules[shipper.PolicyID][0].RuleID]; ri.Policy.Name != "shipper" || ri.Origin != "spec.egress[0]" {
		t.Errorf("rule info = %+v", ri)
	}
	if ci := s.Cgroups[101]; ci.Container != "log-shipper" || ci.Pod != "web" || ci.Identity != 1000 {
		t.Errorf("cgroup info = %+v", ci)
	}

	// Stable numbers across compiles; released when the pod goes away.
	s2 := Compile(Input{Pods: []PodState{webPod(ipWeb.String())}, RuleSets: []*translator.RuleSet{rs}, Identities: snapshot()}, ids)
	if s2.Containers[101] != shipper || s2.Containers[102] != app {
		t.Errorf("recompile changed numbers: %+v %+v", s2.Containers[101], s2.Containers[102])
	}
	s3 := Compile(Input{RuleSets: []*translator.RuleSet{rs}, Identities: snapshot()}, ids)
	if len(s3.Containers)+len(s3.Pods)+len(s3.Rules)+len(s3.Attach) != 0 || len(ids.policies)+len(ids.pods)+len(ids.rules) != 0 {
		t.Errorf("state without pods not empty: %+v, ids %+v", s3, ids)
	}
}

func TestCompileUnclassifiedAllowAndUnselectedPods(t *testing.T) {
	rs := ruleSet(t, `
metadata: {name: open}
spec:
  podSelector: {matchLabels: {app: web}}
  containers: {roles: [sidecar]}
  unclassified: Allow
  egressDeny:
  - toEndpoints: [{matchLabels: {app: b}}]
`)
	other := webPod("10.244.0.11")
	other.Pod = other.Pod.DeepCopy()
	other.Pod.UID, other.Pod.Name, other.Pod.Labels = "uid-other", "other", map[string]string{"app": "other"}
	other.CgroupID, other.Containers = 200, map[string]uint64{"app": 202}
	s := Compile(Input{Pods: []PodState{webPod(ipWeb.String()), other}, RuleSets: []*translator.RuleSet{rs}, Identities: snapshot()}, NewIDs())
	if _, ok := s.Containers[100]; ok {
		t.Errorf("pod cgroup entry present with unclassified: Allow")
	}
	if _, ok := s.Attach[200]; ok || s.Containers[202] != (bpfext.Container{}) {
		t.Errorf("unselected pod compiled: attach %v, entry %+v", s.Attach, s.Containers[202])
	}
	// A deny-only policy: the direction is default deny (as in Cilium).
	if e := s.Containers[101]; !e.EgressRestricted {
		t.Errorf("sidecar entry %+v: want egress restricted", e)
	}
}

// TestCompileMatchesSemantics compares the compiled maps, through a model of
// the datapath's lookups, with translator.Evaluate (docs/semantics.md) over
// a grid of flows, for policies with nested CIDRs and excepts, deny rules,
// intra-pod rules and exclusive grants.
func TestCompileMatchesSemantics(t *testing.T) {
	sets := []*translator.RuleSet{
		ruleSet(t, `
metadata: {name: shipper}
spec:
  podSelector: {matchLabels: {app: web}}
  containers: {names: [log-shipper]}
  egress:
  - toEndpoints: [{matchLabels: {app: a}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
  - toCIDRSet: [{cidr: 192.168.0.0/16, except: [192.168.1.0/24]}]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
  - toContainers: {names: [admin]}
  egressDeny:
  - toCIDR: [192.168.0.0/24]
    toPorts: [{ports: [{port: "443", endPort: 444, protocol: TCP}]}]
`),
		ruleSet(t, `
metadata: {name: admin}
spec:
  podSelector: {matchLabels: {app: web}}
  containers: {names: [admin]}
  egress:
  - toCIDR: [192.168.1.128/25]
  - toEntities: [world]
    toPorts: [{ports: [{port: "53", protocol: UDP}]}]
  ingress:
  - fromContainers: {roles: [sidecar]}
    toPorts: [{ports: [{port: "9000"}]}]
`),
	}
	pod := webPod(ipWeb.String())
	s := Compile(Input{Pods: []PodState{pod}, RuleSets: sets, Identities: snapshot()}, NewIDs())
	if len(s.Warnings) > 0 {
		t.Fatalf("warnings: %v", s.Warnings)
	}
	containers := translator.PodContainers(pod.Pod)
	snap := snapshot()
	peers := []netip.Addr{ipA, ipB, netip.MustParseAddr("192.168.0.5"), netip.MustParseAddr("192.168.1.5"),
		netip.MustParseAddr("192.168.1.200"), netip.MustParseAddr("192.168.2.1"), netip.MustParseAddr("8.8.8.8")}
	type l4 struct {
		proto translator.Protocol
		num   uint8
		port  uint16
	}
	ports := []l4{{translator.ProtoTCP, 6, 8080}, {translator.ProtoTCP, 6, 443}, {translator.ProtoTCP, 6, 444}, {translator.ProtoUDP, 17, 53}, {translator.ProtoTCP, 6, 9000}, {translator.ProtoUDP, 17, 9000}}
	checked := 0
	for ci, ct := range containers {
		cg := pod.Containers[ct.Name]
		for _, dir := range []translator.Direction{translator.Egress, translator.Ingress} {
			bdir := bpfext.Egress
			if dir == translator.Ingress {
				bdir = bpfext.Ingress
			}
			for _, p := range ports {
				for _, ip := range peers {
					_, lbls := snap.Resolve(ip)
					want := translator.Evaluate(sets, ct, translator.Traffic{Direction: dir, PeerLabels: lbls, PeerIP: ip, Protocol: p.proto, Port: p.port})
					got, why := datapathVerdict(s, cg, bdir, false, 0, ip, p.num, p.port)
					if got != want.Allowed {
						t.Errorf("%s %s %s %s/%d: datapath %t (%s), semantics %+v", ct.Name, dir, ip, p.proto, p.port, got, why, want)
					}
					checked++
				}
				for pi := range containers {
					peerCt := containers[pi]
					if pi == ci {
						continue
					}
					want := translator.Evaluate(sets, ct, translator.Traffic{Direction: dir, PeerContainer: &peerCt, Protocol: p.proto, Port: p.port})
					got, why := datapathVerdict(s, cg, bdir, true, uint32(pi+1), netip.Addr{}, p.num, p.port)
					if got != want.Allowed {
						t.Errorf("%s %s local %s %s/%d: datapath %t (%s), semantics %+v", ct.Name, dir, peerCt.Name, p.proto, p.port, got, why, want)
					}
					checked++
				}
			}
		}
	}
	if checked < 200 {
		t.Fatalf("only %d flows checked", checked)
	}
}

func TestSeedKeepsCIDRIdentities(t *testing.T) {
	ids := NewIDs()
	pfx := netip.MustParsePrefix("192.168.0.0/16")
	ids.Seed([]uint32{7}, []uint32{40}, map[netip.Prefix]uint32{pfx: CIDRIdentityBase + 9, netip.MustParsePrefix("10.0.0.1/32"): 1000})
	rs := ruleSet(t, `
metadata: {name: cidr}
spec:
  podSelector: {matchLabels: {app: web}}
  containers: {names: [app]}
  egress:
  - toCIDR: [192.168.0.0/16, 172.16.0.0/12]
`)
	s := Compile(Input{Pods: []PodState{webPod(ipWeb.String())}, RuleSets: []*translator.RuleSet{rs}, Identities: snapshot()}, ids)
	if got := s.Identities[pfx]; got != CIDRIdentityBase+9 {
		t.Errorf("adopted cidr identity = %d, want %d", got, CIDRIdentityBase+9)
	}
	if got := s.Identities[netip.MustParsePrefix("172.16.0.0/12")]; got != CIDRIdentityBase+10 {
		t.Errorf("new cidr identity = %d, want %d", got, CIDRIdentityBase+10)
	}
	if e := s.Containers[102]; e.PolicyID <= 40 || e.PodID <= 7 {
		t.Errorf("entry %+v reuses a number in use", e)
	}
}

func TestCompileAudit(t *testing.T) {
	audit := ruleSet(t, `
metadata: {name: audit}
spec:
  podSelector: {matchLabels: {app: web}}
  containers: {names: [log-shipper]}
  mode: Audit
  egress:
  - toEndpoints: [{matchLabels: {app: a}}]
`)
	s := Compile(Input{Pods: []PodState{webPod(ipWeb.String())}, RuleSets: []*translator.RuleSet{audit}, Identities: snapshot()}, NewIDs())
	if e := s.Containers[101]; !e.Audit || !e.EgressRestricted || len(s.Rules[e.PolicyID]) != 1 {
		t.Errorf("audited sidecar entry %+v rules %+v: want audit, egress restricted, one rule", e, s.Rules[e.PolicyID])
	}
	if _, ok := s.Containers[100]; ok {
		t.Errorf("audit-only pod has a deny-all pod entry")
	}
	if e := s.Containers[102]; e.PolicyID != 0 || e.Audit || e.EgressRestricted {
		t.Errorf("app entry %+v: audit policies have no exclusive grants", e)
	}

	// An enforcing policy wins over an audit one for the same container.
	enforce := ruleSet(t, `
metadata: {name: enforce}
spec:
  podSelector: {matchLabels: {app: web}}
  containers: {names: [log-shipper]}
  egress:
  - toEndpoints: [{matchLabels: {app: b}}]
`)
	s = Compile(Input{Pods: []PodState{webPod(ipWeb.String())}, RuleSets: []*translator.RuleSet{audit, enforce}, Identities: snapshot()}, NewIDs())
	e := s.Containers[101]
	if e.Audit || len(s.Rules[e.PolicyID]) != 1 || s.Rules[e.PolicyID][0].Peer != 1002 || len(s.Warnings) != 1 {
		t.Errorf("entry %+v rules %+v warnings %q: want the enforcing policy only, with a warning", e, s.Rules[e.PolicyID], s.Warnings)
	}
}
