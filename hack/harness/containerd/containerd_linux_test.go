package containerd

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/sidewall/sidewall/hack/harness"
)

// TestRunsAPod: the harness's containerd runs a pod sandbox and a container
// from the locally built image, in the cgroup parent given, on the CNI
// bridge; the container reaches a listener on the bridge's gateway.
func TestRunsAPod(t *testing.T) {
	harness.RequirePrivileged(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	parent := "/sidewall-cri-test-" + randHex(3)
	r := StartForTest(t, parent, false)
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "smoke", Namespace: "default", UID: types.UID("0c1d2e3f-0000-4000-8000-" + randHex(6))}}
	p, err := r.RunPodSandbox(ctx, pod, parent+"/pod"+string(pod.UID))
	if err != nil {
		t.Fatalf("%v\n%s", err, r.LogTail())
	}
	ln, err := r.ListenGateway()
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	id, err := r.StartContainer(ctx, p, "shipper", "connect", ln.Addr().String())
	if err != nil {
		t.Fatalf("%v\n%s", err, r.LogTail())
	}
	code, out, err := r.WaitExit(ctx, p, id)
	if err != nil || code != 0 || !strings.HasPrefix(out, ln.Addr().String()+" ok ") {
		t.Fatalf("container: exit %d, output %q, %v", code, out, err)
	}
	// A running container's cgroup2 directory is <parent>/<id>, as the
	// agent's cgroupfs layout expects.
	pid, err := r.StartContainer(ctx, p, "app", "pause")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join("/sys/fs/cgroup/unified", parent, "pod"+string(pod.UID), pid)); err != nil {
		t.Errorf("the container's cgroup2 directory: %v", err)
	}
	t.Logf("pod %s at %s, container %s: %s", p.ID[:12], p.IP, id[:12], out)
}
