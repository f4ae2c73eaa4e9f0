package bpfext

import (
	"fmt"
	"net/netip"
	"runtime"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// fillRules writes n rules and n peer identities, spread over 1,000
// policies, plus the one rule the benchmark packet matches (policy 1, peer
// 10.0.0.1 identity 1001, TCP 8080).
func fillRules(tb testing.TB, d *Datapath, n int) {
	tb.Helper()
	const batch = 10000
	var rules []Rule
	var ids []PeerIdentity
	flush := func() {
		if err := d.UpsertRules(rules); err != nil {
			tb.Fatal(err)
		}
		if err := d.UpsertIdentities(ids); err != nil {
			tb.Fatal(err)
		}
		rules, ids = rules[:0], ids[:0]
	}
	for i := 0; i < n-1; i++ {
		id := uint32(100000 + i)
		rules = append(rules, Rule{RuleID: uint32(i + 100), PolicyID: uint32(2 + i%1000), Direction: Direction(i % 2),
			Peer: id, Protocol: ProtoTCP, PortLow: uint16(1024 + i%60000), Action: ActionAllow})
		ids = append(ids, PeerIdentity{netip.PrefixFrom(netip.AddrFrom4([4]byte{11, byte(i >> 16), byte(i >> 8), byte(i)}), 32), id})
		if len(rules) == batch {
			flush()
		}
	}
	rules = append(rules, Rule{RuleID: 1, PolicyID: 1, Direction: Egress, Peer: identityA, Protocol: ProtoTCP, PortLow: 8080, Action: ActionAllow})
	ids = append(ids, PeerIdentity{netip.MustParsePrefix("10.0.0.1/32"), identityA})
	flush()
	if err := d.UpsertContainers([]Container{{CgroupID: cgSidecar, PolicyID: 1, PodID: 1, ContainerID: 1, EgressRestricted: true}}); err != nil {
		tb.Fatal(err)
	}
}

// progRunAttr is the BPF_PROG_TEST_RUN part of union bpf_attr. cilium/ebpf
// returns the kernel's per-run duration only for runs without a context,
// and the verdict needs one (skb->cb), so the benchmark makes the call itself.
type progRunAttr struct {
	progFD      uint32
	retval      uint32
	dataSizeIn  uint32
	dataSizeOut uint32
	dataIn      uint64
	dataOut     uint64
	repeat      uint32
	duration    uint32
	ctxSizeIn   uint32
	ctxSizeOut  uint32
	ctxIn       uint64
	ctxOut      uint64
	flags       uint32
	cpu         uint32
	batchSize   uint32
	_           uint32
}

// timeRun runs p repeat times in one BPF_PROG_TEST_RUN and returns the
// kernel's average time per run, which leaves out time the test thread was
// preempted (the machine is shared).
func timeRun(tb testing.TB, p *ebpf.Program, ctx, pkt []byte, want uint32) float64 {
	const repeat = 1_000_000
	attr := progRunAttr{
		progFD: uint32(p.FD()), dataSizeIn: uint32(len(pkt)), dataIn: uint64(uintptr(unsafe.Pointer(&pkt[0]))),
		repeat: repeat, ctxSizeIn: uint32(len(ctx)), ctxIn: uint64(uintptr(unsafe.Pointer(&ctx[0]))),
	}
	for {
		_, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_PROG_TEST_RUN, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
		runtime.KeepAlive(pkt)
		runtime.KeepAlive(ctx)
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			tb.Fatalf("BPF_PROG_TEST_RUN: %v", errno)
		}
		break
	}
	if attr.retval != want {
		tb.Fatalf("verdict %d, want %d", attr.retval, want)
	}
	return float64(attr.duration)
}

// BenchmarkVerdict reports the per-packet cost of the egress verdict from
// BPF_PROG_TEST_RUN (kernel-timed, hot cache, 1M repeats per op) at 10, 1,000 and
// 100,000 rules (and as many peer identities), next to an empty cgroup_skb
// program. "full" is the whole verdict (socket cache off): identity hash
// hit, one rule probe, flow LRU lookup; "cached" is a connected socket's
// packet that the per-socket verdict cache decides.
func BenchmarkVerdict(b *testing.B) {
	requireRoot(b)
	pkt := packet("10.1.0.5", "10.0.0.1", ProtoTCP, 30001, 8080)
	run := func(b *testing.B, p *ebpf.Program, ctx []byte) {
		var total float64
		for b.Loop() {
			total += timeRun(b, p, ctx, pkt, 1)
		}
		b.ReportMetric(total/float64(b.N), "ns/pkt")
	}
	b.Run("empty", func(b *testing.B) {
		p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
			Type: ebpf.CGroupSKB, AttachType: ebpf.AttachCGroupInetEgress, License: "GPL",
			Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 1), asm.Return()},
		})
		if err != nil {
			b.Fatal(err)
		}
		defer p.Close()
		run(b, p, make([]byte, 192))
	})
	for _, n := range []int{10, 1000, 100000} {
		b.Run(fmt.Sprintf("rules=%d", n), func(b *testing.B) {
			d := newTestDatapath(b)
			fillRules(b, d, n)
			ctx := skbContext(b, d, cgSidecar)
			// The full verdict, as for a flow's first packet.
			if err := d.SetSocketCache(false); err != nil {
				b.Fatal(err)
			}
			b.Run("full", func(b *testing.B) { run(b, d.VerdictProgram(SlotEgress), ctx) })
			// A connected socket's next packets (the test run's socket stays
			// the same across repeats).
			if err := d.SetSocketCache(true); err != nil {
				b.Fatal(err)
			}
			b.Run("cached", func(b *testing.B) { run(b, d.VerdictProgram(SlotEgress), ctx) })
		})
	}
}

// BenchmarkRewriteAllPolicies rewrites every policy of a node the way the
// agent does after a restart: 3,000 datapath policies (1,000 pods x 3
// containers) of 9 rules each, unchanged. "batched" is one ReplaceRules
// call (one scan of the rules map), "per-policy" one ReplacePolicyRules
// call per policy (one scan each), the agent's way before ReplaceRules.
func BenchmarkRewriteAllPolicies(b *testing.B) {
	const policies, perPolicy = 3000, 9
	all := map[uint32][]Rule{}
	for p := range uint32(policies) {
		id := 10 + p
		for r := range uint32(perPolicy) {
			all[id] = append(all[id], Rule{RuleID: r + 1, PolicyID: id, Direction: Direction(r % 2), Peer: 1000 + r,
				Protocol: ProtoTCP, PortLow: uint16(8000 + r), Action: ActionAllow})
		}
	}
	for _, mode := range []string{"batched", "per-policy"} {
		b.Run(mode, func(b *testing.B) {
			d := newTestDatapath(b)
			if err := d.ReplaceRules(all); err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				if mode == "batched" {
					if err := d.ReplaceRules(all); err != nil {
						b.Fatal(err)
					}
					continue
				}
				for id, rules := range all {
					if err := d.replacePolicyRules(id, rules); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64(policies*perPolicy), "rules")
		})
	}
}

// fqdnBench is a datapath for the toFQDNs benchmarks: the sidecar (policy
// 1, FQDN) may reach 10.0.0.1:8080 by an ordinary rule, and the n-th toFQDNs
// selector's learned addresses on TCP 443 (n = last, so that the verdict
// tries every selector before it). learned addresses are in sw_fqdn for the
// sidecar, 198.18.x.y, each valid for the last selector only, or for all 16
// (allSelectors: the worst case, 16 rule matches).
func fqdnBench(tb testing.TB, fqdn bool, learned int, allSelectors bool) *Datapath {
	tb.Helper()
	d := newTestDatapath(tb)
	rules := []Rule{{RuleID: 1, PolicyID: 1, Direction: Egress, Peer: identityA, Protocol: ProtoTCP, PortLow: 8080, Action: ActionAllow}}
	if fqdn {
		rules = append(rules, Rule{RuleID: 2, PolicyID: 1, Direction: Egress, Peer: FQDNPeer(FQDNSelectors - 1),
			Protocol: ProtoTCP, PortLow: 443, Action: ActionAllow})
	}
	if err := d.UpsertRules(rules); err != nil {
		tb.Fatal(err)
	}
	if err := d.UpsertIdentities([]PeerIdentity{{netip.MustParsePrefix("10.0.0.1/32"), identityA}}); err != nil {
		tb.Fatal(err)
	}
	if err := d.UpsertContainers([]Container{{CgroupID: cgSidecar, PolicyID: 1, PodID: 1, ContainerID: 1,
		EgressRestricted: true, FQDN: fqdn}}); err != nil {
		tb.Fatal(err)
	}
	until := MonotonicSeconds() + 3600
	for i := range learned {
		addr := netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)})
		for sel := range FQDNSelectors {
			if !allSelectors && sel != FQDNSelectors-1 {
				continue
			}
			if err := d.LearnFQDN(cgSidecar, addr, sel, until); err != nil {
				tb.Fatal(err)
			}
		}
	}
	if err := d.SetSocketCache(false); err != nil {
		tb.Fatal(err)
	}
	return d
}

// BenchmarkVerdictFQDN reports the per-packet cost (BPF_PROG_TEST_RUN,
// socket cache off: every packet takes the whole verdict) of:
//   - "ordinary": a packet an ordinary rule allows, from a container without
//     toFQDNs and from one with them (the toFQDNs code must not cost it);
//   - "learned": a packet to an address the container learned, with 1 and
//     1,024 (the default per-container share) learned addresses: the cost
//     of the learned-map lookup and of one rule match ("selectors=1", the
//     address learned for one toFQDNs selector) or of 16 ("selectors=16",
//     learned for every selector and allowed by the last: the worst case);
//   - "refused": a packet to an address it did not learn (the lookup misses).
//
// Next to it, hack/bench-datapath.sh runs BenchmarkVerdict of the revision
// before toFQDNs (BENCH_BASE) to show ordinary traffic's cost unchanged.
func BenchmarkVerdictFQDN(b *testing.B) {
	requireRoot(b)
	run := func(b *testing.B, d *Datapath, pkt []byte, want uint32) {
		ctx := skbContext(b, d, cgSidecar)
		var total float64
		for b.Loop() {
			total += timeRun(b, d.VerdictProgram(SlotEgress), ctx, pkt, want)
		}
		b.ReportMetric(total/float64(b.N), "ns/pkt")
	}
	ordinary := packet("10.1.0.5", "10.0.0.1", ProtoTCP, 30001, 8080)
	b.Run("ordinary/without-toFQDNs", func(b *testing.B) { run(b, fqdnBench(b, false, 0, false), ordinary, 1) })
	b.Run("ordinary/with-toFQDNs", func(b *testing.B) { run(b, fqdnBench(b, true, 1024, false), ordinary, 1) })
	for _, n := range []int{1, 1024} {
		for _, all := range []bool{false, true} {
			sels := 1
			if all {
				sels = FQDNSelectors
			}
			b.Run(fmt.Sprintf("learned/addresses=%d/selectors=%d", n, sels), func(b *testing.B) {
				run(b, fqdnBench(b, true, n, all), packet("10.1.0.5", "198.18.0.0", ProtoTCP, 30002, 443), 1)
			})
		}
	}
	b.Run("refused/addresses=1024", func(b *testing.B) {
		run(b, fqdnBench(b, true, 1024, false), packet("10.1.0.5", "198.19.0.1", ProtoTCP, 30003, 443), 0)
	})
}

// BenchmarkFQDNMemory reports the kernel's accounting (fdinfo memlock) of
// sw_fqdn as learned addresses grow: 1,000, 10,000 and 65,536 (the map's
// default size) addresses, spread over containers of 1,024 each (the
// default share). The map is not preallocated, so the figure grows with
// entries; names cost nothing in the kernel (an entry is an address, with
// one expiry per selector, however many names resolved to it).
func BenchmarkFQDNMemory(b *testing.B) {
	requireRoot(b)
	memlock := func(b *testing.B, d *Datapath) uint64 {
		info, err := d.skb.SwFqdn.Info()
		if err != nil {
			b.Fatal(err)
		}
		m, ok := info.Memlock()
		if !ok {
			b.Skip("the kernel reports no memlock for maps")
		}
		return m
	}
	for _, n := range []int{1000, 10000, 65536} {
		b.Run(fmt.Sprintf("addresses=%d", n), func(b *testing.B) {
			for b.Loop() {
				d := newTestDatapath(b)
				empty := memlock(b, d)
				until := MonotonicSeconds() + 3600
				for i := range n {
					addr := netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)})
					if err := d.LearnFQDN(cgSidecar+uint64(i/1024), addr, i%FQDNSelectors, until); err != nil {
						b.Fatal(err)
					}
				}
				full := memlock(b, d)
				b.ReportMetric(float64(empty), "empty-bytes")
				b.ReportMetric(float64(full-empty)/float64(n), "bytes/address")
				b.ReportMetric(float64(full-empty)/(1<<20), "MiB")
			}
		})
	}
}
