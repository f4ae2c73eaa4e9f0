package cgroups

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Config says where kubelet's pod cgroups are. The zero value finds them on
// a standard node.
type Config struct {
	// Mount is the cgroup2 mount point. Empty: found from /proc/self/mounts.
	Mount string
	// Parent is kubelet's --cgroup-root, the cgroup that holds the kubepods
	// cgroup, as a path relative to Mount. Empty: the root of the hierarchy.
	Parent string
	// Root is the kubepods cgroup itself, relative to Mount. Empty: probe
	// Parent for "kubepods.slice" (systemd driver), "kubepods" (cgroupfs),
	// and the nested "kubelet.slice/kubelet-kubepods.slice" and
	// "kubelet/kubepods" (kind's kubelet, cgroupRoot /kubelet).
	Root string
	// Driver is kubelet's cgroup driver. Empty: systemd when Root's name ends
	// in ".slice", else cgroupfs.
	Driver Driver
}

// Resolver maps pods to their cgroup directories and ids.
type Resolver struct {
	mount  string
	layout Layout
}

// NewResolver checks the configuration against the filesystem and detects
// what Config leaves empty. Its error matches ErrNotReady when the kubepods
// cgroup does not exist (yet).
func NewResolver(cfg Config) (*Resolver, error) {
	mount := cfg.Mount
	if mount == "" {
		m, err := FindMount()
		if err != nil {
			return nil, err
		}
		mount = m
	}
	ok, err := IsCgroup2(mount)
	if err != nil {
		return nil, fmt.Errorf("config mount: %w", err)
	}
	if !ok {
		return nil, fmt.Errorf("config mount: %s is not a cgroup2 filesystem", mount)
	}
	parent, err := under(mount, cfg.Parent, "parent")
	if err != nil {
		return nil, err
	}
	var root string
	if cfg.Root != "" {
		if root, err = under(mount, cfg.Root, "root"); err != nil {
			return nil, err
		}
		if err := isDir(root); err != nil {
			return nil, err
		}
	} else {
		// The layouts Cilium's cgroup provider knows
		// (pkg/cgroups/manager/provider.go), the nested ones as kind's
		// kubelet makes them (cgroupRoot /kubelet).
		for _, name := range kubepodsCandidates {
			p := filepath.Join(parent, name)
			if err := isDir(p); err == nil {
				root = p
				break
			} else if !errors.Is(err, ErrNotReady) {
				return nil, err
			}
		}
		if root == "" {
			return nil, &NotReadyError{Path: filepath.Join(parent, "{"+strings.Join(kubepodsCandidates, ",")+"}")}
		}
	}
	driver := cfg.Driver
	switch driver {
	case "":
		driver = Cgroupfs
		if strings.HasSuffix(root, ".slice") {
			driver = Systemd
		}
	case Cgroupfs, Systemd:
	default:
		return nil, fmt.Errorf("config driver %q: want cgroupfs or systemd", driver)
	}
	if driver == Systemd && !strings.HasSuffix(root, ".slice") {
		return nil, fmt.Errorf("config root %s: the systemd driver needs a .slice", root)
	}
	return &Resolver{mount: mount, layout: Layout{Driver: driver, Kubepods: root}}, nil
}

// kubepodsCandidates are the kubepods cgroups NewResolver probes below
// Config.Parent, in order.
var kubepodsCandidates = []string{"kubepods.slice", "kubepods", "kubelet.slice/kubelet-kubepods.slice", "kubelet/kubepods"}

// under joins rel to mount and refuses paths that leave it.
func under(mount, rel, field string) (string, error) {
	p := filepath.Join(mount, strings.TrimPrefix(rel, mount))
	if p != mount && !strings.HasPrefix(p, mount+string(filepath.Separator)) {
		return "", fmt.Errorf("config %s %q: outside the cgroup2 mount %s", field, rel, mount)
	}
	return p, nil
}

func isDir(p string) error {
	st, err := os.Stat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return &NotReadyError{Path: p}
	}
	if err != nil {
		return fmt.Errorf("stat %s: %w", p, err)
	}
	if !st.IsDir() {
		return fmt.Errorf("%s: not a directory", p)
	}
	return nil
}

// Mount is the cgroup2 mount point in use.
func (r *Resolver) Mount() string { return r.mount }

// Layout is the detected driver and kubepods directory.
func (r *Resolver) Layout() Layout { return r.layout }

// Role is a container's role in its pod, as policies select it.
type Role string

const (
	// RoleApp is a regular container (spec.containers).
	RoleApp Role = "app"
	// RoleInit is an init container that runs to completion.
	RoleInit Role = "init"
	// RoleSidecar is an init container with restartPolicy Always.
	RoleSidecar Role = "sidecar"
	// RoleEphemeral is an ephemeral (debug) container.
	RoleEphemeral Role = "ephemeral"
)

// Container is one running container's cgroup.
type Container struct {
	Name         string
	Role         Role
	ID           ContainerID
	RestartCount int32
	Path         string
	// CgroupID is the directory's inode number, the BPF cgroup id.
	CgroupID uint64
}

// Pod is a pod's cgroup and the cgroups of its running containers.
type Pod struct {
	UID      types.UID
	QOS      corev1.PodQOSClass
	Path     string
	CgroupID uint64
	// Containers are in status order: init containers (and sidecars), then
	// app containers, then ephemeral containers.
	Containers []Container
}

// Container returns the container named name, if it was resolved.
func (p *Pod) Container(name string) (Container, bool) {
	for _, c := range p.Containers {
		if c.Name == name {
			return c, true
		}
	}
	return Container{}, false
}

// PodDir returns the pod's cgroup directory. A pod without status.qosClass
// (the API server sets it on create, so only hand-made objects lack it) is
// looked for under every QoS tier.
func (r *Resolver) PodDir(pod *corev1.Pod) (string, corev1.PodQOSClass, error) {
	qos := pod.Status.QOSClass
	name := pod.Namespace + "/" + pod.Name
	if qos != "" {
		dir, err := r.layout.PodDir(pod.UID, qos)
		if err != nil {
			return "", "", fmt.Errorf("pod %s: %w", name, err)
		}
		return dir, qos, nil
	}
	var first string
	for _, q := range []corev1.PodQOSClass{corev1.PodQOSBurstable, corev1.PodQOSBestEffort, corev1.PodQOSGuaranteed} {
		dir, err := r.layout.PodDir(pod.UID, q)
		if err != nil {
			return "", "", fmt.Errorf("pod %s: %w", name, err)
		}
		if first == "" {
			first = dir
		}
		if err := isDir(dir); err == nil {
			return dir, q, nil
		}
	}
	return first, "", &NotReadyError{Pod: name, Path: first}
}

// ResolvePod finds the cgroup of the pod and of each of its running
// containers from the pod's UID, QoS class and status containerIDs.
//
// Containers that are not running (no containerID yet, waiting, or
// terminated, such as a completed init container whose cgroup is gone) are
// left out. When a cgroup that should exist is missing, the error matches
// ErrNotReady and, if the pod cgroup itself was found, the returned Pod holds
// every container that did resolve, so the caller can use those and retry
// the rest. A malformed containerID is reported naming its status field; the
// other containers are still resolved.
func (r *Resolver) ResolvePod(pod *corev1.Pod) (*Pod, error) {
	if pod == nil {
		return nil, errors.New("resolve pod: nil pod")
	}
	name := pod.Namespace + "/" + pod.Name
	dir, qos, err := r.PodDir(pod)
	if err != nil {
		return nil, err
	}
	id, err := ID(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, &NotReadyError{Pod: name, Path: dir}
	}
	if err != nil {
		return nil, fmt.Errorf("pod %s: %w", name, err)
	}
	out := &Pod{UID: pod.UID, QOS: qos, Path: dir, CgroupID: id}

	sidecars := map[string]bool{}
	for _, c := range pod.Spec.InitContainers {
		if c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			sidecars[c.Name] = true
		}
	}
	var errs []error
	add := func(field string, statuses []corev1.ContainerStatus, role func(string) Role) {
		for i, st := range statuses {
			if st.ContainerID == "" || st.State.Waiting != nil || st.State.Terminated != nil {
				continue
			}
			cid, err := ParseContainerID(st.ContainerID)
			if err != nil {
				errs = append(errs, fmt.Errorf("pod %s: status.%s[%d].containerID: %w", name, field, i, err))
				continue
			}
			p := r.layout.ContainerDir(dir, cid)
			cgid, err := ID(p)
			if errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, &NotReadyError{Pod: name, Container: st.Name, Path: p})
				continue
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("pod %s container %s: %w", name, st.Name, err))
				continue
			}
			out.Containers = append(out.Containers, Container{
				Name: st.Name, Role: role(st.Name), ID: cid,
				RestartCount: st.RestartCount, Path: p, CgroupID: cgid,
			})
		}
	}
	add("initContainerStatuses", pod.Status.InitContainerStatuses, func(n string) Role {
		if sidecars[n] {
			return RoleSidecar
		}
		return RoleInit
	})
	add("containerStatuses", pod.Status.ContainerStatuses, func(string) Role { return RoleApp })
	add("ephemeralContainerStatuses", pod.Status.EphemeralContainerStatuses, func(string) Role { return RoleEphemeral })
	return out, errors.Join(errs...)
}

// PodDirs lists the pod cgroups that exist under the kubepods cgroup, in
// every QoS tier, by pod UID: what kubelet has created on this node. The
// agent uses it to find pods that are gone after a restart.
func (r *Resolver) PodDirs() (map[types.UID]string, error) {
	out := map[types.UID]string{}
	l := r.layout
	prefix := strings.TrimSuffix(filepath.Base(l.Kubepods), ".slice")
	dirs := []string{l.Kubepods}
	for _, tier := range []string{"burstable", "besteffort"} {
		if l.Driver == Systemd {
			dirs = append(dirs, filepath.Join(l.Kubepods, prefix+"-"+tier+".slice"))
		} else {
			dirs = append(dirs, filepath.Join(l.Kubepods, tier))
		}
	}
	for _, dir := range dirs {
		entries, err := os.ReadDir(dir)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("list pod cgroups: %w", err)
		}
		for _, e := range entries {
			if !e.IsDir() {
				continue
			}
			if uid, ok := l.parsePodDir(e.Name(), prefix); ok {
				out[uid] = filepath.Join(dir, e.Name())
			}
		}
	}
	return out, nil
}

// parsePodDir is the inverse of PodDir's last path element.
func (l Layout) parsePodDir(name, prefix string) (types.UID, bool) {
	var uid string
	if l.Driver == Systemd {
		base, ok := strings.CutSuffix(name, ".slice")
		if !ok {
			return "", false
		}
		// prefix[-tier]-pod<uid with _ for ->
		i := strings.LastIndex(base, "-pod")
		if i < 0 || !strings.HasPrefix(base, prefix+"-") {
			return "", false
		}
		uid = strings.ReplaceAll(base[i+len("-pod"):], "_", "-")
	} else {
		var ok bool
		if uid, ok = strings.CutPrefix(name, "pod"); !ok {
			return "", false
		}
	}
	if validName(uid) != nil {
		return "", false
	}
	return types.UID(uid), true
}
