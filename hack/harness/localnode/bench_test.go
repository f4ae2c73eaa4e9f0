package localnode_test

import (
	"context"
	"fmt"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sidewall/sidewall/hack/harness/localnode"
)

// BenchmarkRunPod is the cost of starting one pod (a sidecar and an app
// container) on the local node, with and without its network namespace:
// what a scale test of the agent pays per pod before the agent does anything.
func BenchmarkRunPod(b *testing.B) {
	for _, tc := range []struct {
		name string
		opts []localnode.PodOption
	}{{"network", nil}, {"no-network", []localnode.PodOption{localnode.WithoutNetwork()}}} {
		b.Run(tc.name, func(b *testing.B) {
			n, _ := newNode(b)
			ctx := context.Background()
			always := corev1.ContainerRestartPolicyAlways
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				_, err := n.RunPod(ctx, &corev1.Pod{
					ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: fmt.Sprintf("pod-%d", i)},
					Spec: corev1.PodSpec{
						InitContainers: []corev1.Container{{Name: "sidecar", RestartPolicy: &always}},
						Containers:     []corev1.Container{{Name: "app"}},
					},
				}, tc.opts...)
				if err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
