package controller

import "testing"

// The failing direction, a cluster without Cilium's CRDs, is tested on the
// binary in cmd/sidewall-controller, which must exit 1 and say why.
func TestCheckCiliumCRDsPresent(t *testing.T) {
	requireEnv(t)
	if err := CheckCiliumCRDs(env.Config); err != nil {
		t.Fatalf("CheckCiliumCRDs on a cluster with Cilium's CRDs: %v", err)
	}
}
