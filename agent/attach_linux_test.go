package agent_test

import (
	"errors"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	corev1 "k8s.io/api/core/v1"

	"github.com/sidewall/sidewall/agent"
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

// A pod whose cgroup the kernel will not let sidewall attach to (an
// exclusive connect4 program on its QoS cgroup, as an old-style attachment
// leaves it) gets an AttachFailed Event that names the blocking cgroup, and
// the attach-errors metric counts it. Once the blocker goes, the agent's
// retry attaches the pod completely and says so.
func TestAgentReportsAttachFailure(t *testing.T) {
	h := newHarness(t)
	h.applyPolicy(policyTo("a"))
	a := h.runPod("peer-a", map[string]string{"app": "a"}, false)
	b := h.runPod("peer-b", map[string]string{"app": "b"}, false)
	h.Listen(a, "app", "tcp", 8080)
	h.Listen(b, "app", "tcp", 8080)

	// The harness's pods are BestEffort: their parent is kubepods/besteffort.
	qos := filepath.Join(h.Local.KubepodsDir(), "besteffort")
	if err := os.MkdirAll(qos, 0o755); err != nil {
		t.Fatal(err)
	}
	detach := attachExclusive(t, qos)
	before := attachErrorsMetric(t, h)
	web := h.runPod("web", map[string]string{"app": "web"}, true)
	if filepath.Dir(web.CgroupDir) != qos {
		t.Fatalf("web's cgroup %s is not below %s", web.CgroupDir, qos)
	}
	ev := waitEvent(t, h, web.Name, agent.EventReasonAttachFailed)
	if ev.Type != corev1.EventTypeWarning || !strings.Contains(ev.Note, qos) || !strings.Contains(ev.Note, "connect4") {
		t.Errorf("AttachFailed event: type %q, note %q; want a Warning naming %s and connect4", ev.Type, ev.Note, qos)
	}
	if after := attachErrorsMetric(t, h); after <= before {
		t.Errorf("sidewall_attach_errors_total %v -> %v, want it counted", before, after)
	}

	detach()
	h.Agent.Agent.Trigger()
	waitEvent(t, h, web.Name, agent.EventReasonEnforced)
	id, err := bpfext.CgroupID(web.CgroupDir)
	if err != nil {
		t.Fatal(err)
	}
	if as, err := h.Agent.Datapath.Attachments(); err != nil || !as[id] {
		t.Fatalf("after the blocker went: attachments %v, %v; want web complete", as, err)
	}
	h.expect(web, "log-shipper", b, false)
	h.expect(web, "log-shipper", a, true)
}

// attachExclusive attaches an allow-all connect4 program to a cgroup with
// no attach flags (exclusive), and returns a function that detaches it.
func attachExclusive(t *testing.T, cgroup string) (detach func()) {
	t.Helper()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type: ebpf.CGroupSockAddr, AttachType: ebpf.AttachCGroupInet4Connect, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 1), asm.Return()},
	})
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(cgroup)
	if err != nil {
		t.Fatal(err)
	}
	opts := link.RawAttachProgramOptions{Target: int(f.Fd()), Program: prog, Attach: ebpf.AttachCGroupInet4Connect}
	if err := link.RawAttachProgram(opts); err != nil {
		t.Fatalf("attach exclusively to %s: %v", cgroup, err)
	}
	var once sync.Once
	detach = func() {
		once.Do(func() {
			if err := link.RawDetachProgram(link.RawDetachProgramOptions{Target: opts.Target, Program: prog, Attach: opts.Attach}); err != nil {
				t.Errorf("detach: %v", err)
			}
			f.Close()
			prog.Close()
		})
	}
	t.Cleanup(detach)
	return detach
}

func attachErrorsMetric(t *testing.T, h *harness) float64 {
	t.Helper()
	rec := httptest.NewRecorder()
	h.Agent.Agent.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for _, line := range strings.Split(rec.Body.String(), "\n") {
		if v, ok := strings.CutPrefix(line, "sidewall_attach_errors_total "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	t.Fatal("no sidewall_attach_errors_total in /metrics")
	return 0
}
