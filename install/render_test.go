package install

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/yaml"

	"github.com/sidewall/sidewall/crds"
)

func render(t *testing.T, values map[string]any) *Rendered {
	t.Helper()
	r, err := Render(RenderOptions{Values: values})
	if err != nil {
		t.Fatalf("render: %v", err)
	}
	return r
}

// find returns the one rendered object of kind and name, converted to out.
func find(t *testing.T, r *Rendered, kind, name string, out any) {
	t.Helper()
	for _, o := range r.Objects {
		if o.GetKind() == kind && o.GetName() == name {
			if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(o.Object, out, true); err != nil {
				t.Fatalf("convert %s %s: %v", kind, name, err)
			}
			return
		}
	}
	t.Fatalf("no %s %s rendered", kind, name)
}

func TestDefaultRender(t *testing.T) {
	r := render(t, nil)
	var got []string
	for _, o := range r.Objects {
		got = append(got, o.GetKind()+"/"+o.GetName())
		if ns := o.GetNamespace(); ns != "" && ns != DefaultNamespace {
			t.Errorf("%s/%s in namespace %q, want the release namespace", o.GetKind(), o.GetName(), ns)
		}
	}
	sort.Strings(got)
	want := []string{
		"ClusterRole/sidewall-agent", "ClusterRole/sidewall-controller",
		"ClusterRoleBinding/sidewall-agent", "ClusterRoleBinding/sidewall-controller",
		"DaemonSet/sidewall-agent", "Deployment/sidewall-controller",
		"Role/sidewall-controller-leader-election", "RoleBinding/sidewall-controller-leader-election",
		"Service/sidewall-controller-metrics",
		"ServiceAccount/sidewall-agent", "ServiceAccount/sidewall-controller",
	}
	if !slices.Equal(got, want) {
		t.Errorf("rendered objects:\n got %v\nwant %v", got, want)
	}
	if len(r.CRDs) != 1 || r.CRDs[0].GetName() != "containernetworkpolicies.sidewall.io" {
		t.Errorf("chart CRDs: %v", r.CRDs)
	}
	if !strings.Contains(r.Notes, "kubectl get ctrnp") {
		t.Errorf("NOTES.txt not rendered: %q", r.Notes)
	}
}

// TestChartCRDMatchesGenerated fails when crds/bases changed and the
// chart's copy was not refreshed.
func TestChartCRDMatchesGenerated(t *testing.T) {
	chartCRDs, err := fs.Glob(ChartFS, chartRoot+"/crds/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	bases, err := fs.Glob(crds.EmbedFS, "bases/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	names := func(paths []string) []string {
		var out []string
		for _, p := range paths {
			out = append(out, filepath.Base(p))
		}
		return out
	}
	if !slices.Equal(names(chartCRDs), names(bases)) {
		t.Fatalf("chart crds/ holds %v, crds/bases holds %v: run `go generate ./install/...`", names(chartCRDs), names(bases))
	}
	for _, name := range names(bases) {
		want, _ := crds.EmbedFS.ReadFile("bases/" + name)
		got, _ := ChartFS.ReadFile(chartRoot + "/crds/" + name)
		if !bytes.Equal(got, want) {
			t.Errorf("install/helm/sidewall/crds/%s differs from crds/bases/%s: run `go generate ./install/...`", name, name)
		}
	}
}

// TestControllerRoleMatchesGenerated: the chart grants the controller
// exactly the rules controller-gen generated from its RBAC markers.
func TestControllerRoleMatchesGenerated(t *testing.T) {
	data, err := os.ReadFile("rbac/role.yaml")
	if err != nil {
		t.Fatal(err)
	}
	generated := &rbacv1.ClusterRole{}
	if err := yaml.UnmarshalStrict(data, generated); err != nil {
		t.Fatalf("parse install/rbac/role.yaml: %v", err)
	}
	if len(generated.Rules) == 0 {
		t.Fatal("install/rbac/role.yaml has no rules")
	}
	var chartRole rbacv1.ClusterRole
	find(t, render(t, nil), "ClusterRole", "sidewall-controller", &chartRole)
	if !reflect.DeepEqual(chartRole.Rules, generated.Rules) {
		a, _ := yaml.Marshal(chartRole.Rules)
		b, _ := yaml.Marshal(generated.Rules)
		t.Errorf("chart ClusterRole rules differ from install/rbac/role.yaml (run `go generate ./install/...`):\nchart:\n%s\ngenerated:\n%s", a, b)
	}
}

// agentCalls is every API call the node agent makes, by identity source.
// The agent packages do not export such a list, so it is kept here, read
// off agent (pod informer with a spec.nodeName field selector,
// dynamic informer on containernetworkpolicies, the events.k8s.io recorder
// of NewEventRecorder, which creates Events and patches their series),
// agent/identity
// (CiliumSource: CiliumEndpoint and CiliumIdentity informers; PodSource:
// pod and namespace informers) and cmd/sidewall-agent (discovery of
// cilium.io/v2, which every authenticated user may do). TestAgentRBACLive
// checks it against the real code on a real API server.
var agentCalls = map[string][]rbacv1.PolicyRule{
	"common": {
		{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"list", "watch"}},
		{APIGroups: []string{""}, Resources: []string{"pods/status"}, Verbs: []string{"update"}}, // the FQDNLearning condition
		{APIGroups: []string{"sidewall.io"}, Resources: []string{"containernetworkpolicies"}, Verbs: []string{"list", "watch"}},
		{APIGroups: []string{""}, Resources: []string{"services"}, Verbs: []string{"list", "watch"}},
		{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"list", "watch"}},
		{APIGroups: []string{"events.k8s.io"}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}},
	},
	"cilium": {
		{APIGroups: []string{"cilium.io"}, Resources: []string{"ciliumendpoints", "ciliumidentities", "ciliumnodes"}, Verbs: []string{"list", "watch"}},
	},
	"local": {
		{APIGroups: []string{""}, Resources: []string{"pods", "namespaces", "nodes"}, Verbs: []string{"list", "watch"}},
	},
}

// covers reports the (group, resource, verb) triples of need that no rule
// of have grants.
func covers(have, need []rbacv1.PolicyRule) []string {
	var missing []string
	for _, n := range need {
		for _, g := range n.APIGroups {
			for _, res := range n.Resources {
				for _, v := range n.Verbs {
					if !granted(have, g, res, v) {
						missing = append(missing, g+"/"+res+":"+v)
					}
				}
			}
		}
	}
	return missing
}

func granted(rules []rbacv1.PolicyRule, group, resource, verb string) bool {
	for _, r := range rules {
		if (slices.Contains(r.APIGroups, group) || slices.Contains(r.APIGroups, "*")) &&
			(slices.Contains(r.Resources, resource) || slices.Contains(r.Resources, "*")) &&
			(slices.Contains(r.Verbs, verb) || slices.Contains(r.Verbs, "*")) {
			return true
		}
	}
	return false
}

func TestAgentRoleCoversCalls(t *testing.T) {
	for _, src := range []string{"cilium", "local", "auto"} {
		t.Run(src, func(t *testing.T) {
			var role rbacv1.ClusterRole
			find(t, render(t, map[string]any{"agent": map[string]any{"identitySource": src}}), "ClusterRole", "sidewall-agent", &role)
			need := slices.Clone(agentCalls["common"])
			if src != "local" {
				need = append(need, agentCalls["cilium"]...)
			}
			if src != "cilium" {
				need = append(need, agentCalls["local"]...)
			}
			if m := covers(role.Rules, need); len(m) > 0 {
				t.Errorf("agent ClusterRole misses %v", m)
			}
			// Least privilege: nothing beyond the calls; the only writes are Events and the pods' FQDNLearning condition.
			if extra := covers(need, role.Rules); len(extra) > 0 {
				t.Errorf("agent ClusterRole grants more than the agent calls: %v", extra)
			}
		})
	}
}

// hostMount is what the DaemonSet must mount from the host for a flag.
type hostMount struct {
	flag, hostPath string
	readOnly       bool
}

func TestAgentDaemonSetMounts(t *testing.T) {
	for _, tc := range []struct {
		name   string
		values map[string]any
		want   []hostMount
		absent []string // flags that must be "-"
	}{
		{
			name: "defaults",
			want: []hostMount{
				{"--pin-dir", "/sys/fs/bpf/sidewall", false},
				{"--bpffs-root", "/sys/fs/bpf", false},
				{"--cgroup-mount", "/sys/fs/cgroup", true},
				{"--hubble-socket", "/var/run/sidewall/hubble.sock", false},
				{"--cilium-hubble-address", "/var/run/cilium/hubble.sock", true},
			},
		},
		{
			name:   "Cilium's flows off",
			values: map[string]any{"agent": map[string]any{"hubble": map[string]any{"cilium": map[string]any{"enabled": false}}}},
			want:   []hostMount{{"--hubble-socket", "/var/run/sidewall/hubble.sock", false}},
			absent: []string{"--cilium-hubble-address"},
		},
		{
			name: "hybrid host, hubble off",
			values: map[string]any{"agent": map[string]any{
				"cgroup":        map[string]any{"hostRoot": "/sys/fs/cgroup/unified"},
				"bpffsHostPath": "/run/bpffs",
				"hubble":        map[string]any{"enabled": false},
			}},
			want: []hostMount{
				{"--pin-dir", "/run/bpffs/sidewall", false},
				{"--cgroup-mount", "/sys/fs/cgroup/unified", true},
			},
			absent: []string{"--hubble-socket", "--hubble-listen-address", "--cilium-hubble-address"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ds appsv1.DaemonSet
			find(t, render(t, tc.values), "DaemonSet", "sidewall-agent", &ds)
			spec := ds.Spec.Template.Spec
			// hostPID only: the DNS proxy enters a pod's network namespace
			// through /proc/PID/ns/net.
			if spec.HostNetwork || !spec.HostPID || spec.HostIPC {
				t.Errorf("agent host namespaces: network %v pid %v ipc %v, want pid only", spec.HostNetwork, spec.HostPID, spec.HostIPC)
			}
			c := spec.Containers[0]
			flags := map[string]string{}
			for _, a := range c.Args {
				k, v, _ := strings.Cut(a, "=")
				flags[k] = strings.TrimPrefix(v, "unix://")
			}
			for _, w := range tc.want {
				v, ok := flags[w.flag]
				if !ok {
					t.Errorf("flag %s not set", w.flag)
					continue
				}
				host, ro, ok := hostPathOf(spec, c, v)
				if !ok {
					t.Errorf("%s=%s is not on a hostPath mount", w.flag, v)
					continue
				}
				if host != w.hostPath || ro != w.readOnly {
					t.Errorf("%s=%s is host %s (read-only %v), want host %s (read-only %v)", w.flag, v, host, ro, w.hostPath, w.readOnly)
				}
			}
			for _, f := range tc.absent {
				if flags[f] != "-" {
					t.Errorf("flag %s=%q, want disabled (-)", f, flags[f])
				}
			}
			// Every hostPath the pod mounts is one a flag uses: no stray
			// host access.
			for _, m := range c.VolumeMounts {
				used := false
				for _, v := range flags {
					if v == m.MountPath || strings.HasPrefix(v, m.MountPath+"/") {
						used = true
					}
				}
				if !used {
					t.Errorf("volume %s mounted at %s but no flag uses it", m.Name, m.MountPath)
				}
			}
			sc := c.SecurityContext
			if sc == nil || sc.Privileged != nil && *sc.Privileged {
				t.Fatalf("agent must not be privileged: %+v", sc)
			}
			if !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
				t.Errorf("agent drops %v, want ALL", sc.Capabilities.Drop)
			}
			if slices.Contains(sc.Capabilities.Add, "SYS_ADMIN") {
				t.Errorf("agent adds SYS_ADMIN")
			}
		})
	}
}

// hostPathOf maps a path inside the container to the host path it shows.
func hostPathOf(spec corev1.PodSpec, c corev1.Container, p string) (string, bool, bool) {
	for _, m := range c.VolumeMounts {
		if p != m.MountPath && !strings.HasPrefix(p, m.MountPath+"/") {
			continue
		}
		for _, v := range spec.Volumes {
			if v.Name == m.Name && v.HostPath != nil {
				return v.HostPath.Path + strings.TrimPrefix(p, m.MountPath), m.ReadOnly, true
			}
		}
	}
	return "", false, false
}

func TestControllerDeployment(t *testing.T) {
	var d appsv1.Deployment
	find(t, render(t, nil), "Deployment", "sidewall-controller", &d)
	c := d.Spec.Template.Spec.Containers[0]
	for _, want := range []string{"--leader-elect=true", "--leader-election-namespace=" + DefaultNamespace, "--metrics-bind-address=:8080", "--health-probe-bind-address=:8081"} {
		if !slices.Contains(c.Args, want) {
			t.Errorf("controller args %v lack %s", c.Args, want)
		}
	}
	if c.LivenessProbe == nil || c.LivenessProbe.HTTPGet.Path != "/healthz" || c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet.Path != "/readyz" {
		t.Errorf("controller probes: liveness %+v readiness %+v", c.LivenessProbe, c.ReadinessProbe)
	}
	psc := d.Spec.Template.Spec.SecurityContext
	sc := c.SecurityContext
	restricted := psc != nil && psc.RunAsNonRoot != nil && *psc.RunAsNonRoot &&
		psc.SeccompProfile != nil && psc.SeccompProfile.Type == corev1.SeccompProfileTypeRuntimeDefault &&
		sc != nil && sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation &&
		sc.Capabilities != nil && slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) && len(sc.Capabilities.Add) == 0
	if !restricted {
		t.Errorf("controller does not meet the restricted Pod Security Standard: pod %+v container %+v", psc, sc)
	}
}

// TestBadValues: a values change that would break the install fails the
// render with a message naming the field.
func TestBadValues(t *testing.T) {
	for _, tc := range []struct {
		name    string
		values  map[string]any
		wantErr string
	}{
		{"typo in a key", map[string]any{"agent": map[string]any{"identitySorce": "cilium"}}, "identitySorce"},
		{"unknown identity source", map[string]any{"agent": map[string]any{"identitySource": "etcd"}}, "identitySource"},
		{"port out of range", map[string]any{"controller": map[string]any{"metrics": map[string]any{"port": 70000}}}, "port"},
		{"port as string", map[string]any{"agent": map[string]any{"metrics": map[string]any{"port": "9963"}}}, "port"},
		{"zero replicas", map[string]any{"controller": map[string]any{"replicas": 0}}, "replicas"},
		{"relative cgroup root", map[string]any{"agent": map[string]any{"cgroup": map[string]any{"hostRoot": "sys/fs/cgroup"}}}, "hostRoot"},
		{"bad cgroup driver", map[string]any{"agent": map[string]any{"cgroup": map[string]any{"driver": "cgroupv1"}}}, "driver"},
		{"SYS_ADMIN for the agent", map[string]any{"agent": map[string]any{"extraCapabilities": []any{"SYS_ADMIN"}}}, "extraCapabilities"},
		{"same port twice", map[string]any{"controller": map[string]any{"probes": map[string]any{"port": 8080}}}, "must differ"},
		{"join state of no entries", map[string]any{"agent": map[string]any{"hubble": map[string]any{"cilium": map[string]any{"joinEntries": 0}}}}, "joinEntries"},
		{"join TTL not a duration", map[string]any{"agent": map[string]any{"hubble": map[string]any{"cilium": map[string]any{"joinTTL": "ten minutes"}}}}, "joinTTL"},
		{"hubble on a public address", map[string]any{"agent": map[string]any{"hubble": map[string]any{"listenAddress": "0.0.0.0:4246"}}}, "loopback"},
		{"bad pull policy", map[string]any{"image": map[string]any{"pullPolicy": "Sometimes"}}, "pullPolicy"},
		{"empty cluster name with cilium identities", map[string]any{"clusterName": ""}, "clusterName"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Render(RenderOptions{Values: tc.values})
			if err == nil {
				t.Fatalf("render succeeded, want an error naming %q", tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %q does not name %q", err, tc.wantErr)
			}
		})
	}
}

func TestKubeVersionTooOld(t *testing.T) {
	_, err := Render(RenderOptions{KubeVersion: "v1.28.0"})
	if err == nil || !strings.Contains(err.Error(), "kubeVersion") {
		t.Fatalf("render for v1.28 (no native sidecars): err %v, want a kubeVersion error", err)
	}
}

func TestAgentHubbleTLSForRelay(t *testing.T) {
	var ds appsv1.DaemonSet
	find(t, render(t, map[string]any{"agent": map[string]any{"hubble": map[string]any{"tls": map[string]any{"enabled": true, "secretName": "hubble-certs"}}}}), "DaemonSet", "sidewall-agent", &ds)
	spec := ds.Spec.Template.Spec
	c := spec.Containers[0]
	for _, want := range []string{"--hubble-tls-listen-address=:4244", "--hubble-peer-address=$(POD_IP):4244",
		"--hubble-tls-cert-file=/var/lib/sidewall/hubble-tls/tls.crt", "--hubble-tls-client-ca-files=/var/lib/sidewall/hubble-tls/ca.crt"} {
		if !slices.Contains(c.Args, want) {
			t.Errorf("agent args lack %s", want)
		}
	}
	if !slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool {
		return e.Name == "POD_IP" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "status.podIP"
	}) {
		t.Errorf("no POD_IP from status.podIP: %v", c.Env)
	}
	if !slices.ContainsFunc(spec.Volumes, func(v corev1.Volume) bool { return v.Secret != nil && v.Secret.SecretName == "hubble-certs" }) {
		t.Errorf("no volume of the Secret hubble-certs")
	}
	if !slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.MountPath == "/var/lib/sidewall/hubble-tls" && m.ReadOnly }) {
		t.Errorf("the certificates are not mounted read-only")
	}
	var svc corev1.Service
	r := render(t, map[string]any{"agent": map[string]any{"hubble": map[string]any{"tls": map[string]any{"enabled": true}}}})
	find(t, r, "Service", "sidewall-agent-hubble-peer", &svc)
	if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Port != 4244 || svc.Spec.Ports[0].TargetPort.String() != "hubble-tls" {
		t.Errorf("peer Service ports %+v", svc.Spec.Ports)
	}
	find(t, r, "DaemonSet", "sidewall-agent", &ds)
	if !slices.ContainsFunc(ds.Spec.Template.Spec.Containers[0].Args, func(a string) bool {
		return strings.HasPrefix(a, "--hubble-peer-service=") && strings.HasSuffix(a, "/sidewall-agent-hubble-peer")
	}) {
		t.Errorf("the agent does not list the peer Service's endpoints")
	}
	// Off by default.
	find(t, render(t, nil), "DaemonSet", "sidewall-agent", &ds)
	if slices.ContainsFunc(ds.Spec.Template.Spec.Containers[0].Args, func(a string) bool { return strings.HasPrefix(a, "--hubble-tls") }) {
		t.Errorf("TLS on by default")
	}
}
