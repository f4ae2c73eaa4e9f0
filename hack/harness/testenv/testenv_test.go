package testenv

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"

	ciliumv2 "github.com/cilium/cilium/pkg/k8s/apis/cilium.io/v2"
	"github.com/cilium/cilium/pkg/policy/api"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/sidewall/sidewall/crds/v1alpha1"
)

func TestEnvServesSidewallAndCiliumCRDs(t *testing.T) {
	env := New(t, Options{})
	ctx := context.Background()

	for _, name := range []string{
		"containernetworkpolicies.sidewall.io",
		"ciliumnetworkpolicies.cilium.io",
		"ciliumclusterwidenetworkpolicies.cilium.io",
		"ciliumendpoints.cilium.io",
		"ciliumidentities.cilium.io",
	} {
		crd := &apiextensionsv1.CustomResourceDefinition{}
		if err := env.Client.Get(ctx, types.NamespacedName{Name: name}, crd); err != nil {
			t.Errorf("CRD %s: %v", name, err)
		}
	}

	// The client's scheme knows both APIs, and the apiserver serves them.
	ns := env.Namespace(t, t.Name())
	var policies v1alpha1.ContainerNetworkPolicyList
	if err := env.Client.List(ctx, &policies); err != nil {
		t.Errorf("list ContainerNetworkPolicies: %v", err)
	}

	// The real CNP schema is installed: it refuses a protocol it does not know.
	bad := &ciliumv2.CiliumNetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "bogus", Namespace: ns},
		Spec: &api.Rule{
			EndpointSelector: api.NewESFromLabels(),
			Egress: []api.EgressRule{{ToPorts: api.PortRules{{
				Ports: []api.PortProtocol{{Port: "80", Protocol: "BOGUS"}},
			}}}},
		},
	}
	err := env.Client.Create(ctx, bad)
	if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "protocol") {
		t.Errorf("create CNP with protocol BOGUS: got %v, want Invalid naming protocol", err)
	}

	// The kubeconfig file reaches the same apiserver.
	cfg, err := clientcmd.BuildConfigFromFlags("", env.Kubeconfig)
	if err != nil {
		t.Fatalf("load kubeconfig %s: %v", env.Kubeconfig, err)
	}
	if strings.TrimSuffix(cfg.Host, "/") != strings.TrimSuffix(env.Config.Host, "/") {
		t.Errorf("kubeconfig host %s, want %s", cfg.Host, env.Config.Host)
	}
}

func TestEnvWithoutCiliumCRDs(t *testing.T) {
	env := New(t, Options{SkipCiliumCRDs: true})
	crd := &apiextensionsv1.CustomResourceDefinition{}
	err := env.Client.Get(context.Background(), types.NamespacedName{Name: "ciliumnetworkpolicies.cilium.io"}, crd)
	if !apierrors.IsNotFound(err) {
		t.Errorf("get CNP CRD: got %v, want NotFound", err)
	}
	if err := env.Client.Get(context.Background(), types.NamespacedName{Name: "containernetworkpolicies.sidewall.io"}, crd); err != nil {
		t.Errorf("get sidewall CRD: %v", err)
	}
}

func TestStopRemovesKubeconfig(t *testing.T) {
	env, err := Start(Options{SkipCiliumCRDs: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(env.Kubeconfig); err != nil {
		t.Fatalf("kubeconfig: %v", err)
	}
	if err := env.Stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if err := env.Stop(); err != nil {
		t.Errorf("second stop: %v", err)
	}
	if _, err := os.Stat(env.Kubeconfig); !os.IsNotExist(err) {
		t.Errorf("kubeconfig still there after Stop: %v", err)
	}
}

func TestMissingBinariesNameMakeTools(t *testing.T) {
	t.Setenv("KUBEBUILDER_ASSETS", t.TempDir())
	_, err := Start(Options{})
	if !errors.Is(err, ErrBinariesMissing) {
		t.Fatalf("Start with empty KUBEBUILDER_ASSETS: got %v, want ErrBinariesMissing", err)
	}
	if !strings.Contains(err.Error(), "make tools") {
		t.Errorf("error %q does not tell the reader to run `make tools`", err)
	}
}
