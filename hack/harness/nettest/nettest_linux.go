package nettest

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// UniqueName returns prefix plus 8 random hex digits, short enough for an
// interface name when prefix has at most 6 characters.
func UniqueName(prefix string) string {
	b := make([]byte, 4)
	rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// Cgroup2Root finds the cgroup v2 mount point from /proc/mounts.
func Cgroup2Root() (string, error) {
	f, err := os.Open("/proc/mounts")
	if err != nil {
		return "", fmt.Errorf("read mounts: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 3 && fields[2] == "cgroup2" {
			return fields[1], nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("read mounts: %w", err)
	}
	return "", errors.New("no cgroup2 mount in /proc/mounts")
}

// NewCgroup creates dir (and its parents) as cgroup v2 directories and
// removes them at cleanup, killing what still runs inside.
func NewCgroup(t testing.TB, dir string) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("create cgroup %s: %v", dir, err)
	}
	t.Cleanup(func() { removeCgroup(t, dir) })
	return dir
}

func removeCgroup(t testing.TB, dir string) {
	// Children first.
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.IsDir() {
			removeCgroup(t, filepath.Join(dir, e.Name()))
		}
	}
	for i := 0; i < 50; i++ {
		if err := os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0); err != nil && !errors.Is(err, os.ErrNotExist) {
			killProcs(dir)
		}
		err := syscall.Rmdir(dir)
		if err == nil || errors.Is(err, os.ErrNotExist) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Errorf("remove cgroup %s: still busy", dir)
}

func killProcs(dir string) {
	b, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	for _, f := range strings.Fields(string(b)) {
		var pid int
		fmt.Sscan(f, &pid)
		if pid > 0 {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// Netns is a named network namespace (ip netns).
type Netns struct {
	Name string
}

// NewNetns creates a network namespace with loopback up; deleted at cleanup.
func NewNetns(t testing.TB) *Netns {
	t.Helper()
	n := &Netns{Name: UniqueName("swt-")}
	MustRun(t, "ip", "netns", "add", n.Name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", n.Name).CombinedOutput(); err != nil {
			t.Errorf("delete netns %s: %v: %s", n.Name, err, out)
		}
	})
	n.Exec(t, "ip", "link", "set", "lo", "up")
	return n
}

// Exec runs a command inside the namespace and fails the test on error.
func (n *Netns) Exec(t testing.TB, argv ...string) string {
	t.Helper()
	return MustRun(t, append([]string{"ip", "netns", "exec", n.Name}, argv...)...)
}

// MustRun runs a command and fails the test on error.
func MustRun(t testing.TB, argv ...string) string {
	t.Helper()
	out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(argv, " "), err, out)
	}
	return string(out)
}

// Veth joins two namespaces with a veth pair and gives each end the
// addresses (CIDR notation, IPv4 or IPv6). IPv6 addresses skip DAD so they
// are usable at once.
func Veth(t testing.TB, a *Netns, aAddrs []string, b *Netns, bAddrs []string) {
	t.Helper()
	an, bn := UniqueName("va"), UniqueName("vb")
	MustRun(t, "ip", "link", "add", an, "netns", a.Name, "type", "veth", "peer", "name", bn, "netns", b.Name)
	for _, side := range []struct {
		ns    *Netns
		dev   string
		addrs []string
	}{{a, an, aAddrs}, {b, bn, bAddrs}} {
		for _, addr := range side.addrs {
			args := []string{"ip", "addr", "add", addr, "dev", side.dev}
			if strings.Contains(addr, ":") {
				args = append(args, "nodad")
			}
			side.ns.Exec(t, args...)
		}
		side.ns.Exec(t, "ip", "link", "set", side.dev, "up")
	}
}

// Process is a child process running in a cgroup and a namespace.
type Process struct {
	Cmd    *exec.Cmd
	Stdout bytes.Buffer
	Stderr bytes.Buffer
}

// command builds a shell that moves itself into cgroup, then enters netns
// (if any) and execs argv, so the process is in its cgroup before `ip netns
// exec` remounts /sys.
func command(cgroup string, ns *Netns, env []string, argv ...string) *exec.Cmd {
	inner := argv
	if ns != nil {
		inner = append([]string{"ip", "netns", "exec", ns.Name}, argv...)
	}
	script := `echo $$ > "$1/cgroup.procs" || exit 125; shift; exec "$@"`
	args := append([]string{"-c", script, "sh", cgroup}, inner...)
	cmd := exec.Command("/bin/sh", args...)
	cmd.Env = append(os.Environ(), env...)
	return cmd
}

// Start starts argv in cgroup and ns (nil: the current namespace); it is
// killed at cleanup.
func Start(t testing.TB, cgroup string, ns *Netns, env []string, argv ...string) *Process {
	t.Helper()
	p := &Process{Cmd: command(cgroup, ns, env, argv...)}
	p.Cmd.Stdout = &p.Stdout
	p.Cmd.Stderr = &p.Stderr
	if err := p.Cmd.Start(); err != nil {
		t.Fatalf("start %v: %v", argv, err)
	}
	t.Cleanup(func() {
		p.Cmd.Process.Kill()
		p.Cmd.Wait()
	})
	return p
}

// Run runs argv in cgroup and ns to completion and returns its combined
// output and error.
func Run(cgroup string, ns *Netns, env []string, argv ...string) (string, error) {
	out, err := command(cgroup, ns, env, argv...).CombinedOutput()
	return string(out), err
}
