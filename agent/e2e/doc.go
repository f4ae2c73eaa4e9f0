// Package e2e is sidewall's end-to-end suite beside a real Cilium: a
// cilium-agent built from the pinned cilium module owns the local node's
// pod networking (hack/harness/localnode's Cilium mode: cilium-cni wires
// every pod, Cilium allocates its identities and attaches its programs),
// and sidewall's controller and node agent run beside it. Every case sends
// real traffic between real processes. The cases share one node, since the
// agent compiles its datapath at start.
package e2e
