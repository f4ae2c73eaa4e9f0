package agent

import (
	"fmt"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sidewall/sidewall/bpfext"
	"github.com/sidewall/sidewall/translator"
)

const sidecarsToA = `
metadata: {name: sidecars}
spec:
  podSelector: {matchLabels: {app: web}}
  containers: {roles: [sidecar]}
  egress:
  - toEndpoints: [{matchLabels: {app: a}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
`

// TestCompilePodWithoutContainers compiles a selected pod with no
// containers, which the API server refuses but an object can still hold.
func TestCompilePodWithoutContainers(t *testing.T) {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "empty", UID: "uid-empty", Labels: map[string]string{"app": "web"}},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIPs: []corev1.PodIP{{IP: ipWeb.String()}}},
	}
	ps := PodState{Pod: pod, CgroupPath: "/sys/fs/cgroup/kubepods/podempty", CgroupID: 100}
	s := Compile(Input{Pods: []PodState{ps}, RuleSets: []*translator.RuleSet{ruleSet(t, sidecarsToA)}, Identities: snapshot()}, NewIDs())
	if len(s.Pods) != 1 || len(s.Rules) != 0 || len(s.Attach) != 1 {
		t.Errorf("pods %v, rules %v, attach %v: want the pod, no rules, its cgroup attached", s.Pods, s.Rules, s.Attach)
	}
	if len(s.Containers) != 1 || !s.Containers[100].DenyAll {
		t.Errorf("containers %v: want only the pod cgroup's deny-all entry", s.Containers)
	}
	if len(s.Warnings) != 1 || !strings.Contains(s.Warnings[0], "shop/empty") || !strings.Contains(s.Warnings[0], "spec.containers") {
		t.Errorf("warnings %q: want one naming the pod and spec.containers", s.Warnings)
	}
}

// bigPod has n sidecars and n app containers, each with its own cgroup.
func bigPod(n int) PodState {
	always := corev1.ContainerRestartPolicyAlways
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "big", UID: "uid-big", Labels: map[string]string{"app": "web"}},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIPs: []corev1.PodIP{{IP: ipWeb.String()}}},
	}
	ps := PodState{Pod: pod, CgroupPath: "/sys/fs/cgroup/kubepods/podbig", CgroupID: 100, Containers: map[string]uint64{}}
	for i := range n {
		sc, app := fmt.Sprintf("sidecar-%d", i), fmt.Sprintf("app-%d", i)
		pod.Spec.InitContainers = append(pod.Spec.InitContainers, corev1.Container{Name: sc, RestartPolicy: &always})
		pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: app})
		ps.Containers[sc] = uint64(1000 + i)
		ps.Containers[app] = uint64(2000 + i)
	}
	return ps
}

// TestCompilePodWith200Containers classifies every container of a
// 200-container pod and checks each one's verdicts and the map sizes.
func TestCompilePodWith200Containers(t *testing.T) {
	ps := bigPod(100)
	s := Compile(Input{Pods: []PodState{ps}, RuleSets: []*translator.RuleSet{ruleSet(t, sidecarsToA)}, Identities: snapshot()}, NewIDs())
	if len(s.Warnings) > 0 {
		t.Errorf("warnings: %q", s.Warnings)
	}
	// 200 containers and the pod cgroup's entry.
	if len(s.Containers) != 201 {
		t.Fatalf("%d container entries, want 201", len(s.Containers))
	}
	ids := map[uint32]string{}
	for name, cg := range ps.Containers {
		c, ok := s.Containers[cg]
		if !ok {
			t.Errorf("%s (cgroup %d) not classified", name, cg)
			continue
		}
		if other, dup := ids[c.ContainerID]; dup || c.ContainerID == 0 || c.ContainerID == podEntryContainerID {
			t.Errorf("%s: container id %d reserved or shared with %s", name, c.ContainerID, other)
		}
		ids[c.ContainerID] = name
		sidecar := strings.HasPrefix(name, "sidecar-")
		if c.EgressRestricted != sidecar || c.DenyAll {
			t.Errorf("%s: egress restricted %t, deny-all %t; want restricted %t", name, c.EgressRestricted, c.DenyAll, sidecar)
		}
		// The sidecars' grant is exclusive: the apps are denied peer a.
		toA, _ := datapathVerdict(s, cg, bpfext.Egress, false, 0, ipA, bpfext.ProtoTCP, 8080)
		toB, _ := datapathVerdict(s, cg, bpfext.Egress, false, 0, ipB, bpfext.ProtoTCP, 8080)
		if toA != sidecar || toB == sidecar {
			t.Errorf("%s: to a %t, to b %t; want %t, %t", name, toA, toB, sidecar, !sidecar)
		}
	}
	var all []bpfext.Rule
	for _, rules := range s.Rules {
		all = append(all, rules...)
	}
	entries, err := bpfext.RuleEntries(all)
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, n := range entries {
		total += n
	}
	// Defaults of bpf/lib/maps.h.
	if total > 524288 || len(s.Rules) > 65536 || len(s.Containers) > 65536 {
		t.Errorf("%d rules entries, %d policies, %d containers exceed the default map sizes", total, len(s.Rules), len(s.Containers))
	}
	if len(s.Rules) != 200 || total != 200 {
		t.Errorf("%d policies with %d rules entries, want 200 and 200 (one grant or exclusive deny each)", len(s.Rules), total)
	}
}
