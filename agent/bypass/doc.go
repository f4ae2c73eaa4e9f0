// Package bypass is sidewall's bypass test suite: a sidecar restricted by a
// ContainerNetworkPolicy, enforced by the real node agent on the real
// kernel (hack/harness/agentnode: a local node of real pods, a real
// control plane, the agent started by agent.Start), tries each known way
// around the container-level policy. Each attack is a named subtest of
// TestBypass. A denial is asserted by the errno the attacker got together
// with the datapath counter (cgroup_skb) or the agent's per-container deny
// metric (socket hooks, from the datapath's events) that proves it; the
// known limits (a socket passed over SCM_RIGHTS, an AF_PACKET socket) are
// asserted as observed, so the test fails if they change. Each attack also
// runs from the unrestricted app container of the same pod as a control,
// so a case fails when enforcement stops working, not when the network
// does.
//
// The attacker is the test binary itself, re-executed inside the
// container's cgroup and network namespace (see runHelper). The package
// has tests only; docs/threat-model.md ("Bypass test suite") lists the
// attacks and their results. Needs root and KUBEBUILDER_ASSETS.
package bypass
