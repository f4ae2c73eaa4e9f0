package translator

import (
	"fmt"
	"strings"
	"testing"

	slim_metav1 "github.com/cilium/cilium/pkg/k8s/slim/k8s/apis/meta/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/sidewall/sidewall/crds/v1alpha1"
)

// TestAnalyzePodSizes counts the restricted containers of pods with no
// containers (an object the API server refuses) and with 200.
func TestAnalyzePodSizes(t *testing.T) {
	p := &v1alpha1.ContainerNetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p", Generation: 1},
		Spec: v1alpha1.ContainerNetworkPolicySpec{
			PodSelector: slim_metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			Containers:  v1alpha1.ContainerSelector{Names: []string{"app-7", "missing"}, Roles: []v1alpha1.ContainerRole{v1alpha1.RoleSidecar}},
			EgressDeny:  []v1alpha1.EgressDenyRule{{ToPorts: []v1alpha1.PortDenyRule{{Ports: []v1alpha1.PortProtocol{{Port: "25"}}}}}},
		},
	}
	empty := corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "empty", Namespace: "ns", Labels: map[string]string{"app": "web"}}}
	big := corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "big", Namespace: "ns", Labels: map[string]string{"app": "web"}}}
	for i := range 100 {
		big.Spec.InitContainers = append(big.Spec.InitContainers, corev1.Container{Name: fmt.Sprintf("sidecar-%d", i), RestartPolicy: ptr.To(corev1.ContainerRestartPolicyAlways)})
		big.Spec.Containers = append(big.Spec.Containers, corev1.Container{Name: fmt.Sprintf("app-%d", i)})
	}

	a := Analyze(p, nil, []corev1.Pod{empty}, nil)
	if a.Invalid || a.SelectedPods != 1 || a.SelectedContainers != 0 {
		t.Errorf("empty pod: invalid %t, %d pods, %d containers; want 1 pod, 0 containers", a.Invalid, a.SelectedPods, a.SelectedContainers)
	}
	if len(a.UnknownContainers) != 2 {
		t.Errorf("empty pod: unknown containers %q, want app-7 and missing", a.UnknownContainers)
	}

	a = Analyze(p, nil, []corev1.Pod{big, empty}, nil)
	// The 100 sidecars by role and app-7 by name.
	if a.SelectedPods != 2 || a.SelectedContainers != 101 {
		t.Errorf("200-container pod: %d pods, %d containers; want 2, 101", a.SelectedPods, a.SelectedContainers)
	}
	if len(a.UnknownContainers) != 1 || a.UnknownContainers[0] != "missing" {
		t.Errorf("unknown containers %q, want [missing]", a.UnknownContainers)
	}
	// Default security contexts keep CAP_NET_RAW: each restricted container
	// is reported once, and no unrestricted one.
	if len(a.Risks) != 101 {
		t.Errorf("%d risks, want one per restricted container (101)", len(a.Risks))
	}
	for _, r := range a.Risks {
		if r.Pod != "big" || r.Container != "app-7" && !strings.HasPrefix(r.Container, "sidecar-") {
			t.Errorf("risk reported for unrestricted container %s/%s", r.Pod, r.Container)
		}
	}
}
