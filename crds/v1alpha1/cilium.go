package v1alpha1

import (
	"github.com/cilium/cilium/pkg/policy/api"
)

// EndpointSelector returns the pod selector as the Cilium EndpointSelector a
// CiliumNetworkPolicy uses. The result owns its maps and slices.
func (s *ContainerNetworkPolicySpec) EndpointSelector() api.EndpointSelector {
	sel := s.PodSelector.DeepCopy()
	return api.NewESFromMatchRequirements(sel.MatchLabels, sel.MatchExpressions)
}

// CiliumPortProtocol returns the port as Cilium's PortProtocol.
func (p PortProtocol) CiliumPortProtocol() api.PortProtocol {
	return api.PortProtocol{Port: p.Port, EndPort: p.EndPort, Protocol: p.Protocol}
}

func ciliumPorts(in []PortProtocol) []api.PortProtocol {
	if in == nil {
		return nil
	}
	out := make([]api.PortProtocol, len(in))
	for i := range in {
		out[i] = in[i].CiliumPortProtocol()
	}
	return out
}

// CiliumPortRule returns the port rule as Cilium's PortRule, deep-copied.
func (r *PortRule) CiliumPortRule() api.PortRule {
	c := r.DeepCopy()
	return api.PortRule{
		Ports:          ciliumPorts(c.Ports),
		TerminatingTLS: c.TerminatingTLS,
		OriginatingTLS: c.OriginatingTLS,
		ServerNames:    c.ServerNames,
		Listener:       c.Listener,
		Rules:          c.Rules,
	}
}

// CiliumPortDenyRule returns the port rule as Cilium's PortDenyRule.
func (r *PortDenyRule) CiliumPortDenyRule() api.PortDenyRule {
	return api.PortDenyRule{Ports: ciliumPorts(r.Ports)}
}

func ciliumPortRules(in []PortRule) api.PortRules {
	if in == nil {
		return nil
	}
	out := make(api.PortRules, len(in))
	for i := range in {
		out[i] = in[i].CiliumPortRule()
	}
	return out
}

func ciliumPortDenyRules(in []PortDenyRule) api.PortDenyRules {
	if in == nil {
		return nil
	}
	out := make(api.PortDenyRules, len(in))
	for i := range in {
		out[i] = in[i].CiliumPortDenyRule()
	}
	return out
}

// CiliumRule returns the rule as Cilium's EgressRule, deep-copied, without
// toContainers (which Cilium does not know).
func (r *EgressRule) CiliumRule() api.EgressRule {
	c := r.DeepCopy()
	return api.EgressRule{
		EgressCommonRule: c.EgressCommonRule,
		ToPorts:          ciliumPortRules(c.ToPorts),
		ToFQDNs:          c.ToFQDNs,
		ICMPs:            c.ICMPs,
		Authentication:   c.Authentication,
	}
}

// CiliumRule returns the rule as Cilium's EgressDenyRule, deep-copied, without
// toContainers.
func (r *EgressDenyRule) CiliumRule() api.EgressDenyRule {
	c := r.DeepCopy()
	return api.EgressDenyRule{
		EgressCommonRule: c.EgressCommonRule,
		ToPorts:          ciliumPortDenyRules(c.ToPorts),
		ICMPs:            c.ICMPs,
	}
}

// CiliumRule returns the rule as Cilium's IngressRule, deep-copied, without
// fromContainers.
func (r *IngressRule) CiliumRule() api.IngressRule {
	c := r.DeepCopy()
	return api.IngressRule{
		IngressCommonRule: c.IngressCommonRule,
		ToPorts:           ciliumPortRules(c.ToPorts),
		ICMPs:             c.ICMPs,
		Authentication:    c.Authentication,
	}
}

// CiliumRule returns the rule as Cilium's IngressDenyRule, deep-copied,
// without fromContainers.
func (r *IngressDenyRule) CiliumRule() api.IngressDenyRule {
	c := r.DeepCopy()
	return api.IngressDenyRule{
		IngressCommonRule: c.IngressCommonRule,
		ToPorts:           ciliumPortDenyRules(c.ToPorts),
		ICMPs:             c.ICMPs,
	}
}

// Selects reports whether the selector selects a container with this name and
// role.
func (s *ContainerSelector) Selects(name string, role ContainerRole) bool {
	if s == nil {
		return false
	}
	for _, n := range s.Names {
		if n == name {
			return true
		}
	}
	for _, r := range s.Roles {
		if r == role {
			return true
		}
	}
	return false
}
