// Package translator turns ContainerNetworkPolicies into what enforces them,
// with pure functions and no client:
//
//   - ToCNP: the CiliumNetworkPolicy that makes Cilium let the selected
//     containers' traffic through the pod and enforce their L7 HTTP rules;
//   - ToRuleSet: the normalized per-container rule set that the node agent
//     compiles into BPF maps;
//   - Validate: what the CRD schema cannot check, with field paths;
//   - Analyze and Status: selected pods and containers, unknown container
//     names, L7 precision, and the status conditions the controller writes.
//
// The semantics are in docs/semantics.md. The controller is in the controller
// subpackage.
package translator
