// Package nettest builds real test "pods" for kernel tests: cgroup v2
// directories, network namespaces joined by veth pairs, and real processes
// started in a cgroup before they enter a namespace (`ip netns exec`
// remounts /sys, so the cgroup move comes first).
//
// It also carries a tiny traffic helper (connect, serve, ping) that a test
// binary runs as a child process: call [MaybeRunHelper] first thing in
// TestMain. Everything is created under unique names and removed with
// t.Cleanup, also when a test fails. The node agent's local-node harness
// reuses it.
package nettest
