// Command sidewall-controller turns every ContainerNetworkPolicy into the
// CiliumNetworkPolicy that Cilium enforces at pod level, keeps that CNP as
// written (a hand edit or deletion is repaired) and reports in each policy's
// status whether it was accepted and translated, and how many pods and
// containers it selects.
//
// It refuses to start, exiting 1, when the cluster does not serve Cilium's
// CiliumNetworkPolicy resource.
package main
