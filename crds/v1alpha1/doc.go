// Package v1alpha1 holds the sidewall.io/v1alpha1 API: ContainerNetworkPolicy,
// a network policy whose subject is a set of containers inside the pods it
// selects rather than the whole pod.
//
// The rule types reuse Cilium's policy types (github.com/cilium/cilium/pkg/policy/api)
// so users write peers, ports and L7 HTTP rules exactly as in a
// CiliumNetworkPolicy. Fields that sidewall cannot enforce per container are
// kept in the schema only so that admission can reject them with a message that
// names them, instead of pruning them silently.
//
// +kubebuilder:object:generate=true
// +groupName=sidewall.io
package v1alpha1
