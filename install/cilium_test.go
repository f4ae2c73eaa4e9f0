package install

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"sigs.k8s.io/yaml"
)

// ciliumChart loads Cilium's own Helm chart from the cilium Go module that
// go.mod pins (the module ships install/kubernetes/cilium).
func ciliumChartDir(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/cilium/cilium").Output()
	if err != nil {
		t.Fatalf("find the cilium module: %v", err)
	}
	dir := filepath.Join(strings.TrimSpace(string(out)), "install", "kubernetes", "cilium")
	if _, err := os.Stat(filepath.Join(dir, "Chart.yaml")); err != nil {
		t.Fatalf("cilium chart not in the module: %v", err)
	}
	return dir
}

func readValues(t *testing.T, path string) map[string]any {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	v := map[string]any{}
	if err := yaml.Unmarshal(data, &v); err != nil {
		t.Fatalf("parse %s: %v", path, err)
	}
	return v
}

// keyPaths lists the dotted paths of every leaf of v.
func keyPaths(prefix string, v map[string]any) []string {
	var out []string
	for k, val := range v {
		p := k
		if prefix != "" {
			p = prefix + "." + k
		}
		if m, ok := val.(map[string]any); ok && len(m) > 0 {
			out = append(out, keyPaths(p, m)...)
		} else {
			out = append(out, p)
		}
	}
	sort.Strings(out)
	return out
}

func lookup(v map[string]any, path string) bool {
	cur := any(v)
	for _, k := range strings.Split(path, ".") {
		m, ok := cur.(map[string]any)
		if !ok {
			return false
		}
		if cur, ok = m[k]; !ok {
			return false
		}
	}
	return true
}

// TestCiliumValues renders Cilium's real chart (the version go.mod pins)
// with install/cilium-values.yaml and checks that every key exists in
// Cilium's values.yaml and that the agent's configuration says what
// sidewall relies on.
func TestCiliumValues(t *testing.T) {
	dir := ciliumChartDir(t)
	ours := readValues(t, "cilium-values.yaml")
	defaults := readValues(t, filepath.Join(dir, "values.yaml"))
	raw, err := os.ReadFile(filepath.Join(dir, "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range keyPaths("", ours) {
		// Some keys are documented only as comments ("# hostNamespaceOnly: false").
		leaf := p[strings.LastIndex(p, ".")+1:]
		if !lookup(defaults, p) && !strings.Contains(string(raw), "# "+leaf+":") {
			t.Errorf("cilium-values.yaml sets %s, which Cilium's chart does not have", p)
		}
	}

	ch, err := loader.LoadDir(dir)
	if err != nil {
		t.Fatalf("load cilium chart: %v", err)
	}
	// What the kind walkthrough adds on the command line.
	ours["k8sServiceHost"] = "kind-control-plane"
	ours["k8sServicePort"] = 6443
	caps := chartutil.DefaultCapabilities.Copy()
	kv, _ := chartutil.ParseKubeVersion(DefaultKubeVersion)
	caps.KubeVersion = *kv
	vals, err := chartutil.ToRenderValues(ch, ours, chartutil.ReleaseOptions{Name: "cilium", Namespace: "kube-system", IsInstall: true, Revision: 1}, caps)
	if err != nil {
		t.Fatalf("cilium values: %v", err)
	}
	files, err := engine.Render(ch, vals)
	if err != nil {
		t.Fatalf("render cilium chart with install/cilium-values.yaml: %v", err)
	}
	var config map[string]string
	for name, content := range files {
		if !strings.HasSuffix(name, "cilium-configmap.yaml") {
			continue
		}
		cm := struct {
			Data map[string]string `json:"data"`
		}{}
		if err := yaml.Unmarshal([]byte(content), &cm); err != nil {
			t.Fatalf("parse %s: %v", name, err)
		}
		config = cm.Data
	}
	if config == nil {
		t.Fatal("the rendered Cilium chart has no cilium-config ConfigMap")
	}
	for key, want := range map[string]string{
		"identity-allocation-mode": "crd",   // CiliumIdentity objects exist
		"disable-endpoint-crd":     "false", // CiliumEndpoint objects exist
		"enable-l7-proxy":          "true",  // Envoy enforces generated L7 rules
		// sidewall's CNPs must not force default deny on the whole pod
		"enable-non-default-deny-policies": "true",
		"enable-hubble":                    "true",
		"kube-proxy-replacement":           "true",
		"bpf-lb-sock":                      "true",  // socket LB: the cgroup sees backends
		"bpf-lb-sock-hostns-only":          "false", // ... inside pods too
		"enable-policy":                    "default",
		"cluster-name":                     "default",
	} {
		got, ok := config[key]
		switch {
		case !ok && want == "false":
			// Cilium leaves some false flags out of its ConfigMap.
		case got != want:
			t.Errorf("cilium-config %s = %q, want %q", key, got, want)
		}
	}
	if t.Failed() {
		t.Log(fmt.Sprint(len(config), " cilium-config keys rendered"))
	}
}
