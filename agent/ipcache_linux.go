package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"unsafe"

	"github.com/cilium/cilium/pkg/maps/ipcache"
	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/sidewall/sidewall/bpfext/objs"
)

// DefaultCiliumBPFRoot is where Cilium mounts bpffs (its --bpf-root).
const DefaultCiliumBPFRoot = "/sys/fs/bpf"

// CiliumIPCachePath is where Cilium pins its ipcache under its bpf root:
// tc/globals/<ipcache.Name>, as Cilium's pkg/bpf pins its global maps.
func CiliumIPCachePath(bpfRoot string) string {
	if bpfRoot == "" {
		bpfRoot = DefaultCiliumBPFRoot
	}
	return filepath.Join(bpfRoot, "tc", "globals", ipcache.Name)
}

// ErrNoCiliumIPCache: no Cilium ipcache is pinned at the path (no Cilium
// agent on this node, or one with another bpf root).
var ErrNoCiliumIPCache = errors.New("no Cilium ipcache pinned")

// OpenCiliumIPCache opens Cilium's pinned ipcache read-only, after checking
// that the map and sidewall's datapath agree with the key and value layout
// of the pinned cilium module (pkg/maps/ipcache): a map of another layout,
// from another Cilium version, would be read wrongly, so it is refused
// rather than used. A missing pin matches ErrNoCiliumIPCache.
func OpenCiliumIPCache(path string) (*ebpf.Map, error) {
	if err := CheckIPCacheLayout(); err != nil {
		return nil, err
	}
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w at %s", ErrNoCiliumIPCache, path)
	}
	m, err := ebpf.LoadPinnedMap(path, &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("open Cilium ipcache %s: %w", path, err)
	}
	if err := checkIPCacheMap(m); err != nil {
		m.Close()
		return nil, fmt.Errorf("Cilium ipcache %s: %w", path, err)
	}
	return m, nil
}

func checkIPCacheMap(m *ebpf.Map) error {
	var errs []error
	if m.Type() != ebpf.LPMTrie {
		errs = append(errs, fmt.Errorf("type %s, want %s", m.Type(), ebpf.LPMTrie))
	}
	if k := uint32(unsafe.Sizeof(ipcache.Key{})); m.KeySize() != k {
		errs = append(errs, fmt.Errorf("key size %d, want %d (ipcache.Key)", m.KeySize(), k))
	}
	if v := uint32(unsafe.Sizeof(ipcache.RemoteEndpointInfo{})); m.ValueSize() != v {
		errs = append(errs, fmt.Errorf("value size %d, want %d (ipcache.RemoteEndpointInfo)", m.ValueSize(), v))
	}
	if want := uint32(unix.BPF_F_NO_PREALLOC | unix.BPF_F_RDONLY_PROG); m.Flags() != want {
		errs = append(errs, fmt.Errorf("flags %#x, want %#x (no prealloc, read-only for programs)", m.Flags(), want))
	}
	if len(errs) > 0 {
		return fmt.Errorf("not the layout of Cilium's pkg/maps/ipcache: %w", errors.Join(errs...))
	}
	return nil
}

// CheckIPCacheLayout compares the structs sidewall's verdict reads the
// ipcache with (bpfext/bpf/lib/maps.h, through their bpf2go mirrors) with
// the cilium module's ipcache.Key and ipcache.RemoteEndpointInfo, field by
// field.
func CheckIPCacheLayout() error {
	var k objs.SkbCiliumIpcacheKey
	var ck ipcache.Key
	var v objs.SkbCiliumRemoteEndpointInfo
	var cv ipcache.RemoteEndpointInfo
	type field struct {
		name        string
		off, cOff   uintptr
		size, cSize uintptr
	}
	fields := []field{
		{"key", 0, 0, unsafe.Sizeof(k), unsafe.Sizeof(ck)},
		{"key.prefixlen", unsafe.Offsetof(k.Prefixlen), unsafe.Offsetof(ck.Prefixlen), unsafe.Sizeof(k.Prefixlen), unsafe.Sizeof(ck.Prefixlen)},
		{"key.cluster_id", unsafe.Offsetof(k.ClusterId), unsafe.Offsetof(ck.ClusterID), unsafe.Sizeof(k.ClusterId), unsafe.Sizeof(ck.ClusterID)},
		{"key.family", unsafe.Offsetof(k.Family), unsafe.Offsetof(ck.Family), unsafe.Sizeof(k.Family), unsafe.Sizeof(ck.Family)},
		{"key.addr", unsafe.Offsetof(k.Addr), unsafe.Offsetof(ck.IP), unsafe.Sizeof(k.Addr), unsafe.Sizeof(ck.IP)},
		{"value", 0, 0, unsafe.Sizeof(v), unsafe.Sizeof(cv)},
		{"value.sec_identity", unsafe.Offsetof(v.SecIdentity), unsafe.Offsetof(cv.SecurityIdentity), unsafe.Sizeof(v.SecIdentity), unsafe.Sizeof(cv.SecurityIdentity)},
	}
	var errs []error
	for _, f := range fields {
		if f.off != f.cOff || f.size != f.cSize {
			errs = append(errs, fmt.Errorf("%s: sidewall has offset %d size %d, Cilium offset %d size %d", f.name, f.off, f.size, f.cOff, f.cSize))
		}
	}
	// The verdict builds its keys as Cilium's ipcache.NewKey does: the
	// prefix length counts the bits before the address (cluster id, pad,
	// family), and the family is 1 for IPv4 and 2 for IPv6.
	for _, c := range []struct {
		prefix       netip.Prefix
		bits, family uint32
	}{{netip.MustParsePrefix("192.0.2.1/32"), 32 + 32, 1}, {netip.MustParsePrefix("2001:db8::1/128"), 32 + 128, 2}} {
		key := ipcache.NewKey(c.prefix, 0)
		if key.Prefixlen != c.bits || uint32(key.Family) != c.family {
			errs = append(errs, fmt.Errorf("Cilium keys %s with prefixlen %d family %d, sidewall with %d and %d",
				c.prefix, key.Prefixlen, key.Family, c.bits, c.family))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("sidewall's datapath does not read Cilium's ipcache layout: %w", errors.Join(errs...))
	}
	return nil
}
