// Command benchload loads the sidewall datapath for hack/bench-datapath.sh:
// it pins the maps under -pin, attaches the entry programs to the parent (pod) of -cgroup,
// restricts that cgroup's egress to -peer on -port (any protocol, for
// iperf3's TCP control and UDP data), adds -rules minus one unrelated rules
// and peer identities, and exits; the pinned links keep enforcing. With
// -unpin it removes everything pinned under -pin instead. With -trivial it
// attaches an allow-all program instead: the cost of the hook itself.
package main

import (
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"

	"github.com/sidewall/sidewall/bpfext"
)

func main() {
	pin := flag.String("pin", "", "bpffs pin directory (required)")
	cgroup := flag.String("cgroup", "", "cgroup v2 directory to attach and restrict")
	rules := flag.Int("rules", 10, "number of rules")
	peer := flag.String("peer", "", "peer address the cgroup may reach")
	port := flag.Uint("port", 5201, "peer port the cgroup may reach")
	unpin := flag.Bool("unpin", false, "remove the pins and detach")
	trivial := flag.Bool("trivial", false, "attach an allow-all cgroup_skb egress program instead (the hook's own cost)")
	flag.Parse()
	if *trivial {
		if err := attachTrivial(*pin, *cgroup); err != nil {
			fmt.Fprintln(os.Stderr, "benchload:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(*pin, *cgroup, *rules, *peer, uint16(*port), *unpin); err != nil {
		fmt.Fprintln(os.Stderr, "benchload:", err)
		os.Exit(1)
	}
}

// attachTrivial pins an allow-all egress program on the pod cgroup, for the
// floor row of the benchmark; -unpin removes it with the rest.
func attachTrivial(pin, cgroup string) error {
	if err := os.MkdirAll(pin, 0o700); err != nil {
		return err
	}
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type: ebpf.CGroupSKB, AttachType: ebpf.AttachCGroupInetEgress, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 1), asm.Return()},
	})
	if err != nil {
		return fmt.Errorf("load allow-all program: %w", err)
	}
	defer p.Close()
	l, err := link.AttachCgroup(link.CgroupOptions{Path: filepath.Dir(cgroup), Attach: ebpf.AttachCGroupInetEgress, Program: p})
	if err != nil {
		return fmt.Errorf("attach allow-all program: %w", err)
	}
	defer l.Close()
	return l.Pin(filepath.Join(pin, "trivial-link"))
}

func removeTrivial(pin string) error {
	l, err := link.LoadPinnedLink(filepath.Join(pin, "trivial-link"), nil)
	if err != nil {
		return nil
	}
	defer l.Close()
	return l.Unpin()
}

func run(pin, cgroup string, n int, peer string, port uint16, unpin bool) error {
	if pin == "" {
		return fmt.Errorf("-pin is required")
	}
	d, err := bpfext.Load(bpfext.Options{PinDir: pin, KeepVerdicts: unpin})
	if err != nil {
		return err
	}
	defer d.Close()
	if unpin {
		return errors.Join(removeTrivial(pin), d.Unpin())
	}
	peerAddr, err := netip.ParseAddr(peer)
	if err != nil {
		return fmt.Errorf("-peer: %w", err)
	}
	cgid, err := bpfext.CgroupID(cgroup)
	if err != nil {
		return err
	}
	const peerIdentity = 1001
	var rs []bpfext.Rule
	var ids []bpfext.PeerIdentity
	flush := func() error {
		if err := d.UpsertRules(rs); err != nil {
			return err
		}
		if err := d.UpsertIdentities(ids); err != nil {
			return err
		}
		rs, ids = rs[:0], ids[:0]
		return nil
	}
	for i := 0; i < n-1; i++ {
		id := uint32(100000 + i)
		rs = append(rs, bpfext.Rule{RuleID: uint32(i + 100), PolicyID: uint32(2 + i%1000), Direction: bpfext.Direction(i % 2),
			Peer: id, Protocol: bpfext.ProtoUDP, PortLow: uint16(1024 + i%60000), Action: bpfext.ActionAllow})
		ids = append(ids, bpfext.PeerIdentity{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{11, byte(i >> 16), byte(i >> 8), byte(i)}), 32), Identity: id})
		if len(rs) == 10000 {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	rs = append(rs, bpfext.Rule{RuleID: 1, PolicyID: 1, Direction: bpfext.Egress, Peer: peerIdentity, PortLow: port, Action: bpfext.ActionAllow})
	ids = append(ids, bpfext.PeerIdentity{Prefix: netip.PrefixFrom(peerAddr, peerAddr.BitLen()), Identity: peerIdentity})
	if err := flush(); err != nil {
		return err
	}
	if err := d.UpsertContainers([]bpfext.Container{{CgroupID: cgid, PolicyID: 1, PodID: 1, ContainerID: 1, EgressRestricted: true, IngressRestricted: true}}); err != nil {
		return err
	}
	// Attached to the pod (the parent), classified by the container, as the agent does.
	_, err = d.Attach(filepath.Dir(cgroup))
	return err
}
