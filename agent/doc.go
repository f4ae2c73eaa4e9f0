// Package agent is sidewall's node agent: it joins the control plane
// (Pods of this node, ContainerNetworkPolicies, peer identities) to the
// datapath (bpfext). Start assembles it: the datapath, the cgroup
// resolver, the identity source, the Hubble server and the agent loop, for
// cmd/sidewall-agent, the tests, the benchmarks and the demo alike.
//
// Compile is a pure function from the node's pods (with their resolved
// container cgroups), every policy's translator.RuleSet and an identity
// snapshot to the complete desired datapath state. Agent runs the loop: it
// watches the API with client-go informers and the pod cgroups with inotify,
// compiles, diffs the result against what is in the pinned maps (one
// mapSync per table, as Cilium's pkg/bpf/ops reconciles a map) and applies
// the difference in batches, in an order that never opens a gap:
// identities, pods and rules first, then the container classifications,
// then the attachments, and only then the deletion of what is stale. On
// restart it adopts the pinned maps and links (bpfext.Load) and reconciles
// them the same way, so enforcement never stops.
//
// Policy ids: every container of a selected pod that is default-deny in
// some direction, or that must carry the exclusive denies of a sibling's
// policy (docs/semantics.md, rule 2), gets its own datapath policy id whose
// rules are the union of the rules of every RuleSet selecting it, because
// intra-pod rules name container ids of its own pod. Other containers of a
// selected pod get policy id 0 (no rules: unrestricted). The pod cgroup gets
// a DenyAll entry (fail closed) unless every enforcing policy selecting the
// pod says unclassified: Allow, so a container the agent has not classified
// yet is denied.
//
// Time to classify: a container's cgroup exists before kubelet reports the
// container id in the pod status, and only the id says which container (and
// so which policy) a cgroup is. Until then the pod cgroup's DenyAll entry
// denies it (fail closed). The agent watches the pod cgroup with inotify and
// reconciles on every pod status update, and reports the time from the
// cgroup's creation (or the container's start) to its classification as
// sidewall_time_to_classify_seconds. On a real node, kubelet's status
// update (PLEG relist, up to about a second) dominates; docs/benchmarks.md
// has the figures measured here.
//
// CIDR peers get identities allocated on the node (Cilium's local identity
// scope, 1<<24 and up), one per distinct prefix of every CIDR and except of
// every policy. The datapath maps an address by longest prefix, so a CIDR
// rule grants every CIDR identity whose prefix lies inside its CIDR and not
// inside one of its excepts. As with Cilium's default, CIDR rules select
// addresses that no known endpoint holds: an endpoint's address maps to the
// endpoint's identity.
//
// Limits: the datapath has one audit flag per container, so a container
// selected by an enforcing policy ignores audit-mode policies, and a
// container that must carry a sibling's exclusive denies ignores them too
// (enforcement wins; Compile reports it as a warning).
package agent
