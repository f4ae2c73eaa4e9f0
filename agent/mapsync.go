package agent

import (
	"fmt"
	"maps"

	"github.com/sidewall/sidewall/bpfext"
)

// mapSync reconciles one datapath table, in the manner of Cilium's
// pkg/bpf/ops: it reads what the table holds, writes what desired adds or
// changes, and later deletes what desired lacks. The two steps are apart
// so apply can order them across tables (every write before any
// deletion), and an entry a deletion removes is never one still needed.
type mapSync[K comparable, V any] struct {
	what string
	// list reads what the table holds now.
	list func() (map[K]V, error)
	// equal says whether a held entry is already the desired one; nil
	// compares nothing, so every desired entry is written.
	equal func(have, want V) bool
	// update writes entries; delete removes keys. Either is called only
	// with a non-empty argument.
	update func(map[K]V) error
	delete func([]K) error

	have map[K]V
}

// plan reads the table and returns what desired adds or changes.
func (s *mapSync[K, V]) plan(desired map[K]V) (map[K]V, error) {
	have, err := s.list()
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", s.what, err)
	}
	s.have = have
	changed := map[K]V{}
	for k, v := range desired {
		if cur, ok := have[k]; ok && s.equal != nil && s.equal(cur, v) {
			continue
		}
		changed[k] = v
	}
	return changed, nil
}

// held reports whether the table held k when plan read it.
func (s *mapSync[K, V]) held(k K) bool {
	_, ok := s.have[k]
	return ok
}

// write writes what plan returned (or a part of it).
func (s *mapSync[K, V]) write(changed map[K]V) error {
	if len(changed) == 0 {
		return nil
	}
	if err := s.update(changed); err != nil {
		return fmt.Errorf("write %d %s: %w", len(changed), s.what, err)
	}
	maps.Copy(s.have, changed)
	return nil
}

// sync is plan and write: it returns the entries it wrote.
func (s *mapSync[K, V]) sync(desired map[K]V) (map[K]V, error) {
	changed, err := s.plan(desired)
	if err != nil {
		return nil, err
	}
	return changed, s.write(changed)
}

// prune deletes what the table held at sync and desired lacks. It returns
// the keys it deleted.
func (s *mapSync[K, V]) prune(desired map[K]V) ([]K, error) {
	var stale []K
	for k := range s.have {
		if _, ok := desired[k]; !ok {
			stale = append(stale, k)
		}
	}
	if len(stale) == 0 {
		return nil, nil
	}
	if err := s.delete(stale); err != nil {
		return stale, fmt.Errorf("delete %d %s: %w", len(stale), s.what, err)
	}
	for _, k := range stale {
		delete(s.have, k)
	}
	return stale, nil
}

func comparableEqual[V comparable](a, b V) bool { return a == b }

// podEqual compares pod entries by what the pods map holds: the addresses.
// Declared ports go to the bound-port table (Datapath.ReservePorts).
func podEqual(a, b bpfext.Pod) bool {
	return a.ID == b.ID && a.IPv4 == b.IPv4 && a.IPv6 == b.IPv6
}
