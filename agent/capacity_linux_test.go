package agent_test

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sidewall/sidewall/agent"
	"github.com/sidewall/sidewall/bpfext"
	"github.com/sidewall/sidewall/hack/harness/localnode"
)

// TestAgentMapFullFailsClosed runs the real datapath with a rules map that
// holds one pod's policy: the second pod's sidecar must deny everything,
// even what its policy allows, while the first stays enforced exactly, and
// get its policy once the first pod is gone.
func TestAgentMapFullFailsClosed(t *testing.T) {
	// policyTo takes one rules entry per pod (one peer identity, one port).
	h := newHarnessMaps(t, false, map[string]uint32{bpfext.MapRules: 1})
	h.applyPolicy(policyTo("a"))
	a := h.runPod("peer-a", map[string]string{"app": "a"}, false)
	b := h.runPod("peer-b", map[string]string{"app": "b"}, false)
	for _, p := range []*localnode.Pod{a, b} {
		if _, err := h.Local.Listen(context.Background(), p, "app", "tcp", 8080); err != nil {
			t.Fatalf("listen in %s: %v", p.Name, err)
		}
	}
	web1 := h.runPod("web-1", map[string]string{"app": "web"}, true)
	h.expect(web1, "log-shipper", a, true)
	h.expect(web1, "log-shipper", b, false)
	if n, _ := h.Agent.Datapath.MapEntries(); n[bpfext.MapRules] != 1 {
		t.Fatalf("web-1's policy takes %d rules entries, the test assumes 1", n[bpfext.MapRules])
	}

	web2 := h.runPod("web-2", map[string]string{"app": "web"}, true)
	shipper2, err := web2.Container("log-shipper")
	if err != nil {
		t.Fatal(err)
	}
	// Wait until the agent has classified web-2's sidecar (before that it
	// is denied by the pod cgroup's entry, which proves nothing).
	waitFor(t, "web-2's sidecar classified deny-all", func() bool {
		st := h.Agent.Agent.State()
		if st == nil || st.FailClosed[web2.UID] != agent.ReasonMapFull {
			return false
		}
		cs, _ := h.Agent.Datapath.Containers()
		for _, c := range cs {
			if c.CgroupID == shipper2.CgroupID {
				return c.DenyAll && c.PolicyID == 0
			}
		}
		return false
	})
	if err := h.dial(web2, "log-shipper", a); !errors.Is(err, syscall.EPERM) {
		t.Errorf("fail-closed web-2/log-shipper -> peer-a (allowed by its policy): got %v, want EPERM", err)
	}
	if err := h.dial(web2, "log-shipper", b); !errors.Is(err, syscall.EPERM) {
		t.Errorf("fail-closed web-2/log-shipper -> peer-b: got %v, want EPERM", err)
	}
	// The pod's unrestricted app keeps its classification, and the first
	// pod keeps its whole policy.
	h.expect(web2, "app", b, true)
	h.expect(web1, "log-shipper", a, true)
	h.expect(web1, "log-shipper", b, false)
	h.expect(web1, "app", b, true)
	if got := failClosedMetric(t, h); got != "1" {
		t.Errorf("sidewall_pods_fail_closed{reason=\"map_full\"} = %q, want 1", got)
	}
	if n, _ := h.Agent.Datapath.MapEntries(); n[bpfext.MapRules] != 1 || n[bpfext.MapPolicies] != 1 {
		t.Errorf("maps hold %d rules entries, %d policies; want web-1's only (1, 1)", n[bpfext.MapRules], n[bpfext.MapPolicies])
	}
	warn := waitEvent(t, h, web2.Name, agent.EventReasonMapFull)
	if warn.Type != corev1.EventTypeWarning || warn.Action != agent.EventActionFailClosed ||
		warn.ReportingController != agent.ReportingController || warn.ReportingInstance != h.Local.Name() ||
		warn.Regarding.Kind != "Pod" || warn.Regarding.UID != web2.UID || !strings.Contains(warn.Note, "sw_rules 1/1") {
		t.Errorf("MapFull event: type %q action %q reported by %s/%s regarding %s %s, note %q; want Warning FailClosed by %s/%s on Pod %s naming sw_rules 1/1",
			warn.Type, warn.Action, warn.ReportingController, warn.ReportingInstance, warn.Regarding.Kind, warn.Regarding.UID, warn.Note,
			agent.ReportingController, h.Local.Name(), web2.UID)
	}

	// A restarted agent rewrites web-1's policy over the entries the map
	// already holds: the full map must not refuse it.
	h.stop()
	h.startAgent()
	waitFor(t, "restarted agent refuses web-2 only", func() bool {
		st := h.Agent.Agent.State()
		return st != nil && len(st.FailClosed) == 1 && st.FailClosed[web2.UID] == agent.ReasonMapFull
	})
	h.expect(web1, "log-shipper", a, true)
	h.expect(web1, "log-shipper", b, false)
	if err := h.dial(web2, "log-shipper", a); !errors.Is(err, syscall.EPERM) {
		t.Errorf("after restart, web-2/log-shipper -> peer-a: got %v, want EPERM", err)
	}

	// Capacity freed: web-2 gets its policy.
	if err := h.Local.DeletePod(context.Background(), web1); err != nil {
		t.Fatalf("delete web-1: %v", err)
	}
	h.expect(web2, "log-shipper", a, true)
	h.expect(web2, "log-shipper", b, false)
	waitFor(t, "fail-closed gauge back to 0", func() bool { return failClosedMetric(t, h) == "0" })
	if st := h.Agent.Agent.State(); len(st.FailClosed) != 0 {
		t.Errorf("state still lists fail-closed pods: %v", st.FailClosed)
	}
	ok := waitEvent(t, h, web2.Name, agent.EventReasonEnforced)
	if ok.Type != corev1.EventTypeNormal || ok.Action != agent.EventActionEnforce || ok.ReportingInstance != h.Local.Name() {
		t.Errorf("Enforced event: type %q action %q instance %q; want Normal %s by %s", ok.Type, ok.Action, ok.ReportingInstance, agent.EventActionEnforce, h.Local.Name())
	}
	// Events are recorded on transitions only: the reconciles while web-2
	// failed closed (resyncs, web-1's deletion) add none. The restarted
	// agent saw web-2 start failing closed once more.
	evs := podEvents(t, h, web2.Name)
	var warnings, normals int
	for _, ev := range evs {
		switch ev.Reason {
		case agent.EventReasonMapFull:
			warnings++
			if ev.Series != nil {
				t.Errorf("MapFull event %s repeated %d times", ev.Name, ev.Series.Count)
			}
		case agent.EventReasonEnforced:
			normals++
		}
	}
	if warnings != 2 || normals != 1 {
		t.Errorf("web-2 has %d MapFull and %d Enforced events, want 2 (one per agent run) and 1", warnings, normals)
	}
}

// podEvents lists the events.k8s.io Events regarding a pod of the harness.
func podEvents(t *testing.T, h *harness, pod string) []eventsv1.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l, err := h.Client.EventsV1().Events(h.Namespace).List(ctx, metav1.ListOptions{FieldSelector: "regarding.name=" + pod})
	if err != nil {
		t.Fatalf("list events: %v", err)
	}
	return l.Items
}

// waitEvent waits for an Event with the reason on the pod.
func waitEvent(t *testing.T, h *harness, pod, reason string) eventsv1.Event {
	t.Helper()
	var found eventsv1.Event
	waitFor(t, reason+" event on "+pod, func() bool {
		for _, ev := range podEvents(t, h, pod) {
			if ev.Regarding.Name == pod && ev.Reason == reason {
				found = ev
				return true
			}
		}
		return false
	})
	return found
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func failClosedMetric(t *testing.T, h *harness) string {
	t.Helper()
	rec := httptest.NewRecorder()
	h.Agent.Agent.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for _, line := range strings.Split(rec.Body.String(), "\n") {
		if v, ok := strings.CutPrefix(line, `sidewall_pods_fail_closed{reason="map_full"} `); ok {
			return v
		}
	}
	return ""
}

// TestAgentPodWith200Containers runs a pod of 100 sidecars and 100 app
// containers (real cgroups, no network) through the agent: every container
// is classified on the real datapath, the sidecars restricted.
func TestAgentPodWith200Containers(t *testing.T) {
	h := newHarness(t)
	baseline, err := h.Agent.Datapath.MapEntries()
	if err != nil {
		t.Fatal(err)
	}
	h.applyPolicy(`
metadata: {name: sidecars}
spec:
  podSelector: {matchLabels: {app: web}}
  containers: {roles: [sidecar]}
  egress:
  - toEndpoints: [{matchLabels: {app: a}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
`)
	always := corev1.ContainerRestartPolicyAlways
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: h.Namespace, Name: "big", Labels: map[string]string{"app": "web"}}}
	for i := range 100 {
		pod.Spec.InitContainers = append(pod.Spec.InitContainers, corev1.Container{Name: fmt.Sprintf("sidecar-%d", i), RestartPolicy: &always})
		pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: fmt.Sprintf("app-%d", i)})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	big, err := h.Local.RunPod(ctx, pod, localnode.WithoutNetwork())
	if err != nil {
		t.Fatalf("run pod: %v", err)
	}
	cts := big.Containers()
	if len(cts) != 200 {
		t.Fatalf("localnode ran %d containers, want 200", len(cts))
	}
	var problems []string
	t.Cleanup(func() {
		if t.Failed() && len(problems) > 0 {
			t.Logf("containers not as expected: %q", problems)
		}
	})
	waitFor(t, "all 200 containers classified", func() bool {
		cs, err := h.Agent.Datapath.Containers()
		if err != nil {
			return false
		}
		byCg := map[uint64]bpfext.Container{}
		for _, c := range cs {
			byCg[c.CgroupID] = c
		}
		problems = nil
		for _, ct := range cts {
			c, ok := byCg[ct.CgroupID]
			sidecar := strings.HasPrefix(ct.Name, "sidecar-")
			switch {
			case !ok:
				problems = append(problems, ct.Name+" unclassified")
			case c.DenyAll || c.EgressRestricted != sidecar:
				problems = append(problems, fmt.Sprintf("%s: deny-all %t, egress restricted %t", ct.Name, c.DenyAll, c.EgressRestricted))
			}
		}
		return len(problems) == 0
	})
	if st := h.Agent.Agent.State(); len(st.FailClosed) != 0 {
		t.Errorf("fail-closed pods: %v", st.FailClosed)
	}
	if n, _ := h.Agent.Datapath.MapEntries(); n[bpfext.MapContainers] != baseline[bpfext.MapContainers]+201 {
		t.Errorf("sw_containers holds %d entries, want %d (200 containers and the pod cgroup)", n[bpfext.MapContainers], baseline[bpfext.MapContainers]+201)
	}

	if err := h.Local.DeletePod(context.Background(), big); err != nil {
		t.Fatalf("delete pod: %v", err)
	}
	h.deletePolicy("sidecars")
	waitFor(t, "maps back to baseline", func() bool {
		now, _ := h.Agent.Datapath.MapEntries()
		attached, _ := h.Agent.Datapath.Attached()
		return fmt.Sprint(now) == fmt.Sprint(baseline) && len(attached) == 0
	})
}
