package translator

import (
	"fmt"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/sidewall/sidewall/crds/v1alpha1"
)

// Breakout-risk reasons: what lets a restricted container step outside its
// cgroup's enforcement. docs/threat-model.md gives the escape each enables.
// The admission policy (AdmissionPolicy) produces the same strings, so the
// message of a refused pod reads like the BypassRisk condition.
const (
	RiskPrivileged   = "privileged"
	RiskAllCaps      = "all capabilities added"
	RiskSysAdmin     = "CAP_SYS_ADMIN added"
	RiskNetAdmin     = "CAP_NET_ADMIN added"
	RiskBPF          = "CAP_BPF added"
	RiskNetRaw       = "CAP_NET_RAW added"
	RiskNetRawKept   = "CAP_NET_RAW not dropped (containerd grants it by default)"
	RiskPtraceShared = "CAP_SYS_PTRACE added with shareProcessNamespace"
	RiskSharedPID    = "shareProcessNamespace without a uid apart from the other containers (pidfd_getfd or ptrace of their sockets)"
	RiskHostNetwork  = "hostNetwork"
	RiskHostPID      = "hostPID"
	RiskHostPathPfx  = "hostPath mount of "
	RiskRootWritable = "runs as root with a writable root filesystem"
)

// riskyCaps are the capabilities that are a risk whenever they are added,
// in the order their reasons are listed. NET_RAW is also a risk when it is
// not added but not dropped either (RiskNetRawKept): containerd and Docker
// grant it by default, and an AF_PACKET socket sends below every cgroup
// hook (docs/threat-model.md).
var riskyCaps = []struct{ cap, reason string }{
	{"SYS_ADMIN", RiskSysAdmin},
	{"NET_ADMIN", RiskNetAdmin},
	{"BPF", RiskBPF},
	{"NET_RAW", RiskNetRaw},
}

// RiskyHostPaths are the host paths whose mount lets a container leave its
// cgroup or start another container: container runtime sockets and their
// directories, the cgroup filesystem and the BPF filesystem. A hostPath
// volume is risky when its path is one of these, lies below one, or is a
// parent of one (so /, /run, /var/run, /sys and /var count too).
var RiskyHostPaths = []string{
	"/run/containerd",
	"/var/run/containerd",
	"/run/crio",
	"/var/run/crio",
	"/run/docker.sock",
	"/var/run/docker.sock",
	"/run/docker",
	"/var/run/docker",
	"/run/cri-dockerd.sock",
	"/var/run/cri-dockerd.sock",
	"/run/podman",
	"/var/run/podman",
	"/var/run/dockershim.sock",
	"/var/lib/containerd",
	"/var/lib/docker",
	"/sys/fs/cgroup",
	"/sys/fs/bpf",
}

// RiskyHostPath reports whether a hostPath volume path is risky. It is
// written the way the admission policy's CEL checks it (no path cleaning:
// the API server already refuses ".." in a hostPath, and a doubled slash
// is treated as risky rather than normalized).
func RiskyHostPath(p string) bool {
	if strings.Contains(p, "//") {
		return true
	}
	q := p
	if !strings.HasSuffix(q, "/") {
		q += "/"
	}
	for _, r := range RiskyHostPaths {
		if strings.HasPrefix(r+"/", q) || strings.HasPrefix(q, r+"/") {
			return true
		}
	}
	return false
}

// ContainerRisk is a restricted container of a selected pod with the
// reasons it could escape container-level enforcement.
type ContainerRisk struct {
	Pod       string                 `json:"pod"`
	Container string                 `json:"container"`
	Role      v1alpha1.ContainerRole `json:"role"`
	Reasons   []string               `json:"reasons"`
}

// String is the form used in the BypassRisk condition and in Events.
func (r ContainerRisk) String() string {
	return fmt.Sprintf("pod %s container %s: %s", r.Pod, r.Container, strings.Join(r.Reasons, ", "))
}

// capAdded reports whether capability c (without the CAP_ prefix) is in
// add, written with or without the prefix, in any case.
func capAdded(add []corev1.Capability, c string) bool {
	for _, a := range add {
		s := strings.ToUpper(string(a))
		if s == c || s == "CAP_"+c {
			return true
		}
	}
	return false
}

// capDropped reports whether capability c (without the CAP_ prefix) is
// dropped by drop: named with or without the prefix, or "ALL", in any
// case. Unlike capAdded, "CAP_ALL" does not count: no runtime reads it as
// all, and counting it would hide a capability that is still there.
func capDropped(drop []corev1.Capability, c string) bool {
	for _, d := range drop {
		if strings.EqualFold(string(d), "ALL") {
			return true
		}
	}
	return capAdded(drop, c)
}

// ContainerRiskReasons returns the breakout-risk reasons of the container
// name of pod, given its security context and volume mounts. The order is
// fixed: privileged, capabilities, shared PID namespace, host namespaces,
// hostPath mounts, root.
func ContainerRiskReasons(pod *corev1.Pod, name string, sc *corev1.SecurityContext, mounts []corev1.VolumeMount) []string {
	var reasons []string
	if sc != nil && sc.Privileged != nil && *sc.Privileged {
		reasons = append(reasons, RiskPrivileged)
	}
	var add, drop []corev1.Capability
	if sc != nil && sc.Capabilities != nil {
		add, drop = sc.Capabilities.Add, sc.Capabilities.Drop
	}
	if capAdded(add, "ALL") {
		reasons = append(reasons, RiskAllCaps)
	} else {
		for _, rc := range riskyCaps {
			if capAdded(add, rc.cap) {
				reasons = append(reasons, rc.reason)
			}
		}
		// An explicit add is reported as added even if also dropped: runtimes
		// differ in which of the two wins.
		if !capAdded(add, "NET_RAW") && !capDropped(drop, "NET_RAW") {
			reasons = append(reasons, RiskNetRawKept)
		}
		if pod.Spec.ShareProcessNamespace != nil && *pod.Spec.ShareProcessNamespace && capAdded(add, "SYS_PTRACE") {
			reasons = append(reasons, RiskPtraceShared)
		}
	}
	// Without CAP_SYS_PTRACE, a process may still pidfd_getfd or ptrace
	// another of its own uid (no Yama, or Yama's mode 0): one PID namespace
	// for the pod lets the restricted container send through the app's
	// sockets, as the app. Measured in agent/bypass (TestBypassRound2).
	if pod.Spec.ShareProcessNamespace != nil && *pod.Spec.ShareProcessNamespace &&
		!capAdded(add, "SYS_PTRACE") && !capAdded(add, "ALL") && !uidApart(pod, name, sc) {
		reasons = append(reasons, RiskSharedPID)
	}
	if pod.Spec.HostNetwork {
		reasons = append(reasons, RiskHostNetwork)
	}
	if pod.Spec.HostPID {
		reasons = append(reasons, RiskHostPID)
	}
	// In the order of spec.volumes, as the CEL filter lists them.
	for _, v := range pod.Spec.Volumes {
		if v.HostPath == nil || !RiskyHostPath(v.HostPath.Path) {
			continue
		}
		for _, m := range mounts {
			if m.Name == v.Name {
				reasons = append(reasons, RiskHostPathPfx+v.HostPath.Path)
				break
			}
		}
	}
	if len(reasons) > 0 && runsAsRoot(pod, sc) && !(sc != nil && sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem) {
		reasons = append(reasons, RiskRootWritable)
	}
	return reasons
}

// effectiveUID is the uid a container runs as by its spec (the container's
// runAsUser, else the pod's), -1 when the image decides.
func effectiveUID(pod *corev1.Pod, sc *corev1.SecurityContext) int64 {
	if sc != nil && sc.RunAsUser != nil {
		return *sc.RunAsUser
	}
	if psc := pod.Spec.SecurityContext; psc != nil && psc.RunAsUser != nil {
		return *psc.RunAsUser
	}
	return -1
}

// uidApart is true when the container name provably runs as a uid no other
// container of the pod runs as, and cannot become another: a runAsUser
// other than 0 with allowPrivilegeEscalation false (no setuid binary lifts
// it), and a runAsUser on every other container that differs from it.
func uidApart(pod *corev1.Pod, name string, sc *corev1.SecurityContext) bool {
	uid := effectiveUID(pod, sc)
	if uid <= 0 || sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		return false
	}
	apart := func(other string, osc *corev1.SecurityContext) bool {
		if other == name {
			return true
		}
		o := effectiveUID(pod, osc)
		return o != -1 && o != uid
	}
	for _, c := range pod.Spec.InitContainers {
		if !apart(c.Name, c.SecurityContext) {
			return false
		}
	}
	for _, c := range pod.Spec.Containers {
		if !apart(c.Name, c.SecurityContext) {
			return false
		}
	}
	for _, c := range pod.Spec.EphemeralContainers {
		if !apart(c.Name, c.SecurityContext) {
			return false
		}
	}
	return true
}

// runsAsRoot is true when the container may run as uid 0: runAsUser is 0,
// or it is unset (the image decides) and runAsNonRoot is not true. The
// container's settings win over the pod's.
func runsAsRoot(pod *corev1.Pod, sc *corev1.SecurityContext) bool {
	var uid *int64
	var nonRoot *bool
	if psc := pod.Spec.SecurityContext; psc != nil {
		uid, nonRoot = psc.RunAsUser, psc.RunAsNonRoot
	}
	if sc != nil {
		if sc.RunAsUser != nil {
			uid = sc.RunAsUser
		}
		if sc.RunAsNonRoot != nil {
			nonRoot = sc.RunAsNonRoot
		}
	}
	if uid != nil {
		return *uid == 0
	}
	return nonRoot == nil || !*nonRoot
}

// PodRisks returns the risks of the containers of pod that sel restricts,
// in the order of PodContainers.
func PodRisks(sel *v1alpha1.ContainerSelector, pod *corev1.Pod) []ContainerRisk {
	var out []ContainerRisk
	check := func(name string, role v1alpha1.ContainerRole, sc *corev1.SecurityContext, mounts []corev1.VolumeMount) {
		if !sel.Selects(name, role) {
			return
		}
		if reasons := ContainerRiskReasons(pod, name, sc, mounts); len(reasons) > 0 {
			out = append(out, ContainerRisk{Pod: pod.Name, Container: name, Role: role, Reasons: reasons})
		}
	}
	for _, c := range pod.Spec.InitContainers {
		role := v1alpha1.RoleInit
		if c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			role = v1alpha1.RoleSidecar
		}
		check(c.Name, role, c.SecurityContext, c.VolumeMounts)
	}
	for _, c := range pod.Spec.Containers {
		check(c.Name, v1alpha1.RoleApp, c.SecurityContext, c.VolumeMounts)
	}
	for _, c := range pod.Spec.EphemeralContainers {
		check(c.Name, v1alpha1.RoleEphemeral, c.SecurityContext, c.VolumeMounts)
	}
	return out
}

// sortRisks orders risks by pod, then keeps PodRisks' container order.
func sortRisks(rs []ContainerRisk) {
	sort.SliceStable(rs, func(i, j int) bool { return rs[i].Pod < rs[j].Pod })
}

// RiskMessage describes risks for the BypassRisk condition.
func RiskMessage(rs []ContainerRisk) string {
	parts := make([]string, 0, len(rs))
	for _, r := range rs {
		parts = append(parts, r.String())
	}
	return strings.Join(parts, "; ")
}
