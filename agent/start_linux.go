package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/cilium/pkg/k8s/client/clientset/versioned"
	"github.com/cilium/cilium/pkg/policy/api"
	"github.com/cilium/ebpf"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	flowpb "github.com/cilium/cilium/api/v1/flow"

	"github.com/sidewall/sidewall/agent/cgroups"
	"github.com/sidewall/sidewall/agent/cri"
	"github.com/sidewall/sidewall/agent/hubble"
	"github.com/sidewall/sidewall/agent/identity"
	"github.com/sidewall/sidewall/bpfext"
)

// Identity sources a node agent can use for its peers.
const (
	// IdentitiesAuto uses Cilium's when its CRDs are served, else local ones.
	IdentitiesAuto = "auto"
	// IdentitiesCilium reads CiliumEndpoints and CiliumIdentities.
	IdentitiesCilium = "cilium"
	// IdentitiesLocal allocates identities from pod and namespace labels.
	IdentitiesLocal = "local"
)

// Disabled, given as a listen address, turns that listener off.
const Disabled = "-"

// Options assemble a node agent: everything cmd/sidewall-agent takes as
// flags. The tests, the benchmarks and the demo start the agent through
// Start too, so what they run is what a node runs.
type Options struct {
	// NodeName is this node: only its pods are enforced. Required.
	NodeName string
	// Config reaches the API server. Required.
	Config *rest.Config

	// PinDir is the bpffs directory of the pinned maps and links
	// (bpfext.DefaultPinDir when empty); BPFFSRoot is where bpffs is
	// mounted if PinDir is not on one.
	PinDir, BPFFSRoot string
	// MaxEntries overrides map sizes when the maps are created (tests).
	MaxEntries map[string]uint32
	// EventRate, EventBurst, DenyAggregation and PodPortShare are the
	// datapath's limits (bpfext.Options; zero values: its defaults).
	EventRate, EventBurst int
	DenyAggregation       time.Duration
	PodPortShare          int

	// Cgroups says where kubelet puts the pod cgroups.
	Cgroups cgroups.Config

	// HubbleSocket and HubbleAddress are the unix socket and the TCP
	// address of the Hubble observer API; Disabled turns one off, and
	// the server is not started when both are. Empty means the default
	// (hubble.DefaultUnixSocket, hubble.DefaultTCPAddress).
	HubbleSocket, HubbleAddress string
	// HubbleTLSAddress also serves the Hubble API with TLS (mTLS with
	// HubbleTLSClientCAFiles), with Hubble's Peer service listing this
	// agent, for Hubble Relay; HubbleTLSCertFile and HubbleTLSKeyFile are
	// the server's (for <node>.<cluster>.hubble-grpc.cilium.io). Empty or
	// Disabled: none. HubblePeerAddress is the address the Peer service
	// gives Relay (default: the bound TLS address, which must then be a
	// specific IP).
	HubbleTLSAddress, HubbleTLSCertFile, HubbleTLSKeyFile string
	HubbleTLSClientCAFiles                                []string
	HubblePeerAddress                                     string
	// HubblePeerService ("namespace/name") is the Service selecting every
	// agent's Hubble TLS port: its EndpointSlices are the peers the Peer
	// service lists (this agent alone when empty).
	HubblePeerService string
	// CiliumHubble is the address of the local Cilium agent's Hubble
	// ("unix:///var/run/cilium/hubble.sock"): its flows are re-served with
	// the container named (hubble.Joiner). Empty follows
	// hubble.DefaultCiliumSocket when the identities are Cilium's;
	// Disabled follows nothing.
	CiliumHubble string
	// JoinEntries and JoinTTL bound the join's connection state (the
	// hubble.Default* values when 0).
	JoinEntries int
	JoinTTL     time.Duration
	// MetricsAddress serves /metrics, /healthz and /readyz; empty or
	// Disabled serves nothing (Agent.Handler still works).
	MetricsAddress string

	// IdentitySource is IdentitiesAuto (the default), IdentitiesCilium or
	// IdentitiesLocal.
	IdentitySource string
	// CiliumIPCache is the path of Cilium's pinned ipcache map, which the
	// verdict then reads peer identities from (OpenCiliumIPCache). Empty
	// uses CiliumIPCachePath(CiliumBPFRoot) when it is pinned and
	// the identities are Cilium's; Disabled resolves peers from
	// CiliumEndpoints only. A path given here must hold a usable map.
	CiliumIPCache string
	// CiliumBPFRoot is Cilium's --bpf-root as mounted for this agent, where
	// an empty CiliumIPCache looks (DefaultCiliumBPFRoot when empty).
	CiliumBPFRoot string
	// CRISocket is the container runtime's CRI socket (containerd's is
	// /run/containerd/containerd.sock). When set, a new container is
	// classified from its cgroup event by asking the runtime, instead of
	// waiting for kubelet's pod status; empty waits for the status.
	CRISocket string
	// ClusterName names Cilium's cluster entity and local identities
	// (identity.DefaultClusterName when empty).
	ClusterName string
	// Resync is the period of full reconciles; DefaultResync when 0.
	Resync time.Duration
	// AllowLocalhost is Cilium's allow-localhost option (Config).
	AllowLocalhost string
	// FQDNMinTTL, FQDNMaxPerContainer and PodNetns configure toFQDNs
	// learning (Config).
	FQDNMinTTL          time.Duration
	FQDNMaxPerContainer int
	PodNetns            func(pod *corev1.Pod) (string, error)
	// Version is reported by the Hubble server.
	Version string
	// Logger receives the agent's logs; nil discards them.
	Logger *slog.Logger
}

// Node is a running node agent, as Start assembled it.
type Node struct {
	Agent    *Agent
	Datapath *bpfext.Datapath
	// Hubble is nil when both its listeners are disabled.
	Hubble *hubble.Server
	// CiliumHubble and Joiner re-serve Cilium's flows (nil when not
	// following Cilium's Hubble).
	CiliumHubble *hubble.CiliumSource
	Joiner       *hubble.Joiner
	Metrics      *Metrics
	// MetricsAddr is where /metrics listens (nil when disabled).
	MetricsAddr net.Addr

	cancel context.CancelFunc
	done   chan struct{}
	err    error
	once   sync.Once
}

// Start validates o, loads (or adopts) the pinned datapath, and runs the
// agent, its Hubble server and its metrics endpoint until ctx is done or
// Stop is called. It returns once everything listens; Ready says when the
// first reconcile is done. Close of the datapath keeps the pins:
// enforcement goes on while the agent is away.
func Start(ctx context.Context, o Options) (*Node, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	log := o.Logger
	api.InitEntities(o.ClusterName)
	client, err := kubernetes.NewForConfig(o.Config)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	dyn, err := dynamic.NewForConfig(o.Config)
	if err != nil {
		return nil, fmt.Errorf("dynamic client: %w", err)
	}
	src, err := o.identitySource(client)
	if err != nil {
		return nil, err
	}
	// Fail closed: on a host whose kernel can stop matching sockets to
	// their cgroup v2 cgroups, attaching to the pods' cgroups would
	// enforce nothing.
	if err := cgroups.CheckHostSocketMatching(); err != nil {
		return nil, fmt.Errorf("refusing to start: %w", err)
	}
	resolver, err := cgroups.NewResolver(o.Cgroups)
	if err != nil {
		return nil, fmt.Errorf("find kubepods cgroup: %w", err)
	}
	// An ancestor's exclusive or overriding attachment would make every
	// pod's attachment fail, or switch off that ancestor's program for
	// the pods: say so now, not pod by pod.
	if err := bpfext.CheckAttachable(resolver.Mount(), resolver.Layout().Kubepods); err != nil {
		return nil, fmt.Errorf("refusing to start: %w", err)
	}
	ipc, ipcPath, err := o.ciliumIPCache(src)
	if err != nil {
		return nil, err
	}
	dp, err := bpfext.Load(bpfext.Options{
		PinDir: o.PinDir, BPFFSRoot: o.BPFFSRoot, MaxEntries: o.MaxEntries, CiliumIPCache: ipc,
		EventRate: o.EventRate, EventBurst: o.EventBurst, DenyAggregation: o.DenyAggregation, PodPortShare: o.PodPortShare,
	})
	if ipc != nil {
		ipc.Close() // the datapath holds its own reference
	}
	if err != nil {
		return nil, fmt.Errorf("load datapath: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			dp.Close()
		}
	}()

	var obs *hubble.Server
	var peersOf atomic.Pointer[Agent] // the Peer service's lister, once built
	var ciliumHubble *hubble.CiliumSource
	var joiner *hubble.Joiner
	if o.HubbleSocket != Disabled || o.HubbleAddress != Disabled {
		addr := o.CiliumHubble
		if _, cilium := src.(*identity.CiliumSource); addr == "" && cilium {
			addr = hubble.DefaultCiliumSocket
		}
		var delay time.Duration
		if addr != "" && addr != Disabled {
			if err := hubble.CheckAddress(addr); err != nil {
				return nil, fmt.Errorf("cilium hubble address %q: %w", addr, err)
			}
			delay = hubble.DefaultSortDelay
		}
		hopts := hubble.Options{UnixSocket: o.HubbleSocket, TCPAddress: o.HubbleAddress,
			NodeName: o.NodeName, Version: o.Version, Logger: log.With("component", "hubble"), SortDelay: delay}
		if o.HubbleTLSAddress != "" && o.HubbleTLSAddress != Disabled {
			if o.HubbleTLSCertFile == "" || o.HubbleTLSKeyFile == "" {
				return nil, errors.New("hubble TLS address set without a certificate and key")
			}
			hopts.TLSAddress = o.HubbleTLSAddress
			hopts.TLS, err = hubble.ServerTLS(log.With("component", "hubble-tls"), o.HubbleTLSClientCAFiles, o.HubbleTLSCertFile, o.HubbleTLSKeyFile)
			if err != nil {
				return nil, err
			}
			name, server := hubble.PeerName(o.NodeName, o.ClusterName), hubble.TLSServerName(o.NodeName, o.ClusterName)
			peerAddr := o.HubblePeerAddress
			svcNS, svcName, _ := strings.Cut(o.HubblePeerService, "/")
			if o.HubblePeerService != "" && (svcNS == "" || svcName == "") {
				return nil, fmt.Errorf("hubble peer service %q: want namespace/name", o.HubblePeerService)
			}
			hopts.Peers = func() []hubble.Peer {
				addr := peerAddr
				if addr == "" && obs != nil && obs.TLSAddr() != nil {
					addr = obs.TLSAddr().String()
				}
				self := hubble.Peer{Name: name, Address: addr, TLSServerName: server}
				if a := peersOf.Load(); a != nil {
					return a.hubblePeers(svcNS, svcName, o.ClusterName, self)
				}
				return []hubble.Peer{self}
			}
		}
		obs, err = hubble.New(hopts)
		if err != nil {
			return nil, err
		}
		if delay > 0 {
			joiner = hubble.NewJoiner(nil, o.JoinEntries, o.JoinTTL)
			ciliumHubble = &hubble.CiliumSource{Address: addr, Logger: log.With("component", "cilium-hubble")}
			ciliumHubble.Sink = func(f *flowpb.Flow) { obs.PublishJoined(f, func(f *flowpb.Flow) { joiner.Join(f) }) }
			obs.SetUpstream(ciliumHubble)
		}
		if err := obs.Listen(); err != nil {
			return nil, err
		}
		if a := obs.TLSAddr(); a != nil {
			if o.HubblePeerAddress == "" && a.(*net.TCPAddr).IP.IsUnspecified() {
				obs.Close()
				return nil, fmt.Errorf("hubble TLS address %s is not one Relay can dial: set the peer address (the pod's IP and the port)", a)
			}
			log.Info("serving hubble observer and peer service with TLS, for Hubble Relay", "addr", a, "mTLS", len(o.HubbleTLSClientCAFiles) > 0)
		}
	}

	ctx, cancel := context.WithCancel(ctx)
	defer func() {
		if !ok {
			cancel()
		}
	}()
	rec, err := NewEventRecorder(ctx, client, o.NodeName)
	if err != nil {
		return nil, err
	}
	var rt *cri.Client
	if o.CRISocket != "" {
		rc, err := cri.Dial(ctx, o.CRISocket)
		if err != nil {
			return nil, fmt.Errorf("container runtime: %w", err)
		}
		defer func() {
			if !ok {
				rc.Close()
			}
		}()
		log.Info("classifying new containers through the CRI", "socket", o.CRISocket, "runtime", rc.Runtime)
		rt = rc
	}
	m := NewMetrics(nil)
	a, err := New(Config{
		NodeName: o.NodeName, Client: client, Dynamic: dyn, Identities: src, Datapath: dp,
		Cgroups: resolver, Observer: obs, Joiner: joiner, Metrics: m, Events: rec, Logger: log, Resync: o.Resync,
		AllowLocalhost: o.AllowLocalhost, Runtime: runtimeOf(rt), CiliumIPCachePath: ipcPath,
		FQDNMinTTL: o.FQDNMinTTL, FQDNMaxPerContainer: o.FQDNMaxPerContainer, PodNetns: o.PodNetns,
	})
	if err != nil {
		return nil, err
	}
	peersOf.Store(a)
	n := &Node{Agent: a, Datapath: dp, Hubble: obs, CiliumHubble: ciliumHubble, Joiner: joiner, Metrics: m, cancel: cancel, done: make(chan struct{})}
	if joiner != nil {
		joiner.SetLookup(a)
		m.registerJoin(joiner, ciliumHubble)
	}

	var srv *http.Server
	var ln net.Listener
	if o.MetricsAddress != "" && o.MetricsAddress != Disabled {
		if ln, err = net.Listen("tcp", o.MetricsAddress); err != nil {
			return nil, fmt.Errorf("listen for metrics: %w", err)
		}
		n.MetricsAddr = ln.Addr()
		srv = &http.Server{Handler: a.Handler(), ReadHeaderTimeout: 5 * time.Second}
	}
	ok = true

	errc := make(chan error, 2)
	var servers sync.WaitGroup
	if obs != nil {
		servers.Go(func() {
			if err := obs.Serve(ctx); err != nil && ctx.Err() == nil {
				errc <- fmt.Errorf("serve hubble: %w", err)
			}
		})
		log.Info("serving hubble observer", "addrs", fmt.Sprint(obs.Addrs()))
	}
	if ciliumHubble != nil {
		servers.Go(func() { ciliumHubble.Run(ctx) })
	}
	if srv != nil {
		servers.Go(func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("serve metrics: %w", err)
			}
		})
		go func() { <-ctx.Done(); srv.Close() }()
	}
	agentDone := make(chan error, 1)
	go func() { agentDone <- a.Run(ctx) }()
	go func() {
		var err error
		select {
		case err = <-errc:
			cancel()
			// The agent stops before the datapath handles it uses are closed.
			err = errors.Join(err, <-agentDone)
		case err = <-agentDone:
			cancel()
		}
		servers.Wait()
		dp.Close()
		if rt != nil {
			rt.Close()
		}
		if errors.Is(err, context.Canceled) {
			err = nil
		}
		n.err = err
		close(n.done)
	}()
	return n, nil
}

// Done is closed when the agent has stopped and released the datapath.
func (n *Node) Done() <-chan struct{} { return n.done }

// Wait waits for the agent to stop and returns why it stopped (nil when
// its context ended).
func (n *Node) Wait() error {
	<-n.done
	return n.err
}

// Stop stops the agent and waits for it. The pins stay.
func (n *Node) Stop() error {
	n.once.Do(n.cancel)
	return n.Wait()
}

// WaitReady waits until the first reconcile is done, the agent stops, or
// ctx ends.
func (n *Node) WaitReady(ctx context.Context) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for !n.Agent.Ready() {
		select {
		case <-n.done:
			return fmt.Errorf("agent stopped before its first reconcile: %w", n.err)
		case <-ctx.Done():
			return fmt.Errorf("agent not ready: %w", ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

func (o *Options) defaults() error {
	switch {
	case o.NodeName == "":
		return errors.New("agent options: node name is required")
	case o.Config == nil:
		return errors.New("agent options: API server config is required")
	}
	switch o.IdentitySource {
	case "":
		o.IdentitySource = IdentitiesAuto
	case IdentitiesAuto, IdentitiesCilium, IdentitiesLocal:
	default:
		return fmt.Errorf("agent options: identity source %q: must be %s, %s or %s", o.IdentitySource, IdentitiesAuto, IdentitiesCilium, IdentitiesLocal)
	}
	if d := o.Cgroups.Driver; d != "" && d != cgroups.Systemd && d != cgroups.Cgroupfs {
		return fmt.Errorf("agent options: cgroup driver %q: must be %s or %s", d, cgroups.Systemd, cgroups.Cgroupfs)
	}
	if o.PinDir == "" {
		o.PinDir = bpfext.DefaultPinDir
	}
	if o.BPFFSRoot == "" {
		o.BPFFSRoot = bpfext.DefaultBPFFSRoot
	}
	if o.HubbleSocket == "" {
		o.HubbleSocket = hubble.DefaultUnixSocket
	}
	if o.HubbleAddress == "" {
		o.HubbleAddress = hubble.DefaultTCPAddress
	}
	if o.ClusterName == "" {
		o.ClusterName = identity.DefaultClusterName
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// ciliumIPCache opens Cilium's ipcache for the verdict, or returns nil
// when peers are to be resolved from sidewall's own maps alone.
func (o *Options) ciliumIPCache(src identity.Source) (*ebpf.Map, string, error) {
	if o.CiliumIPCache == Disabled {
		o.Logger.Info("peer identities: from CiliumEndpoints (Cilium's ipcache disabled)")
		return nil, "", nil
	}
	explicit := o.CiliumIPCache != ""
	if _, cilium := src.(*identity.CiliumSource); !cilium {
		if explicit {
			return nil, "", fmt.Errorf("agent options: Cilium ipcache %s: needs Cilium's identities (identity source %s)", o.CiliumIPCache, o.IdentitySource)
		}
		return nil, "", nil
	}
	path := o.CiliumIPCache
	if !explicit {
		path = CiliumIPCachePath(o.CiliumBPFRoot)
	}
	m, err := OpenCiliumIPCache(path)
	switch {
	case err == nil:
		o.Logger.Info("peer identities: from Cilium's ipcache, CiliumEndpoints for what it does not hold", "path", path, "maxEntries", m.MaxEntries())
		return m, path, nil
	case explicit:
		return nil, "", fmt.Errorf("refusing to start: %w", err)
	case errors.Is(err, ErrNoCiliumIPCache):
		o.Logger.Info("peer identities: from CiliumEndpoints (no Cilium ipcache pinned)", "path", path)
		return nil, "", nil
	default:
		o.Logger.Warn("peer identities: from CiliumEndpoints, not Cilium's ipcache", "path", path, "err", err)
		return nil, "", nil
	}
}

func (o *Options) identitySource(client kubernetes.Interface) (identity.Source, error) {
	useCilium := o.IdentitySource == IdentitiesCilium
	if o.IdentitySource == IdentitiesAuto {
		ok, err := identity.CiliumInstalled(client.Discovery())
		if err != nil {
			return nil, fmt.Errorf("detect cilium: %w", err)
		}
		useCilium = ok
	}
	log := o.Logger.With("component", "identity")
	if useCilium {
		cc, err := versioned.NewForConfig(o.Config)
		if err != nil {
			return nil, fmt.Errorf("cilium client: %w", err)
		}
		o.Logger.Info("identity source: cilium")
		src := identity.NewCiliumSource(cc, log)
		src.LocalNode, src.Kube = o.NodeName, client
		return src, nil
	}
	o.Logger.Info("identity source: local")
	src := identity.NewPodSource(client, nil, o.ClusterName, log)
	src.LocalNode = o.NodeName
	return src, nil
}

// runtimeOf keeps a nil client a nil interface.
func runtimeOf(c *cri.Client) ContainerRuntime {
	if c == nil {
		return nil
	}
	return c
}
