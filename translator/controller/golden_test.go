package controller

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	ciliumv2 "github.com/cilium/cilium/pkg/k8s/apis/cilium.io/v2"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/yaml"

	"github.com/sidewall/sidewall/crds/v1alpha1"
	"github.com/sidewall/sidewall/hack/harness/testenv"
)

// goldenCase is one directory of the translator's golden cases
// (translator/testdata/cases), replayed against the real API server.
type goldenCase struct {
	name      string
	ns        string
	admission string // "# admission:" header: "accepted" or the expected message
	validate  string // "# validate:" header: the field Validate names
	policies  []*v1alpha1.ContainerNetworkPolicy
	pods      []*corev1.Pod
	nsLabels  map[string]string             // the case's Namespace labels, put on the test's
	cnp       *ciliumv2.CiliumNetworkPolicy // nil when no CNP is expected
	status    *v1alpha1.ContainerNetworkPolicyStatus
}

// TestGoldenCasesOnAPIServer sends every golden case of the translator
// through the real kube-apiserver with the real CRDs and the running
// controller, and checks that admission refuses what the case says it
// refuses (with its message), and that for the rest the controller writes
// the golden CNP and status. This catches what unit tests cannot: schema
// pruning or defaulting that changes a policy on its way in, and a CNP the
// real CNP CRD would not store.
func TestGoldenCasesOnAPIServer(t *testing.T) {
	requireEnv(t)
	dirs, err := filepath.Glob("../testdata/cases/*")
	if err != nil || len(dirs) == 0 {
		t.Fatalf("no golden cases under translator/testdata/cases (%v)", err)
	}
	var cases []*goldenCase
	var namespaces []string
	for _, dir := range dirs {
		c := loadGoldenCase(t, dir)
		c.ns = env.Namespace(t, "golden-"+c.name)
		c.localize()
		namespaces = append(namespaces, c.ns)
		cases = append(cases, c)
	}
	env.StartManager(t, func(mgr manager.Manager) error {
		return SetupWithManager(mgr, Options{})
	}, testenv.ManagerOptions{Namespaces: namespaces, Configure: ConfigureManager})

	for _, c := range cases {
		if len(c.nsLabels) > 0 {
			var ns corev1.Namespace
			if err := env.Client.Get(ctx, client.ObjectKey{Name: c.ns}, &ns); err != nil {
				t.Fatal(err)
			}
			if ns.Labels == nil {
				ns.Labels = map[string]string{}
			}
			for k, v := range c.nsLabels {
				ns.Labels[k] = v
			}
			if err := env.Client.Update(ctx, &ns); err != nil {
				t.Fatalf("label namespace %s: %v", c.ns, err)
			}
		}
		for _, pod := range c.pods {
			createPod(t, c.ns, pod)
		}
		for i, p := range c.policies {
			p.Namespace = c.ns
			if i == 0 && c.admission != "" && c.admission != "accepted" {
				t.Run(c.name, func(t *testing.T) {
					err := env.Client.Create(ctx, p)
					if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), c.admission) {
						t.Errorf("admission: got %v, want Invalid containing %q", err, c.admission)
					}
				})
				break
			}
			if err := env.Client.Create(ctx, p); err != nil {
				t.Errorf("%s: create policy %s: %v", c.name, p.Name, err)
			}
		}
	}

	for _, c := range cases {
		if c.admission != "" && c.admission != "accepted" {
			continue
		}
		t.Run(c.name, func(t *testing.T) {
			subject := c.policies[0]
			if c.admission == "accepted" {
				// Admission cannot check it; the controller refuses it
				// in status, naming the field, and generates nothing.
				p := waitCondition(t, c.ns, subject.Name, v1alpha1.ConditionAccepted, metav1.ConditionFalse, v1alpha1.ReasonInvalid)
				if msg := cond(p, v1alpha1.ConditionAccepted).Message; !strings.Contains(msg, c.validate) {
					t.Errorf("Accepted message %q does not name %s", msg, c.validate)
				}
				if _, err := getCNP(c.ns, subject.Name); !apierrors.IsNotFound(err) {
					t.Errorf("CNP of an invalid policy: %v, want NotFound", err)
				}
				return
			}

			p := waitCondition(t, c.ns, subject.Name, v1alpha1.ConditionTranslated, metav1.ConditionTrue, translatedReason(c))
			if c.cnp == nil {
				if _, err := getCNP(c.ns, subject.Name); !apierrors.IsNotFound(err) {
					t.Errorf("CNP: %v, want none (the golden case has none)", err)
				}
			} else {
				live, err := getCNP(c.ns, subject.Name)
				if err != nil {
					t.Fatalf("CNP: %v", err)
				}
				if !sameJSON(live.Spec, c.cnp.Spec) || !sameJSON(live.Specs, c.cnp.Specs) {
					t.Errorf("CNP spec differs from the golden file\n got: %s\nwant: %s", jsonOf(live.Spec), jsonOf(c.cnp.Spec))
				}
				if !reflect.DeepEqual(live.Labels, c.cnp.Labels) {
					t.Errorf("CNP labels %v, want %v", live.Labels, c.cnp.Labels)
				}
			}
			if c.status == nil {
				return
			}
			// Wait for the status the golden file has: pods and other
			// policies may arrive after the first reconcile.
			eventually(t, "golden status", func() error {
				p = getPolicy(t, c.ns, subject.Name)
				return statusDiff(p, c.status)
			})
		})
	}
}

func translatedReason(c *goldenCase) string {
	if c.cnp == nil {
		return v1alpha1.ReasonNotNeeded
	}
	return v1alpha1.ReasonGenerated
}

// statusDiff compares what the golden status fixes: counts, the generated
// CNP's name, and each condition's status, reason and message.
func statusDiff(p *v1alpha1.ContainerNetworkPolicy, want *v1alpha1.ContainerNetworkPolicyStatus) error {
	got := &p.Status
	if got.ObservedGeneration != p.Generation {
		return fmt.Errorf("observedGeneration %d, generation %d", got.ObservedGeneration, p.Generation)
	}
	if got.SelectedPods != want.SelectedPods || got.SelectedContainers != want.SelectedContainers ||
		got.GeneratedPolicy != want.GeneratedPolicy || got.ContainerSummary != want.ContainerSummary {
		return fmt.Errorf("status pods %d containers %d generatedPolicy %q summary %q, want %d %d %q %q",
			got.SelectedPods, got.SelectedContainers, got.GeneratedPolicy, got.ContainerSummary,
			want.SelectedPods, want.SelectedContainers, want.GeneratedPolicy, want.ContainerSummary)
	}
	for _, w := range want.Conditions {
		c := meta.FindStatusCondition(got.Conditions, w.Type)
		if c == nil || c.Status != w.Status || c.Reason != w.Reason || c.Message != w.Message {
			return fmt.Errorf("condition %s is %+v, want %s/%s %q", w.Type, c, w.Status, w.Reason, w.Message)
		}
	}
	return nil
}

func loadGoldenCase(t *testing.T, dir string) *goldenCase {
	t.Helper()
	c := &goldenCase{name: filepath.Base(dir)}
	input := filepath.Join(dir, "input.yaml")
	raw, err := os.ReadFile(input)
	if err != nil {
		t.Fatalf("read %s: %v", input, err)
	}
	sc := bufio.NewScanner(strings.NewReader(string(raw)))
	for sc.Scan() {
		line := sc.Text()
		if v, ok := strings.CutPrefix(line, "# admission:"); ok {
			c.admission = strings.TrimSpace(v)
		}
		if v, ok := strings.CutPrefix(line, "# validate:"); ok {
			c.validate = strings.TrimSpace(v)
		}
	}
	for _, doc := range splitYAML(string(raw)) {
		u := &unstructured.Unstructured{}
		if err := yaml.Unmarshal([]byte(doc), &u.Object); err != nil {
			t.Fatalf("%s: %v", input, err)
		}
		if u.Object == nil {
			continue
		}
		// The case's namespace and identity are replaced by the test's.
		unstructured.RemoveNestedField(u.Object, "metadata", "uid")
		unstructured.RemoveNestedField(u.Object, "metadata", "namespace")
		js, err := json.Marshal(u.Object)
		if err != nil {
			t.Fatal(err)
		}
		switch u.GetKind() {
		case "ContainerNetworkPolicy":
			p := &v1alpha1.ContainerNetworkPolicy{}
			if err := json.Unmarshal(js, p); err != nil {
				t.Fatalf("%s: decode policy: %v", input, err)
			}
			c.policies = append(c.policies, p)
		case "Pod":
			pod := &corev1.Pod{}
			if err := json.Unmarshal(js, pod); err != nil {
				t.Fatalf("%s: decode pod: %v", input, err)
			}
			c.pods = append(c.pods, pod)
		case "Namespace":
			c.nsLabels = u.GetLabels()
		default:
			t.Fatalf("%s: unexpected kind %q", input, u.GetKind())
		}
	}
	if len(c.policies) == 0 {
		t.Fatalf("%s: no ContainerNetworkPolicy", input)
	}

	if raw, err := os.ReadFile(filepath.Join(dir, "cnp.yaml")); err == nil {
		cnp := &ciliumv2.CiliumNetworkPolicy{}
		if err := yaml.Unmarshal(raw, cnp); err != nil {
			t.Fatalf("%s/cnp.yaml: %v", dir, err)
		}
		if cnp.Kind != "" {
			c.cnp = cnp
		}
	}
	if raw, err := os.ReadFile(filepath.Join(dir, "analysis.yaml")); err == nil {
		var golden struct {
			Status *v1alpha1.ContainerNetworkPolicyStatus `json:"status"`
		}
		if err := yaml.Unmarshal(raw, &golden); err != nil {
			t.Fatalf("%s/analysis.yaml: %v", dir, err)
		}
		c.status = golden.Status
	}
	return c
}

// localize rewrites the golden case's namespace "shop" to the test's.
func (c *goldenCase) localize() {
	if c.cnp != nil && c.cnp.Spec != nil {
		// The namespace is in the description and in the complement's
		// negated selectors.
		raw, err := json.Marshal(c.cnp.Spec)
		if err == nil {
			raw = []byte(strings.ReplaceAll(strings.ReplaceAll(string(raw), `"shop"`, `"`+c.ns+`"`), " shop/", " "+c.ns+"/"))
			_ = json.Unmarshal(raw, c.cnp.Spec)
		}
	}
	if c.status != nil {
		for i := range c.status.Conditions {
			c.status.Conditions[i].Message = strings.ReplaceAll(c.status.Conditions[i].Message, "shop", c.ns)
		}
	}
}

func splitYAML(s string) []string {
	var docs []string
	for _, d := range strings.Split("\n"+s, "\n---") {
		if strings.TrimSpace(d) != "" {
			docs = append(docs, d)
		}
	}
	return docs
}

// createPod creates a golden pod; ephemeral containers cannot be set on
// create, so they are added afterwards through their subresource.
func createPod(t *testing.T, ns string, pod *corev1.Pod) {
	t.Helper()
	pod.Namespace = ns
	ephemeral := pod.Spec.EphemeralContainers
	pod.Spec.EphemeralContainers = nil
	if err := env.Client.Create(ctx, pod); err != nil {
		t.Fatalf("create pod %s: %v", pod.Name, err)
	}
	if len(ephemeral) > 0 {
		pod.Spec.EphemeralContainers = ephemeral
		if err := env.Client.SubResource("ephemeralcontainers").Update(ctx, pod); err != nil {
			t.Fatalf("add ephemeral containers to %s: %v", pod.Name, err)
		}
	}
}

func jsonOf(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
