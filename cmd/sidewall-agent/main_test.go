package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"

	"github.com/sidewall/sidewall/bpfext"
	"github.com/sidewall/sidewall/hack/harness"
	"github.com/sidewall/sidewall/hack/harness/localnode"
	"github.com/sidewall/sidewall/hack/harness/testenv"
)

// TestServe runs the agent as main wires it, against a real API server
// without Cilium (so --identity-source auto picks local identities) and a
// local node's kubepods cgroup: it must become ready, answer the stock
// hubble CLI, and stop cleanly leaving its pins for the next agent.
func TestServe(t *testing.T) {
	harness.RequirePrivileged(t)
	env := testenv.New(t, testenv.Options{SkipCiliumCRDs: true})
	cs, err := kubernetes.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	node, err := localnode.New(ctx, localnode.Options{Client: cs})
	if err != nil {
		t.Fatalf("localnode.New: %v", err)
	}
	t.Cleanup(func() {
		if err := node.Close(); err != nil {
			t.Errorf("close local node: %v", err)
		}
	})
	b := make([]byte, 4)
	rand.Read(b)
	pinDir := filepath.Join(bpfext.DefaultBPFFSRoot, "sidewall-main-test-"+hex.EncodeToString(b))
	t.Cleanup(func() {
		dp, err := bpfext.Load(bpfext.Options{PinDir: pinDir})
		if err == nil {
			err = errors.Join(dp.Unpin(), dp.Close())
		}
		if err != nil {
			t.Errorf("unpin: %v", err)
		}
	})
	hubbleAddr, httpAddr := harness.FreeAddr(t), harness.FreeAddr(t)
	sock := filepath.Join(t.TempDir(), "hubble.sock")
	cg := node.CgroupConfig()
	sctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		var log bytes.Buffer
		code := run(sctx, []string{"--node-name", node.Name(), "--kubeconfig", env.Kubeconfig, "--pin-dir", pinDir,
			"--cgroup-mount", cg.Mount, "--cgroup-root", cg.Parent, "--kubepods-root", cg.Root, "--cgroup-driver", string(cg.Driver),
			"--hubble-socket", sock, "--hubble-listen-address", hubbleAddr, "--metrics-bind-address", httpAddr,
			"--identity-source", "auto", "--cluster-name", "default", "--resync", "1m"}, &log)
		if code != 0 {
			done <- fmt.Errorf("exit status %d:\n%s", code, log.String())
		}
		done <- nil
	}()

	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + httpAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		select {
		case err := <-done:
			t.Fatalf("serve returned early: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent not ready after 30s (last: %v)", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	resp, err := http.Get("http://" + httpAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "sidewall_reconcile_duration_seconds_count") {
		t.Errorf("metrics lack the reconcile histogram:\n%s", body)
	}
	hubbleCLI, err := harness.Tool("hubble")
	if err != nil {
		t.Fatal(err)
	}
	for _, server := range []string{hubbleAddr, "unix://" + sock} {
		out, err := exec.CommandContext(ctx, hubbleCLI, "status", "--server", server).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "Healthcheck") {
			t.Errorf("hubble status --server %s: %v\n%s", server, err, out)
		}
	}
	stop()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("serve: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("serve did not stop")
	}
	if _, err := os.Stat(pinDir); err != nil {
		t.Errorf("pins gone after the agent stopped: %v", err)
	}
}
