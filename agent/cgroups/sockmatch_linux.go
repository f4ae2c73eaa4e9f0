package cgroups

import (
	"errors"
	"fmt"
	"strings"

	"github.com/blang/semver/v4"
	"github.com/cilium/cilium/pkg/mountinfo"
	"github.com/cilium/cilium/pkg/version"
)

// SocketMatchingFixed is the first kernel whose cgroup v2 socket hooks
// keep seeing a socket's cgroup while the cgroup v1 net_cls or net_prio
// controller is in use (kernel commit 8520e224f547, "bpf, cgroups: Fix
// cgroup v2 fallback on v1/v2 mixed mode"). Before it, the first use of
// either controller made the kernel stop recording sockets' cgroup v2
// cgroups ("cgroup: disabling cgroup2 socket matching due to net_prio or
// net_cls activation"): every socket then looks as if it were in the root
// cgroup, so programs on a pod's cgroup never run for it. Cilium's kind
// guide states the same requirement for its socket LB.
var SocketMatchingFixed = semver.Version{Major: 5, Minor: 14}

// ErrSocketMatching matches (errors.Is) every *SocketMatchingError.
var ErrSocketMatching = errors.New("cgroup v2 socket matching is not reliable on this host")

// SocketMatchingError says cgroup v2 socket hooks cannot be trusted on
// this host: sidewall would attach to the pods' cgroups and enforce
// nothing. The agent refuses to start on it.
type SocketMatchingError struct {
	Kernel semver.Version
	// Controller is net_cls or net_prio; Mount where it is mounted.
	Controller, Mount string
}

func (e *SocketMatchingError) Error() string {
	return fmt.Sprintf("kernel %s (before %s) with the cgroup v1 %s controller mounted at %s: the kernel turns off "+
		"cgroup v2 socket matching once %s is used, so programs on the pods' cgroups would not see their sockets "+
		"and restricted containers would go unenforced; unmount %s (or boot with cgroup_no_v1=net_cls,net_prio) or use kernel %s or later",
		e.Kernel, SocketMatchingFixed, e.Controller, e.Mount, e.Controller, e.Controller, SocketMatchingFixed)
}

func (e *SocketMatchingError) Is(target error) bool { return target == ErrSocketMatching }

// CheckSocketMatching returns a *SocketMatchingError when, on this kernel
// with these mounts, cgroup v2 socket hooks can stop seeing the sockets'
// cgroups: a kernel before SocketMatchingFixed with a cgroup v1 hierarchy
// that carries net_cls or net_prio.
func CheckSocketMatching(kernel semver.Version, mounts []*mountinfo.MountInfo) error {
	if kernel.GTE(SocketMatchingFixed) {
		return nil
	}
	for _, m := range mounts {
		if m.FilesystemType != "cgroup" {
			continue
		}
		for _, opt := range strings.Split(m.SuperOptions, ",") {
			if opt == "net_cls" || opt == "net_prio" {
				return &SocketMatchingError{Kernel: kernel, Controller: opt, Mount: m.MountPoint}
			}
		}
	}
	return nil
}

// CheckHostSocketMatching runs CheckSocketMatching on the running kernel
// and this process's mounts.
func CheckHostSocketMatching() error {
	kernel, err := version.GetKernelVersion()
	if err != nil {
		return fmt.Errorf("kernel version: %w", err)
	}
	mounts, err := mountinfo.GetMountInfo()
	if err != nil {
		return fmt.Errorf("mounts: %w", err)
	}
	return CheckSocketMatching(kernel, mounts)
}
