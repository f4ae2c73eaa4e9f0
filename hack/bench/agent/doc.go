// Command agent measures the sidewall node agent on one node (a local node
// harness: real cgroups, a real kube-apiserver and etcd from envtest, the
// agent as its own process built from ./cmd/sidewall-agent):
//
//   - latency: the time from a pod's status update (kubelet reporting the
//     container ids) to the sidecar's classification in the pinned
//     containers map, p50 and p99 over 200 pods started one after another,
//     each selected by a ContainerNetworkPolicy that exists already;
//   - scale: 1,000 pods x 3 containers (a log-shipper sidecar, app, admin)
//     with 100 policies on the node: the time from starting the agent
//     process to its first complete reconcile (ready), after a restart that
//     adopts the pinned maps and after a cold start on empty maps, and the
//     agent's peak resident memory (VmHWM of its process).
//
// The pods run WithoutNetwork (no namespace or veth: a bridge takes at most
// 1,024 ports) and without processes: only the API objects and the cgroups
// matter to the agent. Figures are printed with their ratio to the targets
// of docs/benchmarks.md, never asserted.
//
//	go run ./hack/bench/agent -agent bin/sidewall-agent
//	go run ./hack/bench/agent -latency-pods 50 -pods 200 -policies 20
package main
