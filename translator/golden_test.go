package translator

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/sidewall/sidewall/crds/v1alpha1"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/cases")

// testCase is one directory under testdata/cases: input.yaml holds the policy
// under test, then optionally Pods, other policies of the namespace and the
// Namespace itself (for its labels).
// Rejected cases start with "# validate: <text>" (a text Validate's errors
// must contain) and "# admission: <text>" (a text the apiserver's refusal
// must contain, or "accepted" when only Validate catches the error).
type testCase struct {
	name      string
	dir       string
	policy    *v1alpha1.ContainerNetworkPolicy
	others    []v1alpha1.ContainerNetworkPolicy
	pods      []corev1.Pod
	namespace *corev1.Namespace
	validate  string
	admission string
}

func loadCases(t testing.TB) []testCase {
	t.Helper()
	dirs, err := filepath.Glob("testdata/cases/*/input.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var out []testCase
	for _, in := range dirs {
		dir := filepath.Dir(in)
		tc := testCase{name: filepath.Base(dir), dir: dir}
		data, err := os.ReadFile(in)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(line, "# validate: "); ok {
				tc.validate = v
			}
			if v, ok := strings.CutPrefix(line, "# admission: "); ok {
				tc.admission = v
			}
		}
		for i, doc := range splitDocs(data) {
			var tm metav1.TypeMeta
			if err := yaml.Unmarshal(doc, &tm); err != nil {
				t.Fatalf("%s doc %d: %v", in, i, err)
			}
			switch tm.Kind {
			case "ContainerNetworkPolicy":
				p := &v1alpha1.ContainerNetworkPolicy{}
				if err := yaml.UnmarshalStrict(doc, p); err != nil {
					t.Fatalf("%s doc %d: %v", in, i, err)
				}
				if tc.policy == nil {
					tc.policy = p
				} else {
					tc.others = append(tc.others, *p)
				}
			case "Pod":
				pod := corev1.Pod{}
				if err := yaml.UnmarshalStrict(doc, &pod); err != nil {
					t.Fatalf("%s doc %d: %v", in, i, err)
				}
				tc.pods = append(tc.pods, pod)
			case "Namespace":
				tc.namespace = &corev1.Namespace{}
				if err := yaml.UnmarshalStrict(doc, tc.namespace); err != nil {
					t.Fatalf("%s doc %d: %v", in, i, err)
				}
			default:
				t.Fatalf("%s doc %d: unexpected kind %q", in, i, tm.Kind)
			}
		}
		if tc.policy == nil {
			t.Fatalf("%s: no ContainerNetworkPolicy", in)
		}
		out = append(out, tc)
	}
	if len(out) < 20 {
		t.Fatalf("found %d cases under testdata/cases, want at least 20", len(out))
	}
	return out
}

func splitDocs(data []byte) [][]byte {
	var out [][]byte
	for _, d := range bytes.Split(data, []byte("\n---\n")) {
		if len(bytes.TrimSpace(d)) > 0 {
			out = append(out, d)
		}
	}
	return out
}

// golden compares got with the file, or rewrites the file under -update.
func golden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./translator -run TestGolden -update)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the output (run with -update to accept):\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

func toYAML(t *testing.T, v any) []byte {
	t.Helper()
	b, err := yaml.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// removeStale deletes a golden file an earlier version of a case produced.
func removeStale(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Stat(path); err == nil {
		if !*update {
			t.Errorf("%s exists but the case produces no such output (run with -update)", path)
			return
		}
		os.Remove(path)
	}
}

func TestGolden(t *testing.T) {
	ourCRD := sidewallValidator(t)
	cnpCRD := cnpValidator(t)
	for _, tc := range loadCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			p := tc.policy
			errs := Validate(p)
			admErrs, pruned := ourCRD.validate(p)
			if len(pruned) > 0 {
				t.Errorf("our CRD schema would drop fields %v of the input", pruned)
			}
			if strings.HasPrefix(tc.name, "reject-") {
				if tc.validate == "" || tc.admission == "" {
					t.Fatal("a reject- case needs # validate: and # admission: lines")
				}
				if len(errs) == 0 {
					t.Fatalf("Validate accepted the policy, want an error containing %q", tc.validate)
				}
				if msg := errs.ToAggregate().Error(); !strings.Contains(msg, tc.validate) {
					t.Errorf("Validate error %q does not contain %q", msg, tc.validate)
				}
				if tc.admission == "accepted" {
					if len(admErrs) > 0 {
						t.Errorf("CRD schema refuses the policy, the case says it is accepted: %v", admErrs.ToAggregate())
					}
				} else if len(admErrs) == 0 {
					t.Errorf("CRD schema accepts the policy, want a refusal containing %q", tc.admission)
				} else if msg := admErrs.ToAggregate().Error(); !strings.Contains(msg, tc.admission) {
					t.Errorf("CRD schema refusal %q does not contain %q", msg, tc.admission)
				}
				if cnp, err := ToCNP(p); err == nil || cnp != nil {
					t.Errorf("ToCNP of an invalid policy = %v, %v; want nil and an error", cnp, err)
				}
				if rs, err := ToRuleSet(p); err == nil || rs != nil {
					t.Errorf("ToRuleSet of an invalid policy = %v, %v; want nil and an error", rs, err)
				}
				var b strings.Builder
				for _, e := range errs {
					b.WriteString(e.Error() + "\n")
				}
				golden(t, filepath.Join(tc.dir, "error.txt"), []byte(b.String()))
				removeStale(t, filepath.Join(tc.dir, "cnp.yaml"))
				removeStale(t, filepath.Join(tc.dir, "ruleset.yaml"))
				return
			}

			if len(errs) > 0 {
				t.Fatalf("Validate: %v", errs.ToAggregate())
			}
			if len(admErrs) > 0 {
				t.Errorf("CRD schema refuses a valid policy: %v", admErrs.ToAggregate())
			}
			// As the controller generates it: no other policy
			// default-denies the pods, and the case's other policies
			// with HTTP rules that select its pods are siblings.
			cnp, l7, err := ToCNPWith(p, CNPOptions{Siblings: siblings(t, p, tc)})
			if err != nil {
				t.Fatalf("ToCNP: %v", err)
			}
			if cnp == nil {
				golden(t, filepath.Join(tc.dir, "cnp.yaml"), []byte("# no CiliumNetworkPolicy is generated for this policy\n"))
			} else {
				if err := SanitizeCNP(cnp); err != nil {
					t.Errorf("generated CNP fails Cilium's Sanitize: %v", err)
				}
				if err := checkCNPSchema(cnpCRD, cnp); err != nil {
					t.Error(err)
				}
				golden(t, filepath.Join(tc.dir, "cnp.yaml"), toYAML(t, cnp))
			}
			rs, err := ToRuleSet(p)
			if err != nil {
				t.Fatalf("ToRuleSet: %v", err)
			}
			golden(t, filepath.Join(tc.dir, "ruleset.yaml"), toYAML(t, rs))

			analysisPath := filepath.Join(tc.dir, "analysis.yaml")
			if len(tc.pods) == 0 && len(tc.others) == 0 {
				removeStale(t, analysisPath)
				return
			}
			a := Analyze(p, tc.namespace, tc.pods, append(tc.others, *p))
			st := Status(p, StatusInput{CNPName: cnpName(cnp), Analysis: a, L7Message: l7.Message()})
			for i := range st.Conditions {
				st.Conditions[i].LastTransitionTime = metav1.Time{}
			}
			golden(t, analysisPath, toYAML(t, struct {
				Analysis Analysis                              `json:"analysis"`
				Status   v1alpha1.ContainerNetworkPolicyStatus `json:"status"`
			}{a, st}))
		})
	}
}

// siblings are the case's other policies with HTTP rules that select one
// of its pods, as the controller finds them.
func siblings(t *testing.T, p *v1alpha1.ContainerNetworkPolicy, tc testCase) []*RuleSet {
	t.Helper()
	var out []*RuleSet
	for i := range tc.others {
		o := &tc.others[i]
		rs, err := ToRuleSet(o)
		if err != nil || len(l7Pairs(rs, Egress))+len(l7Pairs(rs, Ingress)) == 0 {
			continue
		}
		for j := range tc.pods {
			if SelectsPod(rs.PodSelector, &tc.pods[j], tc.namespace) {
				out = append(out, rs)
				break
			}
		}
	}
	return out
}

func cnpName(cnp interface{ GetName() string }) string {
	if cnp == nil {
		return ""
	}
	return cnp.GetName()
}
