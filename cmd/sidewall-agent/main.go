// Command sidewall-agent is sidewall's node agent (a DaemonSet in
// production): it watches the pods of its node, the ContainerNetworkPolicies
// and the peers' identities, finds each container's cgroup, attaches the
// datapath to the pod cgroups of selected pods, keeps the pinned BPF maps
// equal to what the policies say, and serves the verdicts as Hubble flows
// (`hubble observe --server unix:///var/run/sidewall/hubble.sock`) and as
// Prometheus metrics.
//
// Everything it programs is pinned under --pin-dir, so enforcement outlives
// the process; a restarted agent adopts the pins and reconciles them.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/cilium/cilium/pkg/option"

	"github.com/sidewall/sidewall/agent"
	"github.com/sidewall/sidewall/agent/cgroups"
	"github.com/sidewall/sidewall/agent/hubble"
	"github.com/sidewall/sidewall/agent/identity"
	"github.com/sidewall/sidewall/bpfext"
)

var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stderr)
	stop()
	os.Exit(code)
}

// run parses args, starts the agent and runs it until ctx ends; it returns
// the exit status.
func run(ctx context.Context, args []string, stderr io.Writer) int {
	flag := flag.NewFlagSet("sidewall-agent", flag.ContinueOnError)
	flag.SetOutput(stderr)
	var (
		nodeName     = flag.String("node-name", os.Getenv("NODE_NAME"), "name of this node (default $NODE_NAME)")
		kubeconfig   = flag.String("kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig file (default: in-cluster config)")
		pinDir       = flag.String("pin-dir", bpfext.DefaultPinDir, "bpffs directory of the pinned maps and links")
		bpffsRoot    = flag.String("bpffs-root", bpfext.DefaultBPFFSRoot, "where to mount bpffs if --pin-dir is not on one")
		cgroupMount  = flag.String("cgroup-mount", "", "cgroup2 mount point (default: found in /proc/self/mounts)")
		cgroupParent = flag.String("cgroup-root", "", "kubelet's --cgroup-root, relative to the cgroup2 mount (default: the root)")
		kubepods     = flag.String("kubepods-root", "", "the kubepods cgroup relative to the mount (default: probe kubepods.slice, kubepods)")
		driver       = flag.String("cgroup-driver", "", "kubelet's cgroup driver: systemd or cgroupfs (default: from the kubepods name)")
		hubbleSock   = flag.String("hubble-socket", hubble.DefaultUnixSocket, `unix socket of the Hubble observer API ("-" disables it)`)
		hubbleAddr   = flag.String("hubble-listen-address", hubble.DefaultTCPAddress, `TCP address of the Hubble observer API ("-" disables it)`)
		hubbleTLS    = flag.String("hubble-tls-listen-address", "-", `TCP address of the Hubble observer and peer API with TLS, for Hubble Relay, as Cilium's --hubble-listen-address (":4244"; "-" disables it)`)
		tlsCert      = flag.String("hubble-tls-cert-file", "", "the Hubble server's certificate (for <node>.<cluster>.hubble-grpc.cilium.io), as Cilium's")
		tlsKey       = flag.String("hubble-tls-key-file", "", "its private key")
		tlsCAs       = flag.String("hubble-tls-client-ca-files", "", "comma-separated CAs of the clients (Relay) to require certificates of (mTLS); empty: TLS without client certificates")
		peerAddr     = flag.String("hubble-peer-address", "", "host:port Hubble Relay is told to dial for this agent (default: the TLS listen address; needed when that is a wildcard, e.g. $(POD_IP):4244)")
		peerService  = flag.String("hubble-peer-service", "", "namespace/name of the Service selecting every agent's Hubble TLS port: the Peer service lists its endpoints, so one Hubble Relay aggregates every agent (empty: this agent alone)")
		ciliumHubble = flag.String("cilium-hubble-address", "", `the local Cilium agent's Hubble, whose flows are re-served with the container named ("unix:///var/run/cilium/hubble.sock" when empty and the identities are Cilium's; "-" follows none)`)
		joinEntries  = flag.Int("hubble-join-entries", hubble.DefaultJoinEntries, "connections the Hubble join remembers (an LRU; about 400 bytes each, 24 MiB at the default)")
		joinTTL      = flag.Duration("hubble-join-ttl", hubble.DefaultJoinTTL, "how long a connection learned from a sidewall event names Cilium's flows of it")
		httpAddr     = flag.String("metrics-bind-address", "127.0.0.1:9963", `address of /metrics, /healthz and /readyz ("0" disables it)`)
		idSource     = flag.String("identity-source", "auto", "peer identities: cilium (CiliumEndpoints), local (allocated from pod labels) or auto (cilium when its CRDs are served)")
		ipcache      = flag.String("cilium-ipcache", "", `path of Cilium's pinned ipcache map, read-only, for peer identities (default: tc/globals/cilium_ipcache_v2 under --cilium-bpf-root when it is pinned and the identities are Cilium's; "-" resolves peers from CiliumEndpoints only)`)
		ciliumRoot   = flag.String("cilium-bpf-root", agent.DefaultCiliumBPFRoot, "Cilium's --bpf-root as mounted for this agent (where its ipcache is found)")
		criSocket    = flag.String("cri-socket", "", "the container runtime's CRI socket (containerd: /run/containerd/containerd.sock): classify a new container from its cgroup event through the runtime, not the pod status (default: wait for the status)")
		clusterName  = flag.String("cluster-name", identity.DefaultClusterName, "Cilium cluster name (for the cluster entity and local identities)")
		resync       = flag.Duration("resync", agent.DefaultResync, "period of full reconciles")
		allowLocal   = flag.String("allow-localhost", option.AllowLocalhostAuto, "as Cilium's: when the local host may reach a container restricted on ingress (kubelet probes): auto (always in Kubernetes), always, or policy (only by a rule)")
		fqdnMinTTL   = flag.Duration("tofqdns-min-ttl", agent.DefaultFQDNMinTTL, "as Cilium's --tofqdns-min-ttl: the least time a DNS answer lets a container with toFQDNs rules reach its addresses (0: the answer's own TTL)")
		fqdnMax      = flag.Int("fqdn-max-ips-per-container", agent.DefaultFQDNMaxPerContainer, "how many addresses one container may have learned from DNS answers at once; beyond, new names stay unreachable (fail closed) and the pod gets an Event and the condition "+agent.PodConditionFQDN+"=False")
		logLevel     = flag.String("log-level", "info", "debug, info, warn or error")
		eventRate    = flag.Int("event-rate", bpfext.DefaultEventRate, "events (flows) one container may send per second on each CPU; the rest are counted, not sent (negative: no limit)")
		eventBurst   = flag.Int("event-burst", bpfext.DefaultEventBurst, "events a quiet container may send at once")
		denyAgg      = flag.Duration("deny-aggregation", bpfext.DefaultDenyAggregation, "repeated denies of one flow are reported once per interval, as Cilium's monitor aggregation (negative: every deny)")
		portShare    = flag.Int("pod-port-share", bpfext.DefaultPodPortShare, "bound ports one pod may hold in the node's port table; a restricted container gets no more (negative: no limit)")
	)
	if err := flag.Parse(args); err != nil {
		return 2
	}

	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(stderr, "invalid --log-level %q: %v\n", *logLevel, err)
		return 2
	}
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: level}))
	if *nodeName == "" {
		log.Error("invalid flags: --node-name (or $NODE_NAME) is required")
		return 2
	}
	switch *idSource {
	case agent.IdentitiesAuto, agent.IdentitiesCilium, agent.IdentitiesLocal:
	default:
		log.Error("invalid flags: --identity-source must be auto, cilium or local", "value", *idSource)
		return 2
	}
	if *driver != "" && *driver != string(cgroups.Systemd) && *driver != string(cgroups.Cgroupfs) {
		log.Error("invalid flags: --cgroup-driver must be systemd or cgroupfs", "value", *driver)
		return 2
	}
	if *ciliumHubble != "" && *ciliumHubble != agent.Disabled {
		if err := hubble.CheckAddress(*ciliumHubble); err != nil {
			log.Error("invalid flags: --cilium-hubble-address: "+err.Error(), "value", *ciliumHubble)
			return 2
		}
	}
	if *hubbleTLS != agent.Disabled && *hubbleTLS != "" && (*tlsCert == "" || *tlsKey == "") {
		log.Error("invalid flags: --hubble-tls-listen-address needs --hubble-tls-cert-file and --hubble-tls-key-file", "value", *hubbleTLS)
		return 2
	}
	if *joinEntries <= 0 || *joinTTL <= 0 {
		log.Error("invalid flags: --hubble-join-entries and --hubble-join-ttl must be positive", "entries", *joinEntries, "ttl", *joinTTL)
		return 2
	}
	var cfg *rest.Config
	var err error
	if *kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", *kubeconfig)
	} else {
		cfg, err = rest.InClusterConfig()
	}
	if err != nil {
		log.Error("load kubeconfig", "err", err)
		return 1
	}
	metricsAddr := *httpAddr
	if metricsAddr == "0" {
		metricsAddr = agent.Disabled
	}

	n, err := agent.Start(ctx, agent.Options{
		NodeName: *nodeName, Config: cfg, PinDir: *pinDir, BPFFSRoot: *bpffsRoot,
		Cgroups:      cgroups.Config{Mount: *cgroupMount, Parent: *cgroupParent, Root: *kubepods, Driver: cgroups.Driver(*driver)},
		HubbleSocket: *hubbleSock, HubbleAddress: *hubbleAddr, MetricsAddress: metricsAddr,
		IdentitySource: *idSource, ClusterName: *clusterName, Resync: *resync, Version: version, Logger: log,
		AllowLocalhost: *allowLocal, FQDNMinTTL: *fqdnMinTTL, FQDNMaxPerContainer: *fqdnMax, CiliumIPCache: *ipcache, CiliumBPFRoot: *ciliumRoot, CRISocket: *criSocket,
		EventRate: *eventRate, EventBurst: *eventBurst, DenyAggregation: *denyAgg, PodPortShare: *portShare,
		CiliumHubble: *ciliumHubble, JoinEntries: *joinEntries, JoinTTL: *joinTTL,
		HubbleTLSAddress: *hubbleTLS, HubbleTLSCertFile: *tlsCert, HubbleTLSKeyFile: *tlsKey,
		HubbleTLSClientCAFiles: splitList(*tlsCAs), HubblePeerAddress: *peerAddr,
		HubblePeerService: *peerService,
	})
	if err == nil {
		err = n.Wait()
	}
	if err != nil {
		log.Error("agent failed", "err", err)
		return 1
	}
	return 0
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, x := range strings.Split(s, ",") {
		if x = strings.TrimSpace(x); x != "" {
			out = append(out, x)
		}
	}
	return out
}
