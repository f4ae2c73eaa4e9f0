package identity

import (
	"net/netip"

	ciliumidentity "github.com/cilium/cilium/pkg/identity"
	ciliumv2 "github.com/cilium/cilium/pkg/k8s/apis/cilium.io/v2"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/cache"
)

// Nodes' addresses get Cilium's reserved identities, as Cilium's ipcache
// gives them: every address of the local node is host, every address of
// another node remote-node. Without them the node, and so the kubelet's
// probes, resolved to world.

// nodeKey is the owner key of a node's addresses in the store; no
// namespace/name key of a pod or endpoint starts with a NUL.
func nodeKey(name string) string { return "\x00node/" + name }

// nodeAddr is one address a node object names, and what it is.
type nodeAddr struct {
	ip string
	// identity is 0 for the node's own addresses (host or remote-node),
	// else the reserved identity Cilium gives the address wherever it is
	// (health, ingress).
	identity NumericIdentity
}

// nodePeers returns a node's addresses with their identity.
func nodePeers(name, localNode string, addrs []nodeAddr) []Peer {
	own := ciliumidentity.ReservedIdentityRemoteNode
	if name == localNode {
		own = ciliumidentity.ReservedIdentityHost
	}
	var out []Peer
	for _, a := range addrs {
		id := a.identity
		if id == 0 {
			id = own
		}
		if ip, err := netip.ParseAddr(a.ip); err == nil {
			out = append(out, Peer{IP: ip.Unmap(), Identity: id})
		}
	}
	return out
}

// setNodeLocked replaces the addresses a node holds. A pod or endpoint
// address is never taken over: a host-network pod's address is the node's.
func (s *store) setNodeLocked(name string, peers []Peer) {
	key := nodeKey(name)
	kept := peers[:0:0]
	for _, p := range peers {
		// This node's own addresses stay host even where the API server
		// runs (Cilium keeps host for them); no other owner is displaced.
		if owner, ok := s.ipOwner[p.IP]; ok && owner != key &&
			!(owner == apiServerKey && p.Identity == ciliumidentity.ReservedIdentityHost) {
			continue
		}
		kept = append(kept, p)
	}
	s.setPeersLocked(key, kept)
	s.notifyLocked()
}

// nodeHandler keeps the store's node addresses in step with Node (pod
// source) or CiliumNode (Cilium source) objects.
func (s *store) nodeHandler(localNode string, addrs func(obj any) (string, []nodeAddr, bool)) cache.ResourceEventHandlerFuncs {
	update := func(obj any) {
		name, a, ok := addrs(obj)
		if !ok {
			return
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		s.setNodeLocked(name, nodePeers(name, localNode, a))
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    update,
		UpdateFunc: func(_, obj any) { update(obj) },
		DeleteFunc: func(obj any) {
			if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = d.Obj
			}
			name, _, ok := addrs(obj)
			if !ok {
				return
			}
			s.mu.Lock()
			defer s.mu.Unlock()
			s.setNodeLocked(name, nil)
		},
	}
}

// nodeAddresses reads a Node's addresses (all but host names).
func nodeAddresses(obj any) (string, []nodeAddr, bool) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return "", nil, false
	}
	var out []nodeAddr
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP || a.Type == corev1.NodeExternalIP {
			out = append(out, nodeAddr{ip: a.Address})
		}
	}
	return n.Name, out, true
}

// ciliumNodeAddresses reads a CiliumNode's addresses: the node's own and
// the router address on cilium_host (CiliumInternalIP), from which the
// node reaches its pods; and the addresses Cilium gives reserved
// identities of their own on every node, as its ipcache does: the health
// endpoint's (health) and the Ingress listener's (ingress).
func ciliumNodeAddresses(obj any) (string, []nodeAddr, bool) {
	n, ok := obj.(*ciliumv2.CiliumNode)
	if !ok {
		return "", nil, false
	}
	var out []nodeAddr
	for _, a := range n.Spec.Addresses {
		out = append(out, nodeAddr{ip: a.IP})
	}
	for _, ip := range []string{n.Spec.HealthAddressing.IPv4, n.Spec.HealthAddressing.IPv6} {
		if ip != "" {
			out = append(out, nodeAddr{ip: ip, identity: ciliumidentity.ReservedIdentityHealth})
		}
	}
	for _, ip := range []string{n.Spec.IngressAddressing.IPV4, n.Spec.IngressAddressing.IPV6} {
		if ip != "" {
			out = append(out, nodeAddr{ip: ip, identity: ciliumidentity.ReservedIdentityIngress})
		}
	}
	return n.Name, out, true
}
