package bpfext

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/sidewall/sidewall/bpfext/objs"
)

// ReplacePolicyRules makes a policy's rules exactly the new set: old keys
// go, masks shrink, and the verdict follows.
func TestReplacePolicyRules(t *testing.T) {
	d := newTestDatapath(t)
	setupPolicy(t, d)
	base, err := d.MapEntries()
	if err != nil {
		t.Fatal(err)
	}
	toA := packet("10.1.0.5", "10.0.0.1", ProtoTCP, 32000, 8080)
	toB := packet("10.1.0.5", "10.0.0.2", ProtoTCP, 32001, 443)
	if runVerdict(t, d.VerdictProgram(SlotEgress), skbContext(t, d, cgSidecar), toA) != 1 {
		t.Fatal("A:8080 denied before the replace")
	}
	rules := []Rule{{RuleID: 99, PolicyID: 10, Direction: Egress, Peer: identityB, Protocol: ProtoTCP, PortLow: 443, Action: ActionAllow}}
	if err := d.replacePolicyRules(10, rules); err != nil {
		t.Fatal(err)
	}
	if runVerdict(t, d.VerdictProgram(SlotEgress), skbContext(t, d, cgSidecar), packet("10.1.0.5", "10.0.0.1", ProtoTCP, 32002, 8080)) != 0 {
		t.Error("A:8080 still allowed after the replace")
	}
	if runVerdict(t, d.VerdictProgram(SlotEgress), skbContext(t, d, cgSidecar), toB) != 1 {
		t.Error("B:443 denied after the replace")
	}
	var pi objs.SkbPolicyInfo
	if err := d.skb.SwPolicies.Lookup(uint32(10), &pi); err != nil {
		t.Fatal(err)
	}
	want := objs.SkbPolicyInfo{}
	want.Plens[0] = 1 << 16 // egress, identity peer, proto TCP: one exact port
	if pi != want {
		t.Errorf("policy masks %v, want %v", pi.Plens, want.Plens)
	}

	// The flows the verdict runs above opened are forgotten with their cgroup.
	if n, _ := d.MapEntries(); n[MapFlows] == 0 {
		t.Fatalf("no flows to forget: %v", n)
	}
	if err := d.ForgetFlows([]uint64{cgSidecar, cgAuditor, cgApp}); err != nil {
		t.Fatal(err)
	}

	// Removing everything the test added brings the maps back to empty.
	if err := d.replacePolicyRules(10, nil); err != nil {
		t.Fatal(err)
	}
	if err := d.replacePolicyRules(20, nil); err != nil {
		t.Fatal(err)
	}
	if err := d.DeleteContainers([]uint64{cgSidecar, cgAuditor, cgApp, cgPod}); err != nil {
		t.Fatal(err)
	}
	if err := d.DeletePods([]uint32{1}); err != nil {
		t.Fatal(err)
	}
	if err := d.DeleteIdentities([]netip.Prefix{
		netip.MustParsePrefix("10.0.0.1/32"), netip.MustParsePrefix("10.0.0.2/32"),
		netip.MustParsePrefix("fd00::1/128"), netip.MustParsePrefix("fd00::2/128"),
		netip.MustParsePrefix("192.168.0.0/16"), netip.MustParsePrefix("fd00:99::/64"),
	}); err != nil {
		t.Fatal(err)
	}
	after, err := d.MapEntries()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{MapFlows, MapBoundPorts, MapPodPorts, "sw_containers", "sw_pods", "sw_ident4", "sw_ident6", "sw_cidr4", "sw_cidr6", "sw_rules", "sw_policies"} {
		if after[m] != 0 {
			t.Errorf("%s has %d entries after deleting everything (had %d)", m, after[m], base[m])
		}
	}
	if base[MapRules] == 0 {
		t.Error("MapEntries saw no rules before the deletes")
	}
}

// rulesByPolicy counts the rules map's entries per policy id.
func rulesByPolicy(t *testing.T, d *Datapath) map[uint32]int {
	t.Helper()
	out := map[uint32]int{}
	var k objs.SkbRuleKey
	var v objs.SkbRuleInfo
	it := d.skb.SwRules.Iterate()
	for it.Next(&k, &v) {
		out[k.PolicyId]++
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// ReplaceRules replaces many policies in one call: listed policies get
// exactly their new rules (none: dropped with their masks), others are left
// alone, and the verdict follows.
func TestReplaceRules(t *testing.T) {
	d := newTestDatapath(t)
	setupPolicy(t, d)
	// Policy 40 is not listed below and must keep its rule.
	if err := d.UpsertRules([]Rule{{RuleID: 41, PolicyID: 40, Direction: Ingress, Protocol: ProtoUDP, PortLow: 53, Action: ActionAllow}}); err != nil {
		t.Fatal(err)
	}
	before := rulesByPolicy(t, d)
	if before[10] == 0 || before[20] == 0 || before[40] != 1 {
		t.Fatalf("setup wrote rules per policy %v", before)
	}

	// Many policies in one batch, as after an agent restart.
	const many = 200
	batch := map[uint32][]Rule{
		10: {{RuleID: 99, PolicyID: 10, Direction: Egress, Peer: identityB, Protocol: ProtoTCP, PortLow: 443, Action: ActionAllow}},
		20: nil,
	}
	for i := range uint32(many) {
		id := 1000 + i
		batch[id] = []Rule{
			{RuleID: 1, PolicyID: id, Direction: Egress, Peer: identityA, Protocol: ProtoTCP, PortLow: 8080, Action: ActionAllow},
			{RuleID: 2, PolicyID: id, Direction: Egress, Peer: identityA, Protocol: ProtoTCP, PortLow: 9000, PortHigh: 9007, Action: ActionAllow},
		}
	}
	if err := d.ReplaceRules(batch); err != nil {
		t.Fatal(err)
	}
	after := rulesByPolicy(t, d)
	if after[10] != 1 {
		t.Errorf("policy 10 has %d rule entries, want 1", after[10])
	}
	if after[20] != 0 {
		t.Errorf("policy 20 has %d rule entries after its drop", after[20])
	}
	if after[40] != 1 {
		t.Errorf("unlisted policy 40 has %d rule entries, want 1", after[40])
	}
	for i := range uint32(many) {
		// 8080 is one entry, 9000-9007 one aligned /13 prefix.
		if n := after[1000+i]; n != 2 {
			t.Fatalf("policy %d has %d rule entries, want 2", 1000+i, n)
		}
	}
	ids, err := d.PolicyIDs()
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(ids, 20) || !slices.Contains(ids, 40) || !slices.Contains(ids, 10) || len(ids) != many+2 {
		t.Errorf("policy masks for %d policies (20 dropped, 10 and 40 kept): %v", len(ids), ids)
	}
	var pi objs.SkbPolicyInfo
	if err := d.skb.SwPolicies.Lookup(uint32(10), &pi); err != nil {
		t.Fatal(err)
	}
	want := objs.SkbPolicyInfo{}
	want.Plens[0] = 1 << 16
	if pi != want {
		t.Errorf("policy 10 masks %v, want %v (tightened to the new rules)", pi.Plens, want.Plens)
	}
	if runVerdict(t, d.VerdictProgram(SlotEgress), skbContext(t, d, cgSidecar), packet("10.1.0.5", "10.0.0.1", ProtoTCP, 32010, 8080)) != 0 {
		t.Error("A:8080 still allowed after the replace")
	}
	if runVerdict(t, d.VerdictProgram(SlotEgress), skbContext(t, d, cgSidecar), packet("10.1.0.5", "10.0.0.2", ProtoTCP, 32011, 443)) != 1 {
		t.Error("B:443 denied after the replace")
	}

	// A rule filed under another policy is refused, naming both, and
	// nothing is written.
	err = d.ReplaceRules(map[uint32][]Rule{7: {{RuleID: 5, PolicyID: 8, Action: ActionAllow}}})
	if err == nil || !strings.Contains(err.Error(), "policy 7") || !strings.Contains(err.Error(), "policy 8") {
		t.Errorf("mismatched policy id: err %v", err)
	}
	if n := rulesByPolicy(t, d); n[7] != 0 || n[8] != 0 {
		t.Errorf("refused batch wrote rules: %v", n)
	}

	// Dropping every policy in one call empties both maps.
	drop := map[uint32][]Rule{}
	for _, id := range ids {
		drop[id] = nil
	}
	if err := d.ReplaceRules(drop); err != nil {
		t.Fatal(err)
	}
	if n, _ := d.MapEntries(); n[MapRules] != 0 || n[MapPolicies] != 0 {
		t.Errorf("after dropping every policy: %d rules, %d policies", n[MapRules], n[MapPolicies])
	}
}

// Listing and counting read hash maps in batches of readChunk entries and
// iterate LPM tries, which have no batch operations: every entry comes
// back once, past the first batch too.
func TestListInBatches(t *testing.T) {
	d := newTestDatapath(t)
	const n = 2*readChunk + 123
	want := map[netip.Prefix]uint32{}
	var ids []PeerIdentity
	for i := range n {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 32)
		ids = append(ids, PeerIdentity{p, uint32(100 + i)})
		want[p] = uint32(100 + i)
	}
	for i := range 5 {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{172, 16 + byte(i), 0, 0}), 16)
		ids = append(ids, PeerIdentity{p, uint32(1<<24 + i)})
		want[p] = uint32(1<<24 + i)
	}
	if err := d.UpsertIdentities(ids); err != nil {
		t.Fatal(err)
	}
	got, err := d.Identities()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[netip.Prefix]uint32{}
	for _, id := range got {
		if _, dup := seen[id.Prefix]; dup {
			t.Fatalf("%s listed twice", id.Prefix)
		}
		seen[id.Prefix] = id.Identity
	}
	if len(seen) != len(want) {
		t.Errorf("listed %d identities, want %d", len(seen), len(want))
	}
	for p, id := range want {
		if seen[p] != id {
			t.Fatalf("%s: identity %d, want %d", p, seen[p], id)
		}
	}
	counts, err := d.MapEntries()
	if err != nil {
		t.Fatal(err)
	}
	if counts[MapIdentities4] != n || counts[MapCIDR4] != 5 {
		t.Errorf("counted %d exact and %d cidr entries, want %d and 5", counts[MapIdentities4], counts[MapCIDR4], n)
	}
}
