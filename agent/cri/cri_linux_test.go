package cri_test

import (
	"context"
	"errors"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/sidewall/sidewall/agent/cri"
	"github.com/sidewall/sidewall/hack/harness"
	"github.com/sidewall/sidewall/hack/harness/containerd"
	"github.com/sidewall/sidewall/hack/harness/proc"
)

// TestContainer asks a real containerd (hack/harness/containerd) about a
// container it runs, its pod sandbox and an unknown id.
func TestContainer(t *testing.T) {
	harness.RequirePrivileged(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	parent := "/sidewall-cri-client-" + proc.RandHex(3)
	rt := containerd.StartForTest(t, parent, false)

	c, err := cri.Dial(ctx, rt.Socket())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	t.Logf("runtime: %s", c.Runtime)
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop", UID: types.UID("5f0e2b1c-0000-4000-8000-" + proc.RandHex(6))}}
	p, err := rt.RunPodSandbox(ctx, pod, parent+"/pod"+string(pod.UID))
	if err != nil {
		t.Fatal(err)
	}
	id, err := rt.StartContainer(ctx, p, "log-shipper", "pause")
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.Container(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	want := cri.Container{ID: id, Name: "log-shipper", PodUID: pod.UID, PodNamespace: "shop", PodName: "web"}
	if got != want {
		t.Errorf("Container(%s) = %+v, want %+v", id, got, want)
	}
	for name, id := range map[string]string{"the pod sandbox": p.ID, "an unknown id": "0123456789abcdef"} {
		if _, err := c.Container(ctx, id); !errors.Is(err, cri.ErrNotFound) {
			t.Errorf("%s: got %v, want ErrNotFound", name, err)
		}
	}
	if _, err := cri.Dial(ctx, t.TempDir()+"/nothing.sock"); err == nil {
		t.Error("Dial of a missing socket succeeded")
	}
}
