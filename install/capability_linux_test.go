package install

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"

	"github.com/sidewall/sidewall/agent/cgroups"
	"github.com/sidewall/sidewall/bpfext"
	"github.com/sidewall/sidewall/hack/harness"
)

// The capability helper: when the test binary runs with these set, it only
// does what the agent does at start, as the process it is (capabilities
// limited by setpriv), and exits.
const (
	envCapPin    = "SIDEWALL_CAPTEST_PIN"
	envCapCgroup = "SIDEWALL_CAPTEST_CGROUP"
)

func TestMainCapabilityHelper(t *testing.T) {
	pin, cg := os.Getenv(envCapPin), os.Getenv(envCapCgroup)
	if pin == "" {
		t.Skip("helper process for TestAgentCapabilities; does nothing on its own")
	}
	dp, err := bpfext.Load(bpfext.Options{PinDir: pin})
	if err != nil {
		fmt.Println("CAPTEST load:", err)
		os.Exit(3)
	}
	defer dp.Close()
	if _, err := dp.Attach(cg); err != nil {
		fmt.Println("CAPTEST attach:", err)
		os.Exit(3)
	}
	fmt.Println("CAPTEST ok")
	os.Exit(0)
}

// TestAgentCapabilities loads the real datapath (bpfext.Load: maps, pins,
// verdict programs in their tail-call slots) and attaches it to a real
// cgroup, in a process whose capabilities are exactly what the chart's
// DaemonSet grants the agent; and checks that taking any one of them away
// makes it fail, so none is superfluous. Not reproduced here: the runtime's
// seccomp and AppArmor profiles (no container runtime runs here).
func TestAgentCapabilities(t *testing.T) {
	harness.RequirePrivileged(t)
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Fatalf("setpriv (util-linux) not found: %v", err)
	}
	var ds appsv1.DaemonSet
	find(t, render(t, nil), "DaemonSet", "sidewall-agent", &ds)
	var granted []string
	for _, c := range ds.Spec.Template.Spec.Containers[0].SecurityContext.Capabilities.Add {
		granted = append(granted, strings.ToLower(string(c)))
	}
	if len(granted) == 0 {
		t.Fatal("the chart grants the agent no capability")
	}

	mount, err := cgroups.FindMount()
	if err != nil {
		t.Fatalf("find cgroup2 mount: %v", err)
	}
	id := make([]byte, 4)
	rand.Read(id)
	name := "sidewall-captest-" + hex.EncodeToString(id)
	cg := filepath.Join(mount, name)
	if err := os.Mkdir(cg, 0o755); err != nil {
		t.Fatalf("create cgroup: %v", err)
	}
	t.Cleanup(func() {
		if err := os.Remove(cg); err != nil {
			t.Errorf("remove cgroup %s: %v", cg, err)
		}
	})

	run := func(t *testing.T, caps []string) (string, error) {
		pin := filepath.Join(bpfext.DefaultBPFFSRoot, name+"-"+strings.Join(caps, "-"))
		t.Cleanup(func() {
			// Removing the pins detaches the links and frees the maps.
			if err := os.RemoveAll(pin); err != nil {
				t.Errorf("remove pins %s: %v", pin, err)
			}
		})
		bounding := "-all"
		for _, c := range caps {
			bounding += ",+" + c
		}
		cmd := exec.Command(setpriv, "--bounding-set="+bounding, "--inh-caps=-all", "--",
			os.Args[0], "-test.run=^TestMainCapabilityHelper$", "-test.count=1")
		cmd.Env = append(os.Environ(), envCapPin+"="+pin, envCapCgroup+"="+cg)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}

	t.Run("granted", func(t *testing.T) {
		out, err := run(t, granted)
		if err != nil || !strings.Contains(out, "CAPTEST ok") {
			t.Fatalf("agent start with %v failed: %v\n%s", granted, err, out)
		}
	})
	for _, drop := range granted {
		t.Run("without "+drop, func(t *testing.T) {
			fewer := slices.DeleteFunc(slices.Clone(granted), func(c string) bool { return c == drop })
			out, err := run(t, fewer)
			if err == nil || strings.Contains(out, "CAPTEST ok") {
				t.Errorf("agent start succeeded without %s: the chart grants a capability it does not need\n%s", drop, out)
			} else {
				t.Logf("without %s: %s", drop, strings.TrimSpace(lastLine(out, "CAPTEST")))
			}
		})
	}
}

func lastLine(out, prefix string) string {
	var last string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, prefix) {
			last = l
		}
	}
	return last
}
