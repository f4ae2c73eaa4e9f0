package identity

import (
	"context"
	"fmt"
	"testing"

	ciliumidentity "github.com/cilium/cilium/pkg/identity"
	ciliumv2 "github.com/cilium/cilium/pkg/k8s/apis/cilium.io/v2"
	"github.com/cilium/cilium/pkg/k8s/client/clientset/versioned"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/sidewall/sidewall/hack/harness/testenv"
)

// Nodes resolve to Cilium's reserved identities: this node's addresses
// are host, the others' remote-node; a node that goes takes its addresses
// with it. Both sources, against a real API server.
func TestNodesAreHostAndRemoteNode(t *testing.T) {
	env := testenv.New(t, testenv.Options{})
	cs, err := kubernetes.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := versioned.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for name, ip := range map[string]string{"node-a": "192.0.2.1", "node-b": "192.0.2.2"} {
		n, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}, {Type: corev1.NodeHostName, Address: name}}
		if _, err := cs.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		// CiliumNode: the node's address and its cilium_host router address.
		_, err = cc.CiliumV2().CiliumNodes().Create(ctx, &ciliumv2.CiliumNode{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: ciliumv2.NodeSpec{Addresses: []ciliumv2.NodeAddress{
				{Type: "InternalIP", IP: ip}, {Type: "CiliumInternalIP", IP: ip + "0"},
			}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
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
		{"pods", pods, map[string]NumericIdentity{"192.0.2.1": ciliumidentity.ReservedIdentityHost, "192.0.2.2": ciliumidentity.ReservedIdentityRemoteNode}},
		{"cilium", cilium, map[string]NumericIdentity{
			"192.0.2.1": ciliumidentity.ReservedIdentityHost, "192.0.2.10": ciliumidentity.ReservedIdentityHost,
			"192.0.2.2": ciliumidentity.ReservedIdentityRemoteNode, "192.0.2.20": ciliumidentity.ReservedIdentityRemoteNode,
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
			if _, err := peerIdentity(s, "192.0.2.2"); err == nil {
				return fmt.Errorf("192.0.2.2 still known")
			}
			return nil
		})
	}
}
