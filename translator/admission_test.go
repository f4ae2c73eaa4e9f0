package translator

import (
	"context"
	"strings"
	"testing"

	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sidewall/sidewall/hack/harness/testenv"
)

// TestAdmission creates every test case's policy on a real kube-apiserver
// with sidewall's and Cilium's CRDs installed. Rejected cases must be refused
// at admission with the text their "# admission:" line names (or accepted,
// when only Validate can catch the error); every other case must be accepted
// and so must the CiliumNetworkPolicy ToCNP generates from it, by Cilium's
// real CNP CRD schema.
func TestAdmission(t *testing.T) {
	env := testenv.New(t, testenv.Options{})
	ns := env.Namespace(t, "admission")
	ctx := context.Background()
	strict := client.FieldValidation("Strict")

	for _, tc := range loadCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			p := tc.policy.DeepCopy()
			p.Namespace = ns
			p.UID = ""
			err := env.Client.Create(ctx, p, strict)
			if strings.HasPrefix(tc.name, "reject-") && tc.admission != "accepted" {
				if err == nil {
					t.Fatalf("apiserver accepted the policy, want a refusal containing %q", tc.admission)
				}
				t.Logf("refused: %v", err)
				if !strings.Contains(err.Error(), tc.admission) {
					t.Errorf("apiserver refusal %q does not contain %q", err, tc.admission)
				}
				return
			}
			if err != nil {
				t.Fatalf("apiserver refused the policy: %v", err)
			}
			if strings.HasPrefix(tc.name, "reject-") {
				if errs := Validate(p); len(errs) == 0 {
					t.Error("Validate accepts the stored policy; the status would not report the error")
				}
				return
			}
			if p.Spec.Mode == "" {
				t.Error("apiserver did not default spec.mode")
			}
			cnp, err := ToCNP(p)
			if err != nil {
				t.Fatalf("ToCNP of the stored policy: %v", err)
			}
			if cnp == nil {
				return
			}
			if err := env.Client.Create(ctx, cnp, strict); err != nil {
				t.Fatalf("Cilium's CNP CRD refused the generated policy: %v", err)
			}
		})
	}
}
