package agent

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unsafe"

	"github.com/cilium/cilium/pkg/maps/ipcache"
	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/sidewall/sidewall/hack/harness"
	"github.com/sidewall/sidewall/hack/harness/proc"
)

func TestCheckIPCacheLayout(t *testing.T) {
	if err := CheckIPCacheLayout(); err != nil {
		t.Fatal(err)
	}
}

// TestOpenCiliumIPCache pins maps where Cilium would and checks what
// OpenCiliumIPCache makes of them: the agent e2e opens the real one.
func TestOpenCiliumIPCache(t *testing.T) {
	harness.RequirePrivileged(t)
	root := filepath.Join("/sys/fs/bpf", "sidewall-ipcache-test-"+proc.RandHex(4))
	t.Cleanup(func() { os.RemoveAll(root) })
	path := CiliumIPCachePath(root)
	if _, err := OpenCiliumIPCache(path); !errors.Is(err, ErrNoCiliumIPCache) {
		t.Fatalf("no pin: got %v, want ErrNoCiliumIPCache", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	pin := func(t *testing.T, spec *ebpf.MapSpec) {
		t.Helper()
		os.Remove(path)
		m, err := ebpf.NewMap(spec)
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		if err := m.Pin(path); err != nil {
			t.Fatal(err)
		}
	}
	good := ebpf.MapSpec{Type: ebpf.LPMTrie, KeySize: uint32(unsafe.Sizeof(ipcache.Key{})),
		ValueSize: uint32(unsafe.Sizeof(ipcache.RemoteEndpointInfo{})), MaxEntries: 64,
		Flags: unix.BPF_F_NO_PREALLOC | unix.BPF_F_RDONLY_PROG}

	t.Run("Cilium's layout", func(t *testing.T) {
		pin(t, &good)
		m, err := OpenCiliumIPCache(path)
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		// Read-only: sidewall never writes Cilium's map.
		k := ipcache.NewKey(netip.MustParsePrefix("10.9.0.1/32"), 0)
		v := ipcache.NewValue(1234, netip.Addr{}, 0, 0)
		if err := m.Put(&k, &v); err == nil {
			t.Error("the ipcache opened by sidewall is writable")
		}
	})
	for name, mutate := range map[string]func(*ebpf.MapSpec){
		"value size": func(s *ebpf.MapSpec) { s.ValueSize = 8 },
		"flags":      func(s *ebpf.MapSpec) { s.Flags = unix.BPF_F_NO_PREALLOC },
	} {
		t.Run("another "+name, func(t *testing.T) {
			spec := good
			mutate(&spec)
			pin(t, &spec)
			_, err := OpenCiliumIPCache(path)
			if err == nil || !strings.Contains(err.Error(), name) {
				t.Fatalf("got %v, want a refusal naming the %s", err, name)
			}
			t.Logf("refused: %v", err)
		})
	}
}
