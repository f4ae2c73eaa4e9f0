package identity

import (
	"errors"
	"fmt"
	"hash/fnv"
	"strings"
	"sync"

	ciliumidentity "github.com/cilium/cilium/pkg/identity"
	"github.com/cilium/cilium/pkg/labels"
)

// ErrExhausted is returned when every number of the allocation range is in
// use.
var ErrExhausted = errors.New("identity range exhausted")

// Allocator hands out identity numbers for label sets when Cilium is absent.
//
// A label set's number is derived from a hash of its sorted labels, so the
// same set gets the same number on every node and after a restart. When
// that number is taken by another set, the next free number after it is
// used, so on collision the number depends on which set came first; Restore
// lets a restarted agent keep the numbers it had.
//
// Label sets that are one of Cilium's reserved identities (e.g. only
// reserved:host) get that reserved number. Numbers are reference counted:
// each Allocate needs a Release, and a number is reused only after its last
// Release.
type Allocator struct {
	mu       sync.Mutex
	min, max NumericIdentity
	byKey    map[string]*allocation
	byID     map[NumericIdentity]*allocation
}

type allocation struct {
	id     NumericIdentity
	labels labels.LabelArray
	refs   int
}

// NewAllocator returns an allocator over Cilium's cluster-local range for
// cluster ID 0: MinimalNumericIdentity (256) to the maximum allocation
// identity (65535).
func NewAllocator() *Allocator {
	return NewAllocatorRange(ciliumidentity.MinimalNumericIdentity, ciliumidentity.GetMaximumAllocationIdentity(0))
}

// NewAllocatorRange returns an allocator over [min, max]; tests use small
// ranges to provoke collisions and exhaustion.
func NewAllocatorRange(min, max NumericIdentity) *Allocator {
	return &Allocator{
		min:   min,
		max:   max,
		byKey: map[string]*allocation{},
		byID:  map[NumericIdentity]*allocation{},
	}
}

func key(lbls labels.LabelArray) string {
	return strings.Join(lbls.GetModel(), "\x00")
}

func normalize(lbls labels.LabelArray) (labels.LabelArray, error) {
	if len(lbls) == 0 {
		return nil, errors.New("invalid labels: empty label set")
	}
	out := make(labels.LabelArray, len(lbls))
	copy(out, lbls)
	out = out.Sort()
	for i, l := range out {
		if l.Key == "" {
			return nil, fmt.Errorf("invalid labels: label %d (%q): empty key", i, l.String())
		}
		if i > 0 && out[i-1].Source == l.Source && out[i-1].Key == l.Key {
			return nil, fmt.Errorf("invalid labels: key %s:%s appears twice", l.Source, l.Key)
		}
	}
	return out, nil
}

// Allocate returns the identity for lbls, allocating it on first use.
func (a *Allocator) Allocate(lbls labels.LabelArray) (NumericIdentity, error) {
	lbls, err := normalize(lbls)
	if err != nil {
		return 0, err
	}
	if r := ciliumidentity.LookupReservedIdentityByLabels(lbls.Labels()); r != nil {
		return r.ID, nil
	}
	k := key(lbls)
	a.mu.Lock()
	defer a.mu.Unlock()
	if al, ok := a.byKey[k]; ok {
		al.refs++
		return al.id, nil
	}
	size := uint64(a.max-a.min) + 1
	h := fnv.New64a()
	h.Write([]byte(k))
	start := h.Sum64() % size
	for i := range size {
		id := a.min + NumericIdentity((start+i)%size)
		if _, taken := a.byID[id]; taken {
			continue
		}
		al := &allocation{id: id, labels: lbls, refs: 1}
		a.byKey[k], a.byID[id] = al, al
		return id, nil
	}
	return 0, fmt.Errorf("allocate identity for %s: %w", lbls, ErrExhausted)
}

// Restore re-establishes id for lbls, e.g. from state a previous agent
// pinned, with one reference. It fails if id is outside the range or held
// by another label set, or if lbls already has another number.
func (a *Allocator) Restore(lbls labels.LabelArray, id NumericIdentity) error {
	lbls, err := normalize(lbls)
	if err != nil {
		return err
	}
	if id < a.min || id > a.max {
		return fmt.Errorf("restore identity %d: outside the allocation range %d-%d", id, a.min, a.max)
	}
	k := key(lbls)
	a.mu.Lock()
	defer a.mu.Unlock()
	if al, ok := a.byKey[k]; ok {
		if al.id != id {
			return fmt.Errorf("restore identity %d for %s: the labels already have identity %d", id, lbls, al.id)
		}
		al.refs++
		return nil
	}
	if al, ok := a.byID[id]; ok {
		return fmt.Errorf("restore identity %d for %s: held by %s", id, lbls, al.labels)
	}
	al := &allocation{id: id, labels: lbls, refs: 1}
	a.byKey[k], a.byID[id] = al, al
	return nil
}

// Release drops one reference to the identity of lbls, freeing the number
// after the last one. Releasing a reserved or unknown label set is a no-op.
func (a *Allocator) Release(lbls labels.LabelArray) {
	lbls, err := normalize(lbls)
	if err != nil {
		return
	}
	k := key(lbls)
	a.mu.Lock()
	defer a.mu.Unlock()
	al, ok := a.byKey[k]
	if !ok {
		return
	}
	if al.refs--; al.refs <= 0 {
		delete(a.byKey, k)
		delete(a.byID, al.id)
	}
}

// Lookup returns the labels of an allocated identity.
func (a *Allocator) Lookup(id NumericIdentity) (labels.LabelArray, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if al, ok := a.byID[id]; ok {
		return al.labels, true
	}
	return nil, false
}

// Len is the number of allocated identities.
func (a *Allocator) Len() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.byID)
}
