package agentnode

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"github.com/sidewall/sidewall/hack/harness/localnode"
	"github.com/sidewall/sidewall/hack/harness/proc"
)

// ProcessOptions run the sidewall-agent binary for a local node, as the
// DaemonSet runs it: the benchmarks measure its memory and CPU as a process
// of its own.
type ProcessOptions struct {
	// Binary is the built cmd/sidewall-agent.
	Binary     string
	Kubeconfig string
	Node       *localnode.Node
	PinDir     string
	// LogPath receives the agent's output (appended).
	LogPath  string
	LogLevel string
}

// Process is a running sidewall-agent binary.
type Process struct {
	Cmd *exec.Cmd
	// Exited receives the exit once; Stop puts it back for later readers.
	Exited chan error
	// MetricsURL is the agent's /metrics.
	MetricsURL string
	logPath    string
	once       sync.Once
}

// StartProcess runs the agent binary on the node and returns once /readyz
// answers (its first reconcile is complete).
func StartProcess(ctx context.Context, o ProcessOptions) (*Process, error) {
	port, err := proc.FreePort()
	if err != nil {
		return nil, err
	}
	logFile, err := os.OpenFile(o.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	if o.LogLevel == "" {
		o.LogLevel = "info"
	}
	cmd := exec.Command(o.Binary,
		"--kubeconfig", o.Kubeconfig,
		"--node-name", o.Node.Name(),
		"--pin-dir", o.PinDir,
		"--cgroup-mount", o.Node.CgroupMount(),
		"--cgroup-root", o.Node.CgroupRoot(),
		"--cgroup-driver", "cgroupfs",
		"--identity-source", "local",
		"--hubble-socket", "-",
		"--hubble-listen-address", "-",
		"--metrics-bind-address", fmt.Sprintf("127.0.0.1:%d", port),
		"--log-level", o.LogLevel,
	)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// The agent must not outlive this program, even if it is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start agent: %w", err)
	}
	p := &Process{Cmd: cmd, Exited: make(chan error, 1), logPath: o.LogPath,
		MetricsURL: fmt.Sprintf("http://127.0.0.1:%d/metrics", port)}
	go func() { p.Exited <- cmd.Wait() }()
	url := fmt.Sprintf("http://127.0.0.1:%d/readyz", port)
	hc := &http.Client{Timeout: time.Second}
	for {
		resp, err := hc.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p, nil
			}
		}
		select {
		case err := <-p.Exited:
			return nil, fmt.Errorf("agent exited before ready: %v (log: %s)", err, proc.Tail(o.LogPath))
		case <-ctx.Done():
			p.Stop()
			return nil, fmt.Errorf("agent not ready in time (log: %s)", proc.Tail(o.LogPath))
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// Pid is the agent's process id.
func (p *Process) Pid() int { return p.Cmd.Process.Pid }

// Stop sends SIGTERM, as kubelet does, and waits for the exit.
func (p *Process) Stop() {
	p.once.Do(func() {
		_ = p.Cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-p.Exited:
			p.Exited <- err
		case <-time.After(20 * time.Second):
			_ = p.Cmd.Process.Kill()
		}
	})
}
