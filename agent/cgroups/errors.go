package cgroups

import (
	"errors"
	"fmt"
)

// ErrNotReady matches (errors.Is) every *NotReadyError.
var ErrNotReady = errors.New("cgroup not created yet")

// NotReadyError says a cgroup directory that should exist does not exist
// yet: kubelet or the runtime has not created it, or has just removed it.
// The caller retries (or waits for a Watcher event); it is not a bad input.
type NotReadyError struct {
	// Pod is "namespace/name"; empty for the kubepods cgroup.
	Pod string
	// Container is empty when the pod's own cgroup is missing.
	Container string
	Path      string
}

func (e *NotReadyError) Error() string {
	if e.Pod == "" {
		return fmt.Sprintf("cgroup %s not created yet", e.Path)
	}
	if e.Container == "" {
		return fmt.Sprintf("pod %s: cgroup %s not created yet", e.Pod, e.Path)
	}
	return fmt.Sprintf("pod %s container %s: cgroup %s not created yet", e.Pod, e.Container, e.Path)
}

// Is makes errors.Is(err, ErrNotReady) true.
func (e *NotReadyError) Is(target error) bool { return target == ErrNotReady }
