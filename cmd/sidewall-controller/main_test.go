package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sidewall/sidewall/hack/harness"
	"github.com/sidewall/sidewall/hack/harness/testenv"
)

// buildController builds this command once per test binary run.
func buildController(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "sidewall-controller")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func TestController(t *testing.T) {
	harness.RequireIntegration(t)
	bin := buildController(t)

	t.Run("exits when the Cilium CRDs are missing", func(t *testing.T) {
		env := testenv.New(t, testenv.Options{SkipCiliumCRDs: true})
		cmd := exec.Command(bin, "--kubeconfig", env.Kubeconfig, "--leader-elect=false",
			"--metrics-bind-address=0", "--health-probe-bind-address=0")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		done := make(chan error, 1)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 1 {
				t.Errorf("exit: %v, want exit status 1", err)
			}
		case <-time.After(60 * time.Second):
			_ = cmd.Process.Kill()
			t.Fatalf("still running after 60s without Cilium CRDs; output:\n%s", stderr.String())
		}
		if out := stderr.String(); !strings.Contains(out, "cilium CRDs missing") || !strings.Contains(out, "CiliumNetworkPolicy") {
			t.Errorf("stderr does not say the Cilium CRDs are missing:\n%s", out)
		}
	})

	t.Run("serves probes and metrics and stops on SIGTERM", func(t *testing.T) {
		env := testenv.New(t, testenv.Options{})
		probe, metrics := freePort(t), freePort(t)
		cmd := exec.Command(bin, "--kubeconfig", env.Kubeconfig, "--leader-elect=false",
			fmt.Sprintf("--metrics-bind-address=127.0.0.1:%d", metrics),
			fmt.Sprintf("--health-probe-bind-address=127.0.0.1:%d", probe))
		// A file, not a buffer: no copying goroutines for Wait to wait on.
		logPath := filepath.Join(t.TempDir(), "controller.log")
		logFile, err := os.Create(logPath)
		if err != nil {
			t.Fatal(err)
		}
		defer logFile.Close()
		cmd.Stdout, cmd.Stderr = logFile, logFile
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		output := func() string {
			b, _ := os.ReadFile(logPath)
			return string(b)
		}
		// exited is closed, not sent on, so that the test body and the
		// cleanup can both see the exit.
		var waitErr error
		exited := make(chan struct{})
		go func() { waitErr = cmd.Wait(); close(exited) }()
		t.Cleanup(func() {
			select {
			case <-exited:
			default:
				_ = cmd.Process.Kill()
				select {
				case <-exited:
				case <-time.After(30 * time.Second):
					t.Errorf("controller pid %d did not exit after SIGKILL", cmd.Process.Pid)
				}
			}
		})

		get := func(url string) (int, string, error) {
			resp, err := (&http.Client{Timeout: 5 * time.Second}).Get(url)
			if err != nil {
				return 0, "", err
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			return resp.StatusCode, string(b), err
		}
		// Generous: this machine's CPUs are shared by several test runs.
		deadline := time.Now().Add(120 * time.Second)
		for {
			code, _, err := get(fmt.Sprintf("http://127.0.0.1:%d/readyz", probe))
			if err == nil && code == http.StatusOK {
				break
			}
			select {
			case <-exited:
				t.Fatalf("controller exited: %v\n%s", waitErr, output())
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("/readyz not OK after 120s (%d, %v)\n%s", code, err, output())
			}
			time.Sleep(100 * time.Millisecond)
		}
		if code, _, err := get(fmt.Sprintf("http://127.0.0.1:%d/healthz", probe)); err != nil || code != http.StatusOK {
			t.Errorf("/healthz: %d %v", code, err)
		}
		// controller-runtime's own reconcile metrics name our controller.
		code, body, err := get(fmt.Sprintf("http://127.0.0.1:%d/metrics", metrics))
		if err != nil || code != http.StatusOK || !strings.Contains(body, `controller="containernetworkpolicy"`) {
			t.Errorf("/metrics: %d %v, containernetworkpolicy metrics present: %v", code, err,
				strings.Contains(body, `controller="containernetworkpolicy"`))
		}

		if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		select {
		case <-exited:
			if waitErr != nil {
				t.Errorf("exit after SIGTERM: %v\n%s", waitErr, output())
			}
		case <-time.After(40 * time.Second):
			t.Fatalf("did not stop within 40s of SIGTERM\n%s", output())
		}
	})
}
