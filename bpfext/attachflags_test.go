package bpfext

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/sidewall/sidewall/hack/harness/nettest"
)

// An ancestor's connect4 program attached exclusively or with
// BPF_F_ALLOW_OVERRIDE blocks sidewall below it, and CheckAttachable says
// which cgroup and hook; one attached with BPF_F_ALLOW_MULTI does not. The
// kernel's own refusal is checked beside it.
func TestCheckAttachable(t *testing.T) {
	d := newTestDatapath(t)
	root, err := nettest.Cgroup2Root()
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckAttachable(root, root); err != nil {
		t.Fatalf("this host's cgroup2 root already blocks sidewall: %v", err)
	}
	node := nettest.NewCgroup(t, filepath.Join(root, nettest.UniqueName("sidewall-flags-")))
	kubepods := nettest.NewCgroup(t, filepath.Join(node, "kubepods"))
	pod := nettest.NewCgroup(t, filepath.Join(kubepods, "pod"))

	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:       ebpf.CGroupSockAddr,
		AttachType: ebpf.AttachCGroupInet4Connect,
		License:    "GPL",
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R0, 1),
			asm.Return(),
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { prog.Close() })
	f, err := os.Open(node)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	attach := func(t *testing.T, flags uint32) {
		t.Helper()
		opts := link.RawAttachProgramOptions{Target: int(f.Fd()), Program: prog, Attach: ebpf.AttachCGroupInet4Connect, Flags: flags}
		if err := link.RawAttachProgram(opts); err != nil {
			t.Fatalf("attach with flags %#x: %v", flags, err)
		}
		t.Cleanup(func() {
			if err := link.RawDetachProgram(link.RawDetachProgramOptions{Target: opts.Target, Program: prog, Attach: opts.Attach}); err != nil {
				t.Errorf("detach: %v", err)
			}
		})
	}

	t.Run("exclusive", func(t *testing.T) {
		attach(t, 0)
		err := CheckAttachable(root, kubepods)
		var be *AttachBlockedError
		if !errors.As(err, &be) || !errors.Is(err, ErrAttachBlocked) {
			t.Fatalf("got %v, want an AttachBlockedError", err)
		}
		if be.Cgroup != node || be.Hook != "connect4" || !strings.Contains(err.Error(), "exclusively") {
			t.Errorf("error %q names cgroup %s hook %s, want %s connect4, exclusively", err, be.Cgroup, be.Hook, node)
		}
		// The kernel agrees: attaching below fails.
		id, err := d.Attach(pod)
		if err == nil {
			t.Fatalf("attach below an exclusive attachment succeeded")
		}
		_ = d.DetachID(id)
		if !errors.Is(err, unix.EPERM) {
			t.Errorf("attach below an exclusive attachment: %v, want EPERM", err)
		}
	})
	t.Run("override", func(t *testing.T) {
		attach(t, unix.BPF_F_ALLOW_OVERRIDE)
		err := CheckAttachable(root, kubepods)
		if !errors.Is(err, ErrAttachBlocked) || !strings.Contains(err.Error(), "BPF_F_ALLOW_OVERRIDE") {
			t.Fatalf("got %v, want an AttachBlockedError naming BPF_F_ALLOW_OVERRIDE", err)
		}
	})
	t.Run("multi", func(t *testing.T) {
		attach(t, unix.BPF_F_ALLOW_MULTI)
		if err := CheckAttachable(root, kubepods); err != nil {
			t.Fatalf("a BPF_F_ALLOW_MULTI attachment: %v, want none", err)
		}
	})
	t.Run("not below the mount", func(t *testing.T) {
		if err := CheckAttachable(kubepods, root); err == nil {
			t.Fatal("no error for a directory outside the mount")
		}
	})
}
