package e2e

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/cilium/pkg/k8s/client/clientset/versioned"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/sidewall/sidewall/crds/v1alpha1"
	"github.com/sidewall/sidewall/hack/harness"
	"github.com/sidewall/sidewall/hack/harness/agentnode"
	"github.com/sidewall/sidewall/translator"
)

// TestCiliumImportsGoldenCNPs gives a real cilium-agent, with its L7 proxy
// on as in a cluster, the CNP the controller generates for every golden
// case of translator/testdata/cases (HTTP rules and their complement
// included), and fails with Cilium's own message for any it refuses.
func TestCiliumImportsGoldenCNPs(t *testing.T) {
	n := agentnode.New(t, agentnode.Options{Prefix: "e2egold", CiliumNode: true, CiliumL7Proxy: true})
	cc, err := versioned.NewForConfig(n.Env.Config)
	if err != nil {
		t.Fatal(err)
	}
	root, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	inputs, err := filepath.Glob(filepath.Join(root, "translator", "testdata", "cases", "*", "input.yaml"))
	if err != nil || len(inputs) == 0 {
		t.Fatalf("no golden cases (%v)", err)
	}
	imported := 0
	for _, in := range inputs {
		name := filepath.Base(filepath.Dir(in))
		if strings.HasPrefix(name, "reject-") {
			continue
		}
		raw, err := os.ReadFile(in)
		if err != nil {
			t.Fatal(err)
		}
		doc, _, _ := bytes.Cut(raw, []byte("\n---\n"))
		var p v1alpha1.ContainerNetworkPolicy
		if err := yaml.UnmarshalStrict(doc, &p); err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		p.Namespace = n.Namespace
		cnp, err := translator.ToCNP(&p)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if cnp == nil {
			continue
		}
		cnp.OwnerReferences = nil // no ContainerNetworkPolicy object here
		start := time.Now()
		if _, err := cc.CiliumV2().CiliumNetworkPolicies(n.Namespace).Create(context.Background(), cnp, metav1.CreateOptions{}); err != nil {
			t.Errorf("%s: the API server refuses the CNP: %v", name, err)
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err = n.Local.WaitCiliumPolicy(ctx, n.Namespace, cnp.Name, start)
		cancel()
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		imported++
	}
	t.Logf("cilium-agent imported the CNPs of %d golden cases", imported)
}
