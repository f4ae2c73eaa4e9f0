package localnode

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Process is a process running as (part of) a container: in the
// container's cgroup and the pod's network namespace.
type Process struct {
	Pod       string // namespace/name
	Container string
	Pid       int

	cmd  *exec.Cmd
	out  *output
	done chan struct{}
	err  error
}

// Done is closed when the process has exited and been reaped.
func (pr *Process) Done() <-chan struct{} { return pr.done }

// Wait waits for the process to exit and returns its exit error.
func (pr *Process) Wait() error {
	<-pr.done
	return pr.err
}

// Output is what the process wrote to stdout and stderr so far.
func (pr *Process) Output() string { return pr.out.String() }

// Stop kills the process and its process group and waits for it. Stopping
// a process that has exited is not an error.
func (pr *Process) Stop() error {
	select {
	case <-pr.done:
		return nil
	default:
	}
	if err := syscall.Kill(-pr.Pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill %s %s pid %d: %w", pr.Pod, pr.Container, pr.Pid, err)
	}
	select {
	case <-pr.done:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("kill %s %s pid %d: still running after 10s", pr.Pod, pr.Container, pr.Pid)
	}
}

// output collects a process's output and signals the first line that
// starts with a marker.
type output struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	marker string
	seen   chan struct{}
	found  bool
}

func (o *output) Write(b []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.buf.Write(b)
	if o.marker != "" && !o.found {
		for _, line := range strings.Split(o.buf.String(), "\n") {
			if strings.HasPrefix(line, o.marker) {
				o.found = true
				close(o.seen)
				break
			}
		}
	}
	return len(b), nil
}

func (o *output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.String()
}

// RunInContainer starts argv as a process of the container: cloned straight
// into the container's cgroup (clone3 with CLONE_INTO_CGROUP), from a thread
// inside the pod's network namespace, so it never runs a single instruction
// anywhere else. Its output is kept (Output); it is killed by Stop, by a
// restart of the container, and by DeletePod and Close.
func (n *Node) RunInContainer(p *Pod, container string, argv []string) (*Process, error) {
	if len(argv) == 0 || argv[0] == "" {
		return nil, errors.New("run in container: argv: a command is required")
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	return n.start(p, container, cmd, "")
}

func (n *Node) start(p *Pod, name string, cmd *exec.Cmd, marker string) (*Process, error) {
	n.mu.Lock()
	c, err := p.find(name)
	switch {
	case err != nil:
	case p.gone:
		err = fmt.Errorf("pod %s/%s is deleted", p.Namespace, p.Name)
	case c.dir == "":
		err = fmt.Errorf("pod %s/%s container %s is not running", p.Namespace, p.Name, name)
	case p.NetNSPath == "":
		err = fmt.Errorf("pod %s/%s has no network namespace (run WithoutNetwork)", p.Namespace, p.Name)
	}
	var dir string
	if err == nil {
		dir = c.dir
	}
	n.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("start process: %w", err)
	}

	cgfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("start process: open cgroup: %w", err)
	}
	defer unix.Close(cgfd)
	ns, err := netns.GetFromPath(p.NetNSPath)
	if err != nil {
		return nil, fmt.Errorf("start process: open network namespace %s: %w", p.NetNSPath, err)
	}
	defer ns.Close()

	out := &output{marker: marker, seen: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = out, out
	// Its own process group, so Stop also reaches what it forks.
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: cgfd, Setpgid: true}
	if err := startInNetns(ns, cmd); err != nil {
		return nil, fmt.Errorf("start %s in %s/%s %s: %w", cmd.Path, p.Namespace, p.Name, name, err)
	}
	pr := &Process{
		Pod: p.Namespace + "/" + p.Name, Container: name, Pid: cmd.Process.Pid,
		cmd: cmd, out: out, done: make(chan struct{}),
	}
	n.mu.Lock()
	c.procs[pr] = struct{}{}
	n.mu.Unlock()
	go func() {
		pr.err = cmd.Wait()
		close(pr.done)
		n.mu.Lock()
		delete(c.procs, pr)
		n.mu.Unlock()
	}()
	return pr, nil
}

// startInNetns forks from a locked thread that has entered ns: a child
// inherits the network namespace of the thread that forks it.
func startInNetns(ns netns.NsHandle, cmd *exec.Cmd) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("get current network namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter network namespace: %w", err)
			return
		}
		err = cmd.Start()
		if serr := netns.Set(orig); serr != nil {
			// Stay locked: the runtime retires this thread with the goroutine.
			errc <- errors.Join(err, fmt.Errorf("return to host network namespace: %w", serr))
			return
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	return <-errc
}

// helperCmd runs this binary as the built-in server or client.
func helperCmd(p *Pod, container string, args ...string) *exec.Cmd {
	cmd := exec.Command("/proc/self/exe", args...)
	cmd.Args[0] = "localnode-helper"
	cmd.Env = append(os.Environ(), helperEnv+"=1", identEnv+"="+p.Namespace+"/"+p.Name+"/"+container)
	return cmd
}

// Listen starts the built-in server in the container and returns once it
// listens on all addresses of the pod at port. proto is "tcp" (answers each
// line with "<namespace>/<pod>/<container> <line>"), "udp" (answers each
// datagram the same way) or "http" (answers every request with status 200
// and "<namespace>/<pod>/<container> <METHOD> <path>").
func (n *Node) Listen(ctx context.Context, p *Pod, container, proto string, port int) (*Process, error) {
	switch proto {
	case "tcp", "udp", "http":
	default:
		return nil, fmt.Errorf("listen: proto %q: want tcp, udp or http", proto)
	}
	if port <= 0 || port > 65535 {
		return nil, fmt.Errorf("listen: port %d: want 1-65535", port)
	}
	return n.startServer(ctx, p, container, proto, port, helperCmd(p, container, "serve", proto, strconv.Itoa(port)))
}

// ServeDNS starts a DNS server in the container and returns once it
// listens on UDP and TCP port of all the pod's addresses. It answers the A
// query of each name in records with its address (TTL 60 s), any other
// query of such a name with no records, and other names with NXDOMAIN.
func (n *Node) ServeDNS(ctx context.Context, p *Pod, container string, port int, records map[string]netip.Addr) (*Process, error) {
	if port <= 0 || port > 65535 {
		return nil, fmt.Errorf("serve dns: port %d: want 1-65535", port)
	}
	args := []string{"serve", "dns", strconv.Itoa(port)}
	for name, a := range records {
		if !a.Is4() {
			return nil, fmt.Errorf("serve dns: %s: %s is not an IPv4 address", name, a)
		}
		args = append(args, name+"="+a.String())
	}
	return n.startServer(ctx, p, container, "dns", port, helperCmd(p, container, args...))
}

func (n *Node) startServer(ctx context.Context, p *Pod, container, proto string, port int, cmd *exec.Cmd) (*Process, error) {
	pr, err := n.start(p, container, cmd, readyMarker)
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	select {
	case <-pr.out.seen:
		return pr, nil
	case <-pr.done:
		return nil, fmt.Errorf("listen %s/%d in %s %s: server exited: %v: %s", proto, port, pr.Pod, container, pr.err, pr.Output())
	case <-ctx.Done():
		_ = pr.Stop()
		return nil, fmt.Errorf("listen %s/%d in %s %s: not ready: %w", proto, port, pr.Pod, container, ctx.Err())
	}
}

// ErrTimeout matches (errors.Is) a ConnError whose operation timed out: a
// packet was dropped silently, as a TCP SYN denied at cgroup_skb egress is.
var ErrTimeout = errors.New("timed out")

// ConnError is how a connection attempt made by a process in a container
// failed. errors.Is(err, syscall.EPERM) tells a prompt policy denial,
// errors.Is(err, ErrTimeout) (or os.ErrDeadlineExceeded) a silent drop.
type ConnError struct {
	// Op is the step that failed: "connect", "send", "receive" or "request".
	Op string
	// Errno is the system call error, 0 if there was none.
	Errno   syscall.Errno
	Timeout bool
	Msg     string
}

func (e *ConnError) Error() string { return e.Op + ": " + e.Msg }

// Unwrap exposes Errno, ErrTimeout and os.ErrDeadlineExceeded to errors.Is.
func (e *ConnError) Unwrap() []error {
	var out []error
	if e.Errno != 0 {
		out = append(out, e.Errno)
	}
	if e.Timeout {
		out = append(out, ErrTimeout, os.ErrDeadlineExceeded)
	}
	return out
}

// Dial connects from the container to addr ("ip:port") with network "tcp"
// or "udp", or sends from an unconnected UDP socket with "sendto", sends one
// line and waits for the answer, all within timeout. It returns the answer,
// or a *ConnError with the error the process got.
func (n *Node) Dial(ctx context.Context, p *Pod, container, network, addr string, timeout time.Duration) (string, error) {
	if network != "tcp" && network != "udp" && network != "sendto" {
		return "", fmt.Errorf("dial: network %q: want tcp, udp or sendto (unconnected UDP)", network)
	}
	r, err := n.runClient(ctx, p, container, timeout, "dial", network, addr, timeout.String())
	if err != nil {
		return "", err
	}
	return r.Reply, r.err()
}

// HTTP sends one request with an empty body from the container and returns
// the response status and body, or a *ConnError with the error the process
// got.
func (n *Node) HTTP(ctx context.Context, p *Pod, container, method, url string, timeout time.Duration) (int, string, error) {
	r, err := n.runClient(ctx, p, container, timeout, "http", method, url, timeout.String())
	if err != nil {
		return 0, "", err
	}
	return r.Status, r.Reply, r.err()
}

// HTTPByName is HTTP with the URL's host name looked up first by the
// process in the container, as a pod's resolver does: Go's resolver, its A
// query over UDP (a connected socket) to dnsServer ("ip:port"). The request
// goes to the first address of the answer, which is returned too (none if
// the lookup failed; the error's Op is then "resolve").
func (n *Node) HTTPByName(ctx context.Context, p *Pod, container, dnsServer, method, url string, timeout time.Duration) (int, string, []netip.Addr, error) {
	r, err := n.runClient(ctx, p, container, timeout, "httpdns", dnsServer, method, url, timeout.String())
	if err != nil {
		return 0, "", nil, err
	}
	var addrs []netip.Addr
	for _, s := range r.Addrs {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return 0, "", nil, fmt.Errorf("httpdns from %s/%s: bad address %q in the result", p.Name, container, s)
		}
		addrs = append(addrs, a)
	}
	return r.Status, r.Reply, addrs, r.err()
}

func (n *Node) runClient(ctx context.Context, p *Pod, container string, timeout time.Duration, args ...string) (*result, error) {
	if timeout <= 0 {
		return nil, fmt.Errorf("%s: timeout %s: want > 0", args[0], timeout)
	}
	pr, err := n.start(p, container, helperCmd(p, container, args...), resultMarker)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", args[0], err)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout+10*time.Second)
	defer cancel()
	select {
	case <-pr.done:
	case <-ctx.Done():
		_ = pr.Stop()
		return nil, fmt.Errorf("%s from %s %s: client did not finish: %w", args[0], pr.Pod, container, ctx.Err())
	}
	out := pr.Output()
	for _, line := range strings.Split(out, "\n") {
		if js, ok := strings.CutPrefix(line, resultMarker); ok {
			var r result
			if err := json.Unmarshal([]byte(js), &r); err != nil {
				return nil, fmt.Errorf("%s from %s %s: bad result %q: %w", args[0], pr.Pod, container, js, err)
			}
			return &r, nil
		}
	}
	return nil, fmt.Errorf("%s from %s %s: client gave no result (%v): %s", args[0], pr.Pod, container, pr.err, out)
}

func (r *result) err() error {
	if r.OK {
		return nil
	}
	return &ConnError{Op: r.Op, Errno: syscall.Errno(r.Errno), Timeout: r.Timeout, Msg: r.Error}
}
