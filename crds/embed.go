package crds

import (
	"embed"
	"fmt"
	"io/fs"
	"path"
	"sort"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"sigs.k8s.io/yaml"
)

// EmbedFS holds the CRD manifests that controller-gen writes to bases/.
//
//go:embed bases/*.yaml
var EmbedFS embed.FS

// CustomResourceDefinitions returns sidewall's CRDs parsed from EmbedFS,
// sorted by file name.
func CustomResourceDefinitions() ([]*apiextensionsv1.CustomResourceDefinition, error) {
	names, err := fs.Glob(EmbedFS, "bases/*.yaml")
	if err != nil {
		return nil, fmt.Errorf("list embedded crds: %w", err)
	}
	sort.Strings(names)
	out := make([]*apiextensionsv1.CustomResourceDefinition, 0, len(names))
	for _, name := range names {
		data, err := EmbedFS.ReadFile(name)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", name, err)
		}
		crd := &apiextensionsv1.CustomResourceDefinition{}
		if err := yaml.UnmarshalStrict(data, crd); err != nil {
			return nil, fmt.Errorf("parse %s: %w", path.Base(name), err)
		}
		out = append(out, crd)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no crds embedded under bases/")
	}
	return out, nil
}

// ContainerNetworkPolicyCRD returns the ContainerNetworkPolicy CRD.
func ContainerNetworkPolicyCRD() (*apiextensionsv1.CustomResourceDefinition, error) {
	all, err := CustomResourceDefinitions()
	if err != nil {
		return nil, err
	}
	for _, crd := range all {
		if crd.Name == "containernetworkpolicies.sidewall.io" {
			return crd, nil
		}
	}
	return nil, fmt.Errorf("crd containernetworkpolicies.sidewall.io not embedded")
}
