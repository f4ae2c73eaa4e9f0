package identity

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	ciliumidentity "github.com/cilium/cilium/pkg/identity"
	"github.com/cilium/cilium/pkg/labels"
)

func la(ls ...string) labels.LabelArray { return labels.ParseLabelArray(ls...) }

func TestAllocatorSameLabelsSameIdentity(t *testing.T) {
	web := la("k8s:app=web", "k8s:io.kubernetes.pod.namespace=shop")
	webReordered := la("k8s:io.kubernetes.pod.namespace=shop", "k8s:app=web")
	db := la("k8s:app=db", "k8s:io.kubernetes.pod.namespace=shop")

	a := NewAllocator()
	id1, err := a.Allocate(web)
	if err != nil {
		t.Fatal(err)
	}
	id2, err := a.Allocate(webReordered)
	if err != nil {
		t.Fatal(err)
	}
	if id1 != id2 {
		t.Errorf("same label set in another order: %d and %d", id1, id2)
	}
	idDB, err := a.Allocate(db)
	if err != nil {
		t.Fatal(err)
	}
	if idDB == id1 {
		t.Errorf("different label sets share identity %d", id1)
	}

	// Another node, or the agent after a restart, allocating in another
	// order gets the same numbers.
	b := NewAllocator()
	bDB, _ := b.Allocate(db)
	bWeb, _ := b.Allocate(web)
	if bDB != idDB || bWeb != id1 {
		t.Errorf("second allocator: web=%d db=%d, first: web=%d db=%d", bWeb, bDB, id1, idDB)
	}

	for _, id := range []NumericIdentity{id1, idDB} {
		if id < ciliumidentity.MinimalNumericIdentity || id > ciliumidentity.GetMaximumAllocationIdentity(0) {
			t.Errorf("identity %d outside Cilium's cluster-local range", id)
		}
		if id.IsReservedIdentity() {
			t.Errorf("identity %d is a reserved identity", id)
		}
	}
	if got, ok := a.Lookup(id1); !ok || !got.Equals(web.Sort()) {
		t.Errorf("Lookup(%d) = %v, %v", id1, got, ok)
	}
}

func TestAllocatorReservedLabelSets(t *testing.T) {
	a := NewAllocator()
	for _, tc := range []struct {
		lbls labels.LabelArray
		want NumericIdentity
	}{
		{la("reserved:host"), ciliumidentity.ReservedIdentityHost},
		{la("reserved:world"), ciliumidentity.ReservedIdentityWorld},
		{la("reserved:health"), ciliumidentity.ReservedIdentityHealth},
		{la("reserved:remote-node"), ciliumidentity.ReservedIdentityRemoteNode},
		{la("reserved:remote-node", "reserved:kube-apiserver"), ciliumidentity.ReservedIdentityKubeAPIServer},
	} {
		got, err := a.Allocate(tc.lbls)
		if err != nil {
			t.Fatalf("%v: %v", tc.lbls, err)
		}
		if got != tc.want {
			t.Errorf("%v: got %d, want reserved %d", tc.lbls, got, tc.want)
		}
	}
	if a.Len() != 0 {
		t.Errorf("reserved identities were allocated: %d", a.Len())
	}
}

func TestAllocatorCollisionsExhaustionAndReuse(t *testing.T) {
	a := NewAllocatorRange(300, 303)
	seen := map[NumericIdentity]string{}
	var sets []labels.LabelArray
	for _, app := range []string{"a", "b", "c", "d"} {
		l := la("k8s:app=" + app)
		sets = append(sets, l)
		id, err := a.Allocate(l)
		if err != nil {
			t.Fatalf("allocate %s: %v", app, err)
		}
		if id < 300 || id > 303 {
			t.Errorf("app=%s got %d outside [300,303]", app, id)
		}
		if other, dup := seen[id]; dup {
			t.Errorf("app=%s and app=%s share %d", app, other, id)
		}
		seen[id] = app
	}
	_, err := a.Allocate(la("k8s:app=e"))
	if !errors.Is(err, ErrExhausted) {
		t.Fatalf("fifth set in a range of four: got %v, want ErrExhausted", err)
	}

	// References: a second Allocate needs a second Release.
	idA, _ := a.Allocate(sets[0])
	a.Release(sets[0])
	if _, ok := a.Lookup(idA); !ok {
		t.Fatalf("identity %d freed while still referenced", idA)
	}
	a.Release(sets[0])
	if _, ok := a.Lookup(idA); ok {
		t.Fatalf("identity %d still allocated after its last release", idA)
	}
	idE, err := a.Allocate(la("k8s:app=e"))
	if err != nil || idE != idA {
		t.Errorf("after a release the freed number is reused: got %d, %v; want %d", idE, err, idA)
	}
}

func TestAllocatorRestore(t *testing.T) {
	a := NewAllocator()
	web := la("k8s:app=web")
	if err := a.Restore(web, 4242); err != nil {
		t.Fatal(err)
	}
	if id, _ := a.Allocate(web); id != 4242 {
		t.Errorf("restored identity not kept: got %d", id)
	}
	for _, tc := range []struct {
		lbls labels.LabelArray
		id   NumericIdentity
		want string
	}{
		{la("k8s:app=db"), 4242, "held by"},
		{web, 4343, "already have identity 4242"},
		{la("k8s:app=x"), 2, "outside the allocation range"},
		{nil, 5000, "empty label set"},
	} {
		err := a.Restore(tc.lbls, tc.id)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Restore(%v, %d) = %v, want error containing %q", tc.lbls, tc.id, err, tc.want)
		}
	}
}

func TestAllocatorRejectsBadLabels(t *testing.T) {
	a := NewAllocator()
	for _, tc := range []struct {
		lbls labels.LabelArray
		want string
	}{
		{nil, "empty label set"},
		{la("k8s:app=a", "k8s:app=b"), "appears twice"},
		{labels.LabelArray{{Source: "k8s", Value: "x"}}, "empty key"},
	} {
		_, err := a.Allocate(tc.lbls)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Allocate(%v) = %v, want error containing %q", tc.lbls, err, tc.want)
		}
	}
}

func TestAllocatorManyLabelSetsStayUniqueAndInRange(t *testing.T) {
	a := NewAllocator()
	seen := map[NumericIdentity]int{}
	const n = 5000
	for i := range n {
		id, err := a.Allocate(la("k8s:app=svc-"+strings.Repeat("x", i%7), "k8s:idx="+fmt.Sprint(i)))
		if err != nil {
			t.Fatalf("set %d: %v", i, err)
		}
		if prev, dup := seen[id]; dup {
			t.Fatalf("sets %d and %d share identity %d", prev, i, id)
		}
		if id < ciliumidentity.MinimalNumericIdentity || id > ciliumidentity.GetMaximumAllocationIdentity(0) || id.IsReservedIdentity() {
			t.Fatalf("set %d got %d", i, id)
		}
		seen[id] = i
	}
	if a.Len() != n {
		t.Errorf("Len = %d, want %d", a.Len(), n)
	}
}
