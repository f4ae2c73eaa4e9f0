package bpfext

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// ErrAttachBlocked matches (errors.Is) every *AttachBlockedError.
var ErrAttachBlocked = errors.New("an ancestor cgroup's attachment blocks sidewall's")

// AttachBlockedError says an ancestor cgroup holds a program attached in
// a mode that does not let sidewall attach below it the way it must.
//   - Flags none (an exclusive attachment): the kernel refuses every
//     attachment below it, with EPERM.
//   - BPF_F_ALLOW_OVERRIDE: an attachment below replaces the ancestor's
//     program for that subtree. sidewall would switch off, for the pods,
//     whatever runs there (such as a socket load balancer).
//
// Only BPF_F_ALLOW_MULTI (which every bpf_link attachment uses, Cilium's
// own included) lets the programs of both run.
type AttachBlockedError struct {
	Cgroup string
	Hook   string
	// Flags are the ancestor's attach flags for the hook.
	Flags uint32
}

func (e *AttachBlockedError) Error() string {
	mode, effect := "exclusively (attach flags none)", "the kernel refuses attachments below it"
	if e.Flags&unix.BPF_F_ALLOW_OVERRIDE != 0 {
		mode, effect = "with BPF_F_ALLOW_OVERRIDE", "an attachment below would replace that program for the pods"
	}
	return fmt.Sprintf("cgroup %s has a %s program attached %s: %s, so sidewall cannot enforce on pods below it; "+
		"reattach that program with BPF_F_ALLOW_MULTI or as a bpf_link", e.Cgroup, e.Hook, mode, effect)
}

func (e *AttachBlockedError) Is(target error) bool { return target == ErrAttachBlocked }

// CheckAttachable checks every hook sidewall attaches against the
// ancestors of dir up to the cgroup2 mount root (dir included, as the
// parent of the pods' cgroups): each program already attached there must
// allow multiple programs. It returns an *AttachBlockedError naming the
// first that does not, as the kernel's own walk would meet it.
func CheckAttachable(root, dir string) error {
	root, dir = filepath.Clean(root), filepath.Clean(dir)
	if dir != root && !strings.HasPrefix(dir, root+"/") {
		return fmt.Errorf("check attach flags: %s is not below the cgroup2 mount %s", dir, root)
	}
	for _, h := range entryHooks {
		for cg := dir; ; cg = filepath.Dir(cg) {
			flags, count, err := queryAttachFlags(cg, h.attach)
			if err != nil {
				return fmt.Errorf("check attach flags of %s at %s: %w", h.name, cg, err)
			}
			// As the kernel's hierarchy_allows_attach: the nearest
			// ancestor with MULTI, or with a single program, decides.
			if flags&unix.BPF_F_ALLOW_MULTI != 0 {
				break
			}
			if count > 0 {
				return &AttachBlockedError{Cgroup: cg, Hook: h.name, Flags: flags}
			}
			if cg == root {
				break
			}
		}
	}
	return nil
}

// queryAttachFlags returns the attach flags and the number of programs
// attached directly to the cgroup at one hook (BPF_PROG_QUERY, which
// cilium/ebpf's link.QueryPrograms does not return the flags of).
func queryAttachFlags(cgroup string, attach ebpf.AttachType) (flags, count uint32, err error) {
	f, err := os.Open(cgroup)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	// union bpf_attr, query part (include/uapi/linux/bpf.h).
	var attr struct {
		targetFD    uint32
		attachType  uint32
		queryFlags  uint32
		attachFlags uint32
		progIDs     uint64
		progCount   uint32
		_           uint32
		progAttach  uint64
		linkIDs     uint64
		linkAttach  uint64
		revision    uint64
	}
	attr.targetFD = uint32(f.Fd())
	attr.attachType = uint32(attach)
	_, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_PROG_QUERY, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	if errno != 0 {
		return 0, 0, errno
	}
	return attr.attachFlags, attr.progCount, nil
}
