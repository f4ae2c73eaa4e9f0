// Package harness holds what the tests, the benchmarks and the demo share to
// run sidewall on this machine: the repository's tools (this package), a real
// kube-apiserver and etcd (testenv), a kubelet-like local node with real
// cgroups and network namespaces (localnode), a test's running node agent
// on such a node (agentnode), veth/netns test pods (nettest), process
// measurements (proc), and the gates for privileged and integration tests
// (RequirePrivileged, RequireIntegration). Only the demos live in demo/.
package harness
