package identity

import (
	"context"
	"fmt"
	"testing"

	ciliumidentity "github.com/cilium/cilium/pkg/identity"
	ciliumv2 "github.com/cilium/cilium/pkg/k8s/apis/cilium.io/v2"
	"github.com/cilium/cilium/pkg/k8s/client/clientset/versioned"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/sidewall/sidewall/hack/harness/testenv"
)

// Nodes resolve to Cilium's reserved identities: this node's addresses
// are host, the others' remote-node, and (from CiliumNodes) the health and
// Ingress addresses health and ingress; a node that goes takes its
// addresses with it. Both sources, against a real API server.
//
// The addresses are not this machine's: its own address is the test API
// server's, which makes it kube-apiserver (TestKubeAPIServerIdentity).
func TestNodesAreHostAndRemoteNode(t *testing.T) {
	cs, cc := nodeClients(t)
	ctx := context.Background()
	for name, ip := range map[string]string{"node-a": "203.0.113.1", "node-b": "203.0.113.2"} {
		// CiliumNode: the node's address and its cilium_host router
		// address, and Cilium's health endpoint and Ingress listener.
		createNode(t, cs, cc, name, ip, ciliumv2.NodeSpec{
			Addresses: []ciliumv2.NodeAddress{
				{Type: "InternalIP", IP: ip}, {Type: "CiliumInternalIP", IP: ip + "0"},
			},
			HealthAddressing:  ciliumv2.HealthAddressingSpec{IPv4: ip + "1"},
			IngressAddressing: ciliumv2.AddressPair{IPV4: ip + "2"},
		})
	}
	pods := NewPodSource(cs, nil, "", nil)
	pods.LocalNode = "node-a"
	cilium := NewCiliumSource(cc, nil)
	cilium.LocalNode = "node-a"
	for _, c := range []struct {
		name string
		src  Source
		want map[string]NumericIdentity
	}{
		{"pods", pods, map[string]NumericIdentity{"203.0.113.1": ciliumidentity.ReservedIdentityHost, "203.0.113.2": ciliumidentity.ReservedIdentityRemoteNode}},
		{"cilium", cilium, map[string]NumericIdentity{
			"203.0.113.1": ciliumidentity.ReservedIdentityHost, "203.0.113.10": ciliumidentity.ReservedIdentityHost,
			"203.0.113.2": ciliumidentity.ReservedIdentityRemoteNode, "203.0.113.20": ciliumidentity.ReservedIdentityRemoteNode,
			// health and ingress wherever they are, as in Cilium's ipcache
			"203.0.113.11": ciliumidentity.ReservedIdentityHealth, "203.0.113.21": ciliumidentity.ReservedIdentityHealth,
			"203.0.113.12": ciliumidentity.ReservedIdentityIngress, "203.0.113.22": ciliumidentity.ReservedIdentityIngress,
		}},
	} {
		runSource(t, c.src) // until the test ends: the deletion below needs it
		t.Run(c.name, func(t *testing.T) {
			eventually(t, c.src, "node identities", func(s *Snapshot) error {
				for ip, want := range c.want {
					got, err := peerIdentity(s, ip)
					if err != nil {
						return err
					}
					if got != want {
						return fmt.Errorf("%s: identity %d, want %d", ip, got, want)
					}
				}
				return nil
			})
		})
	}
	// A node that goes takes its addresses with it.
	if err := cs.CoreV1().Nodes().Delete(ctx, "node-b", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := cc.CiliumV2().CiliumNodes().Delete(ctx, "node-b", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, src := range []Source{pods, cilium} {
		eventually(t, src, "node-b gone", func(s *Snapshot) error {
			if _, err := peerIdentity(s, "203.0.113.2"); err == nil {
				return fmt.Errorf("203.0.113.2 still known")
			}
			return nil
		})
	}
}

// The kube-apiserver's addresses (the kubernetes Service's EndpointSlices)
// are kube-apiserver, also on another node, but this node's stay host.
// Both sources, against a real API server.
func TestKubeAPIServerIdentity(t *testing.T) {
	cs, cc := nodeClients(t)
	ctx := context.Background()
	for name, ip := range map[string]string{"node-c": "192.0.2.101", "node-d": "192.0.2.102"} {
		createNode(t, cs, cc, name, ip, ciliumv2.NodeSpec{Addresses: []ciliumv2.NodeAddress{{Type: "InternalIP", IP: ip}}})
	}
	// envtest's API server publishes its own slice (127.0.0.1 or the
	// like); add one that names an outside control plane and both nodes.
	if _, err := cs.DiscoveryV1().EndpointSlices("default").Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "kubernetes-extra", Labels: map[string]string{discoveryv1.LabelServiceName: "kubernetes"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"198.51.100.7"}}, {Addresses: []string{"192.0.2.101"}}, {Addresses: []string{"192.0.2.102"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cs.DiscoveryV1().EndpointSlices("default").Delete(context.Background(), "kubernetes-extra", metav1.DeleteOptions{})
	})
	pods := NewPodSource(cs, nil, "", nil)
	pods.LocalNode = "node-c"
	cilium := NewCiliumSource(cc, nil)
	cilium.LocalNode, cilium.Kube = "node-c", cs
	want := map[string]NumericIdentity{
		"198.51.100.7": ciliumidentity.ReservedIdentityKubeAPIServer,
		"192.0.2.102":  ciliumidentity.ReservedIdentityKubeAPIServer, // remote-node with kube-apiserver
		"192.0.2.101":  ciliumidentity.ReservedIdentityHost,          // this node stays host
	}
	for name, src := range map[string]Source{"pods": pods, "cilium": cilium} {
		runSource(t, src)
		t.Run(name, func(t *testing.T) {
			eventually(t, src, "kube-apiserver identities", func(s *Snapshot) error {
				for ip, id := range want {
					got, err := peerIdentity(s, ip)
					if err != nil {
						return err
					}
					if got != id {
						return fmt.Errorf("%s: identity %d, want %d", ip, got, id)
					}
				}
				return nil
			})
		})
	}
}

// nodeClients are clients of a test API server with Cilium's CRDs.
func nodeClients(t *testing.T) (kubernetes.Interface, versioned.Interface) {
	t.Helper()
	env := testenv.New(t, testenv.Options{})
	cs, err := kubernetes.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := versioned.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	return cs, cc
}

// createNode creates a Node with ip as its InternalIP and a CiliumNode
// of that name with spec.
func createNode(t *testing.T, cs kubernetes.Interface, cc versioned.Interface, name, ip string, spec ciliumv2.NodeSpec) {
	t.Helper()
	ctx := context.Background()
	n, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}, {Type: corev1.NodeHostName, Address: name}}
	if _, err := cs.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cc.CiliumV2().CiliumNodes().Create(ctx, &ciliumv2.CiliumNode{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: spec}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}
