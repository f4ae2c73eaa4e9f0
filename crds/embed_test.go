package crds_test

import (
	"context"
	"testing"

	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/validation"

	"github.com/sidewall/sidewall/crds"
)

// TestCRDValid runs the apiserver's own CRD validation on the embedded CRD
// offline. It includes the static cost estimate of every CEL rule, which is
// what refuses a CRD whose rules sit under unbounded lists.
func TestCRDValid(t *testing.T) {
	crd, err := crds.ContainerNetworkPolicyCRD()
	if err != nil {
		t.Fatal(err)
	}
	internal := &apiextensions.CustomResourceDefinition{}
	if err := apiextensionsv1.Convert_v1_CustomResourceDefinition_To_apiextensions_CustomResourceDefinition(crd, internal, nil); err != nil {
		t.Fatalf("convert crd: %v", err)
	}
	// A stored CRD always has its storage version recorded; a freshly
	// generated one does not.
	internal.Status.StoredVersions = []string{"v1alpha1"}
	if errs := validation.ValidateCustomResourceDefinition(context.Background(), internal); len(errs) > 0 {
		for _, e := range errs {
			t.Errorf("%v", e)
		}
	}
}
