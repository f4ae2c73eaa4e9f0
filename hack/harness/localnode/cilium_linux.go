package localnode

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/sidewall/sidewall/hack/harness"
)

// Cilium makes a real cilium-agent own the node's networking: New starts
// it in a network namespace of its own (the "node"), with its own bpffs and
// the node's cgroup root as Cilium's cgroup root, and RunPod wires each pod
// in with cilium-cni instead of a veth on a bridge. Pods then get Cilium
// endpoints, Cilium-allocated identities, Cilium's programs on their lxc
// veths, and Cilium's socket load balancer at the node's cgroup root above
// the pod cgroups.
type Cilium struct {
	// Config reaches the API server; the agent gets a kubeconfig for it,
	// relayed into the node's network namespace. Required.
	Config *rest.Config
	// Agent and CNI are the cilium-agent and cilium-cni binaries; LibDir
	// holds Cilium's bpf/ sources, which the agent compiles at start.
	// CiliumTools fills them from bin/.
	Agent, CNI, LibDir string
	// KubeProxyReplacement turns Cilium's kube-proxy replacement (socket
	// LB, NodePort) on.
	KubeProxyReplacement bool
	// L7Proxy turns Cilium's L7 proxy on, with an external Envoy that
	// this machine does not have (cilium-envoy is not built here).
	L7Proxy bool
	// ReadyTimeout bounds the agent's start (0: 5 minutes).
	ReadyTimeout time.Duration
}

// CiliumTools returns the Cilium binaries and bpf sources that `make
// cilium-tools` puts into bin/.
func CiliumTools(cfg *rest.Config) (*Cilium, error) {
	c := &Cilium{Config: cfg}
	var err error
	if c.Agent, err = harness.Tool("cilium-agent"); err != nil {
		return nil, err
	}
	if c.CNI, err = harness.Tool("cilium-cni"); err != nil {
		return nil, err
	}
	root, err := harness.RepoRoot()
	if err != nil {
		return nil, err
	}
	c.LibDir = filepath.Join(root, "bin", "cilium-lib")
	if _, err := os.Stat(filepath.Join(c.LibDir, "bpf", "bpf_lxc.c")); err != nil {
		return nil, fmt.Errorf("cilium bpf sources: %w: %w", err, harness.ErrToolMissing)
	}
	return c, nil
}

// ciliumNode is the running Cilium part of a Node.
type ciliumNode struct {
	opts    Cilium
	dir     string // state, lib, bpffs, cgroup mount, logs
	nsName  string
	hostVth string
	nodeIP  netip.Addr
	podCIDR netip.Prefix

	relay      net.Listener
	kubeconfig string
	agent      *exec.Cmd
	exited     chan error
	logPath    string

	mu      sync.Mutex
	mounted []string
}

// Cilium paths inside dir.
func (c *ciliumNode) stateDir() string  { return filepath.Join(c.dir, "state") }
func (c *ciliumNode) socket() string    { return filepath.Join(c.stateDir(), "cilium.sock") }
func (c *ciliumNode) bpffs() string     { return filepath.Join(c.dir, "bpffs") }
func (c *ciliumNode) cgroupDir() string { return filepath.Join(c.dir, "cgroup") }

// HubbleSocket is the unix socket of the Cilium agent's embedded Hubble
// (empty without Cilium).
func (n *Node) HubbleSocket() string {
	if n.cilium == nil {
		return ""
	}
	return filepath.Join(n.cilium.stateDir(), "hubble.sock")
}

// CiliumCgroupRoot is the Cilium agent's --cgroup-root, where its socket
// LB programs attach (empty without Cilium).
func (n *Node) CiliumCgroupRoot() string {
	if n.cilium == nil {
		return ""
	}
	return n.cilium.cgroupDir()
}

// CiliumBPFRoot is the Cilium agent's --bpf-root, where it pins its maps
// (empty without Cilium).
func (n *Node) CiliumBPFRoot() string {
	if n.cilium == nil {
		return ""
	}
	return n.cilium.bpffs()
}

// NetnsName is the node network namespace the Cilium agent runs in
// (empty without Cilium), as `ip netns exec` takes it.
func (n *Node) NetnsName() string {
	if n.cilium == nil {
		return ""
	}
	return n.cilium.nsName
}

// OutsideHost makes the host's end of the link to the Cilium node (an
// address in no pod and no node, so "world" to Cilium) reachable from the
// pods: it adds the host's route back to the pod CIDR through the node.
// It returns the address, where a listener in the host's network
// namespace serves the pods, and the function that removes the route.
func (n *Node) OutsideHost() (netip.Addr, func() error, error) {
	if n.cilium == nil {
		return netip.Addr{}, nil, errors.New("the node runs no Cilium")
	}
	pods := n.cilium.podCIDR
	back := &netlink.Route{Dst: ipNet(pods.Addr(), pods.Bits()), Gw: n.cilium.nodeIP.AsSlice()}
	if err := netlink.RouteAdd(back); err != nil {
		return netip.Addr{}, nil, fmt.Errorf("route to %s via the Cilium node %s: %w", pods, n.cilium.nodeIP, err)
	}
	return n.cilium.nodeIP.Prev(), func() error { return netlink.RouteDel(back) }, nil
}

// CiliumSocket is the Cilium agent's API socket (empty without Cilium).
func (n *Node) CiliumSocket() string {
	if n.cilium == nil {
		return ""
	}
	return n.cilium.socket()
}

// CiliumLogTail returns the last lines of the Cilium agent's log.
func (n *Node) CiliumLogTail(lines int) string {
	if n.cilium == nil {
		return ""
	}
	return tail(n.cilium.logPath, lines)
}

// CiliumLog is the Cilium agent's log file (empty without Cilium).
func (n *Node) CiliumLog() string {
	if n.cilium == nil {
		return ""
	}
	return n.cilium.logPath
}

// ciliumAddrs splits the node's subnet: the first /24 links the node
// (x.y.0.2) to the host (x.y.0.1), the second is the pod CIDR.
func ciliumAddrs(subnet netip.Prefix) (node netip.Addr, pods netip.Prefix) {
	b := subnet.Addr().As4()
	return netip.AddrFrom4([4]byte{b[0], b[1], 0, 2}), netip.PrefixFrom(netip.AddrFrom4([4]byte{b[0], b[1], 1, 0}), 24)
}

// startCilium makes the node network namespace and starts the agent in
// it. The node's subnet is already chosen: its first /24 links the node to
// the host, the second is the pod CIDR.
func (n *Node) startCilium(ctx context.Context, o Cilium) error {
	if o.Config == nil || o.Agent == "" || o.CNI == "" || o.LibDir == "" {
		return errors.New("cilium: config, agent, cni and lib dir are required")
	}
	for _, tool := range []string{"clang-19", "llc-19", "ip", "iptables", "ipset"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("cilium: %s is missing (make cilium-tools installs it): %w", tool, err)
		}
	}
	c := &ciliumNode{
		opts:    o,
		dir:     filepath.Join("/run", "sidewall-cilium-"+n.id),
		nsName:  "swcn-" + n.id,
		hostVth: "swc" + n.id,
		nodeIP:  n.hostIP,
		podCIDR: n.podCIDR,
		exited:  make(chan error, 1),
	}
	n.cilium = c
	for _, d := range []string{c.stateDir(), c.bpffs(), c.cgroupDir(), filepath.Join(c.dir, "lib"), filepath.Join(c.dir, "bin")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("cilium: %w", err)
		}
	}
	if err := c.mount("bpf", c.bpffs(), "bpf", 0); err != nil {
		return err
	}
	// Cilium's cgroup root is the node's: its socket LB sits above the pods.
	if err := c.mount(filepath.Join(n.mount, n.rootRel), c.cgroupDir(), "", unix.MS_BIND); err != nil {
		return err
	}
	// The agent compiles its datapath with `clang` and `llc`.
	for name, target := range map[string]string{"clang": "clang-19", "llc": "llc-19"} {
		p, _ := exec.LookPath(target)
		if err := os.Symlink(p, filepath.Join(c.dir, "bin", name)); err != nil {
			return fmt.Errorf("cilium: %w", err)
		}
	}
	if err := os.Symlink(filepath.Join(o.LibDir, "bpf"), filepath.Join(c.dir, "lib", "bpf")); err != nil {
		return fmt.Errorf("cilium: %w", err)
	}
	if err := c.makeNodeNetns(n); err != nil {
		return err
	}
	var err error
	if c.kubeconfig, err = c.relayAPI(); err != nil {
		return err
	}
	return c.startAgent(ctx, n)
}

// RestartCilium stops the node's cilium-agent and starts it again, as a
// DaemonSet rollout does; its pins, endpoints and programs stay meanwhile.
func (n *Node) RestartCilium(ctx context.Context) error {
	if n.cilium == nil {
		return errors.New("restart cilium: the node runs no Cilium")
	}
	n.cilium.stopAgent()
	return n.cilium.startAgent(ctx, n)
}

func (c *ciliumNode) mount(source, target, fstype string, flags uintptr) error {
	if err := unix.Mount(source, target, fstype, flags, ""); err != nil {
		return fmt.Errorf("cilium: mount %s on %s: %w", source, target, err)
	}
	c.mu.Lock()
	c.mounted = append(c.mounted, target)
	c.mu.Unlock()
	return nil
}

// makeNodeNetns makes the node's network namespace, with eth0 on a veth to
// the host. It has no default route: nothing leaves the node's subnet.
func (c *ciliumNode) makeNodeNetns(n *Node) error {
	ns, err := newNamedNetns(c.nsName)
	if err != nil {
		return fmt.Errorf("cilium: node network namespace: %w", err)
	}
	defer ns.Close()
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: c.hostVth},
		PeerName:      "eth0",
		PeerNamespace: netlink.NsFd(int(ns)),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("cilium: node veth: %w", err)
	}
	host, err := netlink.LinkByName(c.hostVth)
	if err != nil {
		return fmt.Errorf("cilium: node veth: %w", err)
	}
	disableIPv6(c.hostVth)
	hostAddr := c.nodeIP.Prev() // OutsideHost serves the pods here
	if err := netlink.AddrAdd(host, &netlink.Addr{IPNet: ipNet(hostAddr, 24)}); err != nil {
		return fmt.Errorf("cilium: address %s: %w", c.hostVth, err)
	}
	if err := netlink.LinkSetUp(host); err != nil {
		return fmt.Errorf("cilium: bring up %s: %w", c.hostVth, err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("cilium: netlink in %s: %w", c.nsName, err)
	}
	defer h.Close()
	for _, name := range []string{"lo", "eth0"} {
		l, err := h.LinkByName(name)
		if err == nil && name == "eth0" {
			err = h.AddrAdd(l, &netlink.Addr{IPNet: ipNet(c.nodeIP, 24)})
		}
		if err == nil {
			err = h.LinkSetUp(l)
		}
		if err != nil {
			return fmt.Errorf("cilium: set up %s in %s: %w", name, c.nsName, err)
		}
	}
	return nil
}

// relayAPI listens on 127.0.0.1 inside the node's namespace and forwards
// to the API server on the host's loopback, where envtest listens; it
// returns a kubeconfig for the agent that points at the relay.
func (c *ciliumNode) relayAPI() (string, error) {
	u, err := url.Parse(c.opts.Config.Host)
	if err != nil {
		return "", fmt.Errorf("cilium: api server address %q: %w", c.opts.Config.Host, err)
	}
	l, err := listenInNetns(c.nsName, "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("cilium: api relay: %w", err)
	}
	c.relay = l
	go func() {
		for {
			in, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer in.Close()
				out, err := net.Dial("tcp", u.Host)
				if err != nil {
					return
				}
				defer out.Close()
				done := make(chan struct{}, 2)
				go func() { io.Copy(out, in); done <- struct{}{} }()
				go func() { io.Copy(in, out); done <- struct{}{} }()
				<-done
			}()
		}
	}()
	cfg := c.opts.Config
	kc := clientcmdapi.NewConfig()
	kc.Clusters["node"] = &clientcmdapi.Cluster{
		Server:                   "https://" + l.Addr().String(),
		CertificateAuthorityData: cfg.CAData,
		TLSServerName:            u.Hostname(),
	}
	kc.AuthInfos["node"] = &clientcmdapi.AuthInfo{ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData, Token: cfg.BearerToken}
	kc.Contexts["node"] = &clientcmdapi.Context{Cluster: "node", AuthInfo: "node"}
	kc.CurrentContext = "node"
	path := filepath.Join(c.dir, "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		return "", fmt.Errorf("cilium: write kubeconfig: %w", err)
	}
	return path, nil
}

// listenInNetns opens a TCP listener inside a named network namespace; the
// socket stays there whichever thread accepts on it.
func listenInNetns(name, addr string) (l net.Listener, err error) {
	err = inNetns(name, func() error {
		l, err = net.Listen("tcp", addr)
		return err
	})
	return l, err
}

// inNetns runs fn on a locked thread inside a named network namespace: a
// socket fn opens stays in it. A thread that cannot move back stays locked
// and the runtime retires it.
func inNetns(name string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		target, err := netns.GetFromName(name)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		err = fn()
		if serr := netns.Set(orig); serr != nil {
			errc <- errors.Join(err, serr)
			return
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	return <-errc
}

func (c *ciliumNode) startAgent(ctx context.Context, n *Node) error {
	kubeconfig := c.kubeconfig
	kpr := "false"
	if c.opts.KubeProxyReplacement {
		kpr = "true"
	}
	c.logPath = filepath.Join(c.dir, "cilium-agent.log")
	logFile, err := os.OpenFile(c.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("cilium: %w", err)
	}
	defer logFile.Close()
	args := []string{"netns", "exec", c.nsName, c.opts.Agent,
		"--k8s-kubeconfig-path=" + kubeconfig,
		"--bpf-root=" + c.bpffs(),
		"--cgroup-root=" + c.cgroupDir(),
		"--state-dir=" + c.stateDir(),
		"--lib-dir=" + filepath.Join(c.dir, "lib"),
		"--socket-path=" + c.socket(),
		"--hubble-socket-path=" + filepath.Join(c.stateDir(), "hubble.sock"),
		"--ipam=kubernetes",
		"--routing-mode=native",
		"--ipv4-native-routing-cidr=" + n.subnet.String(),
		"--enable-ipv6=false",
		"--devices=eth0",
		"--kube-proxy-replacement=" + kpr,
		"--enable-l7-proxy=" + strconv.FormatBool(c.opts.L7Proxy),
		"--external-envoy-proxy=true",
		"--enable-hubble=true",
		"--identity-allocation-mode=crd",
		"--cluster-name=default",
		"--cluster-id=0",
		"--enable-health-checking=false",
		"--enable-endpoint-health-checking=false",
		"--cni-exclusive=false",
		"--write-cni-conf-when-ready=",
	}
	cmd := exec.Command("ip", args...)
	cmd.Env = append(os.Environ(),
		"PATH="+filepath.Join(c.dir, "bin")+":"+os.Getenv("PATH"),
		"K8S_NODE_NAME="+n.name,
		"CILIUM_K8S_NAMESPACE=kube-system",
	)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// The agent must not outlive the harness, even if it is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("cilium: start agent: %w", err)
	}
	c.agent = cmd
	c.exited = make(chan error, 1)
	go func() { c.exited <- cmd.Wait() }()
	timeout := c.opts.ReadyTimeout
	if timeout == 0 {
		timeout = 5 * time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	hc := c.client()
	var last string
	for {
		status, err := c.health(ctx, hc)
		if err == nil && status == "Ok" {
			n.logf("node %s: cilium-agent ready after %s (log %s)", n.name, time.Since(start).Round(time.Second), c.logPath)
			return nil
		}
		if err != nil {
			last = err.Error()
		} else {
			last = "state " + status
		}
		select {
		case err := <-c.exited:
			c.exited <- err
			return fmt.Errorf("cilium: agent exited before it was ready: %v\n%s", err, tail(c.logPath, 30))
		case <-ctx.Done():
			return fmt.Errorf("cilium: agent not ready after %s (%s)\n%s", timeout, last, tail(c.logPath, 30))
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// client speaks HTTP to the agent's API socket.
func (c *ciliumNode) client() *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", c.socket())
		},
	}}
}

// health returns the agent's own state from GET /v1/healthz (as `cilium-dbg
// status` reports it).
func (c *ciliumNode) health(ctx context.Context, hc *http.Client) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://cilium/v1/healthz", nil)
	if err != nil {
		return "", err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var st struct {
		Cilium struct {
			State string `json:"state"`
			Msg   string `json:"msg"`
		} `json:"cilium"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return "", fmt.Errorf("healthz: %w", err)
	}
	if st.Cilium.State != "Ok" && st.Cilium.Msg != "" {
		return st.Cilium.State + ": " + st.Cilium.Msg, nil
	}
	return st.Cilium.State, nil
}

// cni runs cilium-cni in the node's namespace, as kubelet's runtime does.
// cniTimeout bounds one cilium-cni call.
const cniTimeout = 20 * time.Second

func (c *ciliumNode) cni(command string, p *Pod) ([]byte, error) {
	// A CNI call that hangs (cilium-agent busy regenerating the endpoint)
	// must not stall a whole teardown: kubelet too gives each call a
	// deadline and retries.
	ctx, cancel := context.WithTimeout(context.Background(), cniTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", c.nsName, c.opts.CNI)
	cmd.WaitDelay = time.Second
	cmd.Env = append(os.Environ(),
		"CILIUM_SOCK="+c.socket(),
		"CNI_COMMAND="+command,
		"CNI_CONTAINERID="+p.sandboxID(),
		"CNI_NETNS="+p.NetNSPath,
		"CNI_IFNAME=eth0",
		"CNI_PATH="+filepath.Dir(c.opts.CNI),
		"CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE="+p.Namespace+";K8S_POD_NAME="+p.Name+";K8S_POD_UID="+string(p.UID),
	)
	cmd.Stdin = strings.NewReader(`{"cniVersion":"0.3.1","name":"cilium","type":"cilium-cni"}`)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if ctx.Err() != nil {
		return out, fmt.Errorf("cilium-cni %s %s/%s: no answer in %s: %s%s\ncilium-agent log:\n%s", command, p.Namespace, p.Name, cniTimeout, out, stderr.String(), tail(c.logPath, 20))
	}
	if err != nil {
		return out, fmt.Errorf("cilium-cni %s %s/%s: %w: %s%s", command, p.Namespace, p.Name, err, out, stderr.String())
	}
	return out, nil
}

// addPod gives the pod its network through cilium-cni ADD.
func (c *ciliumNode) addPod(n *Node, p *Pod) error {
	p.NetNSName = fmt.Sprintf("swln-%s-%s", n.id, p.UID)
	p.NetNSPath = filepath.Join("/run/netns", p.NetNSName)
	ns, err := newNamedNetns(p.NetNSName)
	if err != nil {
		p.NetNSName, p.NetNSPath = "", ""
		return fmt.Errorf("create network namespace: %w", err)
	}
	// The container runtime brings up the pod's loopback (the CNI
	// "loopback" plugin's job); cilium-cni sets up only eth0. Without lo,
	// 127.0.0.1 would leave the pod by its default route.
	err = bringUpLoopback(ns)
	ns.Close()
	if err != nil {
		return fmt.Errorf("bring up lo in %s: %w", p.NetNSName, err)
	}
	out, err := c.cni("ADD", p)
	if err != nil {
		return err
	}
	p.ciliumWired = true
	var res struct {
		IPs []struct {
			Address string `json:"address"`
		} `json:"ips"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		return fmt.Errorf("cilium-cni ADD result: %w: %s", err, out)
	}
	for _, ip := range res.IPs {
		if pfx, err := netip.ParsePrefix(ip.Address); err == nil && pfx.Addr().Is4() {
			p.IP = pfx.Addr()
			return nil
		}
	}
	return fmt.Errorf("cilium-cni ADD gave no IPv4 address: %s", out)
}

// delPod releases the pod's endpoint and address through cilium-cni DEL.
func (c *ciliumNode) delPod(p *Pod) error {
	if !p.ciliumWired {
		return nil
	}
	// DEL is idempotent; retry a timed-out one as kubelet does.
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		if _, err = c.cni("DEL", p); err == nil {
			p.ciliumWired = false
			return nil
		}
	}
	return err
}

// stopAgent stops the agent with SIGTERM, as kubelet does, and waits.
func (c *ciliumNode) stopAgent() {
	if c.agent == nil || c.agent.Process == nil {
		return
	}
	_ = syscall.Kill(-c.agent.Process.Pid, syscall.SIGTERM)
	select {
	case <-c.exited:
	case <-time.After(30 * time.Second):
		_ = syscall.Kill(-c.agent.Process.Pid, syscall.SIGKILL)
		<-c.exited
	}
	c.agent = nil
}

// stop stops the agent and removes what startCilium made.
func (c *ciliumNode) stop() error {
	var errs []error
	c.stopAgent()
	if c.relay != nil {
		c.relay.Close()
	}
	if l, err := netlink.LinkByName(c.hostVth); err == nil {
		if err := netlink.LinkDel(l); err != nil {
			errs = append(errs, fmt.Errorf("delete %s: %w", c.hostVth, err))
		}
	}
	if err := deleteNamedNetns(c.nsName); err != nil {
		errs = append(errs, fmt.Errorf("delete network namespace %s: %w", c.nsName, err))
	}
	c.mu.Lock()
	mounted := c.mounted
	c.mounted = nil
	c.mu.Unlock()
	for i := len(mounted) - 1; i >= 0; i-- {
		if err := unix.Unmount(mounted[i], unix.MNT_DETACH); err != nil {
			errs = append(errs, fmt.Errorf("unmount %s: %w", mounted[i], err))
		}
	}
	if len(errs) == 0 {
		if err := os.RemoveAll(c.dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// tail returns the last lines of a file, for error messages.
func tail(path string, lines int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	ls := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(ls) > lines {
		ls = ls[len(ls)-lines:]
	}
	return strings.Join(ls, "\n")
}

// DialFromNode connects to addr from the node itself, as the kubelet's
// probes do: from the node's network namespace with Cilium, else from the
// host (the bridge's address). It sends a line and waits for the answer of
// a Listen server, and returns the error the connection got.
func (n *Node) DialFromNode(ctx context.Context, addr string, timeout time.Duration) error {
	var c net.Conn
	var err error
	if n.cilium == nil {
		c, err = (&net.Dialer{Timeout: timeout}).DialContext(ctx, "tcp", addr)
	} else {
		c, err = dialInNetns(n.cilium.nsName, addr, timeout)
	}
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := io.WriteString(c, "probe\n"); err != nil {
		return err
	}
	buf := make([]byte, 256)
	_, err = c.Read(buf)
	return err
}

// dialInNetns connects from inside a named network namespace.
func dialInNetns(name, addr string, timeout time.Duration) (c net.Conn, err error) {
	err = inNetns(name, func() error {
		c, err = net.DialTimeout("tcp", addr, timeout)
		return err
	})
	return c, err
}

// ProxyService plays kube-proxy in iptables mode for one Service port on
// a Cilium node that runs without kube-proxy replacement: a DNAT rule in
// the node's network namespace from the Service address to one backend,
// in a chain of its own. It returns a function that reads how many
// packets the rule translated, so a test can tell that the stand-in, not
// Cilium, load-balanced the connection.
func (n *Node) ProxyService(proto string, svc, backend netip.AddrPort) (translated func() (int, error), err error) {
	if n.cilium == nil {
		return nil, errors.New("proxy service: the node runs no Cilium")
	}
	chain := "SWKP-" + n.id
	ipt := func(args ...string) (string, error) {
		out, err := exec.Command("ip", append([]string{"netns", "exec", n.cilium.nsName, "iptables", "-w", "-t", "nat"}, args...)...).CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("kube-proxy stand-in: iptables %s: %w: %s", strings.Join(args, " "), err, out)
		}
		return string(out), nil
	}
	if _, err := ipt("-S", chain); err != nil {
		if _, err := ipt("-N", chain); err != nil {
			return nil, err
		}
		if _, err := ipt("-I", "PREROUTING", "-j", chain); err != nil {
			return nil, err
		}
	}
	comment := fmt.Sprintf("%s %s->%s", proto, svc, backend)
	if _, err := ipt("-A", chain, "-d", svc.Addr().String()+"/32", "-p", proto, "--dport", strconv.Itoa(int(svc.Port())),
		"-m", "comment", "--comment", comment, "-j", "DNAT", "--to-destination", backend.String()); err != nil {
		return nil, err
	}
	return func() (int, error) {
		out, err := ipt("-L", chain, "-n", "-v", "-x")
		if err != nil {
			return 0, err
		}
		for _, line := range strings.Split(out, "\n") {
			if f := strings.Fields(line); len(f) > 1 && strings.Contains(line, comment) {
				return strconv.Atoi(f[0])
			}
		}
		return 0, fmt.Errorf("kube-proxy stand-in: no rule %q in:\n%s", comment, out)
	}, nil
}
