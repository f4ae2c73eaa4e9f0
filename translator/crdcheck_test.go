package translator

import (
	"context"
	"fmt"
	"io/fs"
	"testing"

	ciliumcrds "github.com/cilium/cilium/pkg/k8s/apis/cilium.io/client/crds/v2"
	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	structuralschema "k8s.io/apiextensions-apiserver/pkg/apiserver/schema"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/cel"
	structuraldefaulting "k8s.io/apiextensions-apiserver/pkg/apiserver/schema/defaulting"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/pruning"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/validation"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation/field"
	apiservercel "k8s.io/apiserver/pkg/apis/cel"
	"sigs.k8s.io/yaml"

	"github.com/sidewall/sidewall/crds"
)

// crdValidator validates objects offline with the apiserver's own code for
// custom resources: OpenAPI schema, unknown-field pruning, defaults and CEL
// rules. The envtest tests do the same against a real kube-apiserver; this one
// runs in every unit test case and fuzz input.
type crdValidator struct {
	schema     validation.SchemaValidator
	structural *structuralschema.Structural
	cel        *cel.Validator
}

func newCRDValidator(t testing.TB, crd *apiextensionsv1.CustomResourceDefinition) *crdValidator {
	t.Helper()
	internal := &apiextensions.CustomResourceDefinition{}
	if err := apiextensionsv1.Convert_v1_CustomResourceDefinition_To_apiextensions_CustomResourceDefinition(crd, internal, nil); err != nil {
		t.Fatalf("convert crd %s: %v", crd.Name, err)
	}
	var props *apiextensions.JSONSchemaProps
	// The conversion hoists a schema shared by all versions to spec.validation.
	if internal.Spec.Validation != nil {
		props = internal.Spec.Validation.OpenAPIV3Schema
	}
	for _, v := range internal.Spec.Versions {
		if v.Storage && v.Schema != nil {
			props = v.Schema.OpenAPIV3Schema
		}
	}
	if props == nil {
		t.Fatalf("crd %s has no storage version schema", crd.Name)
	}
	sv, _, err := validation.NewSchemaValidator(props)
	if err != nil {
		t.Fatalf("schema validator for %s: %v", crd.Name, err)
	}
	st, err := structuralschema.NewStructural(props)
	if err != nil {
		t.Fatalf("structural schema for %s: %v", crd.Name, err)
	}
	return &crdValidator{schema: sv, structural: st, cel: cel.NewValidator(st, true, apiservercel.PerCallLimit)}
}

// validate returns the errors the apiserver would give on create, and the
// fields it would drop as unknown.
func (v *crdValidator) validate(obj any) (field.ErrorList, []string) {
	u, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		return field.ErrorList{field.InternalError(nil, err)}, nil
	}
	return v.validateMap(u)
}

func (v *crdValidator) validateMap(u map[string]any) (field.ErrorList, []string) {
	pruned := pruning.PruneWithOptions(u, v.structural, true, structuralschema.UnknownFieldPathOptions{TrackUnknownFieldPaths: true})
	structuraldefaulting.Default(u, v.structural)
	errs := validation.ValidateCustomResource(nil, u, v.schema)
	if len(errs) > 0 {
		// The apiserver skips CEL rules when the schema already failed.
		return errs, pruned
	}
	celErrs, _ := v.cel.Validate(context.Background(), nil, v.structural, u, nil, apiservercel.RuntimeCELCostBudget)
	return celErrs, pruned
}

func sidewallValidator(t testing.TB) *crdValidator {
	crd, err := crds.ContainerNetworkPolicyCRD()
	if err != nil {
		t.Fatal(err)
	}
	return newCRDValidator(t, crd)
}

func cnpValidator(t testing.TB) *crdValidator {
	data, err := fs.ReadFile(ciliumcrds.EmbedFS, "ciliumnetworkpolicies.yaml")
	if err != nil {
		t.Fatalf("read cilium cnp crd: %v", err)
	}
	crd := &apiextensionsv1.CustomResourceDefinition{}
	if err := yaml.Unmarshal(data, crd); err != nil {
		t.Fatalf("parse cilium cnp crd: %v", err)
	}
	return newCRDValidator(t, crd)
}

// checkCNPSchema fails when the CNP CRD schema refuses a generated CNP or
// would drop one of its fields.
func checkCNPSchema(v *crdValidator, obj any) error {
	errs, pruned := v.validate(obj)
	if len(errs) > 0 {
		return fmt.Errorf("cnp crd schema refuses: %v", errs.ToAggregate())
	}
	if len(pruned) > 0 {
		return fmt.Errorf("cnp crd schema would drop fields %v", pruned)
	}
	return nil
}
