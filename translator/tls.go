package translator

import (
	"fmt"
	"strconv"

	"github.com/sidewall/sidewall/crds/v1alpha1"
)

// tlsPorts are ports whose traffic is TLS by convention (HTTPS, the
// kube-apiserver, webhooks, the kubelet, etcd). Cilium's proxy sees the
// encrypted bytes there unless the rule intercepts TLS, which sidewall's
// policies cannot ask for (terminatingTLS and originatingTLS are refused).
var tlsPorts = map[uint16]string{
	443:   "HTTPS",
	2379:  "etcd",
	6443:  "the kube-apiserver",
	8443:  "HTTPS",
	9443:  "webhooks",
	10250: "the kubelet",
}

// TLSPortWarnings names the HTTP rules that sit on a port where Cilium's
// proxy will most likely see TLS: it cannot parse the requests there, so
// the rule matches none of them, and the port's requests are all denied
// (or, outside default deny, not enforced). A warning, not a refusal: the
// port may well carry plain HTTP.
func TLSPortWarnings(p *v1alpha1.ContainerNetworkPolicy) []string {
	var out []string
	check := func(dir string, i, j int, pr v1alpha1.PortRule) {
		if pr.Rules == nil || len(pr.Rules.HTTP) == 0 {
			return
		}
		for _, pp := range pr.Ports {
			port, err := strconv.ParseUint(pp.Port, 10, 16)
			if err != nil {
				continue
			}
			if what, ok := tlsPorts[uint16(port)]; ok {
				out = append(out, fmt.Sprintf("spec.%s[%d].toPorts[%d]: HTTP rules on port %d (%s, usually TLS): Cilium's proxy cannot read encrypted requests, so these rules will match none of them",
					dir, i, j, port, what))
			}
		}
	}
	for i, r := range p.Spec.Egress {
		for j, pr := range r.ToPorts {
			check("egress", i, j, pr)
		}
	}
	for i, r := range p.Spec.Ingress {
		for j, pr := range r.ToPorts {
			check("ingress", i, j, pr)
		}
	}
	return out
}
