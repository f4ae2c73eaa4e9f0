package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sidewall/sidewall/agent/cgroups"
	"github.com/sidewall/sidewall/hack/harness/agentnode"
	"github.com/sidewall/sidewall/hack/harness/containerd"
)

// TestCRIFirstConnection starts pods through a real containerd's CRI, as
// kubelet does, with a restricted sidecar whose first action is a TCP
// connection to an allowed address and then one to a denied address. With
// the agent asking containerd (--cri-socket), the sidecar is classified
// from its cgroup event and no pod status is written at all; without it,
// the harness writes the status (container id, running) the moment
// StartContainer returns, which is kubelet's best case. Every start must
// connect to the allowed address and be refused the denied one (EPERM at
// connect(), which only a classified container gets). The log reports the
// unclassified time (p50/p99) and the connect times of both modes.
func TestCRIFirstConnection(t *testing.T) {
	n := agentnode.New(t, agentnode.Options{Prefix: "cri"})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	// runc leaves its cgroup v1 directories under the node's root; the
	// node removes its cgroup2 tree itself.
	rt := containerd.StartForTest(t, n.Local.CgroupRoot(), true)
	var ports []string
	for range 2 {
		ln, err := rt.ListenGateway()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		ports = append(ports, ln.Addr().String())
	}
	allowed, denied := ports[0], ports[1]
	_, allowedPort, _ := net.SplitHostPort(allowed)
	n.ApplyPolicy(fmt.Sprintf(`
metadata: {name: shipper}
spec:
  podSelector: {matchLabels: {app: cri}}
  containers: {names: [shipper]}
  egress:
  - toCIDR: [%s/32]
    toPorts: [{ports: [{port: "%s", protocol: TCP}]}]
`, rt.Gateway, allowedPort))
	layout, err := cgroups.NewResolver(n.Local.CgroupConfig())
	if err != nil {
		t.Fatal(err)
	}

	type result struct {
		unclassified []time.Duration
		connect      []time.Duration
		retransmits  int
	}
	run := func(mode string, rounds int, writeStatus bool) result {
		var res result
		before := len(n.Agent.Agent.ClassifyTimes())
		for i := range rounds {
			connect := startSidecar(ctx, t, n, rt, layout, fmt.Sprintf("%s-%d", mode, i), writeStatus, allowed, denied)
			res.connect = append(res.connect, connect)
			if connect > 500*time.Millisecond {
				res.retransmits++
			}
		}
		// The agent measured each sidecar's unclassified time, from its
		// cgroup appearing to the datapath holding it.
		deadline := time.Now().Add(10 * time.Second)
		for len(n.Agent.Agent.ClassifyTimes())-before < rounds && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		res.unclassified = n.Agent.Agent.ClassifyTimes()[before:]
		return res
	}
	report := func(mode string, r result) {
		t.Logf("%s: %d starts; unclassified p50 %s p99 %s max %s; first connect p50 %s p99 %s; %d needed a retransmit",
			mode, len(r.connect), quantile(r.unclassified, 0.5), quantile(r.unclassified, 0.99), quantile(r.unclassified, 1),
			quantile(r.connect, 0.5), quantile(r.connect, 0.99), r.retransmits)
	}

	statusMode := run("status", 20, true)
	report("pod status (kubelet's best case)", statusMode)

	n.StopAgent()
	n.SetCRISocket(rt.Socket())
	n.StartAgent()
	rounds := 200
	if testing.Short() {
		rounds = 20
	}
	criMode := run("cri", rounds, false)
	report("CRI lookup", criMode)
	if len(criMode.unclassified) < rounds {
		t.Errorf("the agent measured %d of %d sidecars", len(criMode.unclassified), rounds)
	}
}

// startSidecar runs one pod through the CRI with a restricted sidecar that
// connects to allowed and then to denied, checks both outcomes, removes the
// pod, and returns how long the allowed connect took.
func startSidecar(ctx context.Context, t *testing.T, n *agentnode.Node, rt *containerd.Runtime, layout *cgroups.Resolver,
	name string, writeStatus bool, allowed, denied string) time.Duration {
	t.Helper()
	always := corev1.ContainerRestartPolicyAlways
	pods := n.Client.CoreV1().Pods(n.Namespace)
	pod, err := pods.Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": "cri"}},
		Spec: corev1.PodSpec{NodeName: n.Local.Name(),
			InitContainers: []corev1.Container{{Name: "shipper", Image: containerd.Image, RestartPolicy: &always}},
			Containers:     []corev1.Container{{Name: "app", Image: containerd.Image}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		zero := int64(0)
		if err := pods.Delete(context.Background(), name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
			t.Errorf("delete pod %s: %v", name, err)
		}
	}()
	pod.Status = corev1.PodStatus{Phase: corev1.PodPending, QOSClass: corev1.PodQOSBestEffort}
	if pod, err = pods.UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	// kubelet makes the pod's cgroup before the sandbox.
	podDir, err := layout.Layout().PodDir(pod.UID, corev1.PodQOSBestEffort)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(podDir, 0o755); err != nil {
		t.Fatal(err)
	}
	p, err := rt.RunPodSandbox(ctx, pod, strings.TrimPrefix(podDir, layout.Mount()))
	if err != nil {
		t.Fatalf("%v\n%s", err, rt.LogTail())
	}
	defer func() {
		if err := rt.RemovePodSandbox(context.Background(), p); err != nil {
			t.Errorf("remove sandbox of %s: %v", name, err)
		}
	}()
	// This measures classification, not attachment: the pod's cgroup is
	// attached before the sidecar starts.
	podCg, err := cgroups.ID(podDir)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the agent attaches to pod "+name, func() error {
		ids, err := n.Agent.Datapath.Attached()
		if err != nil {
			return err
		}
		if !slices.Contains(ids, podCg) {
			return fmt.Errorf("pod cgroup %d not attached", podCg)
		}
		return nil
	})
	id, err := rt.StartContainer(ctx, p, "shipper", "connect", allowed, denied)
	if err != nil {
		t.Fatalf("%v\n%s", err, rt.LogTail())
	}
	if writeStatus {
		pod.Status.PodIP = p.IP.String()
		pod.Status.PodIPs = []corev1.PodIP{{IP: p.IP.String()}}
		pod.Status.InitContainerStatuses = []corev1.ContainerStatus{{Name: "shipper", ContainerID: "containerd://" + id,
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.Now()}}}}
		if _, err := pods.UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	code, out, err := rt.WaitExit(ctx, p, id)
	if err != nil || code != 0 {
		t.Fatalf("sidecar of %s: exit %d, %v, output %q", name, code, err, out)
	}
	lines := strings.Split(out, "\n")
	if len(lines) != 2 {
		t.Fatalf("sidecar of %s: output %q", name, out)
	}
	var took int64
	if _, err := fmt.Sscanf(lines[0], allowed+" ok %d", &took); err != nil {
		t.Errorf("sidecar of %s: first connection, to the allowed %s: %q", name, allowed, lines[0])
	}
	if !strings.HasPrefix(lines[1], denied+" err ") || !strings.Contains(lines[1], "operation not permitted") {
		t.Errorf("sidecar of %s: connection to the denied %s: %q, want EPERM", name, denied, lines[1])
	}
	return time.Duration(took) * time.Microsecond
}

func quantile(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := int(q * float64(len(s)-1))
	return s[i].Round(10 * time.Microsecond)
}
