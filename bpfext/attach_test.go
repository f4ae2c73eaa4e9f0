package bpfext

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/sidewall/sidewall/hack/harness/nettest"
)

// An attachment that fails halfway is reported as incomplete, and the next
// Attach completes it; cgroup_skb, the authoritative hook, goes first.
func TestAttachFailsHalfwayAndCompletes(t *testing.T) {
	d := newTestDatapath(t)
	root, err := nettest.Cgroup2Root()
	if err != nil {
		t.Fatal(err)
	}
	cg := nettest.NewCgroup(t, filepath.Join(root, nettest.UniqueName("sidewall-attach-")))
	t.Cleanup(func() { attachFault = nil })
	injected := errors.New("injected failure")
	n := 0
	attachFault = func(hook string) error {
		n++
		if n == 3 {
			return injected
		}
		return nil
	}
	id, err := d.Attach(cg)
	if !errors.Is(err, injected) {
		t.Fatalf("Attach with the third hook failing: got %v, want the injected error", err)
	}
	t.Cleanup(func() { _ = d.DetachID(id) })
	as, err := d.Attachments()
	if err != nil {
		t.Fatal(err)
	}
	if complete, ok := as[id]; !ok || complete {
		t.Fatalf("after a failed attach: attachment %v (listed %t), want listed incomplete", complete, ok)
	}
	for _, hook := range []string{"egress", "ingress"} {
		if _, err := os.Stat(filepath.Join(d.linkDir(id), hook)); err != nil {
			t.Errorf("cgroup_skb %s not attached before the failing hook: %v", hook, err)
		}
	}

	attachFault = nil
	if _, err := d.Attach(cg); err != nil {
		t.Fatalf("second Attach: %v", err)
	}
	if as, err := d.Attachments(); err != nil || !as[id] {
		t.Fatalf("after the second Attach: %v, %v; want complete", as, err)
	}
	for _, h := range entryHooks {
		if _, err := os.Stat(filepath.Join(d.linkDir(id), h.name)); err != nil {
			t.Errorf("hook %s not pinned: %v", h.name, err)
		}
	}
}
