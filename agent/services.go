package agent

import (
	"net/netip"
	"sort"

	"github.com/cilium/cilium/pkg/labels"

	"github.com/sidewall/sidewall/bpfext"
)

// Service is a load-balanced address a container may connect to, with
// what it forwards to. The kernel runs sidewall's socket hooks on the pod
// cgroup before Cilium's socket LB at the node's cgroup root, and without
// the socket LB (kube-proxy) cgroup_skb egress sees the service address
// too: the DNAT happens on the node, after the packet left the pod. So a
// service address is decided on its backends.
type Service struct {
	// Namespace and Name name the Service (for flows).
	Namespace, Name string
	// Addrs are the addresses the Service is reached on: ClusterIPs,
	// ExternalIPs and LoadBalancer ingress IPs, which Cilium load-balances
	// too.
	Addrs []netip.Addr
	Ports []ServicePort
}

// ServicePort is one port of a Service and the backends behind it.
type ServicePort struct {
	Protocol uint8 // bpfext.ProtoTCP, ProtoUDP, ProtoSCTP
	Port     uint16
	// NodePort, if not 0, is the port the Service is also reached on at
	// every node address (Cilium's socket LB translates a connect to any
	// node's address on it, as kube-proxy does on the node).
	NodePort uint16
	// Backends are the ready endpoints' addresses with the port each
	// listens on (the EndpointSlice port of the same name).
	Backends []netip.AddrPort
}

// Service verdicts, per policy and service port: the datapath gets an
// allow rule for the service address when the policy allows every
// backend, and a deny rule when it denies any by a rule; otherwise the
// container's default decides (default deny when restricted). So a
// Service is reachable exactly when each of its backends is, and one
// denied backend denies the Service: fail closed, since the load balancer
// may pick any of them.

// services allocates an identity for every service address and adds, to
// every policy, the rules that decide its ports by their backends. It runs
// after every pod's rules are compiled.
func (c *compiler) services() {
	svcs := append([]Service(nil), c.in.Services...)
	sort.Slice(svcs, func(i, j int) bool {
		return svcs[i].Namespace+"/"+svcs[i].Name < svcs[j].Namespace+"/"+svcs[j].Name
	})
	policyIDs := make([]uint32, 0, len(c.out.Rules))
	for id := range c.out.Rules {
		policyIDs = append(policyIDs, id)
	}
	sort.Slice(policyIDs, func(i, j int) bool { return policyIDs[i] < policyIDs[j] })
	restricted := map[uint32]bool{}
	for _, ct := range c.out.Containers {
		if ct.EgressRestricted {
			restricted[ct.PolicyID] = true
		}
	}
	for _, svc := range svcs {
		c.nodePorts(svc, policyIDs, restricted)
		for _, addr := range svc.Addrs {
			addr = addr.Unmap()
			if !addr.IsValid() || c.peerIPs[addr] {
				continue
			}
			p := netip.PrefixFrom(addr, addr.BitLen())
			// Keyed like a CIDR identity of the same prefix, so Seed keeps
			// it across agent restarts.
			id := alloc(c.ids.cidrs, &c.ids.nextCIDR, p.String(), c.used.cidrs)
			c.out.Identities[p] = id
			c.out.CIDRLabels[id] = labels.LabelArray{
				labels.NewLabel("io.kubernetes.service.namespace", svc.Namespace, labels.LabelSourceK8s),
				labels.NewLabel("io.kubernetes.service.name", svc.Name, labels.LabelSourceK8s),
			}.Sort()
			for _, pid := range policyIDs {
				rules := c.out.Rules[pid]
				for _, sp := range svc.Ports {
					if r, ok := c.serviceRule(rules, sp); ok {
						r.PolicyID, r.Peer, r.Protocol, r.PortLow = pid, id, sp.Protocol, sp.Port
						c.out.Rules[pid] = append(c.out.Rules[pid], r)
					}
				}
			}
		}
	}
}

// nodePorts decides a Service's node ports for every policy. A node port
// is reached on the node addresses, whose identities (host, remote-node)
// the policy may grant for other reasons, so each policy gets an explicit
// rule for the port on both: the backends' verdict when serviceRule has
// one, else the container's default (deny when its egress is restricted).
// A deny on the node identities in the policy still wins, as a deny always
// does: fail closed.
func (c *compiler) nodePorts(svc Service, policyIDs []uint32, restricted map[uint32]bool) {
	for _, sp := range svc.Ports {
		if sp.NodePort == 0 {
			continue
		}
		for _, pid := range policyIDs {
			rules := c.out.Rules[pid]
			r, ok := c.serviceRule(rules, sp)
			if !ok {
				r = bpfext.Rule{Direction: bpfext.Egress, Action: bpfext.ActionAllow}
				if restricted[pid] {
					r.Action = bpfext.ActionDeny
				}
			}
			for _, node := range []uint32{bpfext.IdentityHost, bpfext.IdentityRemoteNode} {
				r.PolicyID, r.Peer, r.Protocol, r.PortLow = pid, node, sp.Protocol, sp.NodePort
				c.out.Rules[pid] = append(c.out.Rules[pid], r)
			}
		}
	}
}

// serviceRule decides one service port for one policy from its backends.
func (c *compiler) serviceRule(rules []bpfext.Rule, sp ServicePort) (bpfext.Rule, bool) {
	if len(sp.Backends) == 0 {
		return bpfext.Rule{}, false
	}
	allowed := 0
	var allow bpfext.Rule
	for _, b := range sp.Backends {
		v, r := egressVerdict(rules, c.identityOf(b.Addr()), sp.Protocol, b.Port())
		switch v {
		case bpfext.ActionDeny:
			return bpfext.Rule{Direction: bpfext.Egress, Action: bpfext.ActionDeny, RuleID: r.RuleID, Exclusive: r.Exclusive}, true
		case bpfext.ActionAllow:
			allowed++
			allow = r
		}
	}
	if allowed == len(sp.Backends) {
		return bpfext.Rule{Direction: bpfext.Egress, Action: bpfext.ActionAllow, RuleID: allow.RuleID}, true
	}
	return bpfext.Rule{}, false
}

// identityOf resolves an address as the datapath does: an endpoint's exact
// entry, else the longest CIDR identity holding it, else world.
func (c *compiler) identityOf(a netip.Addr) uint32 {
	a = a.Unmap()
	if id, ok := c.out.Identities[netip.PrefixFrom(a, a.BitLen())]; ok && c.peerIPs[a] {
		return id
	}
	best, bits := bpfext.IdentityWorld, -1
	for _, p := range c.cidrPrefixes {
		if p.Contains(a) && p.Bits() > bits {
			best, bits = c.out.Identities[p], p.Bits()
		}
	}
	return best
}

// egressVerdict is the datapath's rule decision for one egress packet
// (bpf/lib/verdict.h): a matching deny wins over any allow. It returns 0
// when no rule matches, and the rule that decided.
func egressVerdict(rules []bpfext.Rule, peer uint32, proto uint8, port uint16) (bpfext.Action, bpfext.Rule) {
	var verdict bpfext.Action
	var by bpfext.Rule
	for _, r := range rules {
		if r.Direction != bpfext.Egress || r.Local ||
			(r.Peer != 0 && r.Peer != peer) || (r.Protocol != 0 && r.Protocol != proto) {
			continue
		}
		switch {
		case r.PortLow == 0 && r.PortHigh == 0:
		case r.PortHigh == 0 && r.PortLow != port:
			continue
		case r.PortHigh != 0 && (port < r.PortLow || port > r.PortHigh):
			continue
		}
		if r.Action == bpfext.ActionDeny {
			return bpfext.ActionDeny, r
		}
		verdict, by = bpfext.ActionAllow, r
	}
	return verdict, by
}
