package translator

import (
	"os"
	"path/filepath"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/sidewall/sidewall/crds/v1alpha1"
)

// FuzzTranslate feeds arbitrary policy YAML to the translator: it must never
// panic, and every CNP it returns must pass Cilium's Sanitize and Cilium's CNP
// CRD schema. The seed corpus is every test case's input plus
// testdata/fuzz/FuzzTranslate.
func FuzzTranslate(f *testing.F) {
	inputs, _ := filepath.Glob("testdata/cases/*/input.yaml")
	for _, in := range inputs {
		data, err := os.ReadFile(in)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(splitDocs(data)[0])
	}
	cnpCRD := cnpValidator(f)
	pods := findCase(f, "l7-shared-port").pods

	f.Fuzz(func(t *testing.T, data []byte) {
		p := &v1alpha1.ContainerNetworkPolicy{}
		if err := yaml.Unmarshal(data, p); err != nil {
			return
		}
		errs := Validate(p)
		cnp, cnpErr := ToCNP(p)
		rs, rsErr := ToRuleSet(p)
		if len(errs) > 0 {
			if cnpErr == nil || rsErr == nil {
				t.Fatalf("Validate refused the policy (%v) but ToCNP/ToRuleSet did not: %v, %v", errs.ToAggregate(), cnpErr, rsErr)
			}
			return
		}
		if cnpErr != nil {
			t.Fatalf("ToCNP refused a valid policy: %v", cnpErr)
		}
		if rsErr != nil || rs == nil {
			t.Fatalf("ToRuleSet refused a valid policy: %v", rsErr)
		}
		if cnp != nil {
			if err := SanitizeCNP(cnp); err != nil {
				t.Fatalf("generated CNP fails Sanitize: %v", err)
			}
			if err := checkCNPSchema(cnpCRD, cnp); err != nil {
				t.Fatal(err)
			}
		}
		p.Namespace = "shop"
		_ = Analyze(p, nil, pods, []v1alpha1.ContainerNetworkPolicy{*p})
	})
}
