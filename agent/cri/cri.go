// Package cri asks the node's container runtime, over the Container Runtime
// Interface (k8s.io/cri-api, runtime.v1), which pod and container a
// container id belongs to. The agent uses it to classify a new container
// from the cgroup watcher's event, before kubelet has written the
// container's id into the pod status.
//
// The answer comes from the labels kubelet sets on every container it
// creates through the CRI (io.kubernetes.pod.uid, .pod.namespace, .pod.name
// and io.kubernetes.container.name), which containerd and CRI-O keep.
package cri

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"k8s.io/apimachinery/pkg/types"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// The labels kubelet puts on the containers it creates
// (k8s.io/kubelet/pkg/types: KubernetesPodUIDLabel and the others).
const (
	PodUIDLabel        = "io.kubernetes.pod.uid"
	PodNameLabel       = "io.kubernetes.pod.name"
	PodNamespaceLabel  = "io.kubernetes.pod.namespace"
	ContainerNameLabel = "io.kubernetes.container.name"
)

// ErrNotFound: the runtime has no container of that id (a pod sandbox's
// own cgroup, or a container already removed).
var ErrNotFound = errors.New("container not found by the runtime")

// Container is what the runtime says of one container.
type Container struct {
	ID           string
	Name         string
	PodUID       types.UID
	PodNamespace string
	PodName      string
}

// Client is a CRI runtime service client.
type Client struct {
	socket  string
	conn    *grpc.ClientConn
	rt      runtimeapi.RuntimeServiceClient
	Runtime string // runtime name and version, as Version reported them
}

// Dial connects to the runtime's CRI socket and checks that it answers the
// runtime.v1 API.
func Dial(ctx context.Context, socket string) (*Client, error) {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("CRI socket %s: %w", socket, err)
	}
	c := &Client{socket: socket, conn: conn, rt: runtimeapi.NewRuntimeServiceClient(conn)}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	v, err := c.rt.Version(ctx, &runtimeapi.VersionRequest{})
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("CRI socket %s: runtime.v1 Version: %w", socket, err)
	}
	c.Runtime = v.RuntimeName + " " + v.RuntimeVersion
	return c, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Container asks the runtime for container id's pod and name.
func (c *Client) Container(ctx context.Context, id string) (Container, error) {
	resp, err := c.rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id})
	if status.Code(err) == codes.NotFound {
		return Container{}, fmt.Errorf("container %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return Container{}, fmt.Errorf("CRI ContainerStatus %s: %w", id, err)
	}
	st := resp.GetStatus()
	l := st.GetLabels()
	out := Container{ID: st.GetId(), Name: l[ContainerNameLabel], PodUID: types.UID(l[PodUIDLabel]),
		PodNamespace: l[PodNamespaceLabel], PodName: l[PodNameLabel]}
	if out.Name == "" || out.PodUID == "" {
		return Container{}, fmt.Errorf("container %s: the runtime has no %s or %s label (not created by kubelet)", id, ContainerNameLabel, PodUIDLabel)
	}
	return out, nil
}
