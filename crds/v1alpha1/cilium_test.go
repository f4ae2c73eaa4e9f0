package v1alpha1

import (
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/cilium/cilium/pkg/policy/api"
	"sigs.k8s.io/yaml"
)

// jsonFields lists the JSON names of a struct's fields, following inline
// embedding as encoding/json does.
func jsonFields(t reflect.Type) []string {
	var out []string
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		name, _, _ := strings.Cut(tag, ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		if f.Anonymous && name == "" {
			ft := f.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			out = append(out, jsonFields(ft)...)
			continue
		}
		if name == "" {
			name = f.Name
		}
		out = append(out, name)
	}
	sort.Strings(out)
	return out
}

// TestSameFieldsAsCilium fails when Cilium's rule types gain or lose a field
// after a version bump, so the new field is consciously supported or refused
// at admission instead of being pruned silently.
func TestSameFieldsAsCilium(t *testing.T) {
	cases := []struct {
		ours, theirs any
		extra        string
	}{
		{EgressRule{}, api.EgressRule{}, "toContainers"},
		{EgressDenyRule{}, api.EgressDenyRule{}, "toContainers"},
		// toFQDNs is declared in ingress only so that admission refuses it by name.
		{IngressRule{}, api.IngressRule{}, "fromContainers,toFQDNs"},
		{IngressDenyRule{}, api.IngressDenyRule{}, "fromContainers"},
		{PortRule{}, api.PortRule{}, ""},
		{PortDenyRule{}, api.PortDenyRule{}, ""},
		{PortProtocol{}, api.PortProtocol{}, ""},
	}
	for _, c := range cases {
		ours := jsonFields(reflect.TypeOf(c.ours))
		want := jsonFields(reflect.TypeOf(c.theirs))
		if c.extra != "" {
			want = append(want, strings.Split(c.extra, ",")...)
			sort.Strings(want)
		}
		if !reflect.DeepEqual(ours, want) {
			t.Errorf("%T fields %v, want Cilium's %T fields plus %q: %v", c.ours, ours, c.theirs, c.extra, want)
		}
	}
}

// TestCiliumRuleRoundTrip decodes the same YAML into our rule type and into
// Cilium's and checks that CiliumRule gives Cilium's.
func TestCiliumRuleRoundTrip(t *testing.T) {
	const egress = `
toEndpoints:
- matchLabels:
    app: logs
    k8s:io.kubernetes.pod.namespace: observability
toPorts:
- ports:
  - port: "443"
    protocol: TCP
  - port: "8000"
    endPort: 8100
    protocol: TCP
  rules:
    http:
    - method: GET
      path: /v1/.*
      host: logs\.example\.com
      headers: ["X-Token"]
`
	var ours EgressRule
	if err := yaml.UnmarshalStrict([]byte(egress), &ours); err != nil {
		t.Fatal(err)
	}
	var theirs api.EgressRule
	if err := yaml.UnmarshalStrict([]byte(egress), &theirs); err != nil {
		t.Fatal(err)
	}
	got := ours.CiliumRule()
	if !got.DeepEqual(&theirs) {
		t.Errorf("CiliumRule() = %+v, want %+v", got, theirs)
	}

	const ingress = `
fromCIDRSet:
- cidr: 10.0.0.0/8
  except: [10.1.0.0/16]
toPorts:
- ports:
  - port: "9090"
`
	var oursIn IngressRule
	if err := yaml.UnmarshalStrict([]byte(ingress), &oursIn); err != nil {
		t.Fatal(err)
	}
	var theirsIn api.IngressRule
	if err := yaml.UnmarshalStrict([]byte(ingress), &theirsIn); err != nil {
		t.Fatal(err)
	}
	gotIn := oursIn.CiliumRule()
	if !gotIn.DeepEqual(&theirsIn) {
		t.Errorf("CiliumRule() = %+v, want %+v", gotIn, theirsIn)
	}
}

func TestContainerSelectorSelects(t *testing.T) {
	s := &ContainerSelector{Names: []string{"envoy"}, Roles: []ContainerRole{RoleInit}}
	for _, c := range []struct {
		name string
		role ContainerRole
		want bool
	}{
		{"envoy", RoleApp, true},
		{"migrate", RoleInit, true},
		{"app", RoleApp, false},
		{"logs", RoleSidecar, false},
	} {
		if got := s.Selects(c.name, c.role); got != c.want {
			t.Errorf("Selects(%q, %q) = %v, want %v", c.name, c.role, got, c.want)
		}
	}
	var nilSel *ContainerSelector
	if nilSel.Selects("envoy", RoleApp) {
		t.Error("nil selector selected a container")
	}
}

func TestEndpointSelectorOwnsItsMaps(t *testing.T) {
	spec := &ContainerNetworkPolicySpec{}
	spec.PodSelector.MatchLabels = map[string]string{"app": "web"}
	es := spec.EndpointSelector()
	es.MatchLabels["app"] = "changed"
	if spec.PodSelector.MatchLabels["app"] != "web" {
		t.Error("EndpointSelector shares its map with the spec")
	}
}
