package translator

import (
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/sidewall/sidewall/crds/v1alpha1"
)

// typicalPolicy has 10 rules, 2 of them with L7 HTTP rules.
const typicalPolicy = `
apiVersion: sidewall.io/v1alpha1
kind: ContainerNetworkPolicy
metadata: {name: typical, namespace: shop, uid: 4b9a3f0c-1111-4222-8333-444455556666}
spec:
  podSelector: {matchLabels: {app: web, tier: frontend}}
  containers: {names: [log-shipper], roles: [sidecar]}
  egress:
  - toEndpoints: [{matchLabels: {app: log-store, k8s:io.kubernetes.pod.namespace: observability}}]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      rules:
        http:
        - {method: POST, path: ^/v1/logs$}
        - {method: GET, path: ^/healthz$}
  - toEndpoints: [{matchLabels: {app: metrics}}]
    toPorts:
    - ports: [{port: "9090", protocol: TCP}]
      rules:
        http:
        - {method: GET, path: /api/v1/.*, headers: ["X-Scope-OrgID"]}
  - toEntities: [kube-apiserver]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
  - toEndpoints: [{matchLabels: {k8s-app: kube-dns, k8s:io.kubernetes.pod.namespace: kube-system}}]
    toPorts: [{ports: [{port: "53", protocol: UDP}, {port: "53", protocol: TCP}]}]
  - toCIDRSet: [{cidr: 10.0.0.0/8, except: [10.96.0.0/12]}]
    toPorts: [{ports: [{port: "8000", endPort: 8100, protocol: TCP}]}]
  - toCIDR: [192.0.2.0/24]
  - toContainers: {roles: [app]}
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
  ingress:
  - fromEndpoints: [{matchLabels: {app: prometheus, k8s:io.kubernetes.pod.namespace: monitoring}}]
    toPorts: [{ports: [{port: "9102", protocol: TCP}]}]
  - fromEntities: [host]
  egressDeny:
  - toCIDR: [169.254.169.254/32]
`

func loadTypical(b *testing.B) *v1alpha1.ContainerNetworkPolicy {
	p := &v1alpha1.ContainerNetworkPolicy{}
	if err := yaml.UnmarshalStrict([]byte(typicalPolicy), p); err != nil {
		b.Fatal(err)
	}
	if n := len(p.Spec.Egress) + len(p.Spec.Ingress) + len(p.Spec.EgressDeny); n != 10 {
		b.Fatalf("typical policy has %d rules, want 10", n)
	}
	return p
}

// BenchmarkToCNP translates a typical policy (10 rules, 2 with L7), including
// validation and Cilium's Sanitize of the result. Target: under 100µs.
func BenchmarkToCNP(b *testing.B) {
	p := loadTypical(b)
	b.ReportAllocs()
	for b.Loop() {
		cnp, err := ToCNP(p)
		if err != nil || cnp == nil {
			b.Fatalf("ToCNP: %v, %v", cnp, err)
		}
	}
}

// BenchmarkToRuleSet builds the agent's rule set of the same policy.
func BenchmarkToRuleSet(b *testing.B) {
	p := loadTypical(b)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ToRuleSet(p); err != nil {
			b.Fatal(err)
		}
	}
}
