package bpfext

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/sidewall/sidewall/bpfext/objs"
)

// DefaultPinDir is where the node agent pins the datapath.
const DefaultPinDir = "/sys/fs/bpf/sidewall"

// DefaultBPFFSRoot is where bpffs is mounted if it is absent.
const DefaultBPFFSRoot = "/sys/fs/bpf"

// Slot names one verdict program slot: one per entry program type, as the
// kernel only tail-calls between programs of one type and attach type.
type Slot uint8

const (
	SlotEgress Slot = iota
	SlotIngress
	SlotConnect4
	SlotConnect6
	SlotSendmsg4
	SlotSendmsg6
	slotCount
)

func (s Slot) String() string {
	return [...]string{"egress", "ingress", "connect4", "connect6", "sendmsg4", "sendmsg6", "unknown"}[min(int(s), int(slotCount))]
}

// Slots lists every verdict slot.
func Slots() []Slot {
	return []Slot{SlotEgress, SlotIngress, SlotConnect4, SlotConnect6, SlotSendmsg4, SlotSendmsg6}
}

// Options configures [Load].
type Options struct {
	// PinDir is the bpffs directory holding the pinned maps and links;
	// DefaultPinDir when empty. Tests use a unique directory each.
	PinDir string
	// BPFFSRoot is mounted as bpffs when PinDir's filesystem is not bpffs;
	// DefaultBPFFSRoot when empty.
	BPFFSRoot string
	// MaxEntries overrides map sizes by map name (e.g. "sw_rules"). Only
	// effective when the map is created; adopting a pin of another size fails.
	MaxEntries map[string]uint32
	// CiliumIPCache is Cilium's pinned ipcache map (see OpenCiliumIPCache).
	// When set, the verdict resolves a peer's identity from it first, so
	// sidewall sees exactly the IP -> identity mapping Cilium enforces with;
	// sidewall's own peer maps decide what it does not hold. The datapath
	// holds its own reference: the caller may close the map after Load.
	CiliumIPCache *ebpf.Map
	// KeepVerdicts leaves the verdict slots as pinned (an agent restart that
	// must not change the verdict). By default Load installs its own verdict
	// programs, which is how a new agent version upgrades the verdict.
	KeepVerdicts bool
	// EventRate is how many events one container (classified cgroup) may
	// send per second on each CPU, in bursts of up to EventBurst, so that
	// one container cannot fill the ring buffer every pod shares. Zero:
	// DefaultEventRate and DefaultEventBurst; a negative rate: no limit.
	EventRate, EventBurst int
	// DenyAggregation reports repeated denies of one flow once per
	// interval, as Cilium's monitor aggregation does. Zero:
	// DefaultDenyAggregation; negative: every deny is reported.
	DenyAggregation time.Duration
	// PodPortShare is how many bound-port entries one pod may hold. Zero:
	// DefaultPodPortShare; negative: no limit but the table's size.
	PodPortShare int
}

// Defaults of the event and port limits (Options).
const (
	DefaultEventRate       = 1000
	DefaultEventBurst      = 2000
	DefaultDenyAggregation = 5 * time.Second
	DefaultPodPortShare    = 1024
)

// limits returns the config values of the event and port limits.
func (o Options) limits() (rate, burst, aggregateMS, share uint32, err error) {
	pick := func(v, def int) uint32 {
		switch {
		case v < 0:
			return 0
		case v == 0:
			return uint32(def)
		}
		return uint32(v)
	}
	if o.EventBurst < 0 {
		return 0, 0, 0, 0, fmt.Errorf("event burst %d: want 0 (default) or more", o.EventBurst)
	}
	if o.EventRate > 1_000_000_000 || o.EventBurst > 1<<24 || o.PodPortShare > 1<<30 {
		return 0, 0, 0, 0, fmt.Errorf("event rate %d, burst %d or pod port share %d out of range", o.EventRate, o.EventBurst, o.PodPortShare)
	}
	rate, share = pick(o.EventRate, DefaultEventRate), pick(o.PodPortShare, DefaultPodPortShare)
	burst = pick(o.EventBurst, DefaultEventBurst)
	switch {
	case o.DenyAggregation < 0:
	case o.DenyAggregation == 0:
		aggregateMS = uint32(DefaultDenyAggregation / time.Millisecond)
	case o.DenyAggregation > time.Hour:
		return 0, 0, 0, 0, fmt.Errorf("deny aggregation %s: at most an hour", o.DenyAggregation)
	default:
		aggregateMS = uint32(max(o.DenyAggregation/time.Millisecond, 1))
	}
	return rate, burst, aggregateMS, share, nil
}

// Datapath is the loaded datapath: the pinned maps, the entry programs to
// attach and the built-in verdict programs.
type Datapath struct {
	mu sync.Mutex // serialises epoch and config updates
	// fqdnMu serialises the read-modify-write of learned FQDN entries (one
	// entry holds every selector's expiry for one container and address).
	fqdnMu sync.Mutex
	pinDir string
	// ciliumIPCache: the verdict reads Cilium's ipcache, not the stand-in.
	ciliumIPCache bool
	opts          Options // as loaded, for SetCiliumIPCache
	skb           objs.SkbObjects
	sock          objs.SockObjects
}

// ErrNotAttached is returned by Detach for a cgroup without sidewall links.
var ErrNotAttached = errors.New("cgroup not attached")

// Load loads the datapath objects, creating or adopting the maps pinned
// under opts.PinDir, and installs the verdict programs into their slots.
func Load(opts Options) (*Datapath, error) {
	if opts.PinDir == "" {
		opts.PinDir = DefaultPinDir
	}
	if opts.BPFFSRoot == "" {
		opts.BPFFSRoot = DefaultBPFFSRoot
	}
	_, statErr := os.Stat(opts.PinDir)
	fresh := errors.Is(statErr, os.ErrNotExist)
	if err := ensureBPFFS(opts.BPFFSRoot, opts.PinDir); err != nil {
		return nil, err
	}
	d, err := load(opts)
	if err != nil && fresh {
		// Pins this failed load created would outlive it; adopted pins stay.
		os.RemoveAll(opts.PinDir)
	}
	return d, err
}

func load(opts Options) (*Datapath, error) {
	rate, burst, aggregateMS, share, err := opts.limits()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(opts.PinDir, "links"), 0o700); err != nil {
		return nil, fmt.Errorf("create pin dir: %w", err)
	}

	skbSpec, err := objs.LoadSkb()
	if err != nil {
		return nil, fmt.Errorf("parse cgroup_skb object: %w", err)
	}
	sockSpec, err := objs.LoadSock()
	if err != nil {
		return nil, fmt.Errorf("parse sock_addr object: %w", err)
	}
	for name, n := range opts.MaxEntries {
		found := false
		for _, spec := range []*ebpf.CollectionSpec{skbSpec, sockSpec} {
			if m, ok := spec.Maps[name]; ok {
				m.MaxEntries = n
				found = true
			}
		}
		if !found {
			return nil, fmt.Errorf("max entries: no map named %q", name)
		}
	}

	d := &Datapath{pinDir: opts.PinDir, ciliumIPCache: opts.CiliumIPCache != nil, opts: opts}
	copts := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: opts.PinDir}, MapReplacements: map[string]*ebpf.Map{}}
	if m := opts.CiliumIPCache; m != nil {
		for _, spec := range []*ebpf.CollectionSpec{skbSpec, sockSpec} {
			if ms, ok := spec.Maps[objs.SkbMapSwCiliumIpcache]; ok {
				ms.MaxEntries = m.MaxEntries()
			}
		}
		copts.MapReplacements[objs.SkbMapSwCiliumIpcache] = m
	}
	if err := skbSpec.LoadAndAssign(&d.skb, copts); err != nil {
		return nil, fmt.Errorf("load cgroup_skb objects: %w", verifierError(err))
	}
	// Both objects read the same ipcache, Cilium's or the empty stand-in.
	copts.MapReplacements[objs.SkbMapSwCiliumIpcache] = d.skb.SwCiliumIpcache
	// Maps pinned by name: the sock_addr object adopts the ones just pinned.
	if err := sockSpec.LoadAndAssign(&d.sock, copts); err != nil {
		d.skb.Close()
		return nil, fmt.Errorf("load sock_addr objects: %w", verifierError(err))
	}
	if !opts.KeepVerdicts {
		for _, s := range Slots() {
			if err := d.SetVerdict(s, d.VerdictProgram(s)); err != nil {
				d.Close()
				return nil, err
			}
		}
	}
	// Limits are the installing agent's: a load that keeps the verdicts
	// (a reader of the pins) leaves them as they are.
	if !opts.KeepVerdicts {
		if err := d.setLimits(rate, burst, aggregateMS, share); err != nil {
			d.Close()
			return nil, err
		}
	}
	// A new epoch: socket verdicts cached before this load are decided again.
	if err := d.bumpEpoch(); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

// verifierError keeps a verifier rejection printable in full: %+v of
// *ebpf.VerifierError prints the whole log, %v only its last lines.
func verifierError(err error) error {
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) {
		return fmt.Errorf("%w\n%+v", err, ve)
	}
	return err
}

func ensureBPFFS(root, pinDir string) error {
	if err := os.MkdirAll(pinDir, 0o700); err == nil {
		var st unix.Statfs_t
		if err := unix.Statfs(pinDir, &st); err == nil && st.Type == unix.BPF_FS_MAGIC {
			return nil
		}
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return fmt.Errorf("create bpffs mount point %s: %w", root, err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(root, &st); err != nil {
		return fmt.Errorf("statfs %s: %w", root, err)
	}
	if st.Type != unix.BPF_FS_MAGIC {
		if err := unix.Mount("bpf", root, "bpf", 0, "mode=0700"); err != nil {
			return fmt.Errorf("mount bpffs at %s: %w", root, err)
		}
	}
	if err := os.MkdirAll(pinDir, 0o700); err != nil {
		return fmt.Errorf("create pin dir: %w", err)
	}
	if err := unix.Statfs(pinDir, &st); err != nil || st.Type != unix.BPF_FS_MAGIC {
		return fmt.Errorf("pin dir %s is not on bpffs", pinDir)
	}
	return nil
}

// SetCiliumIPCache makes the verdict read m, Cilium's ipcache, from now
// on: Cilium re-creates its map when its agent restarts, and the old one,
// which the loaded programs hold, is no longer written. It loads the
// programs again with m (the pinned maps are adopted as at Load), installs
// the new verdicts (which bumps the epoch, so sockets are decided again)
// and keeps the entry programs of the new load for later attachments.
// Programs already attached keep working: they tail-call the new
// verdicts. Not safe to call concurrently with Attach.
func (d *Datapath) SetCiliumIPCache(m *ebpf.Map) error {
	o := d.opts
	o.CiliumIPCache, o.KeepVerdicts, o.MaxEntries = m, false, nil
	nd, err := load(o)
	if err != nil {
		return fmt.Errorf("reload the verdict with a new Cilium ipcache: %w", err)
	}
	d.mu.Lock()
	oldSkb, oldSock := d.skb.SkbPrograms, d.sock.SockPrograms
	oldMap := d.skb.SwCiliumIpcache
	d.skb.SkbPrograms, d.sock.SockPrograms = nd.skb.SkbPrograms, nd.sock.SockPrograms
	d.skb.SwCiliumIpcache, nd.skb.SwCiliumIpcache = nd.skb.SwCiliumIpcache, nil
	d.ciliumIPCache = true
	d.mu.Unlock()
	// The new load's own handles of the shared pinned maps are not needed:
	// this datapath keeps its own. Its programs are now this datapath's.
	nd.skb.SkbPrograms, nd.sock.SockPrograms = objs.SkbPrograms{}, objs.SockPrograms{}
	return errors.Join(nd.Close(), oldSkb.Close(), oldSock.Close(), oldMap.Close())
}

// ReadsCiliumIPCache says whether the verdict resolves peers from Cilium's
// ipcache (Options.CiliumIPCache) before sidewall's own peer maps.
func (d *Datapath) ReadsCiliumIPCache() bool { return d.ciliumIPCache }

// PinDir returns the bpffs directory of this datapath.
func (d *Datapath) PinDir() string { return d.pinDir }

// Close releases this process's handles. Pinned maps, verdict slots and
// attached links stay and keep enforcing.
func (d *Datapath) Close() error {
	return errors.Join(d.skb.Close(), d.sock.Close())
}

// Unpin removes every pin of this datapath (maps and links, which detaches
// the cgroups) and the pin directory. For uninstall and tests.
func (d *Datapath) Unpin() error {
	var errs []error
	if _, err := d.detachAll(); err != nil {
		errs = append(errs, err)
	}
	for _, m := range d.maps() {
		if err := m.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("unpin map: %w", err))
		}
	}
	if err := os.RemoveAll(d.pinDir); err != nil {
		errs = append(errs, fmt.Errorf("remove pin dir: %w", err))
	}
	return errors.Join(errs...)
}

func (d *Datapath) callsMap(s Slot) (*ebpf.Map, error) {
	switch s {
	case SlotEgress:
		return d.skb.SwCallsEgress, nil
	case SlotIngress:
		return d.skb.SwCallsIngress, nil
	case SlotConnect4:
		return d.sock.SwCallsConnect4, nil
	case SlotConnect6:
		return d.sock.SwCallsConnect6, nil
	case SlotSendmsg4:
		return d.sock.SwCallsSendmsg4, nil
	case SlotSendmsg6:
		return d.sock.SwCallsSendmsg6, nil
	}
	return nil, fmt.Errorf("verdict slot %d: unknown slot", s)
}

// VerdictProgram returns the built-in verdict program of a slot (for
// BPF_PROG_TEST_RUN and for restoring the slot after a swap).
func (d *Datapath) VerdictProgram(s Slot) *ebpf.Program {
	switch s {
	case SlotEgress:
		return d.skb.SwVerdictEgress
	case SlotIngress:
		return d.skb.SwVerdictIngress
	case SlotConnect4:
		return d.sock.SwVerdictConnect4
	case SlotConnect6:
		return d.sock.SwVerdictConnect6
	case SlotSendmsg4:
		return d.sock.SwVerdictSendmsg4
	case SlotSendmsg6:
		return d.sock.SwVerdictSendmsg6
	}
	return nil
}

// SetVerdict swaps the verdict program of a slot for every attached cgroup
// at once. The program must have the slot's type and attach type and use
// this datapath's maps (load it with [ebpf.CollectionOptions.MapReplacements]
// from [Datapath.MapsByName]).
// A nil program empties the slot: the entry programs then deny for every
// classified cgroup without FailOpen.
func (d *Datapath) SetVerdict(s Slot, p *ebpf.Program) error {
	m, err := d.callsMap(s)
	if err != nil {
		return err
	}
	if p == nil {
		if err := m.Delete(uint32(0)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("clear verdict slot %s: %w", s, err)
		}
		return d.bumpEpoch()
	}
	if err := m.Put(uint32(0), p); err != nil {
		return fmt.Errorf("set verdict slot %s: %w", s, err)
	}
	// Sockets must not keep verdicts the old program cached.
	return d.bumpEpoch()
}

// MapsByName returns the pinned maps by their C name, for loading a
// replacement verdict program with ebpf.CollectionOptions.MapReplacements.
func (d *Datapath) MapsByName() map[string]*ebpf.Map {
	m := d.skb.SkbMaps
	s := d.sock.SockMaps
	return map[string]*ebpf.Map{
		objs.SkbMapSwCallsEgress: m.SwCallsEgress, objs.SkbMapSwCallsIngress: m.SwCallsIngress,
		objs.SkbMapSwCidr4: m.SwCidr4, objs.SkbMapSwCidr6: m.SwCidr6,
		objs.SkbMapSwContainers: m.SwContainers, objs.SkbMapSwCounters: m.SwCounters,
		objs.SkbMapSwEvents: m.SwEvents, objs.SkbMapSwFlows: m.SwFlows,
		objs.SkbMapSwIdent4: m.SwIdent4, objs.SkbMapSwIdent6: m.SwIdent6,
		objs.SkbMapSwBound: m.SwBound, objs.SkbMapSwPodPorts: m.SwPodPorts,
		objs.SkbMapSwSockBound: m.SwSockBound, objs.SkbMapSwEventBudget: m.SwEventBudget,
		objs.SkbMapSwDenySeen: m.SwDenySeen, objs.SkbMapSwPods: m.SwPods,
		objs.SkbMapSwPolicies: m.SwPolicies, objs.SkbMapSwRules: m.SwRules,
		objs.SkbMapSwConfig: m.SwConfig, objs.SkbMapSwSockCache: m.SwSockCache,
		objs.SkbMapSwCiliumIpcache: m.SwCiliumIpcache,
		objs.SkbMapSwFqdn:          m.SwFqdn, objs.SkbMapSwDnsProxy: m.SwDnsProxy,
		objs.SkbMapSwDnsOrig: m.SwDnsOrig, objs.SkbMapSwDnsPending: m.SwDnsPending,
		objs.SockMapSwCallsConnect4: s.SwCallsConnect4, objs.SockMapSwCallsConnect6: s.SwCallsConnect6,
		objs.SockMapSwCallsSendmsg4: s.SwCallsSendmsg4, objs.SockMapSwCallsSendmsg6: s.SwCallsSendmsg6,
	}
}

func (d *Datapath) maps() []*ebpf.Map {
	var out []*ebpf.Map
	for _, m := range d.MapsByName() {
		out = append(out, m)
	}
	return out
}
