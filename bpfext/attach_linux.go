package bpfext

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

type entryHook struct {
	name   string
	attach ebpf.AttachType
	prog   func(d *Datapath) *ebpf.Program
}

// entryHooks are attached to every pod cgroup, in this order: cgroup_skb
// first, since it alone is authoritative; the socket hooks after it make a
// deny prompt (EPERM at connect/sendto); post_bind and sock_release keep
// the pod's bound-port table and refuse a restricted container another
// container's port; recvmsg gives a DNS answer the proxy relayed the
// address of the server the container asked (toFQDNs).
var entryHooks = []entryHook{
	{"egress", ebpf.AttachCGroupInetEgress, func(d *Datapath) *ebpf.Program { return d.skb.SwEntryEgress }},
	{"ingress", ebpf.AttachCGroupInetIngress, func(d *Datapath) *ebpf.Program { return d.skb.SwEntryIngress }},
	{"connect4", ebpf.AttachCGroupInet4Connect, func(d *Datapath) *ebpf.Program { return d.sock.SwEntryConnect4 }},
	{"connect6", ebpf.AttachCGroupInet6Connect, func(d *Datapath) *ebpf.Program { return d.sock.SwEntryConnect6 }},
	{"sendmsg4", ebpf.AttachCGroupUDP4Sendmsg, func(d *Datapath) *ebpf.Program { return d.sock.SwEntrySendmsg4 }},
	{"sendmsg6", ebpf.AttachCGroupUDP6Sendmsg, func(d *Datapath) *ebpf.Program { return d.sock.SwEntrySendmsg6 }},
	{"post_bind4", ebpf.AttachCGroupInet4PostBind, func(d *Datapath) *ebpf.Program { return d.sock.SwPostBind4 }},
	{"post_bind6", ebpf.AttachCGroupInet6PostBind, func(d *Datapath) *ebpf.Program { return d.sock.SwPostBind6 }},
	{"sock_release", ebpf.AttachCgroupInetSockRelease, func(d *Datapath) *ebpf.Program { return d.sock.SwSockRelease }},
	{"recvmsg4", ebpf.AttachCGroupUDP4Recvmsg, func(d *Datapath) *ebpf.Program { return d.sock.SwRecvmsg4 }},
	{"recvmsg6", ebpf.AttachCGroupUDP6Recvmsg, func(d *Datapath) *ebpf.Program { return d.sock.SwRecvmsg6 }},
}

// attachFault, when set (tests only), fails the attachment of a hook.
var attachFault func(hook string) error

// CgroupID returns the cgroup v2 id of a cgroup directory: its inode number.
func CgroupID(cgroupPath string) (uint64, error) {
	fi, err := os.Stat(cgroupPath)
	if err != nil {
		return 0, fmt.Errorf("stat cgroup: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || !fi.IsDir() {
		return 0, fmt.Errorf("cgroup %s: not a cgroup directory", cgroupPath)
	}
	return st.Ino, nil
}

func (d *Datapath) linkDir(cgid uint64) string {
	return filepath.Join(d.pinDir, "links", strconv.FormatUint(cgid, 10))
}

// Attach attaches the entry programs to a pod's cgroup v2 directory with
// bpf_link (multi-attach: they run next to Cilium's and systemd's programs)
// and pins the links, so the attachment outlives this process. It covers
// every cgroup below the pod's, present and future. Attaching a cgroup that
// is already attached only adds missing hooks, so a cgroup whose attachment
// failed halfway is completed by the next Attach; Attachments tells which
// are complete.
func (d *Datapath) Attach(cgroupPath string) (uint64, error) {
	cgid, err := CgroupID(cgroupPath)
	if err != nil {
		return 0, err
	}
	dir := d.linkDir(cgid)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return 0, fmt.Errorf("create link pin dir: %w", err)
	}
	for _, h := range entryHooks {
		pin := filepath.Join(dir, h.name)
		if _, err := os.Stat(pin); err == nil {
			continue
		}
		var l link.Link
		if attachFault != nil {
			err = attachFault(h.name)
		}
		if err == nil {
			l, err = link.AttachCgroup(link.CgroupOptions{Path: cgroupPath, Attach: h.attach, Program: h.prog(d)})
		}
		if err != nil {
			return cgid, fmt.Errorf("attach %s to cgroup %s: %w", h.name, cgroupPath, err)
		}
		if err := l.Pin(pin); err != nil {
			l.Close()
			return cgid, fmt.Errorf("pin %s link of cgroup %s: %w", h.name, cgroupPath, err)
		}
		l.Close()
	}
	return cgid, nil
}

// DetachID removes the pinned links of a cgroup by its id, which detaches
// the entry programs; the cgroup may already be removed.
func (d *Datapath) DetachID(cgid uint64) error {
	dir := d.linkDir(cgid)
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("detach cgroup %d: %w", cgid, ErrNotAttached)
	}
	if err != nil {
		return fmt.Errorf("detach cgroup %d: %w", cgid, err)
	}
	var errs []error
	for _, e := range entries {
		pin := filepath.Join(dir, e.Name())
		l, err := link.LoadPinnedLink(pin, nil)
		if err != nil {
			// A link whose cgroup is gone may not load; the pin is all that is left.
			if rmErr := os.Remove(pin); rmErr != nil {
				errs = append(errs, fmt.Errorf("detach %s of cgroup %d: %w", e.Name(), cgid, err))
			}
			continue
		}
		if err := l.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("unpin %s link of cgroup %d: %w", e.Name(), cgid, err))
		}
		if err := l.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close %s link of cgroup %d: %w", e.Name(), cgid, err))
		}
	}
	if err := os.Remove(dir); err != nil && len(errs) == 0 {
		errs = append(errs, fmt.Errorf("remove link dir of cgroup %d: %w", cgid, err))
	}
	return errors.Join(errs...)
}

// Attachments returns the cgroups with pinned sidewall links, each with
// whether every entry hook is attached (false: an attachment failed
// halfway, and Attach must complete it).
func (d *Datapath) Attachments() (map[uint64]bool, error) {
	ids, err := d.Attached()
	if err != nil {
		return nil, err
	}
	out := make(map[uint64]bool, len(ids))
	for _, id := range ids {
		complete := true
		for _, h := range entryHooks {
			if _, err := os.Stat(filepath.Join(d.linkDir(id), h.name)); err != nil {
				complete = false
				break
			}
		}
		out[id] = complete
	}
	return out, nil
}

// Attached returns the ids of the cgroups with pinned sidewall links, for
// an agent that adopts the pins after a restart and garbage-collects.
func (d *Datapath) Attached() ([]uint64, error) {
	entries, err := os.ReadDir(filepath.Join(d.pinDir, "links"))
	if err != nil {
		return nil, fmt.Errorf("list attached cgroups: %w", err)
	}
	var ids []uint64
	for _, e := range entries {
		id, err := strconv.ParseUint(e.Name(), 10, 64)
		if err != nil {
			continue
		}
		ids = append(ids, id)
	}
	return ids, nil
}

func (d *Datapath) detachAll() (int, error) {
	ids, err := d.Attached()
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return 0, nil
		}
		return 0, err
	}
	var errs []error
	for _, id := range ids {
		if err := d.DetachID(id); err != nil {
			errs = append(errs, err)
		}
	}
	return len(ids), errors.Join(errs...)
}
