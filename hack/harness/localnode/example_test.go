package localnode_test

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/sidewall/sidewall/hack/harness/localnode"
)

// A web pod with a native sidecar talks to a logging pod; the sidecar's
// connection attempt is reported with the error its process got.
func Example() {
	var client kubernetes.Interface // e.g. kubernetes.NewForConfig(env.Config) from hack/harness/testenv
	ctx := context.Background()

	node, err := localnode.New(ctx, localnode.Options{Client: client})
	if err != nil {
		panic(err)
	}
	defer node.Close() // also from a signal handler: Close is idempotent

	always := corev1.ContainerRestartPolicyAlways
	web, err := node.RunPod(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web"},
		Spec: corev1.PodSpec{
			InitContainers: []corev1.Container{{Name: "log-shipper", RestartPolicy: &always}},
			Containers:     []corev1.Container{{Name: "app"}},
		},
	})
	if err != nil {
		panic(err)
	}
	logging, err := node.RunPod(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "logging"},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "server"}}},
	})
	if err != nil {
		panic(err)
	}
	if _, err := node.Listen(ctx, logging, "server", "http", 8080); err != nil {
		panic(err)
	}
	status, body, err := node.HTTP(ctx, web, "log-shipper", "POST", "http://"+logging.IP.String()+":8080/ingest", 2*time.Second)
	switch {
	case errors.Is(err, syscall.EPERM):
		fmt.Println("denied at once:", err)
	case errors.Is(err, localnode.ErrTimeout):
		fmt.Println("dropped silently:", err)
	case err != nil:
		fmt.Println("failed:", err)
	default:
		fmt.Println(status, body)
	}
}
