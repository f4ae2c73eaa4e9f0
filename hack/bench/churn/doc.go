// Command churn runs the sidewall node agent through pod churn and checks
// that it leaks nothing: on a local node harness
// (real cgroups, a real kube-apiserver and etcd from envtest, the agent as
// its own process built from ./cmd/sidewall-agent), with 100
// ContainerNetworkPolicies selecting the churned pods' log-shipper sidecar,
// it runs 1,000 pod create/delete cycles with a few workers at once and
// then checks:
//
//   - no missed reconcile: every churned pod's sidecar cgroup got its own
//     classification in the pinned containers map before the pod was
//     deleted, and the resident pods are still classified at the end;
//   - no leaked attachment: every removed pod's cgroup directories are gone,
//     and neither the agent's pinned links (Datapath.Attached) nor the
//     containers map hold the id of a removed cgroup;
//   - the datapath maps' entry counts and the attached cgroups return to the
//     baseline taken before the churn, and the agent's goroutines return to
//     it within a small tolerance; the agent's resident memory growth is
//     reported.
//
// The figures (cycles per second, time, baseline against end for every
// measure) are printed; the program exits non-zero on a leak, a missed
// reconcile or when the cycles do not finish within -timeout.
//
// The pods run WithoutNetwork and without processes: only the API objects
// and the cgroups matter to the agent.
//
//	go run ./hack/bench/churn -agent bin/sidewall-agent
//	go run ./hack/bench/churn -cycles 100 -policies 10
package main
