package v1alpha1

import (
	slim_metav1 "github.com/cilium/cilium/pkg/k8s/slim/k8s/apis/meta/v1"
	"github.com/cilium/cilium/pkg/policy/api"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Limits on list sizes. They exist so that the apiserver can bound the cost of
// the CEL rules below (a CEL rule under an unbounded list is estimated at the
// maximum request size and the CRD is refused), and they are far above what a
// hand-written policy needs.
const (
	// MaxRules bounds each of spec.egress, spec.ingress, spec.egressDeny and
	// spec.ingressDeny.
	MaxRules = 64
	// MaxPortRules bounds toPorts in one rule.
	MaxPortRules = 16
	// MaxPorts bounds ports in one toPorts entry; Cilium's Sanitize refuses more.
	MaxPorts = 40
	// MaxContainerNames bounds a ContainerSelector's names.
	MaxContainerNames = 32
	// MaxFQDNSelectors bounds toFQDNs in one rule.
	MaxFQDNSelectors = 16
)

// ContainerRole names a kind of container in a pod spec.
//
// +kubebuilder:validation:Enum=sidecar;init;app;ephemeral
type ContainerRole string

const (
	// RoleSidecar is an init container with restartPolicy Always (a native
	// Kubernetes sidecar): it keeps running next to the app containers.
	RoleSidecar ContainerRole = "sidecar"
	// RoleInit is an init container that runs to completion before the app
	// containers start (any init container that is not a sidecar).
	RoleInit ContainerRole = "init"
	// RoleApp is a regular container from spec.containers.
	RoleApp ContainerRole = "app"
	// RoleEphemeral is a debug container from spec.ephemeralContainers.
	RoleEphemeral ContainerRole = "ephemeral"
)

// ContainerSelector selects containers of a pod by name and/or by role. A
// container is selected when its name is in names or its role is in roles.
//
// +kubebuilder:validation:XValidation:rule="(has(self.names) && size(self.names) > 0) || (has(self.roles) && size(self.roles) > 0)",message="at least one container name or role is required"
type ContainerSelector struct {
	// Names are container names (spec.containers, spec.initContainers or
	// spec.ephemeralContainers of the pod).
	//
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:validation:items:MaxLength=63
	// +kubebuilder:validation:items:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Names []string `json:"names,omitempty"`

	// Roles are container roles: sidecar (an init container with
	// restartPolicy Always), init (any other init container), app (a regular
	// container) or ephemeral (a debug container).
	//
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=4
	Roles []ContainerRole `json:"roles,omitempty"`
}

// PolicyMode says whether sidewall enforces a policy or only reports what it
// would do.
//
// +kubebuilder:validation:Enum=Enforce;Audit
type PolicyMode string

const (
	// ModeEnforce drops traffic the policy does not allow.
	ModeEnforce PolicyMode = "Enforce"
	// ModeAudit lets all traffic through and reports the verdict sidewall
	// would have given. No CiliumNetworkPolicy is generated in this mode,
	// because Cilium has no per-policy audit and its proxy would enforce the
	// L7 rules.
	ModeAudit PolicyMode = "Audit"
)

// UnclassifiedAction says what the node agent does with traffic of a container
// of a restricted pod before it knows which container it is (e.g. a container
// that started before its cgroup was found).
//
// +kubebuilder:validation:Enum=Deny;Allow
type UnclassifiedAction string

const (
	// UnclassifiedDeny treats the traffic as if it came from a selected
	// container with no grants: fail closed.
	UnclassifiedDeny UnclassifiedAction = "Deny"
	// UnclassifiedAllow lets the traffic through until the container is known.
	UnclassifiedAllow UnclassifiedAction = "Allow"
)

// PortProtocol is Cilium's PortProtocol restricted to what sidewall enforces
// per container: a numeric port (0 means any port, as in Cilium), an optional
// endPort for a range, and protocol TCP, UDP, SCTP or ANY.
//
// +kubebuilder:validation:XValidation:rule="self.port.matches('^[0-9]+$')",message="port must be a port number: named ports are not supported for container scope",fieldPath=".port"
// +kubebuilder:validation:XValidation:rule="!self.port.matches('^[0-9]+$') || int(self.port) <= 65535",message="port must be a number from 0 to 65535",fieldPath=".port"
// +kubebuilder:validation:XValidation:rule="!has(self.endPort) || self.endPort == 0 || !self.port.matches('^[0-9]+$') || self.endPort >= int(self.port)",message="endPort must not be lower than port",fieldPath=".endPort"
type PortProtocol struct {
	// Port is an L4 port number from 0 to 65535; 0 means any port.
	//
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=5
	Port string `json:"port"`

	// EndPort makes the rule cover the range port..endPort.
	//
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=65535
	EndPort int32 `json:"endPort,omitempty"`

	// Protocol is the L4 protocol: TCP, UDP, SCTP or ANY. If ANY, omitted or
	// empty, any of TCP, UDP and SCTP matches.
	//
	// +optional
	// +kubebuilder:validation:Enum=TCP;UDP;SCTP;ANY
	Protocol api.L4Proto `json:"protocol,omitempty"`
}

// PortRule is Cilium's PortRule: ports with optional L7 rules. Only ports and
// rules.http are supported for container scope; the TLS, serverNames and
// listener fields are declared so that admission refuses them by name.
//
// +kubebuilder:validation:XValidation:rule="!has(self.terminatingTLS)",message="terminatingTLS is not supported for container scope",fieldPath=".terminatingTLS"
// +kubebuilder:validation:XValidation:rule="!has(self.originatingTLS)",message="originatingTLS is not supported for container scope",fieldPath=".originatingTLS"
// +kubebuilder:validation:XValidation:rule="!has(self.serverNames)",message="serverNames is not supported for container scope",fieldPath=".serverNames"
// +kubebuilder:validation:XValidation:rule="!has(self.listener)",message="listener is not supported for container scope",fieldPath=".listener"
// +kubebuilder:validation:XValidation:rule="!has(self.rules) || !has(self.rules.dns)",message="rules.dns is not supported for container scope: only rules.http is",fieldPath=".rules.dns"
// +kubebuilder:validation:XValidation:rule="!has(self.rules) || !has(self.rules.http) || (has(self.ports) && size(self.ports) > 0 && self.ports.all(p, has(p.protocol) && p.protocol == 'TCP' && p.port != '0'))",message="rules.http needs ports with protocol TCP and a port other than 0"
type PortRule struct {
	// Ports is a list of L4 port/protocol.
	//
	// +optional
	// +kubebuilder:validation:MaxItems=40
	Ports []PortProtocol `json:"ports,omitempty"`

	// Rules holds L7 rules: only http is supported for container scope. Its
	// requests go through Cilium's proxy, which enforces them per pod.
	//
	// +optional
	Rules *api.L7Rules `json:"rules,omitempty"`

	// TerminatingTLS is not supported for container scope.
	//
	// +optional
	TerminatingTLS *api.TLSContext `json:"terminatingTLS,omitempty"`

	// OriginatingTLS is not supported for container scope.
	//
	// +optional
	OriginatingTLS *api.TLSContext `json:"originatingTLS,omitempty"`

	// ServerNames is not supported for container scope.
	//
	// +optional
	ServerNames []api.ServerName `json:"serverNames,omitempty"`

	// Listener is not supported for container scope.
	//
	// +optional
	Listener *api.Listener `json:"listener,omitempty"`
}

// PortDenyRule is Cilium's PortDenyRule: ports without L7 rules.
type PortDenyRule struct {
	// Ports is a list of L4 port/protocol.
	//
	// +optional
	// +kubebuilder:validation:MaxItems=40
	Ports []PortProtocol `json:"ports,omitempty"`
}

// EgressRule is Cilium's EgressRule plus toContainers.
//
// Cilium's EgressCommonRule (the peers) is embedded as is. toPorts is
// sidewall's PortRule with the same JSON form as Cilium's, re-declared because
// admission checks each port with CEL and the apiserver accepts CEL rules only
// under bounded lists and strings, which Cilium's types do not declare.
// toFQDNs is Cilium's, with at most MaxFQDNSelectors entries; icmps and
// authentication are declared only so that admission can refuse them by
// name.
//
// +kubebuilder:validation:XValidation:rule="!has(self.toFQDNs) || self.toFQDNs.all(f, has(f.matchName) != has(f.matchPattern))",message="each toFQDNs entry needs exactly one of matchName and matchPattern",fieldPath=".toFQDNs"
// +kubebuilder:validation:XValidation:rule="!has(self.toFQDNs) || !(has(self.toEndpoints) || has(self.toCIDR) || has(self.toCIDRSet) || has(self.toEntities) || has(self.toContainers))",message="toFQDNs cannot be combined with toEndpoints, toCIDR, toCIDRSet, toEntities or toContainers in one rule: write a separate rule",fieldPath=".toFQDNs"
// +kubebuilder:validation:XValidation:rule="!has(self.toFQDNs) || !has(self.toPorts) || self.toPorts.all(p, !has(p.rules))",message="toPorts[].rules (L7) cannot be used with toFQDNs for container scope",fieldPath=".toPorts"
// +kubebuilder:validation:XValidation:rule="!has(self.toServices)",message="toServices is not supported for container scope",fieldPath=".toServices"
// +kubebuilder:validation:XValidation:rule="!has(self.toGroups)",message="toGroups is not supported for container scope",fieldPath=".toGroups"
// +kubebuilder:validation:XValidation:rule="!has(self.toRequires)",message="toRequires is not supported for container scope",fieldPath=".toRequires"
// +kubebuilder:validation:XValidation:rule="!has(self.toNodes)",message="toNodes is not supported for container scope",fieldPath=".toNodes"
// +kubebuilder:validation:XValidation:rule="!has(self.icmps)",message="icmps is not supported for container scope",fieldPath=".icmps"
// +kubebuilder:validation:XValidation:rule="!has(self.authentication)",message="authentication is not supported for container scope",fieldPath=".authentication"
// +kubebuilder:validation:XValidation:rule="!has(self.toContainers) || !(has(self.toEndpoints) || has(self.toCIDR) || has(self.toCIDRSet) || has(self.toEntities))",message="toContainers cannot be combined with toEndpoints, toCIDR, toCIDRSet or toEntities in one rule: write a separate rule"
// +kubebuilder:validation:XValidation:rule="!has(self.toContainers) || !has(self.toPorts) || self.toPorts.all(p, !has(p.rules))",message="toPorts[].rules (L7) cannot be used with toContainers: pod-local traffic does not pass Cilium's proxy"
// +kubebuilder:validation:XValidation:rule="[has(self.toEndpoints), has(self.toCIDR), has(self.toCIDRSet), has(self.toEntities)].filter(x, x).size() <= 1",message="toEndpoints, toCIDR, toCIDRSet and toEntities cannot be combined in one rule: write one rule per peer kind"
type EgressRule struct {
	api.EgressCommonRule `json:",inline"`

	// ToPorts is a list of destination ports identified by port number and
	// protocol which the containers subject to the rule are allowed to
	// connect to, with optional L7 HTTP rules.
	//
	// +optional
	// +kubebuilder:validation:MaxItems=16
	ToPorts []PortRule `json:"toPorts,omitempty"`

	// ToFQDNs allows the addresses that a DNS answer received by the
	// container itself maps a matching name to, while the answer's TTL
	// lasts, on the rule's toPorts (every port without toPorts). Each
	// entry is Cilium's FQDNSelector: matchName (a literal name) or
	// matchPattern (with "*" wildcards, Cilium's syntax). The other
	// containers of the pod learn nothing from the container's lookups.
	//
	// +optional
	// +kubebuilder:validation:MaxItems=16
	ToFQDNs api.FQDNSelectorSlice `json:"toFQDNs,omitempty"`

	// ICMPs is not supported for container scope.
	//
	// +optional
	ICMPs api.ICMPRules `json:"icmps,omitempty"`

	// Authentication is not supported for container scope.
	//
	// +optional
	Authentication *api.Authentication `json:"authentication,omitempty"`

	// ToContainers selects containers of the same pod as peers. Traffic
	// between containers of one pod (over loopback or to the pod's own IP) is
	// invisible to pod-level policy; for a container that is default-deny in
	// egress it is allowed only by a rule with toContainers. Such a rule may
	// have toPorts (the peer container's ports) but no other peer.
	//
	// +optional
	ToContainers *ContainerSelector `json:"toContainers,omitempty"`
}

// EgressDenyRule is Cilium's EgressDenyRule plus toContainers.
//
// +kubebuilder:validation:XValidation:rule="!has(self.toServices)",message="toServices is not supported for container scope",fieldPath=".toServices"
// +kubebuilder:validation:XValidation:rule="!has(self.toGroups)",message="toGroups is not supported for container scope",fieldPath=".toGroups"
// +kubebuilder:validation:XValidation:rule="!has(self.toRequires)",message="toRequires is not supported for container scope",fieldPath=".toRequires"
// +kubebuilder:validation:XValidation:rule="!has(self.toNodes)",message="toNodes is not supported for container scope",fieldPath=".toNodes"
// +kubebuilder:validation:XValidation:rule="!has(self.icmps)",message="icmps is not supported for container scope",fieldPath=".icmps"
// +kubebuilder:validation:XValidation:rule="!has(self.toContainers) || !(has(self.toEndpoints) || has(self.toCIDR) || has(self.toCIDRSet) || has(self.toEntities))",message="toContainers cannot be combined with toEndpoints, toCIDR, toCIDRSet or toEntities in one rule: write a separate rule"
// +kubebuilder:validation:XValidation:rule="[has(self.toEndpoints), has(self.toCIDR), has(self.toCIDRSet), has(self.toEntities)].filter(x, x).size() <= 1",message="toEndpoints, toCIDR, toCIDRSet and toEntities cannot be combined in one rule: write one rule per peer kind"
type EgressDenyRule struct {
	api.EgressCommonRule `json:",inline"`

	// ToPorts is a list of destination ports which the containers subject to
	// the rule are not allowed to connect to.
	//
	// +optional
	// +kubebuilder:validation:MaxItems=16
	ToPorts []PortDenyRule `json:"toPorts,omitempty"`

	// ICMPs is not supported for container scope.
	//
	// +optional
	ICMPs api.ICMPRules `json:"icmps,omitempty"`

	// ToContainers selects containers of the same pod as peers to deny.
	//
	// +optional
	ToContainers *ContainerSelector `json:"toContainers,omitempty"`
}

// IngressRule is Cilium's IngressRule plus fromContainers.
//
// +kubebuilder:validation:XValidation:rule="!has(self.toFQDNs)",message="toFQDNs is egress only: a rule in ingress cannot select peers by DNS name",fieldPath=".toFQDNs"
// +kubebuilder:validation:XValidation:rule="!has(self.fromGroups)",message="fromGroups is not supported for container scope",fieldPath=".fromGroups"
// +kubebuilder:validation:XValidation:rule="!has(self.fromRequires)",message="fromRequires is not supported for container scope",fieldPath=".fromRequires"
// +kubebuilder:validation:XValidation:rule="!has(self.fromNodes)",message="fromNodes is not supported for container scope",fieldPath=".fromNodes"
// +kubebuilder:validation:XValidation:rule="!has(self.icmps)",message="icmps is not supported for container scope",fieldPath=".icmps"
// +kubebuilder:validation:XValidation:rule="!has(self.authentication)",message="authentication is not supported for container scope",fieldPath=".authentication"
// +kubebuilder:validation:XValidation:rule="!has(self.fromContainers) || !(has(self.fromEndpoints) || has(self.fromCIDR) || has(self.fromCIDRSet) || has(self.fromEntities))",message="fromContainers cannot be combined with fromEndpoints, fromCIDR, fromCIDRSet or fromEntities in one rule: write a separate rule"
// +kubebuilder:validation:XValidation:rule="!has(self.fromContainers) || !has(self.toPorts) || self.toPorts.all(p, !has(p.rules))",message="toPorts[].rules (L7) cannot be used with fromContainers: pod-local traffic does not pass Cilium's proxy"
// +kubebuilder:validation:XValidation:rule="[has(self.fromEndpoints), has(self.fromCIDR), has(self.fromCIDRSet), has(self.fromEntities)].filter(x, x).size() <= 1",message="fromEndpoints, fromCIDR, fromCIDRSet and fromEntities cannot be combined in one rule: write one rule per peer kind"
type IngressRule struct {
	api.IngressCommonRule `json:",inline"`

	// ToPorts is a list of ports of the containers subject to the rule which
	// the peers are allowed to connect to, with optional L7 HTTP rules.
	//
	// +optional
	// +kubebuilder:validation:MaxItems=16
	ToPorts []PortRule `json:"toPorts,omitempty"`

	// ICMPs is not supported for container scope.
	//
	// +optional
	ICMPs api.ICMPRules `json:"icmps,omitempty"`

	// Authentication is not supported for container scope.
	//
	// +optional
	Authentication *api.Authentication `json:"authentication,omitempty"`

	// FromContainers selects containers of the same pod as peers. For a
	// container that is default-deny in ingress, pod-local traffic is allowed
	// only by a rule with fromContainers.
	//
	// +optional
	FromContainers *ContainerSelector `json:"fromContainers,omitempty"`

	// ToFQDNs is declared only so that admission refuses it by name:
	// toFQDNs selects egress peers.
	//
	// +optional
	// +kubebuilder:validation:MaxItems=16
	ToFQDNs api.FQDNSelectorSlice `json:"toFQDNs,omitempty"`
}

// IngressDenyRule is Cilium's IngressDenyRule plus fromContainers.
//
// +kubebuilder:validation:XValidation:rule="!has(self.fromGroups)",message="fromGroups is not supported for container scope",fieldPath=".fromGroups"
// +kubebuilder:validation:XValidation:rule="!has(self.fromRequires)",message="fromRequires is not supported for container scope",fieldPath=".fromRequires"
// +kubebuilder:validation:XValidation:rule="!has(self.fromNodes)",message="fromNodes is not supported for container scope",fieldPath=".fromNodes"
// +kubebuilder:validation:XValidation:rule="!has(self.icmps)",message="icmps is not supported for container scope",fieldPath=".icmps"
// +kubebuilder:validation:XValidation:rule="!has(self.fromContainers) || !(has(self.fromEndpoints) || has(self.fromCIDR) || has(self.fromCIDRSet) || has(self.fromEntities))",message="fromContainers cannot be combined with fromEndpoints, fromCIDR, fromCIDRSet or fromEntities in one rule: write a separate rule"
// +kubebuilder:validation:XValidation:rule="[has(self.fromEndpoints), has(self.fromCIDR), has(self.fromCIDRSet), has(self.fromEntities)].filter(x, x).size() <= 1",message="fromEndpoints, fromCIDR, fromCIDRSet and fromEntities cannot be combined in one rule: write one rule per peer kind"
type IngressDenyRule struct {
	api.IngressCommonRule `json:",inline"`

	// ToPorts is a list of ports of the containers subject to the rule which
	// the peers are not allowed to connect to.
	//
	// +optional
	// +kubebuilder:validation:MaxItems=16
	ToPorts []PortDenyRule `json:"toPorts,omitempty"`

	// ICMPs is not supported for container scope.
	//
	// +optional
	ICMPs api.ICMPRules `json:"icmps,omitempty"`

	// FromContainers selects containers of the same pod as peers to deny.
	//
	// +optional
	FromContainers *ContainerSelector `json:"fromContainers,omitempty"`
}

// AdmissionMode says what the API server does with a new pod that would
// carry a BypassRisk for a container the policy restricts.
//
// +kubebuilder:validation:Enum=Enforce;Audit;None
type AdmissionMode string

const (
	// AdmissionEnforce refuses such pods: the controller generates and
	// binds a ValidatingAdmissionPolicy with validationActions Deny.
	AdmissionEnforce AdmissionMode = "Enforce"
	// AdmissionAudit admits them with a warning to the client and an audit
	// annotation (validationActions Warn and Audit).
	AdmissionAudit AdmissionMode = "Audit"
	// AdmissionNone generates no admission policy; the BypassRisk condition
	// and Events still report risky containers.
	AdmissionNone AdmissionMode = "None"
)

// ContainerNetworkPolicySpec is the desired behaviour of a ContainerNetworkPolicy.
//
// +kubebuilder:validation:XValidation:rule="(has(self.egress) && size(self.egress) > 0) || (has(self.ingress) && size(self.ingress) > 0) || (has(self.egressDeny) && size(self.egressDeny) > 0) || (has(self.ingressDeny) && size(self.ingressDeny) > 0)",message="at least one of egress, ingress, egressDeny or ingressDeny is required"
type ContainerNetworkPolicySpec struct {
	// PodSelector selects the pods of the policy's namespace, in the same
	// form and with the same meaning as a CiliumNetworkPolicy's
	// endpointSelector. An empty selector selects every pod of the namespace.
	//
	// +required
	PodSelector slim_metav1.LabelSelector `json:"podSelector"`

	// Containers selects the containers of the selected pods that the policy
	// restricts.
	//
	// +required
	Containers ContainerSelector `json:"containers"`

	// Egress rules allow traffic from the selected containers. A selected
	// container is default-deny in egress when a policy selecting it has
	// egress or egressDeny rules.
	//
	// +optional
	// +kubebuilder:validation:MaxItems=64
	Egress []EgressRule `json:"egress,omitempty"`

	// Ingress rules allow traffic to the selected containers. A selected
	// container is default-deny in ingress when a policy selecting it has
	// ingress or ingressDeny rules.
	//
	// +optional
	// +kubebuilder:validation:MaxItems=64
	Ingress []IngressRule `json:"ingress,omitempty"`

	// EgressDeny rules deny traffic from the selected containers. Deny wins
	// over any allow.
	//
	// +optional
	// +kubebuilder:validation:MaxItems=64
	EgressDeny []EgressDenyRule `json:"egressDeny,omitempty"`

	// IngressDeny rules deny traffic to the selected containers. Deny wins
	// over any allow.
	//
	// +optional
	// +kubebuilder:validation:MaxItems=64
	IngressDeny []IngressDenyRule `json:"ingressDeny,omitempty"`

	// Mode is Enforce (drop what is not allowed) or Audit (report only).
	//
	// +optional
	// +kubebuilder:default=Enforce
	Mode PolicyMode `json:"mode,omitempty"`

	// ShareGrantsWithPod turns off exclusivity: by default the grants of this
	// policy, which the generated CiliumNetworkPolicy opens for the whole
	// pod, are denied by sidewall to the pod's other containers. Set it to let
	// the other containers use them too.
	//
	// +optional
	// +kubebuilder:default=false
	ShareGrantsWithPod bool `json:"shareGrantsWithPod,omitempty"`

	// Unclassified says what the node agent does with traffic of a selected
	// pod's container that it has not classified yet: Deny (the default, fail
	// closed) or Allow.
	//
	// +optional
	// +kubebuilder:default=Deny
	Unclassified UnclassifiedAction `json:"unclassified,omitempty"`

	// Admission says whether new pods whose restricted containers could
	// escape container-level enforcement (the BypassRisk reasons) are
	// refused (Enforce), admitted with a warning (Audit) or not checked at
	// admission (None, the default: the BypassRisk condition still reports
	// them). Enforce and Audit make the controller generate a cluster-scoped
	// ValidatingAdmissionPolicy and binding for the policy.
	//
	// +optional
	// +kubebuilder:default=None
	Admission AdmissionMode `json:"admission,omitempty"`
}

// Condition types of a ContainerNetworkPolicy.
const (
	// ConditionAccepted is True when the policy is valid for container scope.
	ConditionAccepted = "Accepted"
	// ConditionTranslated is True when the CiliumNetworkPolicy was generated
	// and applied (or none is needed).
	ConditionTranslated = "Translated"
	// ConditionReady is True when the policy is accepted, translated and in
	// force.
	ConditionReady = "Ready"
	// ConditionL7Precise is False when an L7-restricted peer:port is reachable
	// by several containers of a pod with different L7 rules, so Cilium's proxy
	// enforces the union of their rules.
	ConditionL7Precise = "L7Precise"
	// ConditionBypassRisk is True when a container the policy restricts, in
	// a selected pod, could escape container-level enforcement (privileged,
	// a dangerous capability, a host namespace, a risky hostPath mount); the
	// message names the pod, the container and the reasons.
	ConditionBypassRisk = "BypassRisk"
)

// Condition reasons of a ContainerNetworkPolicy.
const (
	// ReasonValid: Accepted=True.
	ReasonValid = "Valid"
	// ReasonInvalid: Accepted=False, the message names the field.
	ReasonInvalid = "Invalid"
	// ReasonUnknownContainer: a name in spec.containers.names is in no
	// selected pod (Accepted stays True; reported on Ready).
	ReasonUnknownContainer = "UnknownContainer"
	// ReasonNoPodsSelected: no pod matches the pod selector.
	ReasonNoPodsSelected = "NoPodsSelected"
	// ReasonGenerated: Translated=True, the CiliumNetworkPolicy is applied.
	ReasonGenerated = "Generated"
	// ReasonNotNeeded: Translated=True, the policy needs no
	// CiliumNetworkPolicy (audit mode, or deny and intra-pod rules only).
	ReasonNotNeeded = "NotNeeded"
	// ReasonTranslationFailed: Translated=False.
	ReasonTranslationFailed = "TranslationFailed"
	// ReasonApplyFailed: Translated=False, the apiserver refused the
	// CiliumNetworkPolicy.
	ReasonApplyFailed = "ApplyFailed"
	// ReasonNameConflict: Translated=False, an object with the name of
	// the generated CiliumNetworkPolicy exists and this policy does not
	// control it (a user's, or another policy's); it is left alone and
	// nothing is granted.
	ReasonNameConflict = "NameConflict"
	// ReasonReady: Ready=True.
	ReasonReady = "Ready"
	// ReasonNotReady: Ready=False because Accepted or Translated is not True.
	ReasonNotReady = "NotReady"
	// ReasonNoL7Rules: L7Precise=True, the policy has no L7 rules.
	ReasonNoL7Rules = "NoL7Rules"
	// ReasonExclusive: L7Precise=True, only the selected containers can reach
	// the L7-restricted peers and ports.
	ReasonExclusive = "Exclusive"
	// ReasonSharedPort: L7Precise=False.
	ReasonSharedPort = "SharedPort"
	// ReasonBreakoutRisk: BypassRisk=True, the message names pods,
	// containers and reasons.
	ReasonBreakoutRisk = "BreakoutRisk"
	// ReasonNoBreakoutRisk: BypassRisk=False.
	ReasonNoBreakoutRisk = "NoBreakoutRisk"
	// ReasonAdmissionFailed: the admission policy could not be generated
	// or applied (Event only).
	ReasonAdmissionFailed = "AdmissionFailed"
)

// ContainerNetworkPolicyStatus is the observed state of a ContainerNetworkPolicy.
type ContainerNetworkPolicyStatus struct {
	// Conditions: Accepted, Translated, Ready, L7Precise and BypassRisk.
	//
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// ObservedGeneration is the spec generation this status describes.
	//
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// GeneratedPolicy is the name of the CiliumNetworkPolicy generated from
	// this policy in the same namespace, empty when none is needed.
	//
	// +optional
	GeneratedPolicy string `json:"generatedPolicy,omitempty"`

	// SelectedPods counts the pods the pod selector selects.
	//
	// +optional
	SelectedPods int32 `json:"selectedPods,omitempty"`

	// SelectedContainers counts the containers of those pods that the policy
	// restricts.
	//
	// +optional
	SelectedContainers int32 `json:"selectedContainers,omitempty"`

	// ContainerSummary is a short readable form of spec.containers for
	// `kubectl get`, e.g. "envoy,role:sidecar".
	//
	// +optional
	ContainerSummary string `json:"containerSummary,omitempty"`
}

// ContainerNetworkPolicy restricts the network traffic of some containers of
// the pods it selects.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=ctrnp,categories=sidewall
// +kubebuilder:printcolumn:name="Mode",type=string,JSONPath=`.spec.mode`
// +kubebuilder:printcolumn:name="Containers",type=string,JSONPath=`.status.containerSummary`
// +kubebuilder:printcolumn:name="Pods",type=integer,JSONPath=`.status.selectedPods`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="BypassRisk",type=string,JSONPath=`.status.conditions[?(@.type=="BypassRisk")].status`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type ContainerNetworkPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// Spec is the desired behaviour of the policy.
	//
	// +required
	Spec ContainerNetworkPolicySpec `json:"spec"`

	// Status is the observed state of the policy.
	//
	// +optional
	Status ContainerNetworkPolicyStatus `json:"status,omitempty"`
}

// ContainerNetworkPolicyList is a list of ContainerNetworkPolicy.
//
// +kubebuilder:object:root=true
type ContainerNetworkPolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ContainerNetworkPolicy `json:"items"`
}

func init() {
	SchemeBuilder.Register(&ContainerNetworkPolicy{}, &ContainerNetworkPolicyList{})
}
