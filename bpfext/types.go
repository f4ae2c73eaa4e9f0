package bpfext

import (
	"fmt"
	"net/netip"
)

// Direction of traffic, seen from the container.
type Direction uint8

const (
	Egress  Direction = 0
	Ingress Direction = 1
)

func (d Direction) String() string {
	switch d {
	case Egress:
		return "egress"
	case Ingress:
		return "ingress"
	}
	return fmt.Sprintf("direction(%d)", uint8(d))
}

// Verdict of the datapath for one packet or socket call.
type Verdict uint8

const (
	Allow Verdict = 0
	Deny  Verdict = 1
	// Audit: the packet would have been denied; audit mode let it pass.
	Audit Verdict = 2
)

func (v Verdict) String() string {
	switch v {
	case Allow:
		return "allow"
	case Deny:
		return "deny"
	case Audit:
		return "audit"
	}
	return fmt.Sprintf("verdict(%d)", uint8(v))
}

// Reason says why the datapath reached a verdict. The values mirror enum
// reason in bpf/lib/common.h.
type Reason uint8

const (
	ReasonNone           Reason = 0
	ReasonRuleAllow      Reason = 1
	ReasonRuleDeny       Reason = 2
	ReasonDefaultDeny    Reason = 3
	ReasonExclusive      Reason = 4
	ReasonReply          Reason = 5
	ReasonUnrestricted   Reason = 6
	ReasonUnclassified   Reason = 7
	ReasonTruncated      Reason = 8
	ReasonFragment       Reason = 9
	ReasonUnknownL4      Reason = 10
	ReasonNoVerdict      Reason = 11
	ReasonMalformed      Reason = 12
	ReasonSelf           Reason = 13
	reasonMax                   = 16
	countersPerReasonSet        = 2 * 3 * reasonMax
)

var reasonNames = map[Reason]string{
	ReasonNone: "none", ReasonRuleAllow: "rule-allow", ReasonRuleDeny: "rule-deny",
	ReasonDefaultDeny: "default-deny", ReasonExclusive: "exclusive-grant", ReasonReply: "reply",
	ReasonUnrestricted: "unrestricted", ReasonUnclassified: "unclassified", ReasonTruncated: "truncated",
	ReasonFragment: "fragment", ReasonUnknownL4: "unknown-l4", ReasonNoVerdict: "no-verdict",
	ReasonMalformed: "malformed", ReasonSelf: "self",
}

func (r Reason) String() string {
	if s, ok := reasonNames[r]; ok {
		return s
	}
	return fmt.Sprintf("reason(%d)", uint8(r))
}

// Hook is the attach point that produced an event.
type Hook uint8

const (
	HookSKB     Hook = 0
	HookConnect Hook = 1
	HookSendmsg Hook = 2
)

func (h Hook) String() string {
	switch h {
	case HookSKB:
		return "cgroup_skb"
	case HookConnect:
		return "connect"
	case HookSendmsg:
		return "sendmsg"
	}
	return fmt.Sprintf("hook(%d)", uint8(h))
}

// Reserved security identities, numbered as in Cilium
// (pkg/identity/numericidentity.go) so Cilium's identities are used as they are.
const (
	IdentityUnknown       uint32 = 0
	IdentityHost          uint32 = 1
	IdentityWorld         uint32 = 2
	IdentityUnmanaged     uint32 = 3
	IdentityHealth        uint32 = 4
	IdentityInit          uint32 = 5
	IdentityRemoteNode    uint32 = 6
	IdentityKubeAPIServer uint32 = 7
	IdentityIngress       uint32 = 8
	IdentityWorldIPv4     uint32 = 9
	IdentityWorldIPv6     uint32 = 10
)

// IP protocol numbers the datapath matches. TCP, UDP and SCTP have ports;
// ICMP and ICMPv6 are matched as protocols without ports.
const (
	ProtoAny    uint8 = 0
	ProtoICMP   uint8 = 1
	ProtoTCP    uint8 = 6
	ProtoUDP    uint8 = 17
	ProtoICMPv6 uint8 = 58
	ProtoSCTP   uint8 = 132
)

// Container classifies one cgroup: a container's cgroup, or a pod cgroup
// (with DenyAll set) that catches containers not yet classified.
type Container struct {
	// CgroupID is the cgroup v2 id (the inode number of its directory).
	CgroupID uint64
	// PolicyID selects the rules in the rules map. Several containers may
	// share one policy id.
	PolicyID uint32
	// PodID groups the containers of one pod (pod-local traffic, bind map).
	PodID uint32
	// ContainerID numbers the container inside its pod for intra-pod rules;
	// it must not be 0 (the wildcard) or 0xffffffff (unknown peer).
	ContainerID uint32
	// EgressRestricted and IngressRestricted make the direction default-deny.
	EgressRestricted  bool
	IngressRestricted bool
	// Audit lets denied traffic pass and reports it as Audit.
	Audit bool
	// DenyAll denies everything: for the pod cgroup of a restricted pod, so
	// a container that is not yet classified is denied (fail closed).
	DenyAll bool
	// FailOpen lets traffic pass when the verdict program slot is empty;
	// without it the entry programs deny (fail closed).
	FailOpen bool
}

// Pod holds the pod's own addresses, which count as pod-local next to
// 127.0.0.0/8 and ::1.
type Pod struct {
	ID   uint32
	IPv4 netip.Addr // zero value: none
	IPv6 netip.Addr // zero value: none
}

// PeerIdentity maps an address or CIDR to a security identity. A full-length
// prefix (/32, /128) goes to an exact-match hash; shorter prefixes to an LPM
// trie consulted only when the hash misses. Unknown addresses are world (2).
type PeerIdentity struct {
	Prefix   netip.Prefix
	Identity uint32
}

// Action of a rule.
type Action uint8

const (
	ActionAllow Action = 1
	ActionDeny  Action = 2
)

// Rule is one L3/L4 rule of a policy. Rules are stored as hash entries; a
// port range is split into at most 30 aligned port prefixes.
type Rule struct {
	// RuleID is reported in events; it is not part of the key.
	RuleID    uint32
	PolicyID  uint32
	Direction Direction
	// Local makes Peer a ContainerID of the same pod (intra-pod rule,
	// toContainers/fromContainers) instead of a security identity.
	Local bool
	// Peer is a security identity, or a container id when Local; 0 = any.
	Peer uint32
	// Protocol is an IP protocol number; 0 = any.
	Protocol uint8
	// PortLow..PortHigh (inclusive, host order). Both 0 = any port. PortHigh
	// 0 means PortLow alone.
	PortLow, PortHigh uint16
	Action            Action
	// Exclusive marks a deny that enforces a sibling container's exclusive
	// grant; events report it with ReasonExclusive.
	Exclusive bool
}

// Event is one ring buffer record: a deny, an audit, or a new allowed flow.
type Event struct {
	TimestampNs uint64 // CLOCK_MONOTONIC, bpf_ktime_get_ns
	// CgroupID is the cgroup of the socket; PolicyCgroupID the cgroup whose
	// entry classified it (the same, or an ancestor).
	CgroupID       uint64
	PolicyCgroupID uint64
	SocketCookie   uint64
	PolicyID       uint32
	RuleID         uint32
	// PeerIdentity is the peer's security identity, or its container id
	// when Local.
	PeerIdentity uint32
	ContainerID  uint32
	Src, Dst     netip.Addr
	SrcPort      uint16
	DstPort      uint16
	Protocol     uint8
	Direction    Direction
	Verdict      Verdict
	Reason       Reason
	Hook         Hook
	Local        bool
	NewFlow      bool
}

func (e Event) String() string {
	return fmt.Sprintf("%s %s %s cgroup=%d policy=%d rule=%d peer=%d proto=%d %s -> %s reason=%s local=%t new=%t",
		e.Hook, e.Direction, e.Verdict, e.CgroupID, e.PolicyID, e.RuleID, e.PeerIdentity, e.Protocol,
		netip.AddrPortFrom(e.Src, e.SrcPort), netip.AddrPortFrom(e.Dst, e.DstPort), e.Reason, e.Local, e.NewFlow)
}

// CounterKey indexes the per-CPU verdict counters.
type CounterKey struct {
	Direction Direction
	Verdict   Verdict
	Reason    Reason
}

// Counters are the verdict counters summed over CPUs.
type Counters struct {
	Verdicts map[CounterKey]uint64
	// EventsLost counts events dropped because the ring buffer was full.
	EventsLost uint64
	// UnknownCgroup counts packets of attached pods whose cgroup no entry
	// classifies (passed untouched).
	UnknownCgroup uint64
}

// Get returns one verdict counter.
func (c Counters) Get(dir Direction, v Verdict, r Reason) uint64 {
	return c.Verdicts[CounterKey{dir, v, r}]
}
