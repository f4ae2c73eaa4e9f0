package bpfext

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/sidewall/sidewall/bpfext/objs"
)

// A verdict program loaded separately (as a newer agent would) shares the
// pinned maps through mapReplacements (MapsByName) and takes over the slot.
func TestSwapVerdictFromSpec(t *testing.T) {
	d := newTestDatapath(t)
	setupPolicy(t, d)
	spec, err := objs.LoadSkb()
	if err != nil {
		t.Fatal(err)
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: d.mapReplacements(spec)})
	if err != nil {
		t.Fatalf("load replacement verdict: %+v", err)
	}
	defer coll.Close()
	if err := d.SetVerdict(SlotEgress, coll.Programs[objs.SkbProgSwVerdictEgress]); err != nil {
		t.Fatal(err)
	}
	// The replacement decides with the same maps: the denied peer stays denied.
	pkt := packet("10.1.0.5", "10.0.0.2", ProtoTCP, 31000, 8080)
	if ret := runVerdict(t, coll.Programs[objs.SkbProgSwVerdictEgress], skbContext(t, d, cgSidecar), pkt); ret != 0 {
		t.Errorf("replacement verdict allowed a denied packet")
	}
	if err := d.SetVerdict(Slot(99), nil); err == nil {
		t.Error("unknown slot accepted")
	}
}

// The entry program, run as this test process: its cgroup is not
// classified, so the packet passes and is counted as unknown.
func TestEntryUnknownCgroup(t *testing.T) {
	d := newTestDatapath(t)
	before, err := d.Counters()
	if err != nil {
		t.Fatal(err)
	}
	ret := runVerdict(t, d.skb.SwEntryEgress, make([]byte, 192), packet("10.1.0.5", "10.0.0.2", ProtoTCP, 31001, 8080))
	if ret != 1 {
		t.Errorf("unknown cgroup denied")
	}
	after, _ := d.Counters()
	if after.UnknownCgroup != before.UnknownCgroup+1 {
		t.Errorf("unknown-cgroup counter %d -> %d, want +1", before.UnknownCgroup, after.UnknownCgroup)
	}
}

func TestBadInput(t *testing.T) {
	d := newTestDatapath(t)
	bad := []Rule{
		{PolicyID: 1, Direction: Egress, Protocol: ProtoTCP, PortLow: 10, PortHigh: 5, Action: ActionAllow},
		{PolicyID: 1, Direction: Egress, Protocol: ProtoICMP, PortLow: 10, Action: ActionAllow},
		{PolicyID: 1, Direction: 3, Action: ActionAllow},
		{PolicyID: 1, Direction: Egress},
		{PolicyID: 1, Direction: Egress, Action: ActionAllow, Exclusive: true},
	}
	for _, r := range bad {
		if err := d.UpsertRules([]Rule{r}); err == nil {
			t.Errorf("rule %+v accepted", r)
		} else {
			t.Logf("%v", err)
		}
	}
	if err := d.UpsertContainers([]Container{{CgroupID: 5, ContainerID: 0}}); err == nil {
		t.Error("container id 0 accepted")
	}
	if err := d.UpsertIdentities([]PeerIdentity{{Identity: 5}}); err == nil {
		t.Error("invalid prefix accepted")
	}
	fresh := filepath.Join(DefaultBPFFSRoot, uniqueName("sidewall-test-"))
	if _, err := Load(Options{PinDir: fresh, MaxEntries: map[string]uint32{"sw_nope": 1}}); err == nil {
		t.Error("unknown map name in MaxEntries accepted")
	}
	if _, err := os.Stat(fresh); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a failed load left its pin dir behind: %v", err)
		os.RemoveAll(fresh)
	}
	if _, err := Load(Options{PinDir: d.PinDir(), MaxEntries: map[string]uint32{MapRules: 1024}}); err == nil {
		t.Error("adopting a pinned map with another size succeeded")
	} else {
		t.Logf("%v", err)
	}
}
