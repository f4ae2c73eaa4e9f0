package translator

import (
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/cilium/cilium/pkg/labels"
	"github.com/cilium/cilium/pkg/policy/api"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/sidewall/sidewall/crds/v1alpha1"
)

// These tests check each rule of docs/semantics.md through Evaluate, the
// reference verdict, on RuleSets built from real policy YAML.

func init() {
	// Cilium's agent does this at start; the cluster entity is empty
	// without it.
	api.InitEntities("default")
}

var (
	logShipper = Container{Name: "log-shipper", Role: v1alpha1.RoleSidecar}
	migrate    = Container{Name: "migrate", Role: v1alpha1.RoleInit}
	app        = Container{Name: "app", Role: v1alpha1.RoleApp}
)

func casePolicy(t *testing.T, name string) *v1alpha1.ContainerNetworkPolicy {
	t.Helper()
	data, err := os.ReadFile("testdata/cases/" + name + "/input.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return parsePolicy(t, string(splitDocs(data)[0]))
}

func parsePolicy(t *testing.T, doc string) *v1alpha1.ContainerNetworkPolicy {
	t.Helper()
	p := &v1alpha1.ContainerNetworkPolicy{}
	if err := yaml.UnmarshalStrict([]byte(doc), p); err != nil {
		t.Fatal(err)
	}
	return p
}

func ruleSets(t *testing.T, ps ...*v1alpha1.ContainerNetworkPolicy) []*RuleSet {
	t.Helper()
	var out []*RuleSet
	for _, p := range ps {
		rs, err := ToRuleSet(p)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, rs)
	}
	return out
}

func world(ip string, proto Protocol, port uint16) Traffic {
	return Traffic{Direction: Egress, PeerLabels: labels.ParseLabelArray("reserved:world"), PeerIP: netip.MustParseAddr(ip), Protocol: proto, Port: port}
}

func pod(dir Direction, ns string, lbls map[string]string, port uint16) Traffic {
	m := map[string]string{"io.kubernetes.pod.namespace": ns, "io.cilium.k8s.policy.cluster": "default"}
	for k, v := range lbls {
		m[k] = v
	}
	return Traffic{Direction: dir, PeerLabels: labels.Map2Labels(m, labels.LabelSourceK8s).LabelArray(), PeerIP: netip.MustParseAddr("10.0.1.7"), Protocol: ProtoTCP, Port: port}
}

func local(dir Direction, peer Container, port uint16) Traffic {
	return Traffic{Direction: dir, PeerContainer: &peer, Protocol: ProtoTCP, Port: port}
}

type want struct {
	allowed bool
	reason  string
	audit   bool
	l7      bool
}

func expect(t *testing.T, sets []*RuleSet, c Container, tr Traffic, w want) {
	t.Helper()
	v := Evaluate(sets, c, tr)
	if v.Allowed != w.allowed || v.Reason != w.reason || v.Audit != w.audit || v.L7 != w.l7 {
		t.Errorf("%s %s peer=%v%v %s/%d: got %+v, want %+v", c.Name, tr.Direction, tr.PeerLabels, tr.PeerContainer, tr.Protocol, tr.Port, v, w)
	}
}

// Rule 1: default-deny per direction with rules; allowed only by an allow of
// a policy selecting the container; deny wins.
func TestRule1DefaultDenyAndDenyWins(t *testing.T) {
	sets := ruleSets(t, casePolicy(t, "deny-rules"))
	expect(t, sets, logShipper, world("1.2.3.4", ProtoTCP, 443), want{allowed: true, reason: VerdictAllowed})
	expect(t, sets, logShipper, world("169.254.169.254", ProtoTCP, 443), want{reason: VerdictDenied})
	expect(t, sets, logShipper, world("1.2.3.4", ProtoTCP, 80), want{reason: VerdictDefaultDeny})
	// 0.0.0.0/0 except 8.8.8.8 is denied on port 25 only.
	expect(t, sets, logShipper, world("8.8.8.8", ProtoTCP, 25), want{reason: VerdictDefaultDeny})
	expect(t, sets, logShipper, world("1.2.3.4", ProtoTCP, 25), want{reason: VerdictDenied})
	// ingressDeny alone makes ingress default-deny, as in Cilium.
	in := pod(Ingress, "shop", map[string]string{"app": "frontend"}, 8080)
	expect(t, sets, logShipper, in, want{reason: VerdictDefaultDeny})
	// The app is selected by no policy: unrestricted, deny rules do not reach it.
	expect(t, sets, app, world("169.254.169.254", ProtoTCP, 80), want{allowed: true, reason: VerdictUnrestricted})
	// ...but world:443 is the log shipper's grant, exclusive to it (rule 2).
	expect(t, sets, app, world("169.254.169.254", ProtoTCP, 443), want{reason: VerdictExclusive})

	// A direction without rules stays open.
	sets = ruleSets(t, casePolicy(t, "egress-entities"))
	expect(t, sets, logShipper, pod(Ingress, "shop", map[string]string{"app": "x"}, 80), want{allowed: true, reason: VerdictUnrestricted})

	// A deny-only policy makes its direction default-deny.
	sets = ruleSets(t, casePolicy(t, "deny-only"))
	expect(t, sets, logShipper, world("1.2.3.4", ProtoTCP, 443), want{reason: VerdictDefaultDeny})
}

func TestRule1UnionOfPoliciesDenyWinsAcross(t *testing.T) {
	a := casePolicy(t, "egress-entities") // roles: [sidecar] -> world, kube-apiserver :443
	b := parsePolicy(t, `
apiVersion: sidewall.io/v1alpha1
kind: ContainerNetworkPolicy
metadata: {name: db, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  containers: {names: [log-shipper]}
  egress:
  - toEndpoints: [{matchLabels: {app: db}}]
    toPorts: [{ports: [{port: "5432", protocol: TCP}]}]
`)
	c := parsePolicy(t, `
apiVersion: sidewall.io/v1alpha1
kind: ContainerNetworkPolicy
metadata: {name: no-metadata, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  containers: {roles: [sidecar]}
  egressDeny:
  - toCIDR: [169.254.169.254/32]
`)
	sets := ruleSets(t, a, b, c)
	expect(t, sets, logShipper, world("1.2.3.4", ProtoTCP, 443), want{allowed: true, reason: VerdictAllowed})
	expect(t, sets, logShipper, pod(Egress, "shop", map[string]string{"app": "db"}, 5432), want{allowed: true, reason: VerdictAllowed})
	// toEndpoints without a namespace means the policy's namespace.
	expect(t, sets, logShipper, pod(Egress, "other", map[string]string{"app": "db"}, 5432), want{reason: VerdictDefaultDeny})
	expect(t, sets, logShipper, world("169.254.169.254", ProtoTCP, 443), want{reason: VerdictDenied})
}

func TestRule1CNPCarriesOnlyGrants(t *testing.T) {
	cnp, err := ToCNP(casePolicy(t, "deny-rules"))
	if err != nil {
		t.Fatal(err)
	}
	if len(cnp.Spec.EgressDeny)+len(cnp.Spec.IngressDeny) != 0 {
		t.Error("deny rules reached the pod-level CNP; they would hit every container of the pod")
	}
	if len(cnp.Spec.Egress) != 1 {
		t.Errorf("CNP has %d egress rules, want the 1 allow rule", len(cnp.Spec.Egress))
	}
	dd := cnp.Spec.EnableDefaultDeny
	if dd.Egress == nil || *dd.Egress || dd.Ingress == nil || *dd.Ingress {
		t.Errorf("enableDefaultDeny = %+v, want false in both directions: the CNP must not restrict the pod", dd)
	}
	if cnp, err := ToCNP(casePolicy(t, "deny-only")); err != nil || cnp != nil {
		t.Errorf("ToCNP(deny-only) = %v, %v; want no CNP", cnp, err)
	}
}

// Rule 2: grants are exclusive to the containers a policy names, unless it
// shares them.
func TestRule2Exclusivity(t *testing.T) {
	logStore := pod(Egress, "observability", map[string]string{"app": "log-store"}, 8080)
	sets := ruleSets(t, casePolicy(t, "egress-endpoints-l7"))
	expect(t, sets, logShipper, logStore, want{allowed: true, reason: VerdictAllowed, l7: true})
	expect(t, sets, app, logStore, want{reason: VerdictExclusive})
	// Only the grant is exclusive: the app's other traffic is untouched.
	expect(t, sets, app, world("1.2.3.4", ProtoTCP, 443), want{allowed: true, reason: VerdictUnrestricted})
	logStore.Port = 9000
	expect(t, sets, app, logStore, want{allowed: true, reason: VerdictUnrestricted})

	// shareGrantsWithPod: the app may use the grant.
	shared := pod(Egress, "shop", map[string]string{"app": "log-store"}, 8080)
	sets = ruleSets(t, casePolicy(t, "share-grants"))
	expect(t, sets, app, shared, want{allowed: true, reason: VerdictUnrestricted})

	// The app needs the same peer: a policy selecting the app grants it.
	data, _ := os.ReadFile("testdata/cases/l7-shared-other-policy/input.yaml")
	docs := splitDocs(data)
	sets = ruleSets(t, parsePolicy(t, string(docs[0])), parsePolicy(t, string(docs[2])))
	expect(t, sets, app, shared, want{allowed: true, reason: VerdictAllowed, l7: true})
	expect(t, sets, logShipper, shared, want{allowed: true, reason: VerdictAllowed, l7: true})
}

func TestRule2IntraPodGrantsAreNotExclusive(t *testing.T) {
	rs := ruleSets(t, casePolicy(t, "intra-pod-egress"))[0]
	if len(rs.Exclusive) != 0 {
		t.Errorf("intra-pod grants became exclusive: %+v", rs.Exclusive)
	}
}

func TestAuditMode(t *testing.T) {
	sets := ruleSets(t, casePolicy(t, "audit-mode"))
	expect(t, sets, logShipper, world("1.2.3.4", ProtoTCP, 80), want{allowed: true, audit: true, reason: VerdictDefaultDeny})
	expect(t, sets, logShipper, world("1.2.3.4", ProtoTCP, 443), want{allowed: true, audit: true, reason: VerdictAllowed})
	// No CNP in audit mode, so nothing to keep exclusive.
	expect(t, sets, app, world("1.2.3.4", ProtoTCP, 443), want{allowed: true, reason: VerdictUnrestricted})
	if len(sets[0].Exclusive) != 0 {
		t.Errorf("audit policy has exclusive grants: %+v", sets[0].Exclusive)
	}
}

// Intra-pod rules: the app's admin port 9090 accepts only the app itself.
func TestIntraPodAdminPort(t *testing.T) {
	sets := ruleSets(t, casePolicy(t, "intra-pod-admin-port"))
	expect(t, sets, app, local(Ingress, app, 9090), want{allowed: true, reason: VerdictAllowed})
	expect(t, sets, app, local(Ingress, logShipper, 9090), want{reason: VerdictDefaultDeny})
	// fromEntities: [all] does not cover pod-local traffic.
	expect(t, sets, app, local(Ingress, logShipper, 8080), want{reason: VerdictDefaultDeny})
	fromWorld := world("1.2.3.4", ProtoTCP, 8080)
	fromWorld.Direction = Ingress
	expect(t, sets, app, fromWorld, want{allowed: true, reason: VerdictAllowed})
	fromWorld.Port = 9090
	expect(t, sets, app, fromWorld, want{reason: VerdictDefaultDeny})
	cnp, err := ToCNP(casePolicy(t, "intra-pod-admin-port"))
	if err != nil {
		t.Fatal(err)
	}
	if len(cnp.Spec.Ingress) != 1 {
		t.Errorf("CNP has %d ingress rules, want 1: the fromContainers rule must not reach it (with its toPorts and no peer it would open 9090 to every peer)", len(cnp.Spec.Ingress))
	}

	sets = ruleSets(t, casePolicy(t, "intra-pod-egress"))
	expect(t, sets, logShipper, local(Egress, app, 8080), want{allowed: true, reason: VerdictAllowed})
	expect(t, sets, logShipper, local(Egress, app, 9090), want{reason: VerdictDenied})
	expect(t, sets, logShipper, world("1.2.3.4", ProtoTCP, 443), want{reason: VerdictDefaultDeny})
}

func TestRolesSelectContainers(t *testing.T) {
	sets := ruleSets(t, casePolicy(t, "roles-sidecar-init"))
	db := pod(Egress, "shop", map[string]string{"app": "db"}, 5432)
	expect(t, sets, logShipper, db, want{allowed: true, reason: VerdictAllowed})
	expect(t, sets, migrate, db, want{allowed: true, reason: VerdictAllowed})
	expect(t, sets, app, db, want{reason: VerdictExclusive})
	expect(t, sets, migrate, world("1.2.3.4", ProtoTCP, 443), want{reason: VerdictDefaultDeny})
}

func TestPortForms(t *testing.T) {
	sets := ruleSets(t, casePolicy(t, "ports-ranges-protocols"))
	for _, c := range []struct {
		proto Protocol
		port  uint16
		ok    bool
	}{
		{ProtoTCP, 8000, true}, {ProtoTCP, 8050, true}, {ProtoTCP, 8100, true}, {ProtoTCP, 8101, false},
		{ProtoUDP, 53, true}, {ProtoTCP, 53, false},
		{ProtoSCTP, 3868, true},
		{ProtoUDP, 7000, true}, {ProtoSCTP, 7000, true}, {ProtoTCP, 9000, true},
		{ProtoUDP, 40000, true}, {ProtoTCP, 40000, false}, // port "0"/UDP: every UDP port
	} {
		w := want{reason: VerdictDefaultDeny}
		if c.ok {
			w = want{allowed: true, reason: VerdictAllowed}
		}
		expect(t, sets, logShipper, world("1.2.3.4", c.proto, c.port), w)
	}
}

func TestWildcardPeerExcludesPodLocal(t *testing.T) {
	sets := ruleSets(t, casePolicy(t, "wildcard-peer-ports"))
	dns := world("1.1.1.1", ProtoUDP, 53)
	expect(t, sets, logShipper, dns, want{allowed: true, reason: VerdictAllowed})
	expect(t, sets, logShipper, pod(Egress, "kube-system", map[string]string{"k8s-app": "kube-dns"}, 53), want{reason: VerdictDefaultDeny})
	lo := local(Egress, app, 53)
	lo.Protocol = ProtoUDP
	expect(t, sets, logShipper, lo, want{reason: VerdictDefaultDeny})
}

// Rule 3: L7 precision.
func TestRule3L7Precision(t *testing.T) {
	load := func(name string) (Analysis, string) {
		tc := findCase(t, name)
		a := Analyze(tc.policy, nil, tc.pods, append(tc.others, *tc.policy))
		st := Status(tc.policy, StatusInput{CNPName: "x", Analysis: a})
		for _, c := range st.Conditions {
			if c.Type == v1alpha1.ConditionL7Precise {
				return a, string(c.Status) + " " + c.Reason + " " + c.Message
			}
		}
		t.Fatalf("%s: no L7Precise condition", name)
		return a, ""
	}
	if a, c := load("l7-precise-exclusive"); !a.L7Precise() || !strings.HasPrefix(c, "True Exclusive") {
		t.Errorf("exclusive grant: L7Precise = %q, conflicts %+v", c, a.L7Conflicts)
	}
	for _, name := range []string{"l7-shared-port", "l7-shared-other-policy"} {
		a, c := load(name)
		if a.L7Precise() || !strings.HasPrefix(c, "False SharedPort") || !strings.Contains(c, "log-shipper,app") || !strings.Contains(c, "TCP/8080") {
			t.Errorf("%s: L7Precise = %q, want False SharedPort naming log-shipper,app and TCP/8080", name, c)
		}
	}

	// The app granted the same peer:port with the same L7 rules, or
	// restricted without a grant to it: the proxy's union changes nothing.
	tc := findCase(t, "l7-shared-other-policy")
	same := tc.others[0].DeepCopy()
	same.Spec.Egress[0].ToPorts[0].Rules = tc.policy.Spec.Egress[0].ToPorts[0].Rules.DeepCopy()
	if a := Analyze(tc.policy, nil, tc.pods, []v1alpha1.ContainerNetworkPolicy{*same}); !a.L7Precise() {
		t.Errorf("same L7 rules: conflicts %+v, want none", a.L7Conflicts)
	}
	other := tc.others[0].DeepCopy()
	other.Spec.Egress[0].ToEndpoints[0].MatchLabels["app"] = "metrics"
	if a := Analyze(tc.policy, nil, tc.pods, []v1alpha1.ContainerNetworkPolicy{*other}); !a.L7Precise() {
		t.Errorf("app restricted elsewhere: conflicts %+v, want none", a.L7Conflicts)
	}
	// ...but granted the same port with no L7 rules: imprecise.
	plain := tc.others[0].DeepCopy()
	plain.Spec.Egress[0].ToPorts[0].Rules = nil
	if a := Analyze(tc.policy, nil, tc.pods, []v1alpha1.ContainerNetworkPolicy{*plain}); a.L7Precise() {
		t.Error("app granted the L7 port without L7 rules: want a SharedPort conflict")
	}
}

func TestAnalyzeCountsAndUnknownNames(t *testing.T) {
	tc := findCase(t, "roles-sidecar-init")
	a := Analyze(tc.policy, nil, tc.pods, nil)
	if a.SelectedPods != 1 || a.SelectedContainers != 2 {
		t.Errorf("roles sidecar+init: %d pods %d containers, want 1 and 2 (log-shipper, migrate)", a.SelectedPods, a.SelectedContainers)
	}
	tc = findCase(t, "unknown-container")
	a = Analyze(tc.policy, nil, tc.pods, nil)
	if len(a.UnknownContainers) != 1 || a.UnknownContainers[0] != "envoy" {
		t.Errorf("unknown containers %v, want [envoy]", a.UnknownContainers)
	}
	// Pods of another namespace or with other labels are not selected.
	pods := append(tc.pods, tc.pods[0], tc.pods[0])
	pods = append([]corev1.Pod(nil), pods...)
	pods[1].Namespace = "other"
	pods[2].Labels = map[string]string{"app": "api"}
	if a := Analyze(tc.policy, nil, pods, nil); a.SelectedPods != 1 {
		t.Errorf("selected %d pods, want 1", a.SelectedPods)
	}
	// No pod selected: no unknown names reported.
	if a := Analyze(tc.policy, nil, nil, nil); a.SelectedPods != 0 || len(a.UnknownContainers) != 0 {
		t.Errorf("no pods: %+v", a)
	}
}

func findCase(t testing.TB, name string) testCase {
	t.Helper()
	for _, tc := range loadCases(t) {
		if tc.name == name {
			return tc
		}
	}
	t.Fatalf("no case %s", name)
	return testCase{}
}
