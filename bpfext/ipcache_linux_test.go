package bpfext

import (
	"net/netip"
	"path/filepath"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/cilium/pkg/identity"
	"github.com/cilium/cilium/pkg/maps/ipcache"
	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// newCiliumIPCache creates a map shaped as Cilium v1.20's ipcache
// (pkg/maps/ipcache newIPCacheMap: LPM trie of ipcache.Key to
// ipcache.RemoteEndpointInfo, no prealloc, read-only for programs). It
// stands in for the map a cilium-agent pins; agent/e2e reads the real one.
// Entries are encoded by Cilium's own ipcache.NewKey and NewValue.
func newCiliumIPCache(t *testing.T, entries map[string]uint32) *ebpf.Map {
	t.Helper()
	m, err := ebpf.NewMap(&ebpf.MapSpec{
		Name: "cilium_ipcache", Type: ebpf.LPMTrie,
		KeySize:    uint32(unsafe.Sizeof(ipcache.Key{})),
		ValueSize:  uint32(unsafe.Sizeof(ipcache.RemoteEndpointInfo{})),
		MaxEntries: 1024, Flags: unix.BPF_F_NO_PREALLOC | unix.BPF_F_RDONLY_PROG,
	})
	if err != nil {
		t.Fatalf("create Cilium-shaped ipcache: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	for p, id := range entries {
		putIPCache(t, m, p, id)
	}
	return m
}

func putIPCache(t *testing.T, m *ebpf.Map, prefix string, id uint32) {
	t.Helper()
	k := ipcache.NewKey(netip.MustParsePrefix(prefix), 0)
	v := ipcache.NewValue(id, netip.MustParseAddr("192.0.2.200"), 0, 0)
	if err := m.Put(&k, &v); err != nil {
		t.Fatalf("ipcache put %s: %v", prefix, err)
	}
}

// TestVerdictReadsCiliumIPCache: with Cilium's ipcache passed in, the
// verdict resolves a peer as Cilium does, before sidewall's own peer maps,
// except for world and Cilium's node-local CIDR identities, which sidewall's
// maps decide (its CIDR rules use its own numbers).
func TestVerdictReadsCiliumIPCache(t *testing.T) {
	requireRoot(t)
	const localCIDR = uint32(identity.IdentityScopeLocal) | 77
	ipc := newCiliumIPCache(t, map[string]uint32{
		"10.0.0.9/32":    identityA, // a peer sidewall's maps do not hold yet
		"10.0.0.2/32":    identityA, // Cilium's number wins over sidewall's (B)
		"fd00::9/128":    identityA,
		"192.168.0.0/16": localCIDR, // Cilium's CIDR identity: sidewall's map decides
		"8.8.0.0/16":     uint32(identity.ReservedIdentityWorld),
		"10.0.0.6/32":    uint32(identity.ReservedIdentityRemoteNode),
	})
	dir := filepath.Join(DefaultBPFFSRoot, uniqueName("sidewall-test-"))
	d, err := Load(Options{PinDir: dir, CiliumIPCache: ipc})
	if err != nil {
		t.Fatalf("load with Cilium's ipcache: %v", err)
	}
	t.Cleanup(func() {
		if err := d.Unpin(); err != nil {
			t.Errorf("unpin: %v", err)
		}
		d.Close()
	})
	if !d.ReadsCiliumIPCache() {
		t.Fatal("ReadsCiliumIPCache() = false after Load with a map")
	}
	setupPolicy(t, d)
	if err := d.UpsertRules([]Rule{{RuleID: 40, PolicyID: 10, Direction: Egress, Peer: uint32(identity.ReservedIdentityRemoteNode),
		Protocol: ProtoTCP, PortLow: 10250, Action: ActionAllow}}); err != nil {
		t.Fatal(err)
	}
	rd, err := d.NewEventReader()
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()

	tcp := ProtoTCP
	for _, c := range []struct {
		name  string
		pkt   []byte
		allow bool
		peer  uint32
	}{
		{"a peer only Cilium knows", packet("10.1.0.5", "10.0.0.9", tcp, 31001, 8080), true, identityA},
		{"Cilium's identity over sidewall's", packet("10.1.0.5", "10.0.0.2", tcp, 31002, 8080), true, identityA},
		{"ipv6 peer only Cilium knows", packet("fd00:1::5", "fd00::9", tcp, 31003, 8080), true, identityA},
		{"Cilium's CIDR identity: sidewall's CIDR rule", packet("10.1.0.5", "192.168.7.7", ProtoUDP, 31004, 1234), true, identityCIDR},
		{"Cilium's world: sidewall's world", packet("10.1.0.5", "8.8.8.8", tcp, 31005, 443), false, IdentityWorld},
		{"remote-node from Cilium", packet("10.1.0.5", "10.0.0.6", tcp, 31006, 10250), true, uint32(identity.ReservedIdentityRemoteNode)},
		{"absent from both: world", packet("10.1.0.5", "10.0.0.77", tcp, 31007, 8080), false, IdentityWorld},
	} {
		t.Run(c.name, func(t *testing.T) {
			ret := runVerdict(t, d.VerdictProgram(SlotEgress), skbContext(t, d, cgSidecar), c.pkt)
			if (ret == 1) != c.allow {
				t.Errorf("verdict %d, want allow=%v", ret, c.allow)
			}
			rd.SetDeadline(time.Now().Add(time.Second))
			e, err := rd.Read()
			if err != nil {
				t.Fatalf("no event: %v", err)
			}
			if e.PeerIdentity != c.peer {
				t.Errorf("event peer identity %d, want %d", e.PeerIdentity, c.peer)
			}
		})
	}

	// A peer Cilium adds after the load is resolved at once: the verdict
	// reads the map Cilium writes, with no agent step in between.
	putIPCache(t, ipc, "10.0.0.10/32", identityA)
	if ret := runVerdict(t, d.VerdictProgram(SlotEgress), skbContext(t, d, cgSidecar), packet("10.1.0.5", "10.0.0.10", tcp, 31008, 8080)); ret != 1 {
		t.Errorf("new Cilium peer: verdict %d, want allowed", ret)
	}
}

// TestLoadRefusesAnIPCacheOfAnotherShape: a map whose layout differs from
// the verdict's is refused at load, never read wrongly.
func TestLoadRefusesAnIPCacheOfAnotherShape(t *testing.T) {
	requireRoot(t)
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.LPMTrie, KeySize: 24, ValueSize: 8, MaxEntries: 16, Flags: unix.BPF_F_NO_PREALLOC})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	dir := filepath.Join(DefaultBPFFSRoot, uniqueName("sidewall-test-"))
	d, err := Load(Options{PinDir: dir, CiliumIPCache: m})
	if err == nil {
		d.Unpin()
		d.Close()
		t.Fatal("Load accepted an ipcache with an 8-byte value")
	}
	t.Logf("refused as expected: %v", err)
}
