package agent

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/cilium/cilium/pkg/labels"
	"k8s.io/apimachinery/pkg/types"

	"github.com/sidewall/sidewall/agent/identity"
	"github.com/sidewall/sidewall/translator"
)

// BenchmarkCompile compiles a node of 1,000 pods with 3 containers each
// (sidecar, app, admin), selected by 100 policies, against 1,000 peer
// identities: the userspace share of programming the maps after an agent
// restart.
func BenchmarkCompile(b *testing.B) {
	const pods, policies = 1000, 100
	snap := &identity.Snapshot{Peers: map[netip.Addr]identity.Peer{}, Identities: map[identity.NumericIdentity]labels.LabelArray{}}
	var states []PodState
	for i := range pods {
		ip := netip.AddrFrom4([4]byte{10, 244, byte(i >> 8), byte(i)})
		app := fmt.Sprintf("app-%d", i%policies)
		id := identity.NumericIdentity(1000 + i%policies)
		snap.Peers[ip] = identity.Peer{IP: ip, Identity: id, Namespace: "shop", Name: fmt.Sprint("pod-", i)}
		snap.Identities[id] = labels.Map2Labels(map[string]string{"app": app, "io.kubernetes.pod.namespace": "shop"}, labels.LabelSourceK8s).LabelArray()
		ps := webPod(ip.String())
		ps.Pod = ps.Pod.DeepCopy()
		ps.Pod.Name, ps.Pod.UID, ps.Pod.Labels = fmt.Sprint("pod-", i), types.UID(fmt.Sprint("uid-", i)), map[string]string{"app": app}
		ps.CgroupID = uint64(10000 + 4*i)
		ps.Containers = map[string]uint64{"log-shipper": ps.CgroupID + 1, "app": ps.CgroupID + 2, "admin": ps.CgroupID + 3}
		states = append(states, ps)
	}
	var sets []*translator.RuleSet
	for i := range policies {
		sets = append(sets, ruleSet(&testing.T{}, fmt.Sprintf(`
metadata: {name: p%d}
spec:
  podSelector: {matchLabels: {app: app-%d}}
  containers: {roles: [sidecar]}
  egress:
  - toEndpoints: [{matchLabels: {app: app-%d}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}, {port: "9000", endPort: 9100, protocol: TCP}]}]
  - toCIDRSet: [{cidr: 10.%d.0.0/16, except: [10.%d.1.0/24]}]
`, i, i, (i+1)%policies, i, i)))
	}
	in := Input{Pods: states, RuleSets: sets, Identities: snap}
	ids := NewIDs()
	b.ReportAllocs()
	b.ResetTimer()
	var s *State
	for b.Loop() {
		s = Compile(in, ids)
	}
	b.StopTimer()
	n := 0
	for _, r := range s.Rules {
		n += len(r)
	}
	b.ReportMetric(float64(len(s.Containers)), "containers")
	b.ReportMetric(float64(n), "rules")
}
