package bpfext

import (
	"errors"
	"fmt"
	"path/filepath"

	"github.com/cilium/ebpf"

	"github.com/sidewall/sidewall/bpfext/objs"
)

// Pinned reads the maps a running agent pinned, read-only, without taking
// the datapath over (Load would reset the verdict programs): for benchmarks
// and tools that watch an agent.
type Pinned struct {
	pinDir     string
	containers *ebpf.Map
}

// OpenPinned opens the pinned maps under pinDir read-only.
func OpenPinned(pinDir string) (*Pinned, error) {
	m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, MapContainers), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("open pinned %s: %w", MapContainers, err)
	}
	return &Pinned{pinDir: pinDir, containers: m}, nil
}

// Close releases the maps; the pins stay.
func (p *Pinned) Close() error { return p.containers.Close() }

// Container returns the classification of a cgroup, and whether there is
// one.
func (p *Pinned) Container(cgroupID uint64) (Container, bool, error) {
	var v objs.SkbContainerInfo
	err := p.containers.Lookup(cgroupID, &v)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return Container{}, false, nil
	}
	if err != nil {
		return Container{}, false, fmt.Errorf("look up cgroup %d: %w", cgroupID, err)
	}
	return containerFromInfo(cgroupID, v), true, nil
}

// Entries counts the entries of a pinned map by name (MapRules, ...).
func (p *Pinned) Entries(name string) (int, error) {
	m, err := ebpf.LoadPinnedMap(filepath.Join(p.pinDir, name), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		return 0, fmt.Errorf("open pinned %s: %w", name, err)
	}
	defer m.Close()
	n, err := countEntries(m)
	if err != nil {
		return 0, fmt.Errorf("count %s: %w", name, err)
	}
	return n, nil
}

// Classified reports whether the cgroup is classified as a container with
// a policy: not absent, not a pod cgroup's DenyAll entry.
func (p *Pinned) Classified(cgroupID uint64) (bool, error) {
	c, ok, err := p.Container(cgroupID)
	return ok && !c.DenyAll && c.PolicyID != 0, err
}

// Unclassified counts the cgroups of cgroupIDs that are not Classified.
func (p *Pinned) Unclassified(cgroupIDs []uint64) (int, error) {
	n := 0
	for _, cg := range cgroupIDs {
		ok, err := p.Classified(cg)
		if err != nil {
			return 0, err
		}
		if !ok {
			n++
		}
	}
	return n, nil
}
