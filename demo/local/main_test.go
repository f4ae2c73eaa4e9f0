package main

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sidewall/sidewall/hack/harness"
	"github.com/sidewall/sidewall/hack/harness/localnode"
)

// The test binary is also the demo: started with demoEnv set it runs main,
// so the end-to-end tests run the demo exactly as `make demo` does (its own
// process, its own signal handling and exit status), minus building tools.
const demoEnv = "SIDEWALL_DEMO_UNDER_TEST"

func TestMain(m *testing.M) {
	if os.Getenv(demoEnv) == "1" {
		main()
	}
	os.Exit(m.Run())
}

// demoRun is a running demo process and its output so far.
type demoRun struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  bytes.Buffer
	done chan struct{}
	err  error
}

func startDemo(t *testing.T, args ...string) *demoRun {
	t.Helper()
	harness.RequirePrivileged(t)
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), demoEnv+"=1")
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	r := &demoRun{cmd: cmd, done: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start demo: %v", err)
	}
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			r.mu.Lock()
			r.out.WriteString(sc.Text() + "\n")
			r.mu.Unlock()
		}
	}()
	go func() {
		r.err = cmd.Wait()
		pw.Close()
		close(r.done)
	}()
	t.Cleanup(func() {
		select {
		case <-r.done:
		default:
			// A failed test must not leave the demo's pods and pins
			// behind: SIGINT runs the demo's own cleanup.
			_ = cmd.Process.Signal(os.Interrupt)
			select {
			case <-r.done:
			case <-time.After(time.Minute):
				_ = cmd.Process.Kill()
			}
		}
	})
	return r
}

func (r *demoRun) output() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.out.String()
}

// wait waits for the demo to exit and returns its exit status.
func (r *demoRun) wait(t *testing.T, limit time.Duration) int {
	t.Helper()
	select {
	case <-r.done:
	case <-time.After(limit):
		t.Fatalf("demo did not finish within %s; output so far:\n%s", limit, r.output())
	}
	// The reader may still be draining the pipe.
	time.Sleep(100 * time.Millisecond)
	var exit *exec.ExitError
	if errors.As(r.err, &exit) {
		return exit.ExitCode()
	}
	if r.err != nil {
		t.Fatalf("demo: %v", r.err)
	}
	return 0
}

// paths the demo says it made, to check that they are gone after it.
var madePaths = []*regexp.Regexp{
	regexp.MustCompile(`pod cgroups under (\S+),`),
	regexp.MustCompile(`BPF pins in (\S+),`),
}

func checkCleanedUp(t *testing.T, out string) {
	t.Helper()
	for _, re := range madePaths {
		m := re.FindStringSubmatch(out)
		if m == nil {
			t.Errorf("output does not say %q", re)
			continue
		}
		if _, err := os.Stat(m[1]); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still exists after the demo (stat: %v)", m[1], err)
		}
	}
}

// The rows the README promises, with what each must show. The expectations
// are the policy's meaning, written here independently of the demo's table.
// cilium is what Cilium's own Hubble saw: the generated CNP has no default
// deny, so Cilium forwards what reaches it; what sidewall refuses at
// connect() never leaves the pod.
var wantRows = []struct {
	from, to, expected, actual, cilium string
}{
	{"web/app", "GET payments:8080", "allowed", "allowed (HTTP 200)", "FORWARDED"},
	{"web/log-shipper", "POST payments:8080", "denied", "operation not permitted (EPERM)", "no flow"},
	{"web/log-shipper", "POST logging:8080 /ingest", "allowed", "allowed (HTTP 200)", "FORWARDED"},
	{"web/log-shipper", "GET localhost:9090 (loopback)", "denied", "operation not permitted (EPERM)", "(loopback)"},
	{"web/app", "GET localhost:9090 (loopback)", "allowed", "allowed (HTTP 200)", "(loopback)"},
	{"payments/payments", "GET web:8080", "allowed", "allowed (HTTP 200)", "FORWARDED"},
	{"payments/payments", "GET web:9090", "denied", "denied: dropped", "FORWARDED"},
}

// The toFQDNs rows (section 6): the sidecar reaches the name its policy
// allows and is refused another, which the app still reaches; each name
// resolves through the shop's DNS server.
var wantFQDNRows = []struct {
	from, to, expected, actual string
}{
	{"orders/telemetry", "POST otlp.traces.example-saas.test:8080 /v1/traces", "allowed", "allowed (HTTP 200)"},
	{"orders/telemetry", "POST collect.tracker.example.test:8080 /upload", "denied", "operation not permitted (EPERM)"},
	{"orders/app", "POST collect.tracker.example.test:8080 /upload", "allowed", "allowed (HTTP 200)"},
}

// checkRow finds the table row from → to in out and checks that it ends in
// ok with the expected and actual results; it returns the row ("" if none).
func checkRow(t *testing.T, what, out, from, to, expected, actual string) string {
	t.Helper()
	var row string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, from+" ") && strings.Contains(l, to) {
			row = l
			break
		}
	}
	switch f := strings.Fields(row); {
	case row == "":
		t.Errorf("no %s %s → %s", what, from, to)
	case f[len(f)-1] != "ok":
		t.Errorf("%s %s → %s does not end in ok: %q", what, from, to, row)
	case !strings.Contains(row, " "+expected+" ") || !strings.Contains(row, actual):
		t.Errorf("%s %s → %s: want expected %q and actual %q, got %q", what, from, to, expected, actual, row)
	}
	return row
}

// checkFQDNRows checks section 6's rows of the output.
func checkFQDNRows(t *testing.T, out string) {
	t.Helper()
	for _, w := range wantFQDNRows {
		checkRow(t, "toFQDNs row", out, w.from, w.to, w.expected, w.actual)
	}
	for _, want := range []string{
		"DNS RESPONSE otlp.traces.example-saas.test. -> ",
		"missed spec.egress[1].toFQDNs[0] (*.traces.example-saas.test); last resolved as collect.tracker.example.test.",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("toFQDNs section lacks %q", want)
		}
	}
}

// TestDemoEndToEnd runs `make demo`'s default: the shop on a real
// cilium-agent, with Cilium's verdict beside sidewall's.
func TestDemoEndToEnd(t *testing.T) {
	r := startDemo(t)
	code := r.wait(t, 3*time.Minute)
	out := r.output()
	t.Logf("demo output:\n%s", out)
	if code != 0 {
		t.Errorf("demo exit status %d, want 0", code)
	}
	for _, w := range wantRows {
		row := checkRow(t, "matrix row", out, w.from, w.to, w.expected, w.actual)
		if row != "" && !strings.Contains(row, "  "+w.cilium+"  ") {
			t.Errorf("row %s → %s: want Cilium's Hubble to show %q, got %q", w.from, w.to, w.cilium, row)
		}
	}
	for _, want := range []string{
		"kind: CiliumNetworkPolicy",
		"path: ^/ingest$",
		"method: POST",
		"[sidewall.io/container=log-shipper] -> shop/payments:8080 DROPPED POLICY_DENIED",
		"PASS: all 16 checks",
		// The toFQDNs policy's CNP: the name for Cilium, and the DNS rule
		// that puts Cilium's DNS proxy in the path; Cilium learned for
		// the pod.
		"cilium-agent imported ciliumnetworkpolicy.cilium.io/sidewall-telemetry-saas",
		"- matchPattern: '*.traces.example-saas.test'",
		"- matchPattern: '*'",
		"check: Cilium's DNS proxy learned otlp.traces.example-saas.test → ",
		// Cilium's own objects and its import of the generated policies.
		"ciliumendpoint.cilium.io/web",
		"ciliumidentity.cilium.io/",
		"cilium-agent imported ciliumnetworkpolicy.cilium.io/sidewall-log-shipper-egress",
		"cilium-agent imported ciliumnetworkpolicy.cilium.io/sidewall-app-admin-port",
		"-> shop/logging:8080",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	// Cilium's own flow, re-served by sidewall with the container named.
	if !regexp.MustCompile(`FORWARDED \(TCP Flags: [A-Z, -]+; container from log-shipper\)`).MatchString(out) {
		t.Errorf("no Cilium trace of log-shipper naming the container")
	}
	if !regexp.MustCompile(`(?m)^log-shipper-egress\s+Enforce\s+log-shipper\s+1\s+True\s`).MatchString(out) {
		t.Errorf("no ctrnp status row for log-shipper-egress (Enforce, log-shipper, 1 pod, Ready)")
	}
	checkFQDNRows(t, out)
	checkCleanedUp(t, out)
}

// TestDemoKeepInterrupt runs the demo's lighter mode (no Cilium) with
// --keep and stops it with Ctrl-C (SIGINT) once it waits: it must clean
// up and exit 0.
func TestDemoKeepInterrupt(t *testing.T) {
	r := startDemo(t, "--keep", "--cilium=false")
	deadline := time.Now().Add(3 * time.Minute)
	for !strings.Contains(r.output(), "press Ctrl-C") {
		select {
		case <-r.done:
			t.Fatalf("demo --keep exited before waiting; output:\n%s", r.output())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("demo --keep not waiting after 3m; output:\n%s", r.output())
		}
	}
	out := r.output()
	checkFQDNRows(t, out)
	for _, want := range []string{"PASS: all 14 checks", "kubectl get ctrnp -n shop", "KUBECONFIG=", "observe --server 127.0.0.1:", "--cilium=false: no Cilium runs"} {
		if !strings.Contains(out, want) {
			t.Errorf("--keep output lacks %q", want)
		}
	}
	if strings.Contains(out, "CILIUM (its Hubble)") || strings.Contains(out, "ciliumendpoint.cilium.io") {
		t.Errorf("--cilium=false output shows Cilium's view, but no Cilium runs")
	}
	if err := r.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	code := r.wait(t, time.Minute)
	out = r.output()
	if code != 0 {
		t.Errorf("demo --keep after Ctrl-C: exit status %d, want 0; output:\n%s", code, out)
	}
	checkCleanedUp(t, out)
}

// TestOutcome pins which errors count as a policy's denial: only EPERM and
// a drop (timeout). A refused connection reached the peer, so a row that
// expects a denial must not pass on it.
func TestOutcome(t *testing.T) {
	for _, tc := range []struct {
		name    string
		status  int
		err     *localnode.ConnError
		allowed string // "yes", "no" or "unknown"
	}{
		{"200", 200, nil, "yes"},
		{"403 is not a pass", 403, nil, "unknown"},
		{"EPERM", 0, &localnode.ConnError{Op: "connect", Errno: syscall.EPERM, Msg: "operation not permitted"}, "no"},
		{"timeout", 0, &localnode.ConnError{Op: "connect", Timeout: true, Msg: "i/o timeout"}, "no"},
		{"refused", 0, &localnode.ConnError{Op: "connect", Errno: syscall.ECONNREFUSED, Msg: "connection refused"}, "unknown"},
	} {
		allowed, actual := outcome(tc.status, "", tc.err)
		got := "unknown"
		if allowed != nil && *allowed {
			got = "yes"
		} else if allowed != nil {
			got = "no"
		}
		if got != tc.allowed {
			t.Errorf("%s: allowed %s (%s), want %s", tc.name, got, actual, tc.allowed)
		}
	}
}

// The demo's policy is the shop scenario's, as a cluster gets it.
func TestPolicyMatchesShop(t *testing.T) {
	shop, err := os.ReadFile("../shop/policy.yaml")
	if err != nil {
		t.Fatalf("read demo/shop/policy.yaml: %v", err)
	}
	if string(shop) != policyYAML {
		t.Errorf("demo/local/policy.yaml differs from demo/shop/policy.yaml: keep the local demo's policy the same as the cluster scenario's")
	}
	ps, err := policies()
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 2 {
		t.Errorf("policy.yaml holds %d policies, want 2", len(ps))
	}
}
