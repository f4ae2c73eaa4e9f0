package translator

import (
	"reflect"
	"strings"
	"testing"

	slim_metav1 "github.com/cilium/cilium/pkg/k8s/slim/k8s/apis/meta/v1"
	admissionv1 "k8s.io/api/admissionregistration/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sidewall/sidewall/crds/v1alpha1"
)

func selectorPolicy(sel slim_metav1.LabelSelector, mode v1alpha1.AdmissionMode) *v1alpha1.ContainerNetworkPolicy {
	return &v1alpha1.ContainerNetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "p"},
		Spec:       v1alpha1.ContainerNetworkPolicySpec{PodSelector: sel, Containers: shipperSelector, Admission: mode},
	}
}

func TestAdmissionPolicyModes(t *testing.T) {
	for _, mode := range []v1alpha1.AdmissionMode{"", v1alpha1.AdmissionNone} {
		vap, b, err := AdmissionPolicy(selectorPolicy(slim_metav1.LabelSelector{}, mode))
		if vap != nil || b != nil || err != nil {
			t.Errorf("admission %q: got %v, %v, %v; want nothing", mode, vap, b, err)
		}
	}
	for mode, want := range map[v1alpha1.AdmissionMode][]admissionv1.ValidationAction{
		v1alpha1.AdmissionEnforce: {admissionv1.Deny},
		v1alpha1.AdmissionAudit:   {admissionv1.Warn, admissionv1.Audit},
	} {
		vap, b, err := AdmissionPolicy(selectorPolicy(slim_metav1.LabelSelector{}, mode))
		if err != nil {
			t.Fatalf("admission %s: %v", mode, err)
		}
		if !reflect.DeepEqual(b.Spec.ValidationActions, want) || b.Spec.PolicyName != vap.Name || vap.Name != "sidewall.shop.p" {
			t.Errorf("admission %s: binding %+v for policy %s", mode, b.Spec, vap.Name)
		}
	}
	if _, _, err := AdmissionPolicy(selectorPolicy(slim_metav1.LabelSelector{}, "Sometimes")); err == nil || !strings.Contains(err.Error(), "spec.admission") {
		t.Errorf("unknown admission mode: error %v, want one naming spec.admission", err)
	}
}

func TestAdmissionSelectors(t *testing.T) {
	for _, tc := range []struct {
		name    string
		sel     slim_metav1.LabelSelector
		obj     *metav1.LabelSelector
		ns      *metav1.LabelSelector
		conds   []string
		wantErr string
	}{
		{name: "empty", obj: &metav1.LabelSelector{},
			ns: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "shop"}}},
		{name: "sources stripped",
			sel: slim_metav1.LabelSelector{MatchLabels: map[string]string{"k8s:app": "web", "any:tier": "front"},
				MatchExpressions: []slim_metav1.LabelSelectorRequirement{{Key: "track", Operator: slim_metav1.LabelSelectorOpNotIn, Values: []string{"canary"}}}},
			obj: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web", "tier": "front"},
				MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "track", Operator: metav1.LabelSelectorOpNotIn, Values: []string{"canary"}}}},
			ns: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "shop"}}},
		{name: "namespace labels",
			sel: slim_metav1.LabelSelector{MatchLabels: map[string]string{"io.cilium.k8s.namespace.labels.team": "a", "k8s:io.kubernetes.pod.namespace": "other"}},
			obj: &metav1.LabelSelector{},
			ns: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "shop", "team": "a"},
				MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "kubernetes.io/metadata.name", Operator: metav1.LabelSelectorOpIn, Values: []string{"other"}}}}},
		{name: "service account",
			sel:   slim_metav1.LabelSelector{MatchLabels: map[string]string{"io.cilium.k8s.policy.serviceaccount": "shipper"}},
			obj:   &metav1.LabelSelector{},
			ns:    &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "shop"}},
			conds: []string{`object.spec.?serviceAccountName.orValue('default') == "shipper"`}},
		{name: "reserved source", sel: slim_metav1.LabelSelector{MatchLabels: map[string]string{"reserved:host": ""}},
			wantErr: `spec.podSelector.matchLabels: label source "reserved" cannot be matched at admission`},
		{name: "cilium key", sel: slim_metav1.LabelSelector{MatchExpressions: []slim_metav1.LabelSelectorRequirement{
			{Key: "io.cilium.k8s.policy.cluster", Operator: slim_metav1.LabelSelectorOpExists}}},
			wantErr: `spec.podSelector.matchExpressions[0]: label "io.cilium.k8s.policy.cluster" cannot be matched at admission`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			obj, ns, conds, err := admissionSelectors(selectorPolicy(tc.sel, v1alpha1.AdmissionEnforce))
			if tc.wantErr != "" {
				if err == nil || err.Error() != tc.wantErr {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var exprs []string
			for _, c := range conds {
				exprs = append(exprs, c.Expression)
			}
			if !reflect.DeepEqual(obj, tc.obj) || !reflect.DeepEqual(ns, tc.ns) || !reflect.DeepEqual(exprs, tc.conds) {
				t.Fatalf("got\n obj %+v\n ns %+v\n conds %q\nwant\n obj %+v\n ns %+v\n conds %q", obj, ns, exprs, tc.obj, tc.ns, tc.conds)
			}
		})
	}
}
