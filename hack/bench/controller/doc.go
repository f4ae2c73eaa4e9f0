// Command controller measures how long sidewall-controller takes to turn
// 1,000 ContainerNetworkPolicies into 1,000 CiliumNetworkPolicies on a real
// kube-apiserver and etcd (envtest, with Cilium's real CNP CRD), and the
// controller's peak memory.
//
// The controller runs as its own process, built from ./cmd/sidewall-controller,
// so the memory figure is the kernel's peak resident set (VmHWM) of that
// process alone, not of this program or the API server. The clock starts
// before the first policy is created and stops when every policy has a CNP
// that passes Cilium's parser and a Ready condition for its generation.
//
//	go run ./hack/bench/controller            # 1,000 policies in 20 namespaces
//	go run ./hack/bench/controller -policies 200 -namespaces 4
package main
