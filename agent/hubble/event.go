package hubble

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/gopacket/gopacket/layers"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"github.com/cilium/cilium/pkg/labels"
	monitorapi "github.com/cilium/cilium/pkg/monitor/api"
)

// ContainerLabel is the label key that names the restricted container on its
// side of a flow. It is carried with the "k8s" source like the pod's labels.
const ContainerLabel = "sidewall.io/container"

// PolicyKind is the kind reported in a flow's allowed-by/denied-by policies.
const PolicyKind = "ContainerNetworkPolicy"

// Direction is the direction of a verdict relative to the restricted
// container.
type Direction uint8

const (
	DirectionUnknown Direction = iota
	DirectionEgress
	DirectionIngress
)

func (d Direction) String() string {
	switch d {
	case DirectionEgress:
		return "egress"
	case DirectionIngress:
		return "ingress"
	default:
		return fmt.Sprintf("unknown(%d)", uint8(d))
	}
}

// Verdict is the datapath's decision for a packet.
type Verdict uint8

const (
	VerdictUnknown Verdict = iota
	// VerdictAllow: a rule allowed the packet.
	VerdictAllow
	// VerdictDeny: the packet was dropped by policy.
	VerdictDeny
	// VerdictAudit: the policy would have denied the packet but is in
	// Audit mode, so it passed.
	VerdictAudit
)

func (v Verdict) String() string {
	switch v {
	case VerdictAllow:
		return "allow"
	case VerdictDeny:
		return "deny"
	case VerdictAudit:
		return "audit"
	default:
		return fmt.Sprintf("unknown(%d)", uint8(v))
	}
}

// MatchType says which part of a rule matched; the values are Cilium's
// policy-verdict match types and show in compact output as
// "policy-verdict:<match> EGRESS".
type MatchType uint8

const (
	MatchNone      MatchType = monitorapi.PolicyMatchNone
	MatchL3Only    MatchType = monitorapi.PolicyMatchL3Only
	MatchL3L4      MatchType = monitorapi.PolicyMatchL3L4
	MatchL4Only    MatchType = monitorapi.PolicyMatchL4Only
	MatchAll       MatchType = monitorapi.PolicyMatchAll
	MatchL3Proto   MatchType = monitorapi.PolicyMatchL3Proto
	MatchProtoOnly MatchType = monitorapi.PolicyMatchProtoOnly
)

// IP protocol numbers an Event may carry.
const (
	ProtoICMP   uint8 = 1
	ProtoTCP    uint8 = 6
	ProtoUDP    uint8 = 17
	ProtoICMPv6 uint8 = 58
	ProtoSCTP   uint8 = 132
)

// TCP flag bits in the order of the TCP header's flags byte.
const (
	TCPFlagFIN uint8 = 1 << iota
	TCPFlagSYN
	TCPFlagRST
	TCPFlagPSH
	TCPFlagACK
	TCPFlagURG
	TCPFlagECE
	TCPFlagCWR
)

// Endpoint describes one side of a flow.
type Endpoint struct {
	Namespace string
	PodName   string
	// Labels in Cilium's "source:key=value" form; an entry without a source
	// is a Kubernetes label ("app=web" is "k8s:app=web").
	Labels []string
	// Identity is the security identity (Cilium's, or sidewall's own when
	// Cilium is absent).
	Identity uint32
	// ContainerName is set on the restricted side; it becomes the
	// sidewall.io/container label.
	ContainerName string
}

// Policy names the ContainerNetworkPolicy that decided.
type Policy struct {
	Namespace string
	Name      string
	// ID is the datapath's number for the policy.
	ID uint32
}

// Event is one datapath verdict, the input of Converter.Flow.
type Event struct {
	// Time of the verdict; zero means now.
	Time time.Time
	// CgroupID of the originating container's cgroup (the restricted side).
	CgroupID uint64
	// SocketCookie of the socket the packet belongs to, 0 if unknown.
	SocketCookie uint64
	Direction    Direction
	// SrcIP and DstIP must be the same family.
	SrcIP, DstIP netip.Addr
	// Proto is the IP protocol number (ProtoTCP, ProtoUDP, ...).
	Proto            uint8
	SrcPort, DstPort uint16
	// TCPFlags holds TCPFlag* bits; 0 means unknown.
	TCPFlags uint8
	// ICMPType and ICMPCode for ICMP and ICMPv6.
	ICMPType, ICMPCode uint8
	Verdict            Verdict
	// Reason says why, in the datapath's words (e.g. "unclassified" for a
	// fail-closed deny of a container not yet classified); it is shown in
	// the flow's extensions.
	Reason string
	// Hook is the datapath's attach point that decided ("cgroup_skb",
	// "connect", "sendmsg", "bind"); it is shown in the extensions. A bind
	// refused because another container holds the port is an ingress flow
	// to the container that tried, from the port's holder.
	Hook string
	// Note, when set, is added to the summary and the extensions: why a
	// deny happened, in words (e.g. the toFQDNs rule the address missed).
	Note string
	// DNS, when set, makes the flow the DNS proxy's L7 record of one
	// lookup, as Cilium's DNS proxy reports it: from the server to the
	// container, a reply.
	DNS         *DNS
	Match       MatchType
	Policy      Policy
	Source      Endpoint
	Destination Endpoint
}

// DNS is one lookup that the DNS proxy relayed.
type DNS struct {
	Query  string
	QTypes []string
	// IPs are the addresses of the answer; TTL its lowest TTL.
	IPs    []string
	TTL    uint32
	CNAMEs []string
	RCode  uint32
	// Learned names the toFQDNs selectors the addresses were learned for.
	Learned []string
}

// Converter turns Events into flows that name their node and emitter.
type Converter struct {
	NodeName string
	// Version of sidewall, reported as the emitter's version.
	Version string
}

// Flow builds the Hubble flow for ev. It fails, naming the field, on an
// event that cannot be a valid flow.
func (c Converter) Flow(ev *Event) (*flowpb.Flow, error) {
	if ev == nil {
		return nil, fmt.Errorf("invalid event: nil")
	}
	if !ev.SrcIP.IsValid() {
		return nil, fmt.Errorf("invalid event: SrcIP: not set")
	}
	if !ev.DstIP.IsValid() {
		return nil, fmt.Errorf("invalid event: DstIP: not set")
	}
	src, dst := ev.SrcIP.Unmap(), ev.DstIP.Unmap()
	if src.Is4() != dst.Is4() {
		return nil, fmt.Errorf("invalid event: SrcIP %s and DstIP %s: different IP families", src, dst)
	}
	ipVersion := flowpb.IPVersion_IPv6
	if src.Is4() {
		ipVersion = flowpb.IPVersion_IPv4
	}

	f := &flowpb.Flow{
		Uuid:         uuid.NewString(),
		Emitter:      &flowpb.Emitter{Name: EmitterName, Version: c.Version},
		NodeName:     c.NodeName,
		Type:         flowpb.FlowType_L3_L4,
		IsReply:      wrapperspb.Bool(false),
		CgroupId:     ev.CgroupID,
		SocketCookie: ev.SocketCookie,
		IP: &flowpb.IP{
			Source:      src.String(),
			Destination: dst.String(),
			IpVersion:   ipVersion,
		},
	}
	t := ev.Time
	if t.IsZero() {
		t = time.Now()
	}
	f.Time = timestamppb.New(t)

	switch ev.Direction {
	case DirectionEgress:
		f.TrafficDirection = flowpb.TrafficDirection_EGRESS
	case DirectionIngress:
		f.TrafficDirection = flowpb.TrafficDirection_INGRESS
	default:
		return nil, fmt.Errorf("invalid event: Direction: %s", ev.Direction)
	}

	l4, summary, err := layer4(ev, ipVersion)
	if err != nil {
		return nil, err
	}
	f.L4, f.Summary = l4, summary

	if f.Source, err = endpoint(&ev.Source); err != nil {
		return nil, fmt.Errorf("invalid event: Source: %w", err)
	}
	if f.Destination, err = endpoint(&ev.Destination); err != nil {
		return nil, fmt.Errorf("invalid event: Destination: %w", err)
	}

	var policies []*flowpb.Policy
	if ev.Policy.Name != "" {
		policies = []*flowpb.Policy{{Kind: PolicyKind, Namespace: ev.Policy.Namespace, Name: ev.Policy.Name}}
	}
	egress := ev.Direction == DirectionEgress
	switch ev.Verdict {
	case VerdictAllow:
		f.Verdict = flowpb.Verdict_FORWARDED
		f.EventType = &flowpb.CiliumEventType{Type: monitorapi.MessageTypePolicyVerdict}
		f.PolicyMatchType = uint32(ev.Match)
		if egress {
			f.EgressAllowedBy = policies
		} else {
			f.IngressAllowedBy = policies
		}
	case VerdictDeny:
		// Cilium reports a policy drop as a drop event whose sub-type is the
		// drop reason; the CLI prints it as "Policy denied DROPPED".
		f.Verdict = flowpb.Verdict_DROPPED
		f.DropReason = uint32(flowpb.DropReason_POLICY_DENIED)
		f.DropReasonDesc = flowpb.DropReason_POLICY_DENIED
		f.EventType = &flowpb.CiliumEventType{Type: monitorapi.MessageTypeDrop, SubType: int32(flowpb.DropReason_POLICY_DENIED)}
		if egress {
			f.EgressDeniedBy = policies
		} else {
			f.IngressDeniedBy = policies
		}
	case VerdictAudit:
		f.Verdict = flowpb.Verdict_AUDIT
		f.EventType = &flowpb.CiliumEventType{Type: monitorapi.MessageTypePolicyVerdict}
		f.PolicyMatchType = uint32(ev.Match)
		if egress {
			f.EgressDeniedBy = policies
		} else {
			f.IngressDeniedBy = policies
		}
	default:
		return nil, fmt.Errorf("invalid event: Verdict: %s", ev.Verdict)
	}

	if ev.DNS != nil {
		f.Type = flowpb.FlowType_L7
		f.IsReply = wrapperspb.Bool(true)
		f.EventType = &flowpb.CiliumEventType{Type: monitorapi.MessageTypeAccessLog}
		f.L7 = &flowpb.Layer7{Type: flowpb.L7FlowType_RESPONSE, Record: &flowpb.Layer7_Dns{Dns: &flowpb.DNS{
			Query: ev.DNS.Query, Ips: ev.DNS.IPs, Ttl: ev.DNS.TTL, Cnames: ev.DNS.CNAMEs, Rcode: ev.DNS.RCode,
			Qtypes: ev.DNS.QTypes, ObservationSource: "sidewall-dns-proxy",
		}}}
	}
	if ev.Note != "" {
		if f.Summary != "" {
			f.Summary += "; "
		}
		f.Summary += ev.Note
	}
	ext, err := extensions(ev)
	if err != nil {
		return nil, err
	}
	f.Extensions = ext
	return f, nil
}

func layer4(ev *Event, ipVersion flowpb.IPVersion) (*flowpb.Layer4, string, error) {
	sport, dport := uint32(ev.SrcPort), uint32(ev.DstPort)
	switch ev.Proto {
	case ProtoTCP:
		tcp := &flowpb.TCP{SourcePort: sport, DestinationPort: dport}
		summary := "TCP"
		if ev.TCPFlags != 0 {
			fl := ev.TCPFlags
			tcp.Flags = &flowpb.TCPFlags{
				FIN: fl&TCPFlagFIN != 0, SYN: fl&TCPFlagSYN != 0, RST: fl&TCPFlagRST != 0,
				PSH: fl&TCPFlagPSH != 0, ACK: fl&TCPFlagACK != 0, URG: fl&TCPFlagURG != 0,
				ECE: fl&TCPFlagECE != 0, CWR: fl&TCPFlagCWR != 0,
			}
			summary = "TCP Flags: " + tcpFlagNames(fl)
		}
		return &flowpb.Layer4{Protocol: &flowpb.Layer4_TCP{TCP: tcp}}, summary, nil
	case ProtoUDP:
		return &flowpb.Layer4{Protocol: &flowpb.Layer4_UDP{UDP: &flowpb.UDP{SourcePort: sport, DestinationPort: dport}}}, "UDP", nil
	case ProtoSCTP:
		return &flowpb.Layer4{Protocol: &flowpb.Layer4_SCTP{SCTP: &flowpb.SCTP{SourcePort: sport, DestinationPort: dport}}}, "SCTP", nil
	case ProtoICMP:
		if ipVersion != flowpb.IPVersion_IPv4 {
			return nil, "", fmt.Errorf("invalid event: Proto: ICMP (1) with IPv6 addresses")
		}
		tc := layers.CreateICMPv4TypeCode(ev.ICMPType, ev.ICMPCode)
		return &flowpb.Layer4{Protocol: &flowpb.Layer4_ICMPv4{ICMPv4: &flowpb.ICMPv4{
			Type: uint32(ev.ICMPType), Code: uint32(ev.ICMPCode),
		}}}, "ICMPv4 " + tc.String(), nil
	case ProtoICMPv6:
		if ipVersion != flowpb.IPVersion_IPv6 {
			return nil, "", fmt.Errorf("invalid event: Proto: ICMPv6 (58) with IPv4 addresses")
		}
		tc := layers.CreateICMPv6TypeCode(ev.ICMPType, ev.ICMPCode)
		return &flowpb.Layer4{Protocol: &flowpb.Layer4_ICMPv6{ICMPv6: &flowpb.ICMPv6{
			Type: uint32(ev.ICMPType), Code: uint32(ev.ICMPCode),
		}}}, "ICMPv6 " + tc.String(), nil
	default:
		return nil, "", fmt.Errorf("invalid event: Proto: unsupported IP protocol %d", ev.Proto)
	}
}

// tcpFlagNames lists flags in the order Hubble's parser prints them.
func tcpFlagNames(fl uint8) string {
	var names []string
	for _, f := range []struct {
		bit  uint8
		name string
	}{
		{TCPFlagSYN, "SYN"}, {TCPFlagACK, "ACK"}, {TCPFlagRST, "RST"}, {TCPFlagFIN, "FIN"},
		{TCPFlagPSH, "PSH"}, {TCPFlagURG, "URG"}, {TCPFlagECE, "ECE"}, {TCPFlagCWR, "CWR"},
	} {
		if fl&f.bit != 0 {
			names = append(names, f.name)
		}
	}
	return strings.Join(names, ", ")
}

func endpoint(e *Endpoint) (*flowpb.Endpoint, error) {
	arr := make(labels.LabelArray, 0, len(e.Labels)+1)
	for i, s := range e.Labels {
		if s == "" {
			return nil, fmt.Errorf("Labels[%d]: empty label", i)
		}
		l := labels.ParseLabel(s)
		if l.Key == "" {
			return nil, fmt.Errorf("Labels[%d] %q: empty key", i, s)
		}
		if l.Source == labels.LabelSourceUnspec && !strings.HasPrefix(s, labels.LabelSourceUnspec+":") {
			l.Source = labels.LabelSourceK8s
		}
		arr = append(arr, l)
	}
	if e.ContainerName != "" {
		arr = append(arr, labels.NewLabel(ContainerLabel, e.ContainerName, labels.LabelSourceK8s))
	}
	arr = arr.Sort()
	var model []string
	if len(arr) > 0 {
		model = arr.GetModel()
	}
	return &flowpb.Endpoint{
		Identity:  e.Identity,
		Namespace: e.Namespace,
		PodName:   e.PodName,
		Labels:    model,
	}, nil
}

func extensions(ev *Event) (*anypb.Any, error) {
	fields := map[string]any{
		"direction": ev.Direction.String(),
		"verdict":   ev.Verdict.String(),
	}
	switch {
	case ev.Direction == DirectionEgress && ev.Source.ContainerName != "":
		fields["container"] = ev.Source.ContainerName
	case ev.Direction == DirectionIngress && ev.Destination.ContainerName != "":
		fields["container"] = ev.Destination.ContainerName
	case ev.DNS != nil && ev.Destination.ContainerName != "":
		fields["container"] = ev.Destination.ContainerName
	}
	if ev.Note != "" {
		fields["note"] = ev.Note
	}
	if ev.DNS != nil && len(ev.DNS.Learned) > 0 {
		learned := make([]any, len(ev.DNS.Learned))
		for i, l := range ev.DNS.Learned {
			learned[i] = l
		}
		fields["fqdnLearned"] = learned
	}
	if ev.Policy.Name != "" {
		fields["policy"] = ev.Policy.Name
		fields["policyNamespace"] = ev.Policy.Namespace
	}
	if ev.Reason != "" {
		fields["reason"] = ev.Reason
	}
	if ev.Hook != "" {
		fields["hook"] = ev.Hook
	}
	if ev.Policy.ID != 0 {
		fields["policyID"] = float64(ev.Policy.ID)
	}
	st, err := structpb.NewStruct(fields)
	if err != nil {
		return nil, fmt.Errorf("build flow extensions: %w", err)
	}
	a, err := anypb.New(st)
	if err != nil {
		return nil, fmt.Errorf("build flow extensions: %w", err)
	}
	return a, nil
}
