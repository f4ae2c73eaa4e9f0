package localnode_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sidewall/sidewall/hack/harness"
)

const panicChildEnv = "SIDEWALL_LOCALNODE_TEST_PANIC_CHILD"

// TestTeardownOnPanic runs itself again as a child that starts a pod with a
// server process and then panics mid-test; t.Cleanup must still remove
// everything the child made.
func TestTeardownOnPanic(t *testing.T) {
	harness.RequirePrivileged(t)
	if os.Getenv(panicChildEnv) == "1" {
		n, _ := newNode(t)
		ctx := context.Background()
		p, err := n.RunPod(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "crash", Name: "victim"},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app"}}},
		})
		if err != nil {
			t.Fatal(err)
		}
		srv, err := n.Listen(ctx, p, "app", "tcp", 8080)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Printf("LEFT %s %s %s %d\n", filepath.Join(n.CgroupMount(), n.CgroupRoot()), p.NetNSPath, n.Bridge(), srv.Pid)
		panic("deliberate panic in the middle of a test")
	}

	cmd := exec.Command(os.Args[0], "-test.run=^TestTeardownOnPanic$", "-test.v")
	cmd.Env = append(os.Environ(), panicChildEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "deliberate panic") {
		t.Fatalf("child did not panic: %v\n%s", err, out)
	}
	var cgroupRoot, netnsPath, bridge string
	var pid int
	for _, line := range strings.Split(string(out), "\n") {
		if rest, ok := strings.CutPrefix(line, "LEFT "); ok {
			f := strings.Fields(rest)
			if len(f) == 4 {
				cgroupRoot, netnsPath, bridge = f[0], f[1], f[2]
				pid, _ = strconv.Atoi(f[3])
			}
		}
	}
	if pid == 0 {
		t.Fatalf("child did not report what it made:\n%s", out)
	}
	t.Logf("child made %s, %s, bridge %s, server pid %d", cgroupRoot, netnsPath, bridge, pid)
	for _, p := range []string{cgroupRoot, netnsPath} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left after the panic: %v", p, err)
		}
	}
	if _, err := netlink.LinkByName(bridge); err == nil {
		t.Errorf("bridge %s left after the panic", bridge)
	}
	deadline := time.Now().Add(5 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			t.Errorf("server pid %d still running after the panic", pid)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
}
