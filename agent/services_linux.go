package agent

import (
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/sidewall/sidewall/bpfext"
)

// serviceTable reads the Services and their EndpointSlices from the
// informers' caches.
func (a *Agent) serviceTable() ([]Service, error) {
	svcs, err := a.services.List(labels.Everything())
	if err != nil {
		return nil, err
	}
	slices, err := a.slices.List(labels.Everything())
	if err != nil {
		return nil, err
	}
	bySvc := map[[2]string][]*discoveryv1.EndpointSlice{}
	for _, sl := range slices {
		if name := sl.Labels[discoveryv1.LabelServiceName]; name != "" {
			k := [2]string{sl.Namespace, name}
			bySvc[k] = append(bySvc[k], sl)
		}
	}
	var out []Service
	for _, svc := range svcs {
		if s, ok := toService(svc, bySvc[[2]string{svc.Namespace, svc.Name}]); ok {
			out = append(out, s)
		}
	}
	return out, nil
}

// toService is a Service as the datapath decides it: its ClusterIPs,
// ExternalIPs and LoadBalancer ingress IPs, and per port the node port and
// the ready backends with their target port. Headless Services have no
// address to decide (clients reach the pods).
func toService(svc *corev1.Service, slices []*discoveryv1.EndpointSlice) (Service, bool) {
	s := Service{Namespace: svc.Namespace, Name: svc.Name}
	addrs := append(append([]string(nil), svc.Spec.ClusterIPs...), svc.Spec.ExternalIPs...)
	if svc.Spec.Type == corev1.ServiceTypeLoadBalancer {
		for _, in := range svc.Status.LoadBalancer.Ingress {
			addrs = append(addrs, in.IP)
		}
	}
	for _, ip := range addrs {
		if a, err := netip.ParseAddr(ip); err == nil {
			s.Addrs = append(s.Addrs, a)
		}
	}
	if len(s.Addrs) == 0 {
		return s, false
	}
	for _, sp := range svc.Spec.Ports {
		proto := protoOf(sp.Protocol)
		if proto == 0 {
			continue
		}
		port := ServicePort{Protocol: proto, Port: uint16(sp.Port)}
		if svc.Spec.Type == corev1.ServiceTypeNodePort || svc.Spec.Type == corev1.ServiceTypeLoadBalancer {
			port.NodePort = uint16(sp.NodePort)
		}
		for _, sl := range slices {
			for _, ep := range sl.Endpoints {
				if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
					continue
				}
				for _, p := range sl.Ports {
					if p.Port == nil || (p.Name != nil && *p.Name != sp.Name) || (p.Name == nil && sp.Name != "") ||
						protoOf(ptrOr(p.Protocol, corev1.ProtocolTCP)) != proto {
						continue
					}
					for _, addr := range ep.Addresses {
						if a, err := netip.ParseAddr(addr); err == nil {
							port.Backends = append(port.Backends, netip.AddrPortFrom(a, uint16(*p.Port)))
						}
					}
				}
			}
		}
		s.Ports = append(s.Ports, port)
	}
	return s, true
}

func protoOf(p corev1.Protocol) uint8 {
	switch p {
	case corev1.ProtocolTCP, "":
		return bpfext.ProtoTCP
	case corev1.ProtocolUDP:
		return bpfext.ProtoUDP
	case corev1.ProtocolSCTP:
		return bpfext.ProtoSCTP
	}
	return 0
}

func ptrOr[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}
