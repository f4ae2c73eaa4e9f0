package translator

import (
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"

	"github.com/cilium/cilium/pkg/fqdn/dns"

	"github.com/cilium/cilium/pkg/policy/api"
	policytypes "github.com/cilium/cilium/pkg/policy/types"
	corev1 "k8s.io/api/core/v1"

	"github.com/sidewall/sidewall/crds/v1alpha1"
)

// Container is a container of a pod with its role.
type Container struct {
	Name string                 `json:"name"`
	Role v1alpha1.ContainerRole `json:"role"`
}

// PodContainers lists every container of a pod spec with its role: init
// containers with restartPolicy Always are sidecars, other init containers
// are init, regular containers are app, ephemeral containers are ephemeral.
func PodContainers(pod *corev1.Pod) []Container {
	out := make([]Container, 0, len(pod.Spec.InitContainers)+len(pod.Spec.Containers)+len(pod.Spec.EphemeralContainers))
	for _, c := range pod.Spec.InitContainers {
		role := v1alpha1.RoleInit
		if c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			role = v1alpha1.RoleSidecar
		}
		out = append(out, Container{Name: c.Name, Role: role})
	}
	for _, c := range pod.Spec.Containers {
		out = append(out, Container{Name: c.Name, Role: v1alpha1.RoleApp})
	}
	for _, c := range pod.Spec.EphemeralContainers {
		out = append(out, Container{Name: c.Name, Role: v1alpha1.RoleEphemeral})
	}
	return out
}

// SelectsPod reports whether a parsed pod selector (RuleSet.PodSelector)
// selects the pod, the way Cilium matches an endpointSelector: against the
// pod's identity labels (IdentityLabels), with its namespace's labels when
// ns is given.
func SelectsPod(sel api.EndpointSelector, pod *corev1.Pod, ns *corev1.Namespace) bool {
	return policytypes.NewLabelSelector(sel).Matches(IdentityLabels(pod, ns, DefaultClusterName))
}

// L7Conflict is an L7-restricted peer and port of a pod that several
// containers can reach with different L7 rules, so Cilium's proxy, which
// works per pod, enforces the union of their rules.
type L7Conflict struct {
	Pod        string    `json:"pod"`
	Direction  Direction `json:"direction"`
	Peer       string    `json:"peer"`
	Port       string    `json:"port"`
	Containers []string  `json:"containers"`
}

// Analysis is what a policy does to the pods of its namespace.
type Analysis struct {
	// SelectedPods counts running or pending pods the pod selector selects.
	SelectedPods int32 `json:"selectedPods"`
	// SelectedContainers counts the containers of those pods the policy
	// restricts.
	SelectedContainers int32 `json:"selectedContainers"`
	// ContainerSummary is spec.containers in short form, for `kubectl get`.
	ContainerSummary string `json:"containerSummary"`
	// UnknownContainers are names in spec.containers.names that no selected
	// pod has. Empty when no pod is selected.
	UnknownContainers []string `json:"unknownContainers,omitempty"`
	// FilteredSelectorKeys are the label keys of spec.podSelector that
	// Cilium's label filter leaves out of identities (pod-template-hash,
	// say): a selector on them selects no pod, in Cilium or in sidewall.
	FilteredSelectorKeys []string `json:"filteredSelectorKeys,omitempty"`
	// HasL7 is true when the policy has L7 rules.
	HasL7 bool `json:"hasL7"`
	// L7Conflicts lists the L7-restricted peers and ports that are not
	// exclusive to the policy's containers. Empty means L7Precise.
	L7Conflicts []L7Conflict `json:"l7Conflicts,omitempty"`
	// Risks are the restricted containers of the selected pods that could
	// escape container-level enforcement, sorted by pod. Empty means no
	// BypassRisk.
	Risks []ContainerRisk `json:"risks,omitempty"`
	// Invalid is true when the policy failed Validate; the other fields then
	// only hold the counts.
	Invalid bool `json:"invalid,omitempty"`
}

// L7Precise reports whether every L7 rule of the policy applies only to the
// containers it selects.
func (a *Analysis) L7Precise() bool { return len(a.L7Conflicts) == 0 }

// ContainerSummary returns a short readable form of a container selector,
// e.g. "envoy,role:sidecar".
func ContainerSummary(s *v1alpha1.ContainerSelector) string {
	parts := make([]string, 0, len(s.Names)+len(s.Roles))
	parts = append(parts, s.Names...)
	for _, r := range s.Roles {
		parts = append(parts, "role:"+string(r))
	}
	return strings.Join(parts, ",")
}

// policyView is a valid policy with its RuleSet, for the analysis.
type policyView struct {
	p  *v1alpha1.ContainerNetworkPolicy
	rs *RuleSet
}

// Analyze computes what policy p does to the pods of its namespace. ns is
// that namespace (nil if not known: its labels then select nothing), as
// Cilium selects pods by identity labels, namespace labels included. pods
// may hold pods of any namespace; all holds the policies of the namespace
// (p itself may or may not be among them) and is used to see which
// containers other policies restrict. Invalid policies in all are ignored.
func Analyze(p *v1alpha1.ContainerNetworkPolicy, ns *corev1.Namespace, pods []corev1.Pod, all []v1alpha1.ContainerNetworkPolicy) Analysis {
	a := Analysis{ContainerSummary: ContainerSummary(&p.Spec.Containers)}
	rs, err := ToRuleSet(p)
	if err != nil {
		a.Invalid = true
		return a
	}
	a.FilteredSelectorKeys = FilteredKeys(&p.Spec.PodSelector)
	self := policyView{p: p, rs: rs}
	for _, r := range rs.Rules {
		for _, pr := range r.Ports {
			a.HasL7 = a.HasL7 || pr.L7
		}
	}

	// The other policies matter only for L7 precision; parse them once, and
	// only when needed, because the controller calls Analyze for every
	// policy of a namespace.
	var others []policyView
	othersDone := false
	otherPolicies := func() []policyView {
		if othersDone {
			return others
		}
		othersDone = true
		for i := range all {
			q := &all[i]
			if q.Namespace != p.Namespace || q.Name == p.Name {
				continue
			}
			if qrs, err := ToRuleSet(q); err == nil {
				others = append(others, policyView{p: q, rs: qrs})
			}
		}
		return others
	}

	seenNames := map[string]bool{}
	conflicts := map[string]*L7Conflict{}
	for i := range pods {
		pod := &pods[i]
		if pod.Namespace != p.Namespace || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
			continue
		}
		if !SelectsPod(rs.PodSelector, pod, ns) {
			continue
		}
		a.SelectedPods++
		containers := PodContainers(pod)
		for _, c := range containers {
			seenNames[c.Name] = true
			if p.Spec.Containers.Selects(c.Name, c.Role) {
				a.SelectedContainers++
			}
		}
		a.Risks = append(a.Risks, PodRisks(&p.Spec.Containers, pod)...)
		if !a.HasL7 {
			continue
		}
		var podPolicies []policyView
		for _, o := range otherPolicies() {
			if SelectsPod(o.rs.PodSelector, pod, ns) {
				podPolicies = append(podPolicies, o)
			}
		}
		for _, c := range l7Conflicts(pod, containers, self, podPolicies) {
			// Pods of one workload share a conflict; report it once.
			key := strings.Join([]string{string(c.Direction), c.Peer, c.Port, strings.Join(c.Containers, ",")}, "|")
			if _, ok := conflicts[key]; !ok {
				conflicts[key] = &c
			}
		}
	}
	if a.SelectedPods > 0 {
		for _, n := range p.Spec.Containers.Names {
			if !seenNames[n] {
				a.UnknownContainers = append(a.UnknownContainers, n)
			}
		}
	}
	sortRisks(a.Risks)
	for _, c := range conflicts {
		a.L7Conflicts = append(a.L7Conflicts, *c)
	}
	sort.Slice(a.L7Conflicts, func(i, j int) bool {
		x, y := a.L7Conflicts[i], a.L7Conflicts[j]
		return fmt.Sprint(x.Pod, x.Direction, x.Peer, x.Port) < fmt.Sprint(y.Pod, y.Direction, y.Peer, y.Port)
	})
	return a
}

// l7Conflicts finds, for each L7 port range of self, the containers of the pod
// that can reach the same peer and port, and reports the grant when their L7
// rules differ from self's.
func l7Conflicts(pod *corev1.Pod, containers []Container, self policyView, others []policyView) []L7Conflict {
	var out []L7Conflict
	for _, r := range self.rs.Rules {
		if r.Action != Allow || r.Peer.Kind == PeerContainers {
			continue
		}
		for _, pr := range r.Ports {
			if !pr.L7 {
				continue
			}
			want := httpKey(pr.HTTP)
			var reach []string
			differ := false
			for _, c := range containers {
				if c.Role == v1alpha1.RoleInit {
					// Init containers have exited before the sidecars'
					// peers matter; their traffic is not concurrent.
					continue
				}
				if self.p.Spec.Containers.Selects(c.Name, c.Role) {
					reach = append(reach, c.Name)
					continue
				}
				restricted, key, reachable := reachBy(c, r.Direction, r.Peer, pr, others)
				switch {
				case restricted && reachable:
					reach = append(reach, c.Name)
					differ = differ || key != want
				case !restricted && !exclusive(self.p):
					// Shared grant: the container reaches the port
					// with no L7 rules of its own, and gets ours.
					reach = append(reach, c.Name)
					differ = true
				}
			}
			if differ && len(reach) > 1 {
				out = append(out, L7Conflict{
					Pod:        pod.Name,
					Direction:  r.Direction,
					Peer:       peerString(r.Peer),
					Port:       portString(pr),
					Containers: reach,
				})
			}
		}
	}
	return out
}

// reachBy reports whether container c is restricted in dir by one of the
// other policies, and if so whether one of their allow rules overlaps peer and
// port, with the key of that rule's L7 rules.
func reachBy(c Container, dir Direction, peer Peer, port PortRange, others []policyView) (restricted bool, l7 string, reachable bool) {
	for _, o := range others {
		if !o.p.Spec.Containers.Selects(c.Name, c.Role) {
			continue
		}
		if dir == Egress && o.rs.DefaultDeny.Egress || dir == Ingress && o.rs.DefaultDeny.Ingress {
			restricted = true
		}
		for _, r := range o.rs.Rules {
			if r.Direction != dir || r.Action != Allow || !peersOverlap(r.Peer, peer) {
				continue
			}
			if len(r.Ports) == 0 {
				return true, "", true
			}
			for _, pr := range r.Ports {
				if portsOverlap(pr, port) {
					return true, httpKey(pr.HTTP), true
				}
			}
		}
	}
	return restricted, "", false
}

// peersOverlap is conservative without identities: equal peers overlap, and
// so do a wildcard (any peer, entity all) and anything outside the pod.
func peersOverlap(a, b Peer) bool {
	if a.Kind == PeerContainers || b.Kind == PeerContainers {
		return false
	}
	wild := func(p Peer) bool { return p.Kind == PeerAny || p.Kind == PeerEntity && p.Entity == api.EntityAll }
	if wild(a) || wild(b) {
		return true
	}
	return peerString(a) == peerString(b)
}

func portsOverlap(a, b PortRange) bool {
	if a.Protocol != ProtoAny && b.Protocol != ProtoAny && a.Protocol != b.Protocol {
		return false
	}
	return a.From <= b.To && b.From <= a.To
}

func httpKey(h api.PortRulesHTTP) string {
	keys := make([]string, 0, len(h))
	for _, r := range h {
		b, _ := json.Marshal(r)
		keys = append(keys, string(b))
	}
	slices.Sort(keys)
	return strings.Join(keys, "\n")
}

func peerString(p Peer) string {
	switch p.Kind {
	case PeerEndpoints:
		return "endpoints " + selectorString(p.Selector)
	case PeerEntity:
		return "entity " + string(p.Entity)
	case PeerCIDR:
		s := "cidr " + p.CIDR
		if len(p.Except) > 0 {
			s += " except " + strings.Join(p.Except, ",")
		}
		return s
	case PeerContainers:
		return "containers " + ContainerSummary(p.Containers)
	case PeerFQDN:
		return "fqdn " + FQDNString(p.FQDN)
	}
	return "any"
}

func portString(pr PortRange) string {
	switch {
	case pr.From == 0 && pr.To == 65535:
		return string(pr.Protocol) + "/any"
	case pr.To > pr.From:
		return fmt.Sprintf("%s/%d-%d", pr.Protocol, pr.From, pr.To)
	}
	return fmt.Sprintf("%s/%d", pr.Protocol, pr.From)
}

// selectorString prints a parsed selector for people: label sources are
// dropped, keys are sorted.
func selectorString(es *api.EndpointSelector) string {
	if es == nil || es.LabelSelector == nil {
		return "{}"
	}
	plain := func(k string) string {
		if _, rest, ok := strings.Cut(k, ":"); ok {
			return rest
		}
		return k
	}
	var parts []string
	for k, v := range es.MatchLabels {
		parts = append(parts, plain(k)+"="+v)
	}
	for _, r := range es.MatchExpressions {
		s := plain(r.Key) + " " + string(r.Operator)
		if len(r.Values) > 0 {
			s += " (" + strings.Join(r.Values, ",") + ")"
		}
		parts = append(parts, s)
	}
	slices.Sort(parts)
	if len(parts) == 0 {
		return "{}"
	}
	return "{" + strings.Join(parts, ", ") + "}"
}

// MatchFQDN reports whether Cilium's matcher of a toFQDNs selector
// (FQDNSelector.ToRegex) matches a DNS name, which Cilium lower-cases and
// fully qualifies before it matches.
func MatchFQDN(re *regexp.Regexp, name string) bool {
	return re != nil && re.MatchString(dns.FQDN(strings.ToLower(name)))
}

// FQDNString is a toFQDNs selector as a user wrote it: the name, or the
// pattern.
func FQDNString(f *api.FQDNSelector) string {
	if f == nil {
		return ""
	}
	if f.MatchName != "" {
		return f.MatchName
	}
	return f.MatchPattern
}
