package agent_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	ciliumv2 "github.com/cilium/cilium/pkg/k8s/apis/cilium.io/v2"
	"github.com/cilium/cilium/pkg/k8s/client/clientset/versioned"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sidewall/sidewall/agent/cgroups"
	"github.com/sidewall/sidewall/bpfext"
	swharness "github.com/sidewall/sidewall/hack/harness"
	"github.com/sidewall/sidewall/hack/harness/agentnode"
	"github.com/sidewall/sidewall/hack/harness/localnode"
)

// harness is the shared agent node (agentnode: envtest, a local node and
// the agent started by agent.Start), with short names for this package's
// tests.
type harness struct {
	*agentnode.Node
	t *testing.T
}

func newHarness(t *testing.T) *harness { return newHarnessWith(t, false) }

// newHarnessWith runs the agent with Cilium's identities (CiliumEndpoints,
// CiliumIdentities; Cilium's CRDs installed) or with local ones.
func newHarnessWith(t *testing.T, cilium bool) *harness {
	return newHarnessMaps(t, cilium, nil)
}

// newHarnessMaps is newHarnessWith with map sizes overridden.
func newHarnessMaps(t *testing.T, cilium bool, maxEntries map[string]uint32) *harness {
	n := agentnode.New(t, agentnode.Options{Prefix: "agent", Cilium: cilium, MaxEntries: maxEntries, LogLevel: slog.LevelInfo})
	return &harness{Node: n, t: t}
}

// startAgent starts the agent again on the same pins (a restart).
func (h *harness) startAgent() { h.StartAgent() }

func (h *harness) stop() { h.StopAgent() }

func (h *harness) applyPolicy(doc string) { h.t.Helper(); h.ApplyPolicy(doc) }

func (h *harness) deletePolicy(name string) { h.t.Helper(); h.DeletePolicy(name) }

func (h *harness) runPod(name string, labels map[string]string, sidecar bool) *localnode.Pod {
	h.t.Helper()
	return h.RunPod(name, labels, sidecar)
}

// dial connects from a container of p to peer:8080 over TCP.
func (h *harness) dial(p *localnode.Pod, container string, peer *localnode.Pod) error {
	return h.Dial(p, container, peer, "8080")
}

// expect waits until the connection from container of p to peer:8080 gets
// the wanted outcome: allowed, or denied at once with EPERM.
func (h *harness) expect(p *localnode.Pod, container string, peer *localnode.Pod, allowed bool) {
	h.t.Helper()
	h.Expect(p, container, peer, "8080", allowed)
}

func policyTo(app string) string {
	return fmt.Sprintf(`
metadata: {name: shipper}
spec:
  podSelector: {matchLabels: {app: web}}
  containers: {names: [log-shipper]}
  shareGrantsWithPod: true
  egress:
  - toEndpoints: [{matchLabels: {app: %s}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
`, app)
}

func TestAgentEnforcesSidecarPolicy(t *testing.T) {
	h := newHarness(t)
	baseline, err := h.Agent.Datapath.MapEntries()
	if err != nil {
		t.Fatal(err)
	}

	// Policy first, pods after: enforced from the container's start.
	h.applyPolicy(policyTo("a"))
	a := h.runPod("peer-a", map[string]string{"app": "a"}, false)
	b := h.runPod("peer-b", map[string]string{"app": "b"}, false)
	for _, p := range []*localnode.Pod{a, b} {
		if _, err := h.Local.Listen(context.Background(), p, "app", "tcp", 8080); err != nil {
			t.Fatalf("listen in %s: %v", p.Name, err)
		}
	}
	web := h.runPod("web", map[string]string{"app": "web"}, true)

	h.expect(web, "log-shipper", b, false)
	h.expect(web, "log-shipper", a, true)
	h.expect(web, "app", a, true)
	h.expect(web, "app", b, true)

	// An edit takes effect.
	h.applyPolicy(policyTo("b"))
	h.expect(web, "log-shipper", a, false)
	h.expect(web, "log-shipper", b, true)

	// A restarted container (new id, new cgroup) is still enforced.
	old, _ := web.Container("log-shipper")
	restarted, err := h.Local.RestartContainer(context.Background(), web, "log-shipper")
	if err != nil {
		t.Fatalf("restart: %v", err)
	}
	if restarted.CgroupID == old.CgroupID {
		t.Fatalf("restart kept cgroup %d", old.CgroupID)
	}
	h.expect(web, "log-shipper", a, false)
	h.expect(web, "log-shipper", b, true)

	// Deleting the policy lifts it; a policy created while the pods run
	// is enforced.
	h.deletePolicy("shipper")
	h.expect(web, "log-shipper", a, true)
	h.applyPolicy(policyTo("a"))
	h.expect(web, "log-shipper", b, false)
	h.expect(web, "log-shipper", a, true)
	h.expect(web, "app", b, true)

	// The real hubble CLI shows the sidecar's dropped flow, by its
	// container label, and not under the app's.
	addr := h.Agent.Hubble.Addrs()[0].String()
	out := runHubble(t, "observe", "--server", addr, "--last", "1000", "--verdict", "DROPPED", "--from-label", "sidewall.io/container=log-shipper", "-o", "jsonpb")
	if !strings.Contains(out, `"DROPPED"`) || !strings.Contains(out, b.IP.String()) || !strings.Contains(out, "sidewall.io/container=log-shipper") {
		t.Errorf("hubble observe did not show the dropped sidecar flow to %s:\n%s", b.IP, out)
	}
	if out := runHubble(t, "observe", "--server", addr, "--last", "1000", "--verdict", "DROPPED", "--from-label", "sidewall.io/container=app", "-o", "jsonpb"); strings.Contains(out, "DROPPED") {
		t.Errorf("hubble observe --from-label sidewall.io/container=app shows drops:\n%s", out)
	}

	// The metrics count the verdicts of the sidecar.
	rec := httptest.NewRecorder()
	h.Agent.Agent.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body := rec.Body.String()
	var denied bool
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, "sidewall_verdicts_total{") && strings.Contains(line, `container="log-shipper"`) &&
			strings.Contains(line, `verdict="deny"`) && strings.Contains(line, `pod="web"`) && !strings.HasSuffix(line, " 0") {
			denied = true
		}
	}
	// The connect hook's denies are not in the datapath's counters (only
	// its events); the packets of the allowed connections are.
	if !strings.Contains(body, `sidewall_datapath_verdicts_total{direction="egress",reason="rule-allow",verdict="allow"}`) {
		t.Errorf("no datapath rule-allow counter in metrics:\n%s", grep(body, "sidewall_datapath"))
	}
	if !denied {
		t.Errorf("no deny verdict of log-shipper in metrics:\n%s", grep(body, "sidewall_"))
	}

	// Gone pods and policies leave the maps as they were.
	h.deletePolicy("shipper")
	for _, p := range []*localnode.Pod{web, a, b} {
		if err := h.Local.DeletePod(context.Background(), p); err != nil {
			t.Fatalf("delete pod %s: %v", p.Name, err)
		}
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		now, err := h.Agent.Datapath.MapEntries()
		if err != nil {
			t.Fatal(err)
		}
		attached, _ := h.Agent.Datapath.Attached()
		if fmt.Sprint(now) == fmt.Sprint(baseline) && len(attached) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("maps not back to baseline: %v, want %v; attached %v", now, baseline, attached)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestAgentRestartNoGap sends the denied connection continuously while the
// agent stops and a new one adopts the pins: no attempt may pass.
func TestAgentRestartNoGap(t *testing.T) {
	h := newHarness(t)
	h.applyPolicy(policyTo("a"))
	a := h.runPod("peer-a", map[string]string{"app": "a"}, false)
	b := h.runPod("peer-b", map[string]string{"app": "b"}, false)
	for _, p := range []*localnode.Pod{a, b} {
		if _, err := h.Local.Listen(context.Background(), p, "app", "tcp", 8080); err != nil {
			t.Fatalf("listen in %s: %v", p.Name, err)
		}
	}
	web := h.runPod("web", map[string]string{"app": "web"}, true)
	h.expect(web, "log-shipper", b, false)
	h.expect(web, "log-shipper", a, true)

	var (
		mu       sync.Mutex
		attempts int
		leaks    []error
	)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-done:
				return
			default:
			}
			err := h.dial(web, "log-shipper", b)
			mu.Lock()
			attempts++
			if !errors.Is(err, syscall.EPERM) {
				leaks = append(leaks, err)
			}
			mu.Unlock()
		}
	})
	time.Sleep(500 * time.Millisecond)
	h.stop()
	time.Sleep(500 * time.Millisecond)
	h.startAgent()
	h.expect(web, "log-shipper", a, true)
	time.Sleep(500 * time.Millisecond)
	close(done)
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if attempts < 5 {
		t.Fatalf("only %d attempts across the restart", attempts)
	}
	if len(leaks) > 0 {
		t.Fatalf("%d of %d denied connections did not get EPERM across the restart: %v", len(leaks), attempts, leaks)
	}
	t.Logf("%d denied connection attempts across the restart, all EPERM", attempts)
}

// TestAgentCiliumIdentities runs the agent on Cilium's identities: the
// rules must name the numbers Cilium gave the peers, and enforce them.
func TestAgentCiliumIdentities(t *testing.T) {
	h := newHarnessWith(t, true)
	cc, err := versioned.NewForConfig(h.Env.Config)
	if err != nil {
		t.Fatal(err)
	}
	h.applyPolicy(policyTo("a"))
	a := h.runPod("peer-a", map[string]string{"app": "a"}, false)
	b := h.runPod("peer-b", map[string]string{"app": "b"}, false)
	web := h.runPod("web", map[string]string{"app": "web"}, true)
	for _, p := range []*localnode.Pod{a, b} {
		if _, err := h.Local.Listen(context.Background(), p, "app", "tcp", 8080); err != nil {
			t.Fatalf("listen in %s: %v", p.Name, err)
		}
	}
	ctx := context.Background()
	// Numbers as Cilium's operator and agent would have written them.
	for i, p := range []*localnode.Pod{web, a, b} {
		id := int64(40000 + i)
		app := map[*localnode.Pod]string{web: "web", a: "a", b: "b"}[p]
		lbls := map[string]string{"k8s:app": app, "k8s:io.kubernetes.pod.namespace": h.Namespace}
		if _, err := cc.CiliumV2().CiliumIdentities().Create(ctx, &ciliumv2.CiliumIdentity{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprint(id)}, SecurityLabels: lbls,
		}, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create ciliumidentity: %v", err)
		}
		if _, err := cc.CiliumV2().CiliumEndpoints(h.Namespace).Create(ctx, &ciliumv2.CiliumEndpoint{
			ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: h.Namespace},
			Status: ciliumv2.EndpointStatus{
				ID: 100 + id, State: "ready",
				Identity:   &ciliumv2.EndpointIdentity{ID: id},
				Networking: &ciliumv2.EndpointNetworking{Addressing: []*ciliumv2.AddressPair{{IPV4: p.IP.String()}}, NodeIP: h.Local.HostIP().String()},
			},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create ciliumendpoint: %v", err)
		}
	}
	h.expect(web, "log-shipper", a, true)
	h.expect(web, "log-shipper", b, false)
	h.expect(web, "app", b, true)
	st := h.Agent.Agent.State()
	sc, _ := web.Container("log-shipper")
	var peers []uint32
	for _, r := range st.Rules[st.Containers[sc.CgroupID].PolicyID] {
		peers = append(peers, r.Peer)
	}
	if fmt.Sprint(peers) != "[40001]" {
		t.Errorf("log-shipper rule peers = %v, want Cilium's identity of peer-a [40001]", peers)
	}
}

// TestAgentFailsClosed: a container of a selected pod that the API does not
// report yet (started, no status) is denied (its TCP SYNs dropped), also
// after a restart, until the agent classifies it.
func TestAgentFailsClosed(t *testing.T) {
	h := newHarness(t)
	h.applyPolicy(policyTo("a"))
	a := h.runPod("peer-a", map[string]string{"app": "a"}, false)
	if _, err := h.Local.Listen(context.Background(), a, "app", "tcp", 8080); err != nil {
		t.Fatalf("listen: %v", err)
	}
	// Before its status, the pod's cgroup is attached (the pod object is
	// enough) and its containers are unclassified.
	unclassified := func(container string) localnode.PodOption {
		return localnode.BeforeStatus(func(p *localnode.Pod) error {
			podCg, err := cgroups.ID(p.CgroupDir)
			if err != nil {
				return err
			}
			deadline := time.Now().Add(15 * time.Second)
			for {
				att, _ := h.Agent.Datapath.Attached()
				cs, _ := h.Agent.Datapath.Containers()
				if slices.Contains(att, podCg) && slices.ContainsFunc(cs, func(c bpfext.Container) bool { return c.CgroupID == podCg && c.DenyAll }) {
					break
				}
				if time.Now().After(deadline) {
					return fmt.Errorf("pod cgroup %d not attached with a deny-all entry", podCg)
				}
				time.Sleep(20 * time.Millisecond)
			}
			// Its TCP SYNs are dropped, not refused, so a connection
			// retried by the kernel succeeds once the agent classifies
			// the container; until then nothing gets through.
			if err := h.dial(p, container, a); !errors.Is(err, localnode.ErrTimeout) {
				return fmt.Errorf("unclassified %s -> peer-a: got %v, want the SYN dropped (a timeout)", container, err)
			}
			return nil
		})
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	always := corev1.ContainerRestartPolicyAlways
	web, err := h.Local.RunPod(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: h.Namespace, Name: "web", Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{
			InitContainers: []corev1.Container{{Name: "log-shipper", RestartPolicy: &always}},
			Containers:     []corev1.Container{{Name: "app"}},
		},
	}, unclassified("app"))
	if err != nil {
		t.Fatalf("run pod: %v", err)
	}
	h.expect(web, "app", a, true)
	h.expect(web, "log-shipper", a, true)
	if _, err := h.Local.RestartContainer(ctx, web, "log-shipper", unclassified("log-shipper")); err != nil {
		t.Fatalf("restart: %v", err)
	}
	h.expect(web, "log-shipper", a, true)
}

func runHubble(t *testing.T, args ...string) string {
	t.Helper()
	bin, err := swharness.Tool("hubble")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), "HUBBLE_CONFIG=/dev/null", "HOME="+t.TempDir())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("hubble %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
