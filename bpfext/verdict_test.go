package bpfext

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/sidewall/sidewall/bpfext/objs"
)

// Cgroup ids of the table tests. The verdict program reads the
// classification from skb->cb, as the entry program hands it over, so the
// ids need not be real cgroups.
const (
	cgSidecar    = 1000 // egress+ingress restricted, policy 10
	cgAuditor    = 2000 // egress restricted, audit mode, policy 10
	cgApp        = 3000 // unrestricted, policy 20 (exclusive denies only)
	cgPod        = 4000 // pod cgroup: deny all (unclassified containers)
	cgUnknown    = 5000 // no entry
	identityA    = 1001
	identityB    = 1002
	identityCIDR = 16777217 // Cilium's local CIDR identity range
)

func setupPolicy(t *testing.T, d *Datapath) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(d.UpsertContainers([]Container{
		{CgroupID: cgSidecar, PolicyID: 10, PodID: 1, ContainerID: 1, EgressRestricted: true, IngressRestricted: true},
		{CgroupID: cgAuditor, PolicyID: 10, PodID: 1, ContainerID: 3, EgressRestricted: true, Audit: true},
		{CgroupID: cgApp, PolicyID: 20, PodID: 1, ContainerID: 2},
		{CgroupID: cgPod, PodID: 1, DenyAll: true},
	}))
	must(d.UpsertPods([]Pod{{ID: 1, IPv4: netip.MustParseAddr("10.1.0.5"), IPv6: netip.MustParseAddr("fd00:1::5")}}))
	must(d.UpsertIdentities([]PeerIdentity{
		{netip.MustParsePrefix("10.0.0.1/32"), identityA},
		{netip.MustParsePrefix("10.0.0.2/32"), identityB},
		{netip.MustParsePrefix("fd00::1/128"), identityA},
		{netip.MustParsePrefix("fd00::2/128"), identityB},
		{netip.MustParsePrefix("192.168.0.0/16"), identityCIDR},
		{netip.MustParsePrefix("fd00:99::/64"), identityCIDR},
	}))
	must(d.UpsertRules([]Rule{
		{RuleID: 1, PolicyID: 10, Direction: Egress, Peer: identityA, Protocol: ProtoTCP, PortLow: 8080, Action: ActionAllow},
		{RuleID: 2, PolicyID: 10, Direction: Egress, Peer: identityA, Protocol: ProtoUDP, PortLow: 5000, PortHigh: 5100, Action: ActionAllow},
		{RuleID: 3, PolicyID: 10, Direction: Egress, Peer: identityCIDR, Action: ActionAllow},
		{RuleID: 4, PolicyID: 10, Direction: Egress, Protocol: ProtoICMP, Action: ActionAllow},
		{RuleID: 5, PolicyID: 10, Direction: Egress, Peer: identityA, Protocol: ProtoTCP, PortLow: 9000, PortHigh: 9100, Action: ActionAllow},
		{RuleID: 6, PolicyID: 10, Direction: Egress, Peer: identityA, Protocol: ProtoTCP, PortLow: 9050, Action: ActionDeny},
		{RuleID: 7, PolicyID: 10, Direction: Egress, PortLow: 6666, Action: ActionDeny},
		{RuleID: 8, PolicyID: 10, Direction: Egress, Peer: IdentityWorld, Protocol: ProtoSCTP, PortLow: 3868, Action: ActionAllow},
		{RuleID: 9, PolicyID: 10, Direction: Egress, Local: true, Peer: 2, Protocol: ProtoTCP, PortLow: 9090, Action: ActionAllow},
		{RuleID: 10, PolicyID: 10, Direction: Ingress, Local: true, Peer: 3, Protocol: ProtoTCP, PortLow: 9090, Action: ActionAllow},
		{RuleID: 11, PolicyID: 10, Direction: Ingress, Peer: identityB, Protocol: ProtoTCP, PortLow: 22, Action: ActionAllow},
		{RuleID: 12, PolicyID: 10, Direction: Egress, Protocol: ProtoICMPv6, Action: ActionAllow},
		{RuleID: 13, PolicyID: 10, Direction: Egress, Peer: identityA, Protocol: ProtoAny, PortLow: 7000, Action: ActionAllow},
		{RuleID: 21, PolicyID: 20, Direction: Egress, Peer: identityA, Protocol: ProtoTCP, PortLow: 8080, Action: ActionDeny, Exclusive: true},
	}))
}

type wantEvent struct {
	verdict Verdict
	reason  Reason
	rule    uint32
	peer    uint32
	local   bool
	newFlow bool
}

type verdictCase struct {
	name  string
	cg    uint64
	slot  Slot
	pkt   []byte
	allow bool
	// count is the counter that must go up by one.
	count CounterKey
	// event is the record the packet must leave; nil: none.
	event *wantEvent
}

func runVerdict(t *testing.T, p *ebpf.Program, ctx, pkt []byte) uint32 {
	t.Helper()
	ret, err := p.Run(&ebpf.RunOptions{Data: pkt, Context: ctx})
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	return ret
}

func TestVerdictTable(t *testing.T) {
	d := newTestDatapath(t)
	setupPolicy(t, d)
	rd, err := d.NewEventReader()
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()

	ck := func(dir Direction, v Verdict, r Reason) CounterKey { return CounterKey{dir, v, r} }
	ev := func(v Verdict, r Reason, rule, peer uint32, newFlow bool) *wantEvent {
		return &wantEvent{verdict: v, reason: r, rule: rule, peer: peer, newFlow: newFlow}
	}
	tcp, udp := ProtoTCP, ProtoUDP
	cases := []verdictCase{
		{"ipv4 pod peer tcp port allowed", cgSidecar, SlotEgress, packet("10.1.0.5", "10.0.0.1", tcp, 30001, 8080), true,
			ck(Egress, Allow, ReasonRuleAllow), ev(Allow, ReasonRuleAllow, 1, identityA, true)},
		{"same flow again: no second new-flow event", cgSidecar, SlotEgress, packet("10.1.0.5", "10.0.0.1", tcp, 30001, 8080), true,
			ck(Egress, Allow, ReasonRuleAllow), nil},
		{"reply of the allowed flow passes restricted ingress", cgSidecar, SlotIngress, packet("10.0.0.1", "10.1.0.5", tcp, 8080, 30001), true,
			ck(Ingress, Allow, ReasonReply), nil},
		{"ipv4 other peer same port denied", cgSidecar, SlotEgress, packet("10.1.0.5", "10.0.0.2", tcp, 30002, 8080), false,
			ck(Egress, Deny, ReasonDefaultDeny), ev(Deny, ReasonDefaultDeny, 0, identityB, false)},
		{"ipv4 allowed peer other port denied", cgSidecar, SlotEgress, packet("10.1.0.5", "10.0.0.1", tcp, 30003, 8081), false,
			ck(Egress, Deny, ReasonDefaultDeny), ev(Deny, ReasonDefaultDeny, 0, identityA, false)},
		{"udp range low end", cgSidecar, SlotEgress, packet("10.1.0.5", "10.0.0.1", udp, 30004, 5000), true,
			ck(Egress, Allow, ReasonRuleAllow), ev(Allow, ReasonRuleAllow, 2, identityA, true)},
		{"udp range high end", cgSidecar, SlotEgress, packet("10.1.0.5", "10.0.0.1", udp, 30005, 5100), true,
			ck(Egress, Allow, ReasonRuleAllow), ev(Allow, ReasonRuleAllow, 2, identityA, true)},
		{"udp just past the range", cgSidecar, SlotEgress, packet("10.1.0.5", "10.0.0.1", udp, 30006, 5101), false,
			ck(Egress, Deny, ReasonDefaultDeny), ev(Deny, ReasonDefaultDeny, 0, identityA, false)},
		{"tcp rule does not open udp", cgSidecar, SlotEgress, packet("10.1.0.5", "10.0.0.1", udp, 30007, 8080), false,
			ck(Egress, Deny, ReasonDefaultDeny), ev(Deny, ReasonDefaultDeny, 0, identityA, false)},
		{"cidr peer any proto any port", cgSidecar, SlotEgress, packet("10.1.0.5", "192.168.7.7", udp, 30008, 1234), true,
			ck(Egress, Allow, ReasonRuleAllow), ev(Allow, ReasonRuleAllow, 3, identityCIDR, true)},
		{"ipv6 cidr peer", cgSidecar, SlotEgress, packet("fd00:1::5", "fd00:99::7", tcp, 30009, 443), true,
			ck(Egress, Allow, ReasonRuleAllow), ev(Allow, ReasonRuleAllow, 3, identityCIDR, true)},
		{"world peer denied", cgSidecar, SlotEgress, packet("10.1.0.5", "8.8.8.8", tcp, 30010, 443), false,
			ck(Egress, Deny, ReasonDefaultDeny), ev(Deny, ReasonDefaultDeny, 0, IdentityWorld, false)},
		{"world peer sctp port allowed", cgSidecar, SlotEgress, packet("10.1.0.5", "8.8.8.8", ProtoSCTP, 30011, 3868), true,
			ck(Egress, Allow, ReasonRuleAllow), ev(Allow, ReasonRuleAllow, 8, IdentityWorld, true)},
		{"icmp to any peer", cgSidecar, SlotEgress, packet("10.1.0.5", "10.0.0.2", ProtoICMP, 0, 0), true,
			ck(Egress, Allow, ReasonRuleAllow), ev(Allow, ReasonRuleAllow, 4, identityB, true)},
		{"icmpv6 to any peer", cgSidecar, SlotEgress, packet("fd00:1::5", "fd00::2", ProtoICMPv6, 0, 0), true,
			ck(Egress, Allow, ReasonRuleAllow), ev(Allow, ReasonRuleAllow, 12, identityB, true)},
		{"ipv6 pod peer tcp port allowed", cgSidecar, SlotEgress, packet("fd00:1::5", "fd00::1", tcp, 30012, 8080), true,
			ck(Egress, Allow, ReasonRuleAllow), ev(Allow, ReasonRuleAllow, 1, identityA, true)},
		{"ipv6 hop-by-hop then tcp", cgSidecar, SlotEgress, packet("fd00:1::5", "fd00::1", tcp, 30013, 8080, hopByHop()), true,
			ck(Egress, Allow, ReasonRuleAllow), ev(Allow, ReasonRuleAllow, 1, identityA, true)},
		{"ipv6 other peer denied", cgSidecar, SlotEgress, packet("fd00:1::5", "fd00::2", tcp, 30014, 8080), false,
			ck(Egress, Deny, ReasonDefaultDeny), ev(Deny, ReasonDefaultDeny, 0, identityB, false)},
		{"range allows, deny inside it wins", cgSidecar, SlotEgress, packet("10.1.0.5", "10.0.0.1", tcp, 30015, 9050), false,
			ck(Egress, Deny, ReasonRuleDeny), ev(Deny, ReasonRuleDeny, 6, identityA, false)},
		{"range allows next to the deny", cgSidecar, SlotEgress, packet("10.1.0.5", "10.0.0.1", tcp, 30016, 9051), true,
			ck(Egress, Allow, ReasonRuleAllow), ev(Allow, ReasonRuleAllow, 5, identityA, true)},
		{"wildcard deny any peer any proto beats cidr allow", cgSidecar, SlotEgress, packet("10.1.0.5", "192.168.1.1", udp, 30017, 6666), false,
			ck(Egress, Deny, ReasonRuleDeny), ev(Deny, ReasonRuleDeny, 7, identityCIDR, false)},
		{"any-proto rule matches sctp port", cgSidecar, SlotEgress, packet("10.1.0.5", "10.0.0.1", ProtoSCTP, 30018, 7000), true,
			ck(Egress, Allow, ReasonRuleAllow), ev(Allow, ReasonRuleAllow, 13, identityA, true)},
		{"ingress from identity b port 22", cgSidecar, SlotIngress, packet("10.0.0.2", "10.1.0.5", tcp, 30019, 22), true,
			ck(Ingress, Allow, ReasonRuleAllow), ev(Allow, ReasonRuleAllow, 11, identityB, true)},
		{"ingress from identity a port 22 denied", cgSidecar, SlotIngress, packet("10.0.0.1", "10.1.0.5", tcp, 30020, 22), false,
			ck(Ingress, Deny, ReasonDefaultDeny), ev(Deny, ReasonDefaultDeny, 0, identityA, false)},
		{"audit mode allows and reports", cgAuditor, SlotEgress, packet("10.1.0.5", "10.0.0.2", tcp, 30021, 8080), true,
			ck(Egress, Audit, ReasonDefaultDeny), ev(Audit, ReasonDefaultDeny, 0, identityB, true)},
		{"audit mode reports every audited packet", cgAuditor, SlotEgress, packet("10.1.0.5", "10.0.0.2", tcp, 30021, 8080), true,
			ck(Egress, Audit, ReasonDefaultDeny), ev(Audit, ReasonDefaultDeny, 0, identityB, false)},
		{"audit mode: allowed stays allowed", cgAuditor, SlotEgress, packet("10.1.0.5", "10.0.0.1", tcp, 30022, 8080), true,
			ck(Egress, Allow, ReasonRuleAllow), ev(Allow, ReasonRuleAllow, 1, identityA, true)},
		{"exclusive grant denied to the unselected app", cgApp, SlotEgress, packet("10.1.0.5", "10.0.0.1", tcp, 30023, 8080), false,
			ck(Egress, Deny, ReasonExclusive), ev(Deny, ReasonExclusive, 21, identityA, false)},
		{"app otherwise unrestricted", cgApp, SlotEgress, packet("10.1.0.5", "10.0.0.2", tcp, 30024, 8080), true,
			ck(Egress, Allow, ReasonUnrestricted), ev(Allow, ReasonUnrestricted, 0, identityB, true)},
		{"app ingress unrestricted", cgApp, SlotIngress, packet("10.0.0.1", "10.1.0.5", udp, 30025, 53), true,
			ck(Ingress, Allow, ReasonUnrestricted), ev(Allow, ReasonUnrestricted, 0, identityA, true)},
		{"unclassified container of a restricted pod", cgPod, SlotEgress, packet("10.1.0.5", "10.0.0.1", tcp, 30026, 8080), false,
			ck(Egress, Deny, ReasonUnclassified), ev(Deny, ReasonUnclassified, 0, identityA, false)},
		{"ipv4 non-first fragment of a restricted container", cgSidecar, SlotEgress, packet("10.1.0.5", "10.0.0.1", tcp, 30027, 8080, fragment(100)), false,
			ck(Egress, Deny, ReasonFragment), ev(Deny, ReasonFragment, 0, 0, false)},
		{"ipv4 first fragment is matched", cgSidecar, SlotEgress, packet("10.1.0.5", "10.0.0.1", tcp, 30028, 8080, fragment(0)), true,
			ck(Egress, Allow, ReasonRuleAllow), ev(Allow, ReasonRuleAllow, 1, identityA, true)},
		{"ipv6 non-first fragment", cgSidecar, SlotEgress, packet("fd00:1::5", "fd00::1", tcp, 30029, 8080, fragment(100)), false,
			ck(Egress, Deny, ReasonFragment), ev(Deny, ReasonFragment, 0, 0, false)},
		{"fragment of the unrestricted app passes", cgApp, SlotEgress, packet("10.1.0.5", "10.0.0.1", tcp, 30030, 8080, fragment(100)), true,
			ck(Egress, Allow, ReasonFragment), nil},
		{"truncated tcp header", cgSidecar, SlotEgress, packet("10.1.0.5", "10.0.0.1", tcp, 30031, 8080, truncated()), false,
			ck(Egress, Deny, ReasonTruncated), ev(Deny, ReasonTruncated, 0, 0, false)},
		{"ip version 5", cgSidecar, SlotEgress, packet("10.1.0.5", "10.0.0.1", tcp, 30032, 8080, version(5)), false,
			ck(Egress, Deny, ReasonMalformed), ev(Deny, ReasonMalformed, 0, 0, false)},
		{"unknown l4 (gre)", cgSidecar, SlotEgress, packet("10.1.0.5", "10.0.0.1", 47, 0, 0), false,
			ck(Egress, Deny, ReasonUnknownL4), ev(Deny, ReasonUnknownL4, 0, 0, false)},
		{"icmpv6 inside ipv4 is unknown", cgSidecar, SlotEgress, packet("10.1.0.5", "10.0.0.1", ProtoICMPv6, 0, 0), false,
			ck(Egress, Deny, ReasonUnknownL4), ev(Deny, ReasonUnknownL4, 0, 0, false)},
		{"not delivered locally: the pod's own ip off loopback resolves as a peer", cgSidecar, SlotEgress, packet("10.1.0.5", "10.1.0.5", tcp, 40003, 8080), false,
			ck(Egress, Deny, ReasonDefaultDeny), &wantEvent{Deny, ReasonDefaultDeny, 0, IdentityWorld, false, false}},
	}
	// Pod-local: delivered over loopback. No socket of the test's
	// namespace holds these ports, so the peer container is unknown and
	// only wildcard pod-local rules could allow (with real sockets:
	// TestRealTraffic, "pod-local by real delivery").
	localCases := []verdictCase{
		{"pod-local egress to a port no socket holds", cgSidecar, SlotEgress, packet("127.0.0.1", "127.0.0.1", tcp, 40000, 9091), false,
			ck(Egress, Deny, ReasonDefaultDeny), &wantEvent{Deny, ReasonDefaultDeny, 0, 0xffffffff, true, false}},
		{"pod-local: the pod ip over loopback is not an identity", cgSidecar, SlotEgress, packet("10.1.0.5", "10.1.0.5", tcp, 40000, 8080), false,
			ck(Egress, Deny, ReasonDefaultDeny), &wantEvent{Deny, ReasonDefaultDeny, 0, 0xffffffff, true, false}},
		{"pod-local: ipv6 loopback ingress from an unknown socket", cgSidecar, SlotIngress, packet("::1", "::1", tcp, 40001, 9090), false,
			ck(Ingress, Deny, ReasonDefaultDeny), &wantEvent{Deny, ReasonDefaultDeny, 0, 0xffffffff, true, false}},
	}

	for i, c := range append(cases, localCases...) {
		t.Run(c.name, func(t *testing.T) {
			before, err := d.Counters()
			if err != nil {
				t.Fatal(err)
			}
			ctx := skbContext(t, d, c.cg)
			if i >= len(cases) {
				ctx = skbLocalContext(t, d, c.cg)
			}
			ret := runVerdict(t, d.VerdictProgram(c.slot), ctx, c.pkt)
			if got := ret == 1; got != c.allow {
				t.Errorf("verdict: allow=%t, want %t", got, c.allow)
			}
			after, err := d.Counters()
			if err != nil {
				t.Fatal(err)
			}
			if n := after.Verdicts[c.count] - before.Verdicts[c.count]; n != 1 {
				t.Errorf("counter %+v went up by %d, want 1", c.count, n)
			}
			checkEvent(t, rd, c.cg, c.event)
		})
	}
}

func checkEvent(t *testing.T, rd *EventReader, cg uint64, want *wantEvent) {
	t.Helper()
	rd.SetDeadline(time.Now().Add(50 * time.Millisecond))
	e, err := rd.Read()
	if want == nil {
		if err == nil {
			t.Errorf("unexpected event: %s", e)
		} else if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("read event: %v", err)
		}
		return
	}
	if err != nil {
		t.Fatalf("want an event, read: %v", err)
	}
	if e.PolicyCgroupID != cg || e.Verdict != want.verdict || e.Reason != want.reason || e.RuleID != want.rule ||
		(want.peer != 0 && e.PeerIdentity != want.peer) || e.Local != want.local || e.NewFlow != want.newFlow {
		t.Errorf("event %s (policy cgroup %d)\nwant verdict=%s reason=%s rule=%d peer=%d local=%t new=%t cgroup=%d",
			e, e.PolicyCgroupID, want.verdict, want.reason, want.rule, want.peer, want.local, want.newFlow, cg)
	}
}

// Flooding the flow map (an LRU) evicts the flooder's own reply
// allowances, and a reply whose flow was evicted is decided again by the
// rules: denied on a restricted ingress (fail closed), never allowed.
func TestFlowMapFloodFailsClosed(t *testing.T) {
	requireRoot(t)
	dir := filepath.Join(DefaultBPFFSRoot, uniqueName("sidewall-test-"))
	d, err := Load(Options{PinDir: dir, MaxEntries: map[string]uint32{MapEvents: 1 << 20, MapFlows: 256}})
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	t.Cleanup(func() {
		if err := d.Unpin(); err != nil {
			t.Errorf("unpin: %v", err)
		}
		d.Close()
	})
	setupPolicy(t, d)
	tcp := ProtoTCP
	out := packet("10.1.0.5", "10.0.0.1", tcp, 30001, 8080)
	reply := packet("10.0.0.1", "10.1.0.5", tcp, 8080, 30001)
	if runVerdict(t, d.VerdictProgram(SlotEgress), skbContext(t, d, cgSidecar), out) != 1 {
		t.Fatal("the sidecar's allowed flow was denied")
	}
	var fk objs.SkbFlowKey
	fk.CgroupId, fk.Lport, fk.Rport, fk.Proto, fk.Origin, fk.Family = cgSidecar, 30001, 8080, tcp, uint8(Egress), 4
	copy(fk.Local[:], netip.MustParseAddr("10.1.0.5").AsSlice())
	copy(fk.Remote[:], netip.MustParseAddr("10.0.0.1").AsSlice())
	var fi objs.SkbFlowInfo
	if err := d.skb.SwFlows.Lookup(&fk, &fi); err != nil {
		t.Fatalf("the allowed flow's entry is not in the flow map: %v", err)
	}
	// No reply yet: the flow's entry is not referenced, so the LRU evicts
	// it first (an entry in use stays: the flood cannot push out a flow that
	// is active, only idle ones).
	for port := uint16(31000); port < 31000+4096; port++ {
		if runVerdict(t, d.VerdictProgram(SlotEgress), skbContext(t, d, cgSidecar), packet("10.1.0.5", "10.0.0.1", tcp, port, 8080)) != 1 {
			t.Fatalf("flood flow from port %d denied", port)
		}
	}
	n, err := d.MapEntries()
	if err != nil {
		t.Fatal(err)
	}
	if n[MapFlows] > 256 {
		t.Fatalf("flow map holds %d entries, more than its 256", n[MapFlows])
	}
	if err := d.skb.SwFlows.Lookup(&fk, &fi); err == nil {
		t.Fatal("the idle flow survived a flood of 16 times the map's size: nothing to test")
	}
	before, err := d.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if runVerdict(t, d.VerdictProgram(SlotIngress), skbContext(t, d, cgSidecar), reply) != 0 {
		t.Fatal("after the flood, the reply of an evicted flow passed the restricted ingress: the flood failed open")
	}
	after, err := d.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if after.Get(Ingress, Deny, ReasonDefaultDeny) != before.Get(Ingress, Deny, ReasonDefaultDeny)+1 {
		t.Error("the evicted flow's reply was not decided by the rules (ingress default-deny)")
	}
	// The egress side re-decides by the rules too, and the rules allow it.
	if runVerdict(t, d.VerdictProgram(SlotEgress), skbContext(t, d, cgSidecar), out) != 1 {
		t.Error("after the flood, the allowed flow's next packet was denied")
	}
}
