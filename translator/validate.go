package translator

import (
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"sync"

	"github.com/cilium/cilium/pkg/policy/api"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/sidewall/sidewall/crds/v1alpha1"
)

const notSupported = "not supported for container scope"

// Validate checks a policy for everything the CRD schema and its CEL rules
// check, and for what they cannot check (regular expressions, Cilium's own
// rule sanitation, CIDR containment). It repeats the schema's checks so that a
// policy that bypassed admission (an old CRD, a unit test, a fuzzer) is still
// refused with the field named. An empty list means the policy is valid.
func Validate(p *v1alpha1.ContainerNetworkPolicy) field.ErrorList {
	errs := check(p)
	if len(errs) == 0 {
		errs = sanitizeSpec(&p.Spec, field.NewPath("spec"))
	}
	return errs
}

// check is Validate without Cilium's Sanitize, which ToCNP and ToRuleSet run
// themselves on what they build, so that a valid policy is sanitized once.
func check(p *v1alpha1.ContainerNetworkPolicy) field.ErrorList {
	var errs field.ErrorList
	if p == nil {
		return field.ErrorList{field.Required(field.NewPath("metadata"), "policy is nil")}
	}
	if p.Name == "" {
		errs = append(errs, field.Required(field.NewPath("metadata", "name"), ""))
	}
	spec := &p.Spec
	sp := field.NewPath("spec")

	es := api.EndpointSelector{LabelSelector: spec.PodSelector.DeepCopy()}
	if err := es.Sanitize(); err != nil {
		errs = append(errs, field.Invalid(sp.Child("podSelector"), spec.PodSelector.String(), err.Error()))
	}
	errs = append(errs, validateContainerSelector(&spec.Containers, sp.Child("containers"))...)

	switch spec.Mode {
	case "", v1alpha1.ModeEnforce, v1alpha1.ModeAudit:
	default:
		errs = append(errs, field.NotSupported(sp.Child("mode"), spec.Mode, []string{string(v1alpha1.ModeEnforce), string(v1alpha1.ModeAudit)}))
	}
	switch spec.Unclassified {
	case "", v1alpha1.UnclassifiedDeny, v1alpha1.UnclassifiedAllow:
	default:
		errs = append(errs, field.NotSupported(sp.Child("unclassified"), spec.Unclassified, []string{string(v1alpha1.UnclassifiedDeny), string(v1alpha1.UnclassifiedAllow)}))
	}
	if len(spec.Egress)+len(spec.Ingress)+len(spec.EgressDeny)+len(spec.IngressDeny) == 0 {
		errs = append(errs, field.Required(sp, "at least one of egress, ingress, egressDeny or ingressDeny is required"))
	}

	for _, c := range []struct {
		name string
		n    int
	}{{"egress", len(spec.Egress)}, {"ingress", len(spec.Ingress)}, {"egressDeny", len(spec.EgressDeny)}, {"ingressDeny", len(spec.IngressDeny)}} {
		if c.n > v1alpha1.MaxRules {
			errs = append(errs, field.TooMany(sp.Child(c.name), c.n, v1alpha1.MaxRules))
		}
	}
	for i := range spec.Egress {
		errs = append(errs, validateEgress(&spec.Egress[i], sp.Child("egress").Index(i))...)
	}
	for i := range spec.EgressDeny {
		errs = append(errs, validateEgressDeny(&spec.EgressDeny[i], sp.Child("egressDeny").Index(i))...)
	}
	for i := range spec.Ingress {
		errs = append(errs, validateIngress(&spec.Ingress[i], sp.Child("ingress").Index(i))...)
	}
	for i := range spec.IngressDeny {
		errs = append(errs, validateIngressDeny(&spec.IngressDeny[i], sp.Child("ingressDeny").Index(i))...)
	}
	return errs
}

// sanitizeSpec runs Cilium's own Rule.Sanitize on the policy's rules with
// Cilium peers, so that whatever Cilium refuses is refused here. It sanitizes
// all rules at once and, only when that fails, one rule at a time to name the
// rule: translating a valid policy must stay cheap.
func sanitizeSpec(spec *v1alpha1.ContainerNetworkPolicySpec, sp *field.Path) field.ErrorList {
	all := &api.Rule{EndpointSelector: api.WildcardEndpointSelector}
	type one struct {
		path *field.Path
		rule *api.Rule
	}
	var each []one
	for i := range spec.Egress {
		if spec.Egress[i].ToContainers == nil {
			r := spec.Egress[i].CiliumRule()
			all.Egress = append(all.Egress, r)
			each = append(each, one{sp.Child("egress").Index(i), &api.Rule{EndpointSelector: api.WildcardEndpointSelector, Egress: []api.EgressRule{r}}})
		}
	}
	for i := range spec.EgressDeny {
		if spec.EgressDeny[i].ToContainers == nil {
			r := spec.EgressDeny[i].CiliumRule()
			all.EgressDeny = append(all.EgressDeny, r)
			each = append(each, one{sp.Child("egressDeny").Index(i), &api.Rule{EndpointSelector: api.WildcardEndpointSelector, EgressDeny: []api.EgressDenyRule{r}}})
		}
	}
	for i := range spec.Ingress {
		if spec.Ingress[i].FromContainers == nil {
			r := spec.Ingress[i].CiliumRule()
			all.Ingress = append(all.Ingress, r)
			each = append(each, one{sp.Child("ingress").Index(i), &api.Rule{EndpointSelector: api.WildcardEndpointSelector, Ingress: []api.IngressRule{r}}})
		}
	}
	for i := range spec.IngressDeny {
		if spec.IngressDeny[i].FromContainers == nil {
			r := spec.IngressDeny[i].CiliumRule()
			all.IngressDeny = append(all.IngressDeny, r)
			each = append(each, one{sp.Child("ingressDeny").Index(i), &api.Rule{EndpointSelector: api.WildcardEndpointSelector, IngressDeny: []api.IngressDenyRule{r}}})
		}
	}
	if len(each) == 0 {
		return nil
	}
	// all holds deep copies, so Sanitize may rewrite it.
	err := all.DeepCopy().Sanitize()
	if err == nil {
		return nil
	}
	var errs field.ErrorList
	for _, o := range each {
		if err := o.rule.DeepCopy().Sanitize(); err != nil {
			errs = append(errs, invalid(o.path, "refused by Cilium: "+err.Error()))
		}
	}
	if len(errs) == 0 {
		errs = append(errs, invalid(sp, "refused by Cilium: "+err.Error()))
	}
	return errs
}

func validateContainerSelector(s *v1alpha1.ContainerSelector, path *field.Path) field.ErrorList {
	var errs field.ErrorList
	if len(s.Names) == 0 && len(s.Roles) == 0 {
		return field.ErrorList{field.Required(path, "at least one container name or role is required")}
	}
	if len(s.Names) > v1alpha1.MaxContainerNames {
		errs = append(errs, field.TooMany(path.Child("names"), len(s.Names), v1alpha1.MaxContainerNames))
	}
	seen := map[string]bool{}
	for i, n := range s.Names {
		for _, msg := range validation.IsDNS1123Label(n) {
			errs = append(errs, field.Invalid(path.Child("names").Index(i), n, msg))
		}
		if seen[n] {
			errs = append(errs, field.Duplicate(path.Child("names").Index(i), n))
		}
		seen[n] = true
	}
	for i, r := range s.Roles {
		switch r {
		case v1alpha1.RoleSidecar, v1alpha1.RoleInit, v1alpha1.RoleApp, v1alpha1.RoleEphemeral:
		default:
			errs = append(errs, field.NotSupported(path.Child("roles").Index(i), r, []string{"sidecar", "init", "app", "ephemeral"}))
		}
	}
	return errs
}

// invalid is an Invalid error about a whole field, without a value to print.
func invalid(path *field.Path, detail string) *field.Error {
	return &field.Error{Type: field.ErrorTypeInvalid, Field: path.String(), BadValue: field.OmitValueType{}, Detail: detail}
}

func unsupported(path *field.Path, name string) *field.Error {
	return field.Forbidden(path.Child(name), name+" is "+notSupported)
}

func hasEgressPeer(c *api.EgressCommonRule) bool {
	return c.ToEndpoints != nil || c.ToCIDR != nil || c.ToCIDRSet != nil || c.ToEntities != nil
}

func hasIngressPeer(c *api.IngressCommonRule) bool {
	return c.FromEndpoints != nil || c.FromCIDR != nil || c.FromCIDRSet != nil || c.FromEntities != nil
}

func validateEgressCommon(c *api.EgressCommonRule, path *field.Path) field.ErrorList {
	var errs field.ErrorList
	if c.ToServices != nil {
		errs = append(errs, unsupported(path, "toServices"))
	}
	if c.ToGroups != nil {
		errs = append(errs, unsupported(path, "toGroups"))
	}
	if c.ToRequires != nil {
		errs = append(errs, unsupported(path, "toRequires"))
	}
	if c.ToNodes != nil {
		errs = append(errs, unsupported(path, "toNodes"))
	}
	errs = append(errs, validateCIDRs(c.ToCIDR, c.ToCIDRSet, path, "toCIDR", "toCIDRSet")...)
	errs = append(errs, onePeerKind(path, "to", c.ToEndpoints != nil, c.ToCIDR != nil, c.ToCIDRSet != nil, c.ToEntities != nil)...)
	return errs
}

func validateIngressCommon(c *api.IngressCommonRule, path *field.Path) field.ErrorList {
	var errs field.ErrorList
	if c.FromGroups != nil {
		errs = append(errs, unsupported(path, "fromGroups"))
	}
	if c.FromRequires != nil {
		errs = append(errs, unsupported(path, "fromRequires"))
	}
	if c.FromNodes != nil {
		errs = append(errs, unsupported(path, "fromNodes"))
	}
	errs = append(errs, validateCIDRs(c.FromCIDR, c.FromCIDRSet, path, "fromCIDR", "fromCIDRSet")...)
	errs = append(errs, onePeerKind(path, "from", c.FromEndpoints != nil, c.FromCIDR != nil, c.FromCIDRSet != nil, c.FromEntities != nil)...)
	return errs
}

// onePeerKind refuses what Cilium's Sanitize refuses ("combining X and Y is
// not supported yet"), with a stable message: Cilium's names the two fields
// in map order.
func onePeerKind(path *field.Path, prefix string, endpoints, cidr, cidrSet, entities bool) field.ErrorList {
	n := 0
	for _, b := range []bool{endpoints, cidr, cidrSet, entities} {
		if b {
			n++
		}
	}
	if n <= 1 {
		return nil
	}
	return field.ErrorList{invalid(path, fmt.Sprintf("%[1]sEndpoints, %[1]sCIDR, %[1]sCIDRSet and %[1]sEntities cannot be combined in one rule: write one rule per peer kind", prefix))}
}

// validateCIDRs refuses CIDR group references: the node agent would have to
// watch CiliumCIDRGroups to resolve them, which this version does not do.
func validateCIDRs(cidrs api.CIDRSlice, set api.CIDRRuleSlice, path *field.Path, cidrName, setName string) field.ErrorList {
	var errs field.ErrorList
	for i, c := range cidrs {
		// The CNP schema (format: cidr) wants a prefix, although Cilium's
		// Sanitize would take a bare address.
		if _, err := netip.ParsePrefix(string(c)); err != nil {
			errs = append(errs, field.Invalid(path.Child(cidrName).Index(i), c, "must be an IP prefix such as 10.0.0.0/8"))
		}
	}
	for i := range set {
		r := &set[i]
		p := path.Child(setName).Index(i)
		if r.CIDRGroupRef != "" {
			errs = append(errs, unsupported(p, "cidrGroupRef"))
		}
		if r.CIDRGroupSelector.LabelSelector != nil {
			errs = append(errs, unsupported(p, "cidrGroupSelector"))
		}
		if r.CIDRGroupRef != "" || r.CIDRGroupSelector.LabelSelector != nil {
			continue
		}
		if r.Cidr == "" {
			errs = append(errs, field.Required(p.Child("cidr"), ""))
			continue
		}
		prefix, err := netip.ParsePrefix(string(r.Cidr))
		if err != nil {
			errs = append(errs, field.Invalid(p.Child("cidr"), r.Cidr, err.Error()))
			continue
		}
		for j, e := range r.ExceptCIDRs {
			ex, err := netip.ParsePrefix(string(e))
			if err != nil {
				errs = append(errs, field.Invalid(p.Child("except").Index(j), e, err.Error()))
				continue
			}
			if ex.Bits() < prefix.Bits() || !prefix.Contains(ex.Addr()) {
				errs = append(errs, field.Invalid(p.Child("except").Index(j), e, fmt.Sprintf("must be inside cidr %s", r.Cidr)))
			}
		}
	}
	return errs
}

// parseCIDR accepts what Cilium's CIDR accepts: a prefix or a bare address.
func parseCIDR(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("not an IP prefix or address")
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

func validateContainerPeer(sel *v1alpha1.ContainerSelector, hasPeer bool, nPorts []v1alpha1.PortRule, path *field.Path, name, peers string) field.ErrorList {
	if sel == nil {
		return nil
	}
	errs := validateContainerSelector(sel, path.Child(name))
	if hasPeer {
		errs = append(errs, invalid(path.Child(name), name+" cannot be combined with "+peers+" in one rule: write a separate rule"))
	}
	for i := range nPorts {
		if nPorts[i].Rules != nil {
			errs = append(errs, field.Forbidden(path.Child("toPorts").Index(i).Child("rules"), "L7 rules cannot be used with "+name+": pod-local traffic does not pass Cilium's proxy"))
		}
	}
	return errs
}

func validateEgress(r *v1alpha1.EgressRule, path *field.Path) field.ErrorList {
	errs := validateEgressCommon(&r.EgressCommonRule, path)
	if r.ICMPs != nil {
		errs = append(errs, unsupported(path, "icmps"))
	}
	if r.Authentication != nil {
		errs = append(errs, unsupported(path, "authentication"))
	}
	errs = append(errs, validatePortRules(r.ToPorts, path.Child("toPorts"))...)
	errs = append(errs, validateContainerPeer(r.ToContainers, hasEgressPeer(&r.EgressCommonRule), r.ToPorts, path, "toContainers", "toEndpoints, toCIDR, toCIDRSet or toEntities")...)
	errs = append(errs, validateFQDNs(r, path)...)
	return errs
}

var (
	fqdnNameRE    = regexp.MustCompile(api.FQDNMatchNameRegexString)
	fqdnPatternRE = regexp.MustCompile(api.FQDNMatchPatternRegexString)
)

// validateFQDNs checks toFQDNs as the CRD schema does (Cilium's own
// patterns and lengths), and each selector with Cilium's matchpattern,
// which is what Cilium's agent compiles it with.
func validateFQDNs(r *v1alpha1.EgressRule, path *field.Path) field.ErrorList {
	if r.ToFQDNs == nil {
		return nil
	}
	var errs field.ErrorList
	p := path.Child("toFQDNs")
	if len(r.ToFQDNs) > v1alpha1.MaxFQDNSelectors {
		errs = append(errs, field.TooMany(p, len(r.ToFQDNs), v1alpha1.MaxFQDNSelectors))
	}
	if hasEgressPeer(&r.EgressCommonRule) || r.ToContainers != nil {
		errs = append(errs, invalid(p, "toFQDNs cannot be combined with toEndpoints, toCIDR, toCIDRSet, toEntities or toContainers in one rule: write a separate rule"))
	}
	for i := range r.ToPorts {
		if r.ToPorts[i].Rules != nil {
			errs = append(errs, field.Forbidden(path.Child("toPorts").Index(i).Child("rules"), "L7 rules cannot be used with toFQDNs for container scope"))
		}
	}
	for i := range r.ToFQDNs {
		f := &r.ToFQDNs[i]
		ip := p.Index(i)
		before := len(errs)
		switch {
		case (f.MatchName == "") == (f.MatchPattern == ""):
			errs = append(errs, invalid(ip, "needs exactly one of matchName and matchPattern"))
			continue
		case f.MatchName != "":
			if len(f.MatchName) > 255 {
				errs = append(errs, field.TooLong(ip.Child("matchName"), f.MatchName, 255))
			} else if !fqdnNameRE.MatchString(f.MatchName) {
				errs = append(errs, field.Invalid(ip.Child("matchName"), f.MatchName, "must be a DNS name: letters, digits, '-' and '_' in labels separated by '.'"))
			}
		default:
			if len(f.MatchPattern) > 255 {
				errs = append(errs, field.TooLong(ip.Child("matchPattern"), f.MatchPattern, 255))
			} else if !fqdnPatternRE.MatchString(f.MatchPattern) {
				errs = append(errs, field.Invalid(ip.Child("matchPattern"), f.MatchPattern, "must be a DNS name pattern: letters, digits, '-', '_' and '*' in labels separated by '.'"))
			}
		}
		if len(errs) > before {
			continue
		}
		if _, err := f.ToRegex(); err != nil {
			errs = append(errs, field.Invalid(ip, f.String(), "refused by Cilium: "+err.Error()))
		}
	}
	return errs
}

func validateEgressDeny(r *v1alpha1.EgressDenyRule, path *field.Path) field.ErrorList {
	errs := validateEgressCommon(&r.EgressCommonRule, path)
	if r.ICMPs != nil {
		errs = append(errs, unsupported(path, "icmps"))
	}
	errs = append(errs, validatePortDenyRules(r.ToPorts, path.Child("toPorts"))...)
	errs = append(errs, validateContainerPeer(r.ToContainers, hasEgressPeer(&r.EgressCommonRule), nil, path, "toContainers", "toEndpoints, toCIDR, toCIDRSet or toEntities")...)
	return errs
}

func validateIngress(r *v1alpha1.IngressRule, path *field.Path) field.ErrorList {
	errs := validateIngressCommon(&r.IngressCommonRule, path)
	if r.ToFQDNs != nil {
		errs = append(errs, field.Forbidden(path.Child("toFQDNs"), "toFQDNs is egress only: a rule in ingress cannot select peers by DNS name"))
	}
	if r.ICMPs != nil {
		errs = append(errs, unsupported(path, "icmps"))
	}
	if r.Authentication != nil {
		errs = append(errs, unsupported(path, "authentication"))
	}
	errs = append(errs, validatePortRules(r.ToPorts, path.Child("toPorts"))...)
	errs = append(errs, validateContainerPeer(r.FromContainers, hasIngressPeer(&r.IngressCommonRule), r.ToPorts, path, "fromContainers", "fromEndpoints, fromCIDR, fromCIDRSet or fromEntities")...)
	return errs
}

func validateIngressDeny(r *v1alpha1.IngressDenyRule, path *field.Path) field.ErrorList {
	errs := validateIngressCommon(&r.IngressCommonRule, path)
	if r.ICMPs != nil {
		errs = append(errs, unsupported(path, "icmps"))
	}
	errs = append(errs, validatePortDenyRules(r.ToPorts, path.Child("toPorts"))...)
	errs = append(errs, validateContainerPeer(r.FromContainers, hasIngressPeer(&r.IngressCommonRule), nil, path, "fromContainers", "fromEndpoints, fromCIDR, fromCIDRSet or fromEntities")...)
	return errs
}

func validatePortRules(rules []v1alpha1.PortRule, path *field.Path) field.ErrorList {
	var errs field.ErrorList
	if len(rules) > v1alpha1.MaxPortRules {
		errs = append(errs, field.TooMany(path, len(rules), v1alpha1.MaxPortRules))
	}
	for i := range rules {
		r := &rules[i]
		p := path.Index(i)
		if r.TerminatingTLS != nil {
			errs = append(errs, unsupported(p, "terminatingTLS"))
		}
		if r.OriginatingTLS != nil {
			errs = append(errs, unsupported(p, "originatingTLS"))
		}
		if r.ServerNames != nil {
			errs = append(errs, unsupported(p, "serverNames"))
		}
		if r.Listener != nil {
			errs = append(errs, unsupported(p, "listener"))
		}
		errs = append(errs, validatePorts(r.Ports, p.Child("ports"))...)
		if r.Rules == nil {
			continue
		}
		rp := p.Child("rules")
		if r.Rules.DNS != nil {
			errs = append(errs, field.Forbidden(rp.Child("dns"), "rules.dns is "+notSupported+": only rules.http is"))
		}
		if r.Rules.HTTP == nil {
			if r.Rules.DNS == nil {
				// Cilium's CNP schema needs exactly one kind of L7 rule.
				errs = append(errs, field.Required(rp.Child("http"), "rules needs http rules; remove an empty rules stanza"))
			}
			continue
		}
		if len(r.Ports) == 0 {
			errs = append(errs, field.Required(p.Child("ports"), "rules.http needs ports with protocol TCP"))
		}
		for j, pp := range r.Ports {
			if pp.Protocol != api.ProtoTCP {
				errs = append(errs, field.Invalid(p.Child("ports").Index(j).Child("protocol"), pp.Protocol, "rules.http needs protocol TCP"))
			}
			if pp.Port == "0" {
				errs = append(errs, field.Invalid(p.Child("ports").Index(j).Child("port"), pp.Port, "rules.http needs a port other than 0"))
			}
		}
		for j := range r.Rules.HTTP {
			errs = append(errs, validateHTTP(&r.Rules.HTTP[j], rp.Child("http").Index(j))...)
		}
	}
	return errs
}

func validatePortDenyRules(rules []v1alpha1.PortDenyRule, path *field.Path) field.ErrorList {
	var errs field.ErrorList
	if len(rules) > v1alpha1.MaxPortRules {
		errs = append(errs, field.TooMany(path, len(rules), v1alpha1.MaxPortRules))
	}
	for i := range rules {
		errs = append(errs, validatePorts(rules[i].Ports, path.Index(i).Child("ports"))...)
	}
	return errs
}

func numeric(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

func validatePorts(ports []v1alpha1.PortProtocol, path *field.Path) field.ErrorList {
	var errs field.ErrorList
	if len(ports) > v1alpha1.MaxPorts {
		errs = append(errs, field.TooMany(path, len(ports), v1alpha1.MaxPorts))
	}
	for i, pp := range ports {
		p := path.Index(i)
		port, ok := parsePort(pp.Port)
		switch {
		case pp.Port == "":
			errs = append(errs, field.Required(p.Child("port"), ""))
		case !numeric(pp.Port):
			errs = append(errs, field.Invalid(p.Child("port"), pp.Port, "must be a port number: named ports are "+notSupported))
		case !ok:
			errs = append(errs, field.Invalid(p.Child("port"), pp.Port, "must be a number from 0 to 65535"))
		}
		if pp.EndPort < 0 || pp.EndPort > 65535 {
			errs = append(errs, field.Invalid(p.Child("endPort"), pp.EndPort, "must be a number from 0 to 65535"))
		} else if ok && pp.EndPort != 0 && pp.EndPort < int32(port) {
			errs = append(errs, field.Invalid(p.Child("endPort"), pp.EndPort, fmt.Sprintf("must not be lower than port %d", port)))
		}
		if _, ok := protocolOf(pp.Protocol); !ok {
			errs = append(errs, field.NotSupported(p.Child("protocol"), pp.Protocol, []string{"TCP", "UDP", "SCTP", "ANY"}))
		}
	}
	return errs
}

// parsePort parses a decimal port number. Cilium parses with base 0, which
// would read "010" as 8; the schema only lets decimal digits through, and we
// read them as decimal, which is what a user means.
func parsePort(s string) (uint16, bool) {
	if !numeric(s) || len(s) > 5 {
		return 0, false
	}
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil {
		return 0, false
	}
	return uint16(n), true
}

// regexpErrs caches compile results: the controller validates the same few
// HTTP rules on every reconcile, and compiling dominates Validate's cost.
var regexpErrs = struct {
	sync.Mutex
	m map[string]error
}{m: map[string]error{}}

func compileRegexp(re string) error {
	regexpErrs.Lock()
	err, ok := regexpErrs.m[re]
	regexpErrs.Unlock()
	if ok {
		return err
	}
	_, err = regexp.Compile(re)
	regexpErrs.Lock()
	if len(regexpErrs.m) >= 4096 {
		clear(regexpErrs.m)
	}
	regexpErrs.m[re] = err
	regexpErrs.Unlock()
	return err
}

func validateHTTP(h *api.PortRuleHTTP, path *field.Path) field.ErrorList {
	var errs field.ErrorList
	for _, f := range [][2]string{{"path", h.Path}, {"method", h.Method}, {"host", h.Host}} {
		if f[1] == "" {
			continue
		}
		// Envoy compiles these with RE2, whose syntax Go's regexp implements.
		if err := compileRegexp(f[1]); err != nil {
			errs = append(errs, field.Invalid(path.Child(f[0]), f[1], "invalid regular expression: "+strings.TrimPrefix(err.Error(), "error parsing regexp: ")))
		}
	}
	for i, hdr := range h.Headers {
		if strings.TrimSpace(hdr) == "" {
			errs = append(errs, field.Invalid(path.Child("headers").Index(i), hdr, "must not be empty"))
		}
	}
	for i, m := range h.HeaderMatches {
		p := path.Child("headerMatches").Index(i)
		if m == nil {
			errs = append(errs, field.Required(p, ""))
			continue
		}
		if m.Name == "" {
			errs = append(errs, field.Required(p.Child("name"), ""))
		}
		switch m.Mismatch {
		case "", api.MismatchActionLog, api.MismatchActionAdd, api.MismatchActionDelete, api.MismatchActionReplace:
		default:
			errs = append(errs, field.NotSupported(p.Child("mismatch"), m.Mismatch, []string{"LOG", "ADD", "DELETE", "REPLACE"}))
		}
		if m.Secret != nil && m.Secret.Name == "" {
			errs = append(errs, field.Required(p.Child("secret", "name"), ""))
		}
	}
	return errs
}
