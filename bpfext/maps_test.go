package bpfext

import (
	"net/netip"
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
	if err := d.ReplacePolicyRules(10, rules); err != nil {
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
	if n, _ := d.MapEntries(); n["sw_flows"] == 0 || n["sw_local_ports"] == 0 {
		t.Fatalf("no flows or local ports to forget: %v", n)
	}
	if err := d.ForgetFlows([]uint64{cgSidecar, cgAuditor, cgApp}); err != nil {
		t.Fatal(err)
	}

	// Removing everything the test added brings the maps back to empty.
	if err := d.ReplacePolicyRules(10, nil); err != nil {
		t.Fatal(err)
	}
	if err := d.ReplacePolicyRules(20, nil); err != nil {
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
	for _, m := range []string{"sw_flows", "sw_local_ports", "sw_containers", "sw_pods", "sw_ident4", "sw_ident6", "sw_cidr4", "sw_cidr6", "sw_rules", "sw_policies"} {
		if after[m] != 0 {
			t.Errorf("%s has %d entries after deleting everything (had %d)", m, after[m], base[m])
		}
	}
	if base["sw_rules"] == 0 {
		t.Error("MapEntries saw no rules before the deletes")
	}
}
