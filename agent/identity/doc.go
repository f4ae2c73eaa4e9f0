// Package identity tells the node agent which security identity each peer IP
// has, and which identities a Cilium endpoint selector selects, so that the
// agent can fill the datapath's peer map (IP -> identity) and compile rules
// keyed on identities.
//
// Two sources implement Source:
//
//   - CiliumSource, when Cilium is installed: identities come from Cilium's
//     CiliumEndpoint objects (status.identity.id, status.networking.addressing)
//     and their labels from CiliumIdentity objects (security-labels), falling
//     back to the endpoint's status.identity.labels while the CiliumIdentity
//     has not been seen (or does not exist, in kvstore identity mode). sidewall
//     and Cilium then agree on every number.
//   - PodSource, when Cilium is absent: identities are allocated on the node
//     by an Allocator from each pod's identity labels, computed as Cilium does
//     (pkg/k8s/utils.SanitizePodLabels and Cilium's default label filter:
//     pod labels, namespace name and labels, service account, cluster name).
//     Numbers lie in Cilium's cluster-local allocation range (256..65535) and
//     never collide with reserved identities (host=1, world=2, ...). The same
//     label set gets the same number on every node and across agent restarts,
//     except after a hash collision, which is settled by the order of
//     allocation (see Allocator). They are node-local: the agent that
//     compiles the rules also fills the peer map, so numbers only need to
//     agree within one agent.
//
// Selector matching is Cilium's own (pkg/policy/types.LabelSelector over
// labels.LabelArray), including the reserved identities for entities such as
// world, host and cluster (api.EntitySelectorMapping; call api.InitEntities
// with the cluster name for the cluster entity, as Cilium does). A selector
// taken from a namespaced policy must already carry its namespace
// requirement (k8s:io.kubernetes.pod.namespace), as Cilium's CNP parsing adds
// it.
package identity
