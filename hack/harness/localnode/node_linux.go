package localnode

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/sidewall/sidewall/agent/cgroups"
)

// Options configure New.
type Options struct {
	// Client reaches the API server. Required.
	Client kubernetes.Interface
	// NodeName is the Node object created and every pod's spec.nodeName.
	// Empty: "localnode-<random>".
	NodeName string
	// CgroupMount is the cgroup2 mount point. Empty: from /proc/self/mounts.
	CgroupMount string
	// PodCIDR is the IPv4 range of the bridge (first address) and the pods.
	// Empty: a free /16 in 10.128.0.0/9, checked against every address and
	// route on the host.
	PodCIDR netip.Prefix
	// Logf receives one line per step. Nil: silent.
	Logf func(format string, args ...any)
	// Cilium, if set, makes a real cilium-agent own the node's networking
	// (see Cilium); otherwise pods get a veth on the node's bridge.
	Cilium *Cilium
}

// Node is the local node: its bridge, its kubepods cgroups and its pods.
type Node struct {
	client   kubernetes.Interface
	name     string
	id       string
	mount    string
	rootRel  string
	kubepods string
	bridge   string
	subnet   netip.Prefix
	podCIDR  netip.Prefix // with Cilium: the Node's spec.podCIDR
	hostIP   netip.Addr
	logf     func(string, ...any)
	cilium   *ciliumNode

	mu       sync.Mutex
	pods     map[types.UID]*Pod
	nextHost uint32
	nextVeth int
	madeNode bool
	closing  bool
	ns       map[string]bool // namespaces known to exist

	closeOnce sync.Once
	closeErr  error
}

// New creates the node: a Node object, the kubepods cgroup hierarchy and the
// bridge. Close undoes it, also when New fails halfway.
func New(ctx context.Context, opts Options) (n *Node, err error) {
	if opts.Client == nil {
		return nil, errors.New("new local node: options client: required")
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("new local node: needs root (cgroups, network namespaces)")
	}
	id := randHex(3)
	n = &Node{
		client: opts.Client,
		name:   opts.NodeName,
		id:     id,
		mount:  opts.CgroupMount,
		bridge: "swb" + id,
		logf:   opts.Logf,
		pods:   map[types.UID]*Pod{},
		ns:     map[string]bool{},
	}
	if n.name == "" {
		n.name = "localnode-" + id
	}
	if n.logf == nil {
		n.logf = func(string, ...any) {}
	}
	if n.mount == "" {
		if n.mount, err = cgroups.FindMount(); err != nil {
			return nil, fmt.Errorf("new local node: %w", err)
		}
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, n.Close())
			n = nil
		}
	}()

	// kubelet's --cgroup-root is this unique directory; below it the
	// cgroupfs driver's kubepods tree, as kubelet creates it at start.
	n.rootRel = "sidewall-localnode-" + id
	n.kubepods = filepath.Join(n.mount, n.rootRel, "kubepods")
	for _, d := range []string{"", "burstable", "besteffort"} {
		if err := os.MkdirAll(filepath.Join(n.kubepods, d), 0o755); err != nil {
			return n, fmt.Errorf("new local node: create kubepods cgroups: %w", err)
		}
	}

	if err := n.pickSubnet(opts.PodCIDR); err != nil {
		return n, fmt.Errorf("new local node: %w", err)
	}
	if opts.Cilium != nil {
		n.bridge = ""
		n.hostIP, n.podCIDR = ciliumAddrs(n.subnet)
	} else if err := n.addBridge(); err != nil {
		return n, fmt.Errorf("new local node: %w", err)
	}
	if err := n.createNode(ctx); err != nil {
		return n, fmt.Errorf("new local node: %w", err)
	}
	if opts.Cilium != nil {
		if err := n.startCilium(ctx, *opts.Cilium); err != nil {
			return n, fmt.Errorf("new local node: %w", err)
		}
		n.logf("node %s: cilium-agent in network namespace %s, pod cidr %s, cgroups under %s", n.name, n.cilium.nsName, n.podCIDR, n.kubepods)
		return n, nil
	}
	n.logf("node %s: bridge %s %s, cgroups under %s", n.name, n.bridge, n.subnet, n.kubepods)
	return n, nil
}

// Name is the node name the pods are bound to.
func (n *Node) Name() string { return n.name }

// HostIP is the node's address on the bridge (status.hostIP of its pods).
func (n *Node) HostIP() netip.Addr { return n.hostIP }

// PodCIDR is the range the pods' addresses come from.
func (n *Node) PodCIDR() netip.Prefix { return n.subnet }

// Bridge is the name of the node's bridge.
func (n *Node) Bridge() string { return n.bridge }

// CgroupMount is the cgroup2 mount point.
func (n *Node) CgroupMount() string { return n.mount }

// CgroupRoot is kubelet's --cgroup-root of this node, relative to the
// cgroup2 mount: the directory that holds "kubepods".
func (n *Node) CgroupRoot() string { return n.rootRel }

// KubepodsDir is the absolute path of the kubepods cgroup.
func (n *Node) KubepodsDir() string { return n.kubepods }

// Pods returns the pods running on the node.
func (n *Node) Pods() []*Pod {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make([]*Pod, 0, len(n.pods))
	for _, p := range n.pods {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].Namespace+"/"+out[i].Name < out[j].Namespace+"/"+out[j].Name
	})
	return out
}

// CgroupConfig tells the node agent's cgroup resolver where this node's pod
// cgroups are.
func (n *Node) CgroupConfig() cgroups.Config {
	return cgroups.Config{Mount: n.mount, Parent: n.rootRel, Driver: cgroups.Cgroupfs}
}

func (n *Node) createNode(ctx context.Context) error {
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{
		Name:   n.name,
		Labels: map[string]string{corev1.LabelHostname: n.name, corev1.LabelOSStable: "linux"},
	}}
	if n.podCIDR.IsValid() {
		// Cilium's IPAM mode kubernetes takes the pods' addresses from here.
		node.Spec.PodCIDR, node.Spec.PodCIDRs = n.podCIDR.String(), []string{n.podCIDR.String()}
	}
	created, err := n.client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create node %s: %w", n.name, err)
	}
	n.madeNode = true
	created.Status = corev1.NodeStatus{
		Addresses: []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: n.hostIP.String()},
			{Type: corev1.NodeHostName, Address: n.name},
		},
		Conditions: []corev1.NodeCondition{{
			Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
			Message: "sidewall local node", LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now(),
		}},
	}
	if _, err := n.client.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("write node %s status: %w", n.name, err)
	}
	return nil
}

// pickSubnet picks a pod range no host address or route overlaps, so
// nothing the pods send can leave the node.
func (n *Node) pickSubnet(want netip.Prefix) error {
	if want.IsValid() {
		if !want.Addr().Is4() || want.Bits() > 28 {
			return fmt.Errorf("options pod cidr %s: want an IPv4 range of at least 16 addresses", want)
		}
		if used, err := hostPrefixes(); err != nil {
			return err
		} else if p, ok := overlapping(want.Masked(), used); ok {
			return fmt.Errorf("options pod cidr %s: overlaps %s on this host", want, p)
		}
		n.subnet = want.Masked()
	} else {
		// Two nodes (test packages run in parallel) must not pick the same
		// range between listing the host's routes and adding the bridge's.
		unlock, err := lockFile("/run/sidewall-localnode.lock")
		if err != nil {
			return err
		}
		defer unlock()
		used, err := hostPrefixes()
		if err != nil {
			return err
		}
		for range 64 {
			b := make([]byte, 1)
			_, _ = rand.Read(b)
			p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 128 + b[0]%128, 0, 0}), 16)
			if _, ok := overlapping(p, used); !ok {
				n.subnet = p
				break
			}
		}
		if !n.subnet.IsValid() {
			return errors.New("pick pod cidr: no free /16 in 10.128.0.0/9")
		}
	}
	n.hostIP = n.subnet.Addr().Next()
	n.nextHost = 2
	return nil
}

func (n *Node) addBridge() error {
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: n.bridge}}
	if err := netlink.LinkAdd(br); err != nil {
		return fmt.Errorf("create bridge %s: %w", n.bridge, err)
	}
	disableIPv6(n.bridge)
	addr := &netlink.Addr{IPNet: ipNet(n.hostIP, n.subnet.Bits())}
	if err := netlink.AddrAdd(br, addr); err != nil {
		return fmt.Errorf("address bridge %s: %w", n.bridge, err)
	}
	if err := netlink.LinkSetUp(br); err != nil {
		return fmt.Errorf("bring up bridge %s: %w", n.bridge, err)
	}
	return nil
}

func lockFile(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}

func hostPrefixes() ([]netip.Prefix, error) {
	var out []netip.Prefix
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("list host addresses: %w", err)
	}
	for _, a := range addrs {
		if p, ok := toPrefix(a.IPNet); ok {
			out = append(out, p.Masked())
		}
	}
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("list host routes: %w", err)
	}
	for _, r := range routes {
		// The default route overlaps everything and is what must not
		// carry pod traffic anyway; the pods get no route to it.
		if p, ok := toPrefix(r.Dst); ok && p.Bits() > 0 {
			out = append(out, p.Masked())
		}
	}
	return out, nil
}

func overlapping(p netip.Prefix, used []netip.Prefix) (netip.Prefix, bool) {
	for _, u := range used {
		if u.Overlaps(p) {
			return u, true
		}
	}
	return netip.Prefix{}, false
}

func toPrefix(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}

func ipNet(a netip.Addr, bits int) *net.IPNet {
	return &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(bits, 32)}
}

// disableIPv6 keeps interfaces we create from sending router solicitations
// and MLD reports, so the only packets on the bridge are the ones tests send.
func disableIPv6(link string) {
	_ = os.WriteFile("/proc/sys/net/ipv6/conf/"+link+"/disable_ipv6", []byte("1"), 0o644)
}

func (n *Node) allocIP() (netip.Addr, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	a := n.subnet.Addr()
	for i := uint32(0); i < n.nextHost; i++ {
		a = a.Next()
	}
	if !n.subnet.Contains(a.Next()) { // keep the broadcast address free
		return netip.Addr{}, fmt.Errorf("pod cidr %s exhausted", n.subnet)
	}
	n.nextHost++
	return a, nil
}

func (n *Node) vethName() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.nextVeth++
	return fmt.Sprintf("swv%s%x", n.id, n.nextVeth)
}

// Close removes every pod (processes, network namespace, veth, cgroups, API
// object), the kubepods cgroups, the bridge and the Node object. It is
// idempotent; later calls return the first call's result.
func (n *Node) Close() error {
	n.closeOnce.Do(func() {
		var errs []error
		n.mu.Lock()
		n.closing = true
		pods := make([]*Pod, 0, len(n.pods))
		for _, p := range n.pods {
			pods = append(pods, p)
		}
		n.mu.Unlock()
		for _, p := range pods {
			// Each pod its own deadline: one slow teardown must not
			// leave the others (and the Node) behind.
			pctx, pcancel := context.WithTimeout(context.Background(), 90*time.Second)
			if err := n.DeletePod(pctx, p); err != nil {
				errs = append(errs, err)
			}
			pcancel()
		}
		if n.cilium != nil {
			if err := n.cilium.stop(); err != nil {
				errs = append(errs, fmt.Errorf("stop cilium: %w", err))
			}
		}
		if n.rootRel != "" {
			if err := removeCgroupTree(filepath.Join(n.mount, n.rootRel)); err != nil {
				errs = append(errs, fmt.Errorf("remove cgroups: %w", err))
			}
		}
		if l, err := netlink.LinkByName(n.bridge); n.bridge != "" && err == nil {
			if err := netlink.LinkDel(l); err != nil {
				errs = append(errs, fmt.Errorf("delete bridge %s: %w", n.bridge, err))
			}
		}
		if n.madeNode {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			err := n.client.CoreV1().Nodes().Delete(ctx, n.name, metav1.DeleteOptions{})
			if err != nil && !apierrors.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("delete node %s: %w", n.name, err))
			}
		}
		n.closeErr = errors.Join(errs...)
		if n.closeErr == nil {
			n.logf("node %s: removed", n.name)
		}
	})
	return n.closeErr
}

// removeCgroupTree removes a cgroup and its descendants, leaves first:
// cgroupfs refuses rmdir of a cgroup with children, and its interface files
// cannot be unlinked, so os.RemoveAll does not work here.
func removeCgroupTree(root string) error {
	var dirs []string
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	sort.Slice(dirs, func(i, j int) bool { return strings.Count(dirs[i], "/") > strings.Count(dirs[j], "/") })
	var errs []error
	for _, d := range dirs {
		if err := rmdirCgroup(d); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// rmdirCgroup waits out the moment between a killed process being reaped
// and the kernel releasing its cgroup (EBUSY).
func rmdirCgroup(dir string) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := syscall.Rmdir(dir)
		if err == nil || errors.Is(err, syscall.ENOENT) {
			return nil
		}
		if !errors.Is(err, syscall.EBUSY) || time.Now().After(deadline) {
			return fmt.Errorf("rmdir %s: %w", dir, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func randHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err))
	}
	return hex.EncodeToString(b)
}

// PodNetns is the path of a running pod's network namespace, by the pod's
// UID: what kubelet's runtime knows and the node agent's DNS proxy needs.
func (n *Node) PodNetns(pod *corev1.Pod) (string, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, p := range n.pods {
		if p.UID == pod.UID && p.NetNSPath != "" {
			return p.NetNSPath, nil
		}
	}
	return "", fmt.Errorf("pod %s/%s: no network namespace on this node", pod.Namespace, pod.Name)
}
