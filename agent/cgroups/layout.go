package cgroups

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Driver is kubelet's cgroup driver (its --cgroup-driver flag).
type Driver string

const (
	// Cgroupfs is kubelet's cgroupfs driver: plain directory names.
	Cgroupfs Driver = "cgroupfs"
	// Systemd is kubelet's systemd driver: slices and scopes.
	Systemd Driver = "systemd"
)

// Runtime is the container runtime named by the scheme of a containerID.
type Runtime string

const (
	// Containerd is "containerd://<id>".
	Containerd Runtime = "containerd"
	// CRIO is "cri-o://<id>".
	CRIO Runtime = "cri-o"
	// Docker is "docker://<id>" (cri-dockerd).
	Docker Runtime = "docker"
)

// ContainerID is a parsed status containerID such as "containerd://4f2a...".
type ContainerID struct {
	// Runtime is empty only for an ID parsed from a cgroupfs directory name
	// that does not say which runtime made it (containerd and docker both use
	// the bare id there).
	Runtime Runtime
	ID      string
}

// String returns the containerID form used in pod status.
func (c ContainerID) String() string {
	return string(c.Runtime) + "://" + c.ID
}

// ParseContainerID parses a status containerID ("containerd://<id>",
// "cri-o://<id>", "docker://<id>").
func ParseContainerID(s string) (ContainerID, error) {
	scheme, id, ok := strings.Cut(s, "://")
	if !ok {
		return ContainerID{}, fmt.Errorf("container id %q: want <runtime>://<id>", s)
	}
	rt := Runtime(scheme)
	switch rt {
	case Containerd, CRIO, Docker:
	default:
		return ContainerID{}, fmt.Errorf("container id %q: unsupported runtime %q (want containerd, cri-o or docker)", s, scheme)
	}
	if err := validName(id); err != nil {
		return ContainerID{}, fmt.Errorf("container id %q: %w", s, err)
	}
	return ContainerID{Runtime: rt, ID: id}, nil
}

// validName refuses anything that could leave the directory it is joined to.
func validName(s string) error {
	if s == "" {
		return errors.New("empty")
	}
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-':
		default:
			return fmt.Errorf("invalid character %q", r)
		}
	}
	return nil
}

// DirName is the name of the container's cgroup directory inside its pod's
// cgroup directory, as the runtime creates it under driver d.
func (c ContainerID) DirName(d Driver) string {
	if d == Systemd {
		switch c.Runtime {
		case CRIO:
			return "crio-" + c.ID + ".scope"
		case Docker:
			return "docker-" + c.ID + ".scope"
		default:
			return "cri-containerd-" + c.ID + ".scope"
		}
	}
	if c.Runtime == CRIO {
		return "crio-" + c.ID
	}
	return c.ID
}

// ParseContainerDir is the inverse of DirName: it tells whether name is a
// container cgroup directory under driver d and which container it holds.
// CRI-O's conmon scopes and kubelet's own slices are not containers.
func ParseContainerDir(d Driver, name string) (ContainerID, bool) {
	var c ContainerID
	if d == Systemd {
		base, ok := strings.CutSuffix(name, ".scope")
		if !ok {
			return c, false
		}
		switch {
		case strings.HasPrefix(base, "cri-containerd-"):
			c = ContainerID{Runtime: Containerd, ID: strings.TrimPrefix(base, "cri-containerd-")}
		case strings.HasPrefix(base, "crio-conmon-"):
			return c, false
		case strings.HasPrefix(base, "crio-"):
			c = ContainerID{Runtime: CRIO, ID: strings.TrimPrefix(base, "crio-")}
		case strings.HasPrefix(base, "docker-"):
			c = ContainerID{Runtime: Docker, ID: strings.TrimPrefix(base, "docker-")}
		default:
			return c, false
		}
	} else {
		switch {
		case strings.HasPrefix(name, "crio-conmon-"):
			return c, false
		case strings.HasPrefix(name, "crio-"):
			c = ContainerID{Runtime: CRIO, ID: strings.TrimPrefix(name, "crio-")}
		case strings.HasPrefix(name, "cgroup."), strings.Contains(name, "."):
			// Interface files and anything with a dot are never a bare id.
			return c, false
		default:
			c = ContainerID{ID: name}
		}
	}
	if validName(c.ID) != nil {
		return ContainerID{}, false
	}
	return c, true
}

// Layout names kubelet's pod cgroups under one kubepods cgroup.
type Layout struct {
	Driver Driver
	// Kubepods is the absolute path of the kubepods cgroup directory
	// (".../kubepods" or ".../kubepods.slice").
	Kubepods string
}

// PodDir returns the pod's cgroup directory for its QoS class.
func (l Layout) PodDir(uid types.UID, qos corev1.PodQOSClass) (string, error) {
	if err := validName(string(uid)); err != nil {
		return "", fmt.Errorf("pod uid %q: %w", uid, err)
	}
	var tier string
	switch qos {
	case corev1.PodQOSGuaranteed:
	case corev1.PodQOSBurstable, corev1.PodQOSBestEffort:
		tier = strings.ToLower(string(qos))
	default:
		return "", fmt.Errorf("pod qos class %q: want Guaranteed, Burstable or BestEffort", qos)
	}
	pod := "pod" + string(uid)
	if l.Driver != Systemd {
		return filepath.Join(l.Kubepods, tier, pod), nil
	}
	// Systemd nests a slice named a-b-c.slice under a.slice/a-b.slice and
	// kubelet escapes "-" in each name part as "_" (CgroupName.ToSystemd).
	prefix := strings.TrimSuffix(filepath.Base(l.Kubepods), ".slice")
	pod = strings.ReplaceAll(pod, "-", "_")
	if tier == "" {
		return filepath.Join(l.Kubepods, prefix+"-"+pod+".slice"), nil
	}
	return filepath.Join(l.Kubepods, prefix+"-"+tier+".slice", prefix+"-"+tier+"-"+pod+".slice"), nil
}

// ContainerDir returns the container's cgroup directory inside podDir.
func (l Layout) ContainerDir(podDir string, id ContainerID) string {
	return filepath.Join(podDir, id.DirName(l.Driver))
}
