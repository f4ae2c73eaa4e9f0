package localnode_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/sidewall/sidewall/agent/cgroups"
	"github.com/sidewall/sidewall/hack/harness"
	"github.com/sidewall/sidewall/hack/harness/localnode"
	"github.com/sidewall/sidewall/hack/harness/testenv"
)

func newNode(t testing.TB) (*localnode.Node, kubernetes.Interface) {
	t.Helper()
	harness.RequirePrivileged(t)
	env := testenv.New(t, testenv.Options{SkipCiliumCRDs: true})
	cs, err := kubernetes.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	opts := localnode.Options{Client: cs, Logf: t.Logf}
	if _, bench := t.(*testing.B); bench {
		opts.Logf = nil
	}
	n, err := localnode.New(ctx, opts)
	if err != nil {
		t.Fatalf("localnode.New: %v", err)
	}
	// Registered after testenv's cleanup, so it runs before the API server
	// stops.
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return n, cs
}

func webPod() *corev1.Pod {
	always := corev1.ContainerRestartPolicyAlways
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web", Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{
			InitContainers: []corev1.Container{
				{Name: "setup"},
				{Name: "log-shipper", RestartPolicy: &always},
			},
			Containers: []corev1.Container{{
				Name: "app",
				// A request without a limit: Burstable, a QoS tier directory.
				Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("10m")}},
			}},
		},
	}
}

func TestLocalNode(t *testing.T) {
	n, cs := newNode(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	web, err := n.RunPod(ctx, webPod())
	if err != nil {
		t.Fatalf("RunPod web: %v", err)
	}
	logging, err := n.RunPod(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "logging", Labels: map[string]string{"app": "logging"}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "server"}}},
	})
	if err != nil {
		t.Fatalf("RunPod logging: %v", err)
	}

	t.Run("status", func(t *testing.T) {
		obj, err := cs.CoreV1().Pods("shop").Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		st := obj.Status
		if obj.Spec.NodeName != n.Name() || st.Phase != corev1.PodRunning || st.PodIP != web.IP.String() ||
			len(st.PodIPs) != 1 || st.HostIP != n.HostIP().String() || st.QOSClass != corev1.PodQOSBurstable {
			t.Errorf("pod node %q phase %s podIP %s podIPs %v hostIP %s qos %s; want node %s Running %s %s Burstable",
				obj.Spec.NodeName, st.Phase, st.PodIP, st.PodIPs, st.HostIP, st.QOSClass, n.Name(), web.IP, n.HostIP())
		}
		if !n.PodCIDR().Contains(web.IP) {
			t.Errorf("pod ip %s outside %s", web.IP, n.PodCIDR())
		}
		if len(st.InitContainerStatuses) != 2 || len(st.ContainerStatuses) != 1 {
			t.Fatalf("statuses: init %+v app %+v", st.InitContainerStatuses, st.ContainerStatuses)
		}
		setup, shipper, app := st.InitContainerStatuses[0], st.InitContainerStatuses[1], st.ContainerStatuses[0]
		if setup.State.Terminated == nil || setup.State.Terminated.Reason != "Completed" || !strings.HasPrefix(setup.ContainerID, "containerd://") {
			t.Errorf("init container status %+v, want terminated Completed with a containerd id", setup)
		}
		for _, cs := range []corev1.ContainerStatus{shipper, app} {
			c, err := web.Container(cs.Name)
			if err != nil {
				t.Fatal(err)
			}
			if cs.State.Running == nil || !cs.Ready || cs.Started == nil || !*cs.Started || cs.RestartCount != 0 || cs.ContainerID != c.ContainerID {
				t.Errorf("status of %s = %+v; want running, ready, started, id %s", cs.Name, cs, c.ContainerID)
			}
			if want := filepath.Join(n.KubepodsDir(), "burstable", "pod"+string(obj.UID), strings.TrimPrefix(c.ContainerID, "containerd://")); c.CgroupDir != want {
				t.Errorf("%s cgroup %s, want kubelet's cgroupfs path %s", cs.Name, c.CgroupDir, want)
			}
		}

		// The agent's resolver finds the same cgroups from what was
		// written to the API server.
		r, err := cgroups.NewResolver(n.CgroupConfig())
		if err != nil {
			t.Fatal(err)
		}
		res, err := r.ResolvePod(obj)
		if err != nil {
			t.Fatalf("ResolvePod: %v", err)
		}
		if res.Path != web.CgroupDir || len(res.Containers) != 2 {
			t.Fatalf("resolved %+v; want pod %s with 2 running containers", res, web.CgroupDir)
		}
		for _, rc := range res.Containers {
			c, _ := web.Container(rc.Name)
			if rc.Path != c.CgroupDir || rc.CgroupID != c.CgroupID || c.CgroupID == 0 {
				t.Errorf("resolved %s at %s id %d; harness has %s id %d", rc.Name, rc.Path, rc.CgroupID, c.CgroupDir, c.CgroupID)
			}
		}
		if rc, _ := res.Container("log-shipper"); rc.Role != cgroups.RoleSidecar {
			t.Errorf("log-shipper role %s, want sidecar", rc.Role)
		}
	})

	t.Run("processes in cgroup and netns", func(t *testing.T) {
		pr, err := n.RunInContainer(web, "log-shipper", []string{"sleep", "60"})
		if err != nil {
			t.Fatal(err)
		}
		defer pr.Stop()
		c, _ := web.Container("log-shipper")
		checkPlacement(t, n, pr.Pid, c.CgroupDir, web.NetNSPath)

		// The pod's eth0 is quiet: no IPv6 router solicitations or MLD
		// reports that tests counting packets would see.
		out, err := exec.Command("ip", "netns", "exec", web.NetNSName, "cat", "/proc/sys/net/ipv6/conf/eth0/disable_ipv6").CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != "1" {
			t.Errorf("eth0 disable_ipv6 in the pod: %q, %v; want 1", out, err)
		}
	})

	srv, err := n.Listen(ctx, logging, "server", "tcp", 8080)
	if err != nil {
		t.Fatalf("Listen tcp: %v", err)
	}
	srvC, _ := logging.Container("server")
	checkPlacement(t, n, srv.Pid, srvC.CgroupDir, logging.NetNSPath)
	if _, err := n.Listen(ctx, logging, "server", "udp", 5353); err != nil {
		t.Fatalf("Listen udp: %v", err)
	}
	if _, err := n.Listen(ctx, logging, "server", "http", 8081); err != nil {
		t.Fatalf("Listen http: %v", err)
	}
	peer := logging.IP.String()

	t.Run("traffic", func(t *testing.T) {
		reply, err := n.Dial(ctx, web, "app", "tcp", peer+":8080", 5*time.Second)
		if err != nil || reply != "shop/logging/server hello from shop/web/app" {
			t.Errorf("tcp app->logging: %q, %v", reply, err)
		}
		reply, err = n.Dial(ctx, web, "log-shipper", "udp", peer+":5353", 5*time.Second)
		if err != nil || reply != "shop/logging/server hello from shop/web/log-shipper" {
			t.Errorf("udp log-shipper->logging: %q, %v", reply, err)
		}
		status, body, err := n.HTTP(ctx, web, "log-shipper", "POST", "http://"+peer+":8081/ingest", 5*time.Second)
		if err != nil || status != 200 || body != "shop/logging/server POST /ingest" {
			t.Errorf("http log-shipper->logging: %d %q %v", status, body, err)
		}
		// Over the pod's loopback: same netns, another container.
		if _, err := n.Listen(ctx, web, "app", "tcp", 9090); err != nil {
			t.Fatal(err)
		}
		reply, err = n.Dial(ctx, web, "log-shipper", "tcp", "127.0.0.1:9090", 5*time.Second)
		if err != nil || reply != "shop/web/app hello from shop/web/log-shipper" {
			t.Errorf("tcp log-shipper->app over loopback: %q, %v", reply, err)
		}
	})

	t.Run("errors the process got", func(t *testing.T) {
		_, err := n.Dial(ctx, web, "app", "tcp", peer+":1", 5*time.Second)
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("closed port: err = %v, want ECONNREFUSED", err)
		}
		// An address of the pod range that nobody has: the SYN waits for an
		// ARP answer that never comes, like a silent drop.
		last := n.PodCIDR().Masked().Addr().As4()
		last[2], last[3] = 255, 254
		start := time.Now()
		_, err = n.Dial(ctx, web, "app", "tcp", fmt.Sprintf("%d.%d.%d.%d:80", last[0], last[1], last[2], last[3]), 700*time.Millisecond)
		var ce *localnode.ConnError
		if !errors.Is(err, localnode.ErrTimeout) || !errors.As(err, &ce) || ce.Op != "connect" {
			t.Errorf("silent drop: err = %v, want a connect timeout", err)
		}
		if time.Since(start) > 5*time.Second {
			t.Errorf("timeout took %s", time.Since(start))
		}
		// A drop in the pod's own output path is reported to a UDP sender
		// as EPERM, as a cgroup_skb egress deny is. The rule lives in the
		// pod's network namespace only.
		out, err := exec.Command("ip", "netns", "exec", web.NetNSName, "iptables", "-A", "OUTPUT", "-p", "udp", "--dport", "5353", "-j", "DROP").CombinedOutput()
		if err != nil {
			t.Fatalf("iptables in pod netns: %v: %s", err, out)
		}
		_, err = n.Dial(ctx, web, "app", "udp", peer+":5353", 2*time.Second)
		if !errors.Is(err, syscall.EPERM) || !errors.As(err, &ce) || ce.Op != "send" {
			t.Errorf("udp dropped on output: err = %v, want send EPERM", err)
		}
	})

	t.Run("restart", func(t *testing.T) {
		before, _ := web.Container("app")
		pr, err := n.RunInContainer(web, "app", []string{"sleep", "60"})
		if err != nil {
			t.Fatal(err)
		}
		after, err := n.RestartContainer(ctx, web, "app")
		if err != nil {
			t.Fatalf("RestartContainer: %v", err)
		}
		select {
		case <-pr.Done():
		default:
			t.Error("process of the old container still running")
		}
		if after.ContainerID == before.ContainerID || after.CgroupDir == before.CgroupDir || after.CgroupID == before.CgroupID || after.RestartCount != 1 {
			t.Errorf("after restart %+v, before %+v; want new id, dir, cgroup id and restartCount 1", after, before)
		}
		if _, err := os.Stat(before.CgroupDir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("old cgroup %s still there: %v", before.CgroupDir, err)
		}
		obj, err := cs.CoreV1().Pods("shop").Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		st := obj.Status.ContainerStatuses[0]
		if st.ContainerID != after.ContainerID || st.RestartCount != 1 || st.LastTerminationState.Terminated == nil ||
			st.LastTerminationState.Terminated.ContainerID != before.ContainerID {
			t.Errorf("status after restart %+v", st)
		}
		pr, err = n.RunInContainer(web, "app", []string{"sleep", "60"})
		if err != nil {
			t.Fatal(err)
		}
		defer pr.Stop()
		checkPlacement(t, n, pr.Pid, after.CgroupDir, web.NetNSPath)
	})

	t.Run("ephemeral", func(t *testing.T) {
		c, err := n.AddEphemeralContainer(ctx, web, corev1.EphemeralContainer{EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: "debug"}})
		if err != nil {
			t.Fatalf("AddEphemeralContainer: %v", err)
		}
		obj, err := cs.CoreV1().Pods("shop").Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(obj.Spec.EphemeralContainers) != 1 || len(obj.Status.EphemeralContainerStatuses) != 1 ||
			obj.Status.EphemeralContainerStatuses[0].ContainerID != c.ContainerID {
			t.Fatalf("ephemeral spec %+v status %+v", obj.Spec.EphemeralContainers, obj.Status.EphemeralContainerStatuses)
		}
		r, _ := cgroups.NewResolver(n.CgroupConfig())
		res, err := r.ResolvePod(obj)
		if err != nil {
			t.Fatal(err)
		}
		if rc, ok := res.Container("debug"); !ok || rc.Role != cgroups.RoleEphemeral || rc.CgroupID != c.CgroupID {
			t.Errorf("resolved debug %+v, want ephemeral id %d", rc, c.CgroupID)
		}
		reply, err := n.Dial(ctx, web, "debug", "tcp", peer+":8080", 5*time.Second)
		if err != nil || !strings.HasSuffix(reply, "hello from shop/web/debug") {
			t.Errorf("debug->logging: %q %v", reply, err)
		}
	})

	t.Run("before status", func(t *testing.T) {
		var early *localnode.Process
		var apiID string
		p, err := n.RunPod(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "early"},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app"}}},
		}, localnode.BeforeStatus(func(p *localnode.Pod) error {
			var err error
			if early, err = n.RunInContainer(p, "app", []string{"sleep", "60"}); err != nil {
				return err
			}
			obj, err := cs.CoreV1().Pods("shop").Get(ctx, "early", metav1.GetOptions{})
			if err != nil {
				return err
			}
			if obj.Status.Phase != corev1.PodPending || obj.Status.PodIP != p.IP.String() {
				return fmt.Errorf("status before the hook: phase %s ip %s, want Pending with the pod ip", obj.Status.Phase, obj.Status.PodIP)
			}
			apiID = obj.Status.ContainerStatuses[0].ContainerID
			return nil
		}))
		if err != nil {
			t.Fatalf("RunPod: %v", err)
		}
		defer early.Stop()
		c, _ := p.Container("app")
		if apiID != "" {
			t.Errorf("the API server knew container id %q before the status write", apiID)
		}
		checkPlacement(t, n, early.Pid, c.CgroupDir, p.NetNSPath)
		obj, err := cs.CoreV1().Pods("shop").Get(ctx, "early", metav1.GetOptions{})
		if err != nil || obj.Status.ContainerStatuses[0].ContainerID != c.ContainerID {
			t.Errorf("after RunPod: %v, status %+v; want id %s", err, obj.Status.ContainerStatuses, c.ContainerID)
		}
	})

	t.Run("delete", func(t *testing.T) {
		srvDir := srvC.CgroupDir
		if err := n.DeletePod(ctx, logging); err != nil {
			t.Fatalf("DeletePod: %v", err)
		}
		select {
		case <-srv.Done():
		default:
			t.Error("server still running")
		}
		if _, err := cs.CoreV1().Pods("shop").Get(ctx, "logging", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("pod object: %v, want not found", err)
		}
		for _, p := range []string{srvDir, logging.CgroupDir, logging.NetNSPath} {
			if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s still there: %v", p, err)
			}
		}
		if err := n.DeletePod(ctx, logging); err != nil {
			t.Errorf("second DeletePod: %v", err)
		}
		if _, err := n.RunInContainer(logging, "server", []string{"true"}); err == nil {
			t.Error("RunInContainer in a deleted pod succeeded")
		}
	})

	t.Run("close leaves nothing", func(t *testing.T) {
		netnsPath := web.NetNSPath
		if err := n.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if err := n.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
		if _, err := os.Stat(filepath.Join(n.CgroupMount(), n.CgroupRoot())); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("cgroup root still there: %v", err)
		}
		if _, err := os.Stat(netnsPath); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("netns %s still there: %v", netnsPath, err)
		}
		id := strings.TrimPrefix(n.Bridge(), "swb")
		if left, _ := filepath.Glob("/run/netns/swln-" + id + "-*"); len(left) > 0 {
			t.Errorf("network namespaces left: %v", left)
		}
		links, err := netlink.LinkList()
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range links {
			if name := l.Attrs().Name; strings.HasPrefix(name, "swb"+id) || strings.HasPrefix(name, "swv"+id) {
				t.Errorf("link %s still there", name)
			}
		}
		pods, err := cs.CoreV1().Pods("shop").List(ctx, metav1.ListOptions{})
		if err != nil || len(pods.Items) != 0 {
			t.Errorf("pods left: %d, %v", len(pods.Items), err)
		}
		if _, err := cs.CoreV1().Nodes().Get(ctx, n.Name(), metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("node object: %v, want not found", err)
		}
	})
}

// checkPlacement asserts the kernel put pid in the cgroup dir and in the
// network namespace bind-mounted at netnsPath.
func checkPlacement(t *testing.T, n *localnode.Node, pid int, dir, netnsPath string) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	var got string
	for _, line := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			got = filepath.Join(n.CgroupMount(), p)
		}
	}
	if got != dir {
		t.Errorf("pid %d in cgroup %s, want %s", pid, got, dir)
	}
	var procNS, podNS, hostNS syscall.Stat_t
	if err := syscall.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &procNS); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Stat(netnsPath, &podNS); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Stat("/proc/self/ns/net", &hostNS); err != nil {
		t.Fatal(err)
	}
	if procNS.Ino != podNS.Ino || podNS.Ino == hostNS.Ino {
		t.Errorf("pid %d in netns %d, pod netns %d, host %d", pid, procNS.Ino, podNS.Ino, hostNS.Ino)
	}
}

func TestBadInput(t *testing.T) {
	if _, err := localnode.New(context.Background(), localnode.Options{}); err == nil || !strings.Contains(err.Error(), "client") {
		t.Errorf("New without client: %v", err)
	}
	n, _ := newNode(t)
	ctx := context.Background()
	for _, tc := range []struct {
		pod  *corev1.Pod
		want string
	}{
		{&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "empty"}}, "spec.containers"},
		{&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "x"}, Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "a"}}}}, "metadata.namespace"},
		{&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "Bad_Name"}, Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "a"}}}}, "metadata.name"},
	} {
		if _, err := n.RunPod(ctx, tc.pod); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("RunPod(%s): err = %v, want %q", tc.pod.Name, err, tc.want)
		}
	}
	p, err := n.RunPod(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "one"}, Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "a"}}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.RunInContainer(p, "nope", []string{"true"}); err == nil || !strings.Contains(err.Error(), `no container "nope"`) {
		t.Errorf("unknown container: %v", err)
	}
	if _, err := n.Listen(ctx, p, "a", "sctp", 1); err == nil || !strings.Contains(err.Error(), "proto") {
		t.Errorf("bad proto: %v", err)
	}
	if _, err := n.RestartContainer(ctx, p, "nope"); err == nil {
		t.Error("restart of unknown container succeeded")
	}
}
