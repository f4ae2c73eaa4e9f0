package agentnode

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	ciliumv2 "github.com/cilium/cilium/pkg/k8s/apis/cilium.io/v2"
	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"sigs.k8s.io/controller-runtime/pkg/manager"

	"github.com/sidewall/sidewall/agent"
	"github.com/sidewall/sidewall/bpfext"
	"github.com/sidewall/sidewall/crds/v1alpha1"
	"github.com/sidewall/sidewall/hack/harness"
	"github.com/sidewall/sidewall/hack/harness/localnode"
	"github.com/sidewall/sidewall/hack/harness/testenv"
	"github.com/sidewall/sidewall/translator"
	"github.com/sidewall/sidewall/translator/controller"
)

// Options shape the node.
type Options struct {
	// Prefix names the test's namespace and pin directory.
	Prefix string
	// Cilium installs Cilium's CRDs and makes the agent read Cilium's
	// identities (CiliumEndpoints, CiliumIdentities); otherwise it
	// allocates local ones from pod labels.
	Cilium bool
	// CiliumNode runs a real cilium-agent that owns the node's networking
	// (localnode.Cilium, from the tools `make cilium-tools` builds); it
	// implies Cilium.
	CiliumNode bool
	// HubbleTLS, when Cert is set, also serves the agent's Hubble with
	// mTLS on a free port of the node's address, with the Peer service,
	// for Relay.
	HubbleTLS struct{ CA, Cert, Key string }
	// HubblePeerService is agent.Options.HubblePeerService.
	HubblePeerService string
	// CiliumHubble overrides the address of the Cilium Hubble the agent
	// re-serves (default: the Cilium node's hubble.sock; none elsewhere).
	CiliumHubble string
	// CiliumL7Proxy turns the Cilium node's L7 proxy on (localnode.Cilium).
	CiliumL7Proxy bool
	// FQDNMaxPerContainer is the agent's share of learned addresses per
	// container (agent.Options; 0: its default).
	FQDNMaxPerContainer int
	// CiliumWithoutKPR runs the Cilium node without kube-proxy
	// replacement (no socket LB): Services need a kube-proxy stand-in
	// (localnode.Node.ProxyService).
	CiliumWithoutKPR bool
	// MaxEntries overrides datapath map sizes when the maps are created.
	MaxEntries map[string]uint32
	// LogLevel of the agent's log, which goes to the test log.
	LogLevel slog.Level
}

// Node is one test's control plane, local node and running agent.
type Node struct {
	t    testing.TB
	opts Options
	// hubbleAddr is the address of the agent's Hubble TLS listener.
	hubbleAddr netip.Addr
	Env        *testenv.Env
	Client     kubernetes.Interface
	Local      *localnode.Node
	// Namespace is the test's own namespace; policies and pods go there.
	Namespace string
	PinDir    string
	// Agent is the running agent (after StartAgent).
	Agent *agent.Node
	stop  func()
	// noIPCache makes StartAgent resolve peers from CiliumEndpoints only,
	// not from the Cilium node's ipcache (SetCiliumIPCache).
	noIPCache bool
	// criSocket is the CRI socket StartAgent gives the agent
	// (SetCRISocket).
	criSocket string
	// controller is set once StartController ran.
	controller bool
}

// New starts the control plane, the local node and the agent, and waits
// for the agent's first reconcile.
func New(t testing.TB, o Options) *Node {
	t.Helper()
	harness.RequirePrivileged(t)
	if o.Prefix == "" {
		o.Prefix = "agent"
	}
	if o.CiliumNode {
		o.Cilium = true
	}
	n := &Node{t: t, opts: o, Namespace: o.Prefix + "-" + RandHex(3)}
	n.Env = testenv.New(t, testenv.Options{SkipCiliumCRDs: !o.Cilium})
	var err error
	if n.Client, err = kubernetes.NewForConfig(n.Env.Config); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := n.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: n.Namespace}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	lo := localnode.Options{Client: n.Client, Logf: t.Logf}
	if o.CiliumNode {
		if lo.Cilium, err = localnode.CiliumTools(n.Env.Config); err != nil {
			t.Fatalf("cilium node: %v", err)
		}
		lo.Cilium.KubeProxyReplacement = !o.CiliumWithoutKPR
		lo.Cilium.L7Proxy = o.CiliumL7Proxy
		// The agent compiles its datapath at start: minutes on this machine.
		ctx, cancel = context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
	}
	start := time.Now()
	if n.Local, err = localnode.New(ctx, lo); err != nil {
		t.Fatalf("localnode.New: %v", err)
	}
	if o.CiliumNode {
		t.Logf("cilium node %s up in %s", n.Local.Name(), time.Since(start).Round(time.Second))
		// Before the node's Close (cleanups run last first): the log goes
		// with the node.
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("cilium-agent log, last lines:\n%s", n.Local.CiliumLogTail(60))
			}
		})
	}
	t.Cleanup(func() {
		if err := n.Local.Close(); err != nil {
			t.Errorf("close local node: %v", err)
		}
	})
	n.PinDir = filepath.Join(bpfext.DefaultBPFFSRoot, "sidewall-"+o.Prefix+"-test-"+RandHex(4))
	t.Cleanup(func() {
		dp, err := bpfext.Load(bpfext.Options{PinDir: n.PinDir, MaxEntries: o.MaxEntries})
		if err == nil {
			err = errors.Join(dp.Unpin(), dp.Close())
		}
		if err != nil {
			t.Errorf("unpin %s: %v", n.PinDir, err)
		}
	})
	n.StartAgent()
	return n
}

// StartAgent starts (again, after StopAgent) the agent on the node's pin
// directory, with a Hubble API on a free local port, and waits until it is
// ready.
func (n *Node) StartAgent() {
	t := n.t
	t.Helper()
	ids := agent.IdentitiesLocal
	if n.opts.Cilium {
		ids = agent.IdentitiesCilium
	}
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: n.opts.LogLevel}))
	// On a Cilium node the agent finds Cilium's ipcache as on a real node,
	// under Cilium's bpf root; elsewhere there is none to find.
	ipcache := agent.Disabled
	if n.opts.CiliumNode && !n.noIPCache {
		ipcache = agent.CiliumIPCachePath(n.Local.CiliumBPFRoot())
	}
	ciliumHubble := agent.Disabled
	if n.opts.CiliumNode {
		ciliumHubble = "unix://" + n.Local.HubbleSocket()
	}
	if n.opts.CiliumHubble != "" {
		ciliumHubble = n.opts.CiliumHubble
	}
	tlsAddr, cas := agent.Disabled, []string(nil)
	if n.opts.HubbleTLS.Cert != "" {
		// An address as a pod's would be: an EndpointSlice may not hold
		// a loopback address.
		tlsAddr, cas = net.JoinHostPort(n.hubbleIP().String(), "0"), []string{n.opts.HubbleTLS.CA}
	}
	a, err := agent.Start(context.Background(), agent.Options{
		NodeName: n.Local.Name(), Config: n.Env.Config, PinDir: n.PinDir, MaxEntries: n.opts.MaxEntries,
		Cgroups: n.Local.CgroupConfig(), HubbleSocket: agent.Disabled, HubbleAddress: "127.0.0.1:0",
		IdentitySource: ids, Logger: log, CiliumIPCache: ipcache, CRISocket: n.criSocket,
		CiliumHubble:     ciliumHubble,
		HubbleTLSAddress: tlsAddr, HubbleTLSCertFile: n.opts.HubbleTLS.Cert, HubbleTLSKeyFile: n.opts.HubbleTLS.Key,
		HubbleTLSClientCAFiles: cas, HubblePeerService: n.opts.HubblePeerService,
		PodNetns: n.Local.PodNetns, FQDNMaxPerContainer: n.opts.FQDNMaxPerContainer,
	})
	if err != nil {
		t.Fatalf("start agent: %v", err)
	}
	n.Agent = a
	var once sync.Once
	n.stop = func() {
		once.Do(func() {
			if err := a.Stop(); err != nil {
				t.Errorf("agent: %v", err)
			}
		})
	}
	t.Cleanup(n.stop)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := a.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
}

// StartController runs sidewall's controller, configured as the binary
// configures it, for the test's namespace, until the test ends.
func (n *Node) StartController() {
	n.t.Helper()
	n.Env.StartManager(n.t, func(mgr manager.Manager) error {
		return controller.SetupWithManager(mgr, controller.Options{})
	}, testenv.ManagerOptions{Namespaces: []string{n.Namespace}, Configure: controller.ConfigureManager})
	n.controller = true
}

// SetCiliumIPCache says whether the next StartAgent on a Cilium node reads
// Cilium's ipcache (the default) or resolves peers from CiliumEndpoints
// only.
func (n *Node) SetCiliumIPCache(on bool) { n.noIPCache = !on }

// SetCRISocket gives the next StartAgent a container runtime's CRI socket
// (empty: none).
func (n *Node) SetCRISocket(socket string) { n.criSocket = socket }

// StopAgent stops the agent; its pins stay, as when a node agent restarts.
func (n *Node) StopAgent() { n.stop() }

// HubbleAddr is the agent's Hubble API address, as `hubble --server` takes it.
func (n *Node) HubbleAddr() string { return n.Agent.Hubble.Addrs()[0].String() }

// ApplyPolicy creates or updates a ContainerNetworkPolicy from YAML in the
// test's namespace. On a Cilium node with the controller running, it
// waits until the cilium-agent has imported the CiliumNetworkPolicy the
// controller generated, and fails the test with Cilium's own message if the
// agent refuses it.
func (n *Node) ApplyPolicy(doc string) {
	n.t.Helper()
	if err := n.TryApplyPolicy(doc); err != nil {
		n.t.Fatal(err)
	}
}

// TryApplyPolicy is ApplyPolicy returning its error: a
// *localnode.CiliumRefusal when the cilium-agent refuses the generated CNP.
func (n *Node) TryApplyPolicy(doc string) error {
	var p v1alpha1.ContainerNetworkPolicy
	if err := yaml.UnmarshalStrict([]byte(doc), &p); err != nil {
		return fmt.Errorf("parse policy: %w", err)
	}
	p.Namespace = n.Namespace
	ctx := context.Background()
	start := time.Now()
	cnpGen := n.cnpGeneration(translator.CNPName(p.Name))
	var cur v1alpha1.ContainerNetworkPolicy
	if err := n.Env.Client.Get(ctx, client.ObjectKeyFromObject(&p), &cur); err == nil {
		cur.Spec = p.Spec
		if err := n.Env.Client.Update(ctx, &cur); err != nil {
			return fmt.Errorf("update policy: %w", err)
		}
	} else if err := n.Env.Client.Create(ctx, &p); err != nil {
		return fmt.Errorf("create policy: %w", err)
	}
	if n.opts.CiliumNode && n.controller {
		return n.waitCiliumImport(ctx, p.Name, cnpGen, start)
	}
	return nil
}

// cnpGeneration is the generation of the CiliumNetworkPolicy name of the
// test's namespace, 0 if there is none.
func (n *Node) cnpGeneration(name string) int64 {
	var cnp ciliumv2.CiliumNetworkPolicy
	if err := n.Env.Client.Get(context.Background(), client.ObjectKey{Namespace: n.Namespace, Name: name}, &cnp); err != nil {
		return 0
	}
	return cnp.Generation
}

// waitCiliumImport waits for the controller to observe the policy, then
// for the cilium-agent to import the CiliumNetworkPolicy it generated, if
// the controller wrote a new one.
func (n *Node) waitCiliumImport(ctx context.Context, policy string, genBefore int64, since time.Time) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var cnpName string
	for {
		var cur v1alpha1.ContainerNetworkPolicy
		err := n.Env.Client.Get(ctx, client.ObjectKey{Namespace: n.Namespace, Name: policy}, &cur)
		if err == nil && cur.Status.ObservedGeneration == cur.Generation {
			cnpName = cur.Status.GeneratedPolicy
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("controller has not observed policy %s: %w", policy, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	if cnpName == "" || n.cnpGeneration(cnpName) == genBefore {
		return nil // no CNP, or the one Cilium already has
	}
	return n.Local.WaitCiliumPolicy(ctx, n.Namespace, cnpName, since)
}

// DeletePolicy deletes a ContainerNetworkPolicy of the test's namespace.
func (n *Node) DeletePolicy(name string) {
	n.t.Helper()
	p := &v1alpha1.ContainerNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: n.Namespace, Name: name}}
	if err := n.Env.Client.Delete(context.Background(), p); err != nil {
		n.t.Fatalf("delete policy: %v", err)
	}
}

// RunPod runs a pod with an "app" container and, with sidecar, a
// "log-shipper" sidecar (an init container with restartPolicy Always).
// Each edit changes the pod spec before it is created (ports, security
// context).
func (n *Node) RunPod(name string, labels map[string]string, sidecar bool, edits ...func(*corev1.Pod)) *localnode.Pod {
	n.t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: n.Namespace, Name: name, Labels: labels},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app"}}},
	}
	if sidecar {
		always := corev1.ContainerRestartPolicyAlways
		pod.Spec.InitContainers = []corev1.Container{{Name: "log-shipper", RestartPolicy: &always}}
	}
	for _, edit := range edits {
		edit(pod)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, err := n.Local.RunPod(ctx, pod)
	if err != nil {
		n.t.Fatalf("run pod %s: %v", name, err)
	}
	return p
}

// Listen starts a listener in a container of p.
func (n *Node) Listen(p *localnode.Pod, container, proto string, port int) {
	n.t.Helper()
	if _, err := n.Local.Listen(context.Background(), p, container, proto, port); err != nil {
		n.t.Fatalf("listen %s %d in %s/%s: %v", proto, port, p.Name, container, err)
	}
}

// Dial connects from a container of p to peer:port over TCP.
func (n *Node) Dial(p *localnode.Pod, container string, peer *localnode.Pod, port string) error {
	_, err := n.Local.Dial(context.Background(), p, container, "tcp", net.JoinHostPort(peer.IP.String(), port), 2*time.Second)
	return err
}

// Expect waits (the agent reconciles asynchronously) until a TCP
// connection from a container of p to peer:port gets the wanted outcome:
// allowed, or denied at once with EPERM.
func (n *Node) Expect(p *localnode.Pod, container string, peer *localnode.Pod, port string, allowed bool) {
	n.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		err := n.Dial(p, container, peer, port)
		if allowed && err == nil || !allowed && errors.Is(err, syscall.EPERM) {
			return
		}
		if time.Now().After(deadline) {
			n.t.Fatalf("%s/%s -> %s:%s: got %v, want allowed=%t", p.Name, container, peer.Name, port, err, allowed)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// CreateService makes a ClusterIP Service with one port and an
// EndpointSlice with one ready backend, removed when the test ends, and
// returns its ClusterIP and port.
func (n *Node) CreateService(ns, name string, backend *localnode.Pod, portName string, proto corev1.Protocol, port, target int32) netip.AddrPort {
	n.t.Helper()
	svc := n.createService(ns, name, corev1.ServiceTypeClusterIP, backend, portName, proto, port, target)
	return clusterIP(n.t, svc)
}

// CreateNodePortService is CreateService for a NodePort Service; it also
// returns the node port the API server allocated.
func (n *Node) CreateNodePortService(ns, name string, backend *localnode.Pod, portName string, proto corev1.Protocol, port, target int32) (netip.AddrPort, uint16) {
	n.t.Helper()
	svc := n.createService(ns, name, corev1.ServiceTypeNodePort, backend, portName, proto, port, target)
	if svc.Spec.Ports[0].NodePort == 0 {
		n.t.Fatalf("service %s/%s has no node port", ns, name)
	}
	return clusterIP(n.t, svc), uint16(svc.Spec.Ports[0].NodePort)
}

func clusterIP(t testing.TB, svc *corev1.Service) netip.AddrPort {
	t.Helper()
	ip, err := netip.ParseAddr(svc.Spec.ClusterIP)
	if err != nil {
		t.Fatalf("service %s/%s has no ClusterIP: %v", svc.Namespace, svc.Name, err)
	}
	return netip.AddrPortFrom(ip, uint16(svc.Spec.Ports[0].Port))
}

func (n *Node) createService(ns, name string, typ corev1.ServiceType, backend *localnode.Pod, portName string, proto corev1.Protocol, port, target int32) *corev1.Service {
	t := n.t
	t.Helper()
	ctx := context.Background()
	svc, err := n.Client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.ServiceSpec{
			Type:  typ,
			Ports: []corev1.ServicePort{{Name: portName, Port: port, TargetPort: intstr.FromInt32(target), Protocol: proto}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create service %s/%s: %v", ns, name, err)
	}
	t.Cleanup(func() { _ = n.Client.CoreV1().Services(ns).Delete(context.Background(), name, metav1.DeleteOptions{}) })
	_, err = n.Client.DiscoveryV1().EndpointSlices(ns).Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: name}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{{
			Addresses:  []string{backend.IP.String()},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)},
		}},
		Ports: []discoveryv1.EndpointPort{{Name: ptr.To(portName), Port: ptr.To(target), Protocol: ptr.To(proto)}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create endpointslice %s/%s: %v", ns, name, err)
	}
	t.Cleanup(func() {
		_ = n.Client.DiscoveryV1().EndpointSlices(ns).Delete(context.Background(), name, metav1.DeleteOptions{})
	})
	return svc
}

// RandHex returns n random bytes in hex, for unique names.
func RandHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

// hubbleIP is a non-loopback address of the host for the agent's Hubble
// TLS listener: made once per node on the host's lo (a /32 of
// 198.18.0.0/15, the benchmarking range; this kernel has no dummy links),
// removed when the test ends.
func (n *Node) hubbleIP() netip.Addr {
	if n.hubbleAddr.IsValid() {
		return n.hubbleAddr
	}
	t := n.t
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatalf("hubble address: %v", err)
	}
	b := make([]byte, 2)
	rand.Read(b)
	ip := netip.AddrFrom4([4]byte{198, 18 | (b[0] & 1), b[1], 1 + b[0]>>1})
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(32, 32)}}
	if err := netlink.AddrAdd(lo, addr); err != nil {
		t.Fatalf("hubble address %s on lo: %v", ip, err)
	}
	t.Cleanup(func() { netlink.AddrDel(lo, addr) })
	n.hubbleAddr = ip
	return ip
}
