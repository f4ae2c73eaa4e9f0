package install

import (
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
)

// TestChartFlagsExist builds both binaries and checks that every flag the
// chart passes is one the binary defines, so a renamed flag fails here and
// not in a crash-looping pod.
func TestChartFlagsExist(t *testing.T) {
	dir := t.TempDir()
	build := exec.Command("go", "build", "-o", dir+"/", "./cmd/sidewall-controller", "./cmd/sidewall-agent")
	build.Dir = ".."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build binaries: %v\n%s", err, out)
	}
	r := render(t, map[string]any{"agent": map[string]any{"cgroup": map[string]any{
		"driver": "systemd", "kubeletRoot": "custom.slice", "kubepodsRoot": "kubepods.slice",
	}, "hubble": map[string]any{"tls": map[string]any{"enabled": true}}}})
	var dep appsv1.Deployment
	find(t, r, "Deployment", "sidewall-controller", &dep)
	var ds appsv1.DaemonSet
	find(t, r, "DaemonSet", "sidewall-agent", &ds)
	for bin, args := range map[string][]string{
		"sidewall-controller": dep.Spec.Template.Spec.Containers[0].Args,
		"sidewall-agent":      ds.Spec.Template.Spec.Containers[0].Args,
	} {
		defined := helpFlags(t, filepath.Join(dir, bin))
		for _, a := range args {
			name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
			if !defined[name] {
				t.Errorf("the chart passes %s to %s, which has no flag -%s", a, bin, name)
			}
		}
	}
}

var helpFlag = regexp.MustCompile(`(?m)^\s+-([a-zA-Z0-9-]+)`)

// helpFlags runs bin -h and returns the flags it lists.
func helpFlags(t *testing.T, bin string) map[string]bool {
	t.Helper()
	out, _ := exec.Command(bin, "-h").CombinedOutput() // flag's -h exits 0 or 2
	flags := map[string]bool{}
	for _, m := range helpFlag.FindAllStringSubmatch(string(out), -1) {
		flags[m[1]] = true
	}
	if len(flags) == 0 {
		t.Fatalf("%s -h listed no flags:\n%s", bin, out)
	}
	return flags
}
