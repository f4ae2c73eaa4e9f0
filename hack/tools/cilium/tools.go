//go:build tools

// Package tools pins the Cilium agent, its CNI plugin and Hubble Relay for
// `make cilium-tools`, at the cilium version sidewall's go.mod requires, so
// the Cilium node of the tests runs the Cilium sidewall is built against.
package tools

import (
	_ "github.com/cilium/cilium/daemon"
	_ "github.com/cilium/cilium/plugins/cilium-cni"
)
