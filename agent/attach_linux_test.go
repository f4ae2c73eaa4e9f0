package agent_test

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/cilium/ebpf/link"

	"github.com/sidewall/sidewall/bpfext"
)

// A pod cgroup whose attachment is incomplete (here a hook detached behind
// the agent's back, as a failed attach leaves it) is not taken as attached:
// the next reconcile attaches the missing hook, and enforcement is whole
// again.
func TestAgentCompletesPartialAttachment(t *testing.T) {
	h := newHarness(t)
	h.applyPolicy(policyTo("a"))
	a := h.runPod("peer-a", map[string]string{"app": "a"}, false)
	b := h.runPod("peer-b", map[string]string{"app": "b"}, false)
	h.Listen(a, "app", "tcp", 8080)
	h.Listen(b, "app", "tcp", 8080)
	web := h.runPod("web", map[string]string{"app": "web"}, true)
	h.expect(web, "log-shipper", b, false)

	id, err := bpfext.CgroupID(web.CgroupDir)
	if err != nil {
		t.Fatal(err)
	}
	pin := filepath.Join(h.PinDir, "links", strconv.FormatUint(id, 10), "connect4")
	l, err := link.LoadPinnedLink(pin, nil)
	if err != nil {
		t.Fatalf("load pinned connect4 link: %v", err)
	}
	if err := l.Unpin(); err != nil {
		t.Fatal(err)
	}
	l.Close() // connect4 is detached now
	if as, err := h.Agent.Datapath.Attachments(); err != nil || as[id] {
		t.Fatalf("attachments after detaching connect4: %v, %v; want the pod incomplete", as, err)
	}
	h.Agent.Agent.Trigger()
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, err := os.Stat(pin); err == nil {
			break
		} else if !errors.Is(err, os.ErrNotExist) || time.Now().After(deadline) {
			t.Fatalf("connect4 of the pod cgroup not attached again: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// EPERM at connect again: the socket hook is back.
	h.expect(web, "log-shipper", b, false)
	h.expect(web, "log-shipper", a, true)
}
