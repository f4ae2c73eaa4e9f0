package translator

import (
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/sidewall/sidewall/crds/v1alpha1"
)

// riskCase is a pod whose "shipper" sidecar is restricted (by name) and
// whose "app" container is not, with the reasons expected for the shipper.
// The same table drives TestAdmissionPolicyMatchesAnalysis on a real API
// server.
type riskCase struct {
	name string
	pod  func(p *corev1.Pod)
	want []string
}

// riskPod is a pod with a restricted sidecar "shipper" that runs as a
// non-root user with a read-only root filesystem and drops all
// capabilities, and an unrestricted app container "app".
func riskPod(name string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns", Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{
			InitContainers: []corev1.Container{{
				Name: "shipper", Image: "shipper", RestartPolicy: ptr.To(corev1.ContainerRestartPolicyAlways),
				SecurityContext: &corev1.SecurityContext{RunAsNonRoot: ptr.To(true), ReadOnlyRootFilesystem: ptr.To(true), Capabilities: dropAll()},
			}},
			Containers: []corev1.Container{{Name: "app", Image: "app"}},
		},
	}
}

func shipper(p *corev1.Pod) *corev1.Container { return &p.Spec.InitContainers[0] }

// sharedPIDUIDs shares the pod's PID namespace and sets the uids of the
// shipper and the app (nil: unset), or only the pod's runAsUser, and the
// shipper's allowPrivilegeEscalation to false when noEscalation.
func sharedPIDUIDs(shipperUID, appUID *int64, podUID bool, noEscalation bool) func(p *corev1.Pod) {
	return func(p *corev1.Pod) {
		p.Spec.ShareProcessNamespace = ptr.To(true)
		if podUID {
			p.Spec.SecurityContext = &corev1.PodSecurityContext{RunAsUser: ptr.To[int64](1000)}
		}
		shipper(p).SecurityContext.RunAsUser = shipperUID
		if noEscalation {
			shipper(p).SecurityContext.AllowPrivilegeEscalation = ptr.To(false)
		}
		if appUID != nil {
			p.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{RunAsUser: appUID}
		}
	}
}

func dropAll() *corev1.Capabilities {
	return &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}
}

// addCaps adds caps to the shipper, which still drops ALL.
func addCaps(caps ...corev1.Capability) func(p *corev1.Pod) {
	return func(p *corev1.Pod) { shipper(p).SecurityContext.Capabilities.Add = caps }
}

// dropCaps replaces the shipper's drop list.
func dropCaps(caps ...corev1.Capability) func(p *corev1.Pod) {
	return func(p *corev1.Pod) { shipper(p).SecurityContext.Capabilities.Drop = caps }
}

func hostPathMount(path string) func(p *corev1.Pod) {
	return func(p *corev1.Pod) {
		p.Spec.Volumes = append(p.Spec.Volumes, corev1.Volume{Name: "host", VolumeSource: corev1.VolumeSource{
			HostPath: &corev1.HostPathVolumeSource{Path: path}}})
		shipper(p).VolumeMounts = append(shipper(p).VolumeMounts, corev1.VolumeMount{Name: "host", MountPath: "/host"})
	}
}

var riskCases = []riskCase{
	{name: "compliant", pod: func(*corev1.Pod) {}},
	{name: "privileged", pod: func(p *corev1.Pod) { shipper(p).SecurityContext.Privileged = ptr.To(true) },
		want: []string{RiskPrivileged}},
	{name: "sys-admin", pod: addCaps("SYS_ADMIN"), want: []string{RiskSysAdmin}},
	{name: "net-admin-prefixed", pod: addCaps("CAP_NET_ADMIN"), want: []string{RiskNetAdmin}},
	{name: "bpf-lowercase", pod: addCaps("bpf"), want: []string{RiskBPF}},
	{name: "net-raw-added", pod: addCaps("NET_RAW"), want: []string{RiskNetRaw}},
	{name: "net-raw-added-and-dropped", pod: func(p *corev1.Pod) {
		addCaps("NET_RAW")(p)
		dropCaps("NET_RAW")(p)
	}, want: []string{RiskNetRaw}},
	{name: "drop-net-raw", pod: dropCaps("NET_RAW")},
	{name: "drop-cap-net-raw-lowercase", pod: dropCaps("cap_net_raw")},
	{name: "drop-all-lowercase", pod: dropCaps("all")},
	{name: "drop-nothing", pod: dropCaps(), want: []string{RiskNetRawKept}},
	{name: "drop-others", pod: dropCaps("CHOWN", "NET_ADMIN"), want: []string{RiskNetRawKept}},
	{name: "drop-cap-all-is-not-all", pod: dropCaps("CAP_ALL"), want: []string{RiskNetRawKept}},
	{name: "no-capabilities", pod: func(p *corev1.Pod) { shipper(p).SecurityContext.Capabilities = nil },
		want: []string{RiskNetRawKept}},
	{name: "no-security-context", pod: func(p *corev1.Pod) { shipper(p).SecurityContext = nil },
		want: []string{RiskNetRawKept, RiskRootWritable}},
	{name: "net-raw-kept-with-net-admin", pod: func(p *corev1.Pod) {
		shipper(p).SecurityContext.Capabilities = &corev1.Capabilities{Add: []corev1.Capability{"cap_net_admin"}}
	}, want: []string{RiskNetAdmin, RiskNetRawKept}},
	{name: "all-caps", pod: addCaps("ALL"), want: []string{RiskAllCaps}},
	{name: "all-caps-no-drop", pod: func(p *corev1.Pod) {
		shipper(p).SecurityContext.Capabilities = &corev1.Capabilities{Add: []corev1.Capability{"ALL"}}
	}, want: []string{RiskAllCaps}},
	{name: "privileged-no-drop", pod: func(p *corev1.Pod) {
		shipper(p).SecurityContext.Privileged = ptr.To(true)
		shipper(p).SecurityContext.Capabilities = nil
	}, want: []string{RiskPrivileged, RiskNetRawKept}},
	{name: "harmless-cap", pod: addCaps("NET_BIND_SERVICE", "CHOWN")},
	{name: "ptrace-alone", pod: addCaps("SYS_PTRACE")},
	{name: "ptrace-shared-pid", pod: func(p *corev1.Pod) {
		addCaps("SYS_PTRACE")(p)
		p.Spec.ShareProcessNamespace = ptr.To(true)
	}, want: []string{RiskPtraceShared}},
	// One PID namespace and nothing tells the uids apart: pidfd_getfd of
	// the app's sockets needs no capability (TestBypassRound2).
	{name: "shared-pid-alone", pod: func(p *corev1.Pod) { p.Spec.ShareProcessNamespace = ptr.To(true) }, want: []string{RiskSharedPID}},
	{name: "shared-pid-uids-apart", pod: sharedPIDUIDs(ptr.To[int64](1000), ptr.To[int64](1001), false, true)},
	{name: "shared-pid-same-uid", pod: sharedPIDUIDs(ptr.To[int64](1000), ptr.To[int64](1000), false, true), want: []string{RiskSharedPID}},
	{name: "shared-pid-app-uid-unset", pod: sharedPIDUIDs(ptr.To[int64](1000), nil, false, true), want: []string{RiskSharedPID}},
	{name: "shared-pid-pod-uid-for-both", pod: sharedPIDUIDs(nil, nil, true, true), want: []string{RiskSharedPID}},
	{name: "shared-pid-escalation-allowed", pod: sharedPIDUIDs(ptr.To[int64](1000), ptr.To[int64](1001), false, false), want: []string{RiskSharedPID}},
	{name: "shared-pid-root-sidecar", pod: func(p *corev1.Pod) {
		sharedPIDUIDs(ptr.To[int64](0), ptr.To[int64](1001), false, true)(p)
		shipper(p).SecurityContext.ReadOnlyRootFilesystem = ptr.To(true)
	}, want: []string{RiskSharedPID}},
	{name: "host-network", pod: func(p *corev1.Pod) { p.Spec.HostNetwork = true }, want: []string{RiskHostNetwork}},
	{name: "host-pid", pod: func(p *corev1.Pod) { p.Spec.HostPID = true }, want: []string{RiskHostPID}},
	{name: "docker-socket", pod: hostPathMount("/var/run/docker.sock"), want: []string{RiskHostPathPfx + "/var/run/docker.sock"}},
	{name: "containerd-socket", pod: hostPathMount("/run/containerd/containerd.sock"), want: []string{RiskHostPathPfx + "/run/containerd/containerd.sock"}},
	{name: "crio-dir", pod: hostPathMount("/var/run/crio/"), want: []string{RiskHostPathPfx + "/var/run/crio/"}},
	{name: "cgroupfs", pod: hostPathMount("/sys/fs/cgroup"), want: []string{RiskHostPathPfx + "/sys/fs/cgroup"}},
	{name: "cgroup-subtree", pod: hostPathMount("/sys/fs/cgroup/kubepods.slice"), want: []string{RiskHostPathPfx + "/sys/fs/cgroup/kubepods.slice"}},
	{name: "bpffs", pod: hostPathMount("/sys/fs/bpf"), want: []string{RiskHostPathPfx + "/sys/fs/bpf"}},
	{name: "sys-parent", pod: hostPathMount("/sys"), want: []string{RiskHostPathPfx + "/sys"}},
	{name: "root-parent", pod: hostPathMount("/"), want: []string{RiskHostPathPfx + "/"}},
	{name: "run-parent", pod: hostPathMount("/run"), want: []string{RiskHostPathPfx + "/run"}},
	{name: "doubled-slash", pod: hostPathMount("/var//log"), want: []string{RiskHostPathPfx + "/var//log"}},
	{name: "harmless-hostpath", pod: hostPathMount("/var/log/pods")},
	{name: "similar-prefix", pod: hostPathMount("/sys/fs/cgroupx")},
	{name: "risky-volume-not-mounted", pod: func(p *corev1.Pod) {
		p.Spec.Volumes = append(p.Spec.Volumes, corev1.Volume{Name: "sock", VolumeSource: corev1.VolumeSource{
			HostPath: &corev1.HostPathVolumeSource{Path: "/var/run/docker.sock"}}})
	}},
	{name: "root-writable-alone", pod: func(p *corev1.Pod) { shipper(p).SecurityContext = &corev1.SecurityContext{Capabilities: dropAll()} }},
	{name: "root-writable-with-net-admin", pod: func(p *corev1.Pod) {
		shipper(p).SecurityContext = &corev1.SecurityContext{Capabilities: &corev1.Capabilities{
			Add: []corev1.Capability{"NET_ADMIN"}, Drop: []corev1.Capability{"ALL"}}}
	}, want: []string{RiskNetAdmin, RiskRootWritable}},
	{name: "uid-0-overrides-non-root-pod", pod: func(p *corev1.Pod) {
		p.Spec.HostNetwork = true
		p.Spec.SecurityContext = &corev1.PodSecurityContext{RunAsNonRoot: ptr.To(true)}
		shipper(p).SecurityContext = &corev1.SecurityContext{RunAsUser: ptr.To(int64(0)), RunAsNonRoot: ptr.To(false), Capabilities: dropAll()}
	}, want: []string{RiskHostNetwork, RiskRootWritable}},
	{name: "pod-uid-nonzero", pod: func(p *corev1.Pod) {
		p.Spec.HostPID = true
		p.Spec.SecurityContext = &corev1.PodSecurityContext{RunAsUser: ptr.To(int64(1000))}
		shipper(p).SecurityContext = &corev1.SecurityContext{Capabilities: dropAll()}
	}, want: []string{RiskHostPID}},
	{name: "root-readonly", pod: func(p *corev1.Pod) {
		p.Spec.HostPID = true
		shipper(p).SecurityContext = &corev1.SecurityContext{RunAsUser: ptr.To(int64(0)), ReadOnlyRootFilesystem: ptr.To(true), Capabilities: dropAll()}
	}, want: []string{RiskHostPID}},
	{name: "everything", pod: func(p *corev1.Pod) {
		p.Spec.HostNetwork, p.Spec.HostPID = true, true
		hostPathMount("/sys/fs/bpf")(p)
		shipper(p).SecurityContext = &corev1.SecurityContext{Privileged: ptr.To(true),
			Capabilities: &corev1.Capabilities{Add: []corev1.Capability{"SYS_ADMIN", "NET_ADMIN", "BPF", "NET_RAW"}}}
	}, want: []string{RiskPrivileged, RiskSysAdmin, RiskNetAdmin, RiskBPF, RiskNetRaw, RiskHostNetwork, RiskHostPID,
		RiskHostPathPfx + "/sys/fs/bpf", RiskRootWritable}},
	{name: "unrestricted-app-privileged", pod: func(p *corev1.Pod) {
		p.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{Privileged: ptr.To(true)}
	}},
}

var shipperSelector = v1alpha1.ContainerSelector{Names: []string{"shipper"}}

func TestPodRisks(t *testing.T) {
	for _, tc := range riskCases {
		t.Run(tc.name, func(t *testing.T) {
			pod := riskPod(tc.name)
			tc.pod(pod)
			got := PodRisks(&shipperSelector, pod)
			if len(tc.want) == 0 {
				if len(got) != 0 {
					t.Fatalf("risks %v, want none", got)
				}
				return
			}
			want := []ContainerRisk{{Pod: tc.name, Container: "shipper", Role: v1alpha1.RoleSidecar, Reasons: tc.want}}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("risks\n got %+v\nwant %+v", got, want)
			}
		})
	}
}

// TestPodRisksSelection checks that only restricted containers count,
// selected by name or by role, in every container list.
func TestPodRisksSelection(t *testing.T) {
	priv := &corev1.SecurityContext{Privileged: ptr.To(true)}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p"},
		Spec: corev1.PodSpec{
			InitContainers: []corev1.Container{
				{Name: "migrate", SecurityContext: priv},
				{Name: "proxy", SecurityContext: priv, RestartPolicy: ptr.To(corev1.ContainerRestartPolicyAlways)},
			},
			Containers: []corev1.Container{{Name: "app", SecurityContext: priv}, {Name: "metrics", SecurityContext: priv}},
			EphemeralContainers: []corev1.EphemeralContainer{{EphemeralContainerCommon: corev1.EphemeralContainerCommon{
				Name: "debug", SecurityContext: priv}}},
		},
	}
	for _, tc := range []struct {
		sel  v1alpha1.ContainerSelector
		want []string
	}{
		{v1alpha1.ContainerSelector{Roles: []v1alpha1.ContainerRole{v1alpha1.RoleSidecar}}, []string{"proxy"}},
		{v1alpha1.ContainerSelector{Roles: []v1alpha1.ContainerRole{v1alpha1.RoleInit}}, []string{"migrate"}},
		{v1alpha1.ContainerSelector{Roles: []v1alpha1.ContainerRole{v1alpha1.RoleApp}}, []string{"app", "metrics"}},
		{v1alpha1.ContainerSelector{Roles: []v1alpha1.ContainerRole{v1alpha1.RoleEphemeral}}, []string{"debug"}},
		{v1alpha1.ContainerSelector{Names: []string{"metrics", "proxy"}}, []string{"proxy", "metrics"}},
		{v1alpha1.ContainerSelector{Names: []string{"nope"}}, nil},
	} {
		var got []string
		for _, r := range PodRisks(&tc.sel, pod) {
			got = append(got, r.Container)
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("selector %+v: risky containers %v, want %v", tc.sel, got, tc.want)
		}
	}
}

func TestAnalyzeAndStatusReportRisks(t *testing.T) {
	p := &v1alpha1.ContainerNetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p", Generation: 1},
		Spec: v1alpha1.ContainerNetworkPolicySpec{
			Containers: shipperSelector,
			EgressDeny: []v1alpha1.EgressDenyRule{{ToPorts: []v1alpha1.PortDenyRule{{Ports: []v1alpha1.PortProtocol{{Port: "25"}}}}}},
		},
	}
	safe := riskPod("b-safe")
	risky := riskPod("a-risky")
	risky.Spec.HostNetwork = true
	a := Analyze(p, nil, []corev1.Pod{*safe, *risky}, nil)
	if a.Invalid {
		t.Fatal("policy is invalid")
	}
	if len(a.Risks) != 1 || a.Risks[0].Pod != "a-risky" {
		t.Fatalf("risks %+v, want one for pod a-risky", a.Risks)
	}
	st := Status(p, StatusInput{Analysis: a})
	var c *metav1.Condition
	for i := range st.Conditions {
		if st.Conditions[i].Type == v1alpha1.ConditionBypassRisk {
			c = &st.Conditions[i]
		}
	}
	if c == nil || c.Status != metav1.ConditionTrue || c.Reason != v1alpha1.ReasonBreakoutRisk {
		t.Fatalf("BypassRisk condition %+v", c)
	}
	for _, w := range []string{"pod a-risky", "container shipper", RiskHostNetwork} {
		if !strings.Contains(c.Message, w) {
			t.Errorf("message %q lacks %q", c.Message, w)
		}
	}
	st = Status(p, StatusInput{Analysis: Analyze(p, nil, []corev1.Pod{*safe}, nil)})
	for _, c := range st.Conditions {
		if c.Type == v1alpha1.ConditionBypassRisk && (c.Status != metav1.ConditionFalse || c.Reason != v1alpha1.ReasonNoBreakoutRisk) {
			t.Fatalf("BypassRisk condition without risky pods: %+v", c)
		}
	}
}
