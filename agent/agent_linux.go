package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/workqueue"

	"github.com/cilium/cilium/pkg/option"

	"github.com/sidewall/sidewall/agent/cgroups"
	"github.com/sidewall/sidewall/agent/cri"
	"github.com/sidewall/sidewall/agent/hubble"
	"github.com/sidewall/sidewall/agent/identity"
	"github.com/sidewall/sidewall/bpfext"
	"github.com/sidewall/sidewall/crds/v1alpha1"
	"github.com/sidewall/sidewall/translator"
)

// DefaultResync is how often the agent reconciles without a trigger, to
// repair anything an event did not cover.
const DefaultResync = 30 * time.Second

// Config configures an Agent.
type Config struct {
	// NodeName is this node: only its pods are enforced.
	NodeName string
	Client   kubernetes.Interface
	// Dynamic reads ContainerNetworkPolicies.
	Dynamic dynamic.Interface
	// Identities supplies peer identities; the agent runs it.
	Identities identity.Source
	// Datapath is the loaded (adopted) datapath.
	Datapath *bpfext.Datapath
	// Cgroups finds pod and container cgroups.
	Cgroups *cgroups.Resolver
	// Observer, if set, receives a flow per datapath event.
	Observer *hubble.Server
	// Joiner, if set, learns each connection from the datapath events, to
	// name the containers of Cilium's flows (hubble.Joiner); the agent is
	// its JoinLookup.
	Joiner *hubble.Joiner
	// Metrics, if set, is where the agent's metrics are registered.
	Metrics *Metrics
	// Events, if set, records Events on pods when they start and stop
	// failing closed (NewEventRecorder); nil records none.
	Events events.EventRecorder
	Logger *slog.Logger
	// Resync is the period of full reconciles; DefaultResync when 0.
	Resync time.Duration
	// AllowLocalhost is Cilium's allow-localhost option: auto (the
	// default, always in Kubernetes, as Cilium), always, or policy (the
	// host needs a rule to reach a container restricted on ingress).
	AllowLocalhost string
	// Runtime, if set, is asked for a new container's pod and name when
	// its cgroup appears, so the container is classified without waiting
	// for kubelet to write its id into the pod status (cri.Client).
	Runtime ContainerRuntime
	// PodNetns, if set, gives the path of a pod's network namespace, where
	// the DNS proxy of a pod with toFQDNs rules listens; by default the
	// namespace of a process in the pod's cgroup.
	PodNetns func(pod *corev1.Pod) (string, error)
	// FQDNMinTTL is the least time a DNS answer counts for (Cilium's
	// tofqdns-min-ttl; DefaultFQDNMinTTL when 0).
	FQDNMinTTL time.Duration
	// FQDNMaxPerContainer bounds the addresses one container may have
	// learned at once (DefaultFQDNMaxPerContainer when 0, no bound but the
	// map's when negative).
	FQDNMaxPerContainer int
	// CiliumIPCachePath is the pin of the Cilium ipcache the datapath was
	// loaded with (empty: none). Cilium re-creates the map when its agent
	// restarts; the agent then loads the verdict with the new one.
	CiliumIPCachePath string
}

// ContainerRuntime tells which pod and container a container id is: the
// CRI (cri.Client).
type ContainerRuntime interface {
	Container(ctx context.Context, id string) (cri.Container, error)
}

// runtimeHint is a container the runtime named before the pod status did.
type runtimeHint struct {
	name string
	path string
}

// Agent is the node agent loop.
type Agent struct {
	cfg   Config
	log   *slog.Logger
	queue workqueue.TypedRateLimitingInterface[string]

	pods     corelisters.PodLister
	policies cache.Store
	services corelisters.ServiceLister
	slices   discoverylisters.EndpointSliceLister

	ids     *IDs
	applied map[uint32][]bpfext.Rule // rules written per policy id, nil before the first reconcile
	tables  tables
	// ruleSets caches each policy's translation by UID (reconcile only).
	ruleSets map[types.UID]cachedRuleSet
	state    atomic.Pointer[State]
	join     joinIndex
	ready    atomic.Bool
	watcher  *cgroups.Watcher
	watched  map[types.UID]bool
	// attachFailed holds the pod cgroups whose last Attach failed, and
	// attachReported those already reported (reconcile only).
	attachFailed   map[uint64]error
	attachReported map[uint64]bool
	// failClosed holds the pods failing closed after the last reconcile,
	// with the reason, so a pod is logged when it starts and stops.
	failClosed map[types.UID]string

	mu        sync.Mutex
	firstSeen map[uint64]time.Time // container cgroup id -> when its cgroup appeared
	// classified holds the container cgroups whose time to classify was
	// measured, with their pod: a container declassified and classified
	// again (a policy deleted and created) is not measured twice.
	classified map[uint64]types.UID
	// hints holds, by pod and container cgroup id, the containers the
	// runtime named from a cgroup event (Config.Runtime) that the pod
	// status does not name yet.
	hints map[types.UID]map[uint64]runtimeHint
	// classifyTimes keeps the last unclassified times measured, for the
	// benchmarks (ClassifyTimes).
	classifyTimes []time.Duration
	// ipcacheIno is the inode of the Cilium ipcache pin the verdict reads
	// (reconcile only; ipcacheSeen is read by watchSignals).
	ipcacheIno  uint64
	ipcacheSeen atomic.Uint64
	// dns holds the pods' DNS proxies and what they learned (dns_linux.go).
	dns dnsState
}

// GVR of ContainerNetworkPolicies.
var policyResource = v1alpha1.GroupVersion.WithResource("containernetworkpolicies")

const queueKey = "node"

// New builds an agent; Run starts it.
func New(cfg Config) (*Agent, error) {
	switch {
	case cfg.NodeName == "":
		return nil, errors.New("agent config: node name is required")
	case cfg.Client == nil || cfg.Dynamic == nil:
		return nil, errors.New("agent config: kubernetes clients are required")
	case cfg.Identities == nil:
		return nil, errors.New("agent config: identity source is required")
	case cfg.Datapath == nil:
		return nil, errors.New("agent config: datapath is required")
	case cfg.Cgroups == nil:
		return nil, errors.New("agent config: cgroup resolver is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Resync == 0 {
		cfg.Resync = DefaultResync
	}
	switch cfg.AllowLocalhost {
	case "":
		cfg.AllowLocalhost = option.AllowLocalhostAuto
	case option.AllowLocalhostAuto, option.AllowLocalhostAlways, option.AllowLocalhostPolicy:
	default:
		return nil, fmt.Errorf("agent config: allow-localhost %q: must be %s, %s or %s", cfg.AllowLocalhost,
			option.AllowLocalhostAuto, option.AllowLocalhostAlways, option.AllowLocalhostPolicy)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics(nil)
	}
	if err := cfg.Metrics.RegisterDatapath(cfg.Datapath); err != nil {
		return nil, fmt.Errorf("register datapath metrics: %w", err)
	}
	a := &Agent{
		cfg: cfg,
		log: cfg.Logger,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](50*time.Millisecond, 10*time.Second),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "sidewall-agent"}),
		ids:            NewIDs(),
		ruleSets:       map[types.UID]cachedRuleSet{},
		watched:        map[types.UID]bool{},
		firstSeen:      map[uint64]time.Time{},
		classified:     map[uint64]types.UID{},
		hints:          map[types.UID]map[uint64]runtimeHint{},
		attachFailed:   map[uint64]error{},
		attachReported: map[uint64]bool{},
	}
	if err := cfg.Metrics.registry.Register(&budgetCollector{a: a, desc: prometheus.NewDesc("sidewall_events_rate_limited",
		"Events a container's budget did not admit (recent: a quiet container's budget may be evicted), by container.",
		[]string{"namespace", "pod", "container"}, nil)}); err != nil {
		return nil, fmt.Errorf("register event budget metrics: %w", err)
	}
	a.tables = a.newTables()
	a.dnsInit()
	return a, nil
}

// Ready reports whether the agent has completed a reconcile.
func (a *Agent) Ready() bool { return a.ready.Load() }

// State returns the last applied state (nil before the first reconcile).
func (a *Agent) State() *State { return a.state.Load() }

// Trigger asks for a reconcile.
func (a *Agent) Trigger() { a.queue.Add(queueKey) }

// Run runs the agent until ctx is done.
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer a.queue.ShutDown()
	defer a.stopDNS()

	if err := a.adopt(); err != nil {
		return err
	}

	w, err := cgroups.NewWatcher(a.cfg.Cgroups.Layout().Driver)
	if err != nil {
		return fmt.Errorf("watch cgroups: %w", err)
	}
	a.watcher = w
	defer w.Close()

	podFactory := informers.NewSharedInformerFactoryWithOptions(a.cfg.Client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = "spec.nodeName=" + a.cfg.NodeName }))
	podInf := podFactory.Core().V1().Pods()
	a.pods = podInf.Lister()
	dynFactory := dynamicinformer.NewDynamicSharedInformerFactory(a.cfg.Dynamic, 0)
	polInf := dynFactory.ForResource(policyResource).Informer()
	a.policies = polInf.GetStore()
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { a.Trigger() },
		UpdateFunc: func(any, any) { a.Trigger() },
		DeleteFunc: func(any) { a.Trigger() },
	}
	if _, err := podInf.Informer().AddEventHandler(handler); err != nil {
		return fmt.Errorf("watch pods: %w", err)
	}
	if _, err := polInf.AddEventHandler(handler); err != nil {
		return fmt.Errorf("watch containernetworkpolicies: %w", err)
	}
	// Services of every namespace: a container may connect to any.
	svcFactory := informers.NewSharedInformerFactory(a.cfg.Client, 0)
	svcInf := svcFactory.Core().V1().Services()
	sliceInf := svcFactory.Discovery().V1().EndpointSlices()
	a.services, a.slices = svcInf.Lister(), sliceInf.Lister()
	if _, err := svcInf.Informer().AddEventHandler(handler); err != nil {
		return fmt.Errorf("watch services: %w", err)
	}
	if _, err := sliceInf.Informer().AddEventHandler(handler); err != nil {
		return fmt.Errorf("watch endpointslices: %w", err)
	}

	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	idErr := make(chan error, 1)
	wg.Go(func() { idErr <- a.cfg.Identities.Run(ctx) })
	podFactory.Start(ctx.Done())
	dynFactory.Start(ctx.Done())
	svcFactory.Start(ctx.Done())
	defer podFactory.Shutdown()
	defer dynFactory.Shutdown()
	defer svcFactory.Shutdown()

	if !cache.WaitForCacheSync(ctx.Done(), podInf.Informer().HasSynced, polInf.HasSynced,
		svcInf.Informer().HasSynced, sliceInf.Informer().HasSynced) {
		return ctx.Err()
	}
	select {
	case <-a.cfg.Identities.Synced():
	case err := <-idErr:
		return fmt.Errorf("identity source: %w", err)
	case <-ctx.Done():
		return ctx.Err()
	}
	a.log.Info("caches synced", "node", a.cfg.NodeName)

	wg.Go(func() { a.watchSignals(ctx) })
	if a.cfg.Observer != nil || a.cfg.Metrics != nil {
		rd, err := a.cfg.Datapath.NewEventReader()
		if err != nil {
			return fmt.Errorf("open event reader: %w", err)
		}
		wg.Go(func() { a.readEvents(rd) })
		go func() { <-ctx.Done(); rd.Close() }()
	}
	wg.Go(func() {
		t := time.NewTicker(a.cfg.Resync)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				a.Trigger()
			}
		}
	})

	a.Trigger()
	go func() { <-ctx.Done(); a.queue.ShutDown() }()
	for a.processNext(ctx) {
	}
	return nil
}

func (a *Agent) processNext(ctx context.Context) bool {
	key, quit := a.queue.Get()
	if quit {
		return false
	}
	defer a.queue.Done(key)
	if err := a.reconcile(ctx); err != nil {
		a.cfg.Metrics.reconcileErrors.Inc()
		a.log.Error("reconcile failed", "err", err)
		a.queue.AddRateLimited(key)
		return true
	}
	a.queue.Forget(key)
	return true
}

func (a *Agent) watchSignals(ctx context.Context) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			if p := a.cfg.CiliumIPCachePath; p != "" {
				if ino := pinInode(p); ino != 0 && ino != a.ipcacheSeen.Load() {
					a.Trigger()
				}
			}
		case <-a.cfg.Identities.Changed():
			a.Trigger()
		case ev, ok := <-a.watcher.Events():
			if !ok {
				return
			}
			if ev.Op == cgroups.Created && ev.CgroupID != 0 {
				a.mu.Lock()
				a.firstSeen[ev.CgroupID] = time.Now()
				a.mu.Unlock()
				a.askRuntime(ctx, ev)
			}
			if ev.Op == cgroups.Removed {
				a.mu.Lock()
				delete(a.hints[ev.PodUID], ev.CgroupID)
				a.mu.Unlock()
			}
			a.log.Debug("container cgroup event", "op", ev.Op, "pod", ev.PodUID, "path", ev.Path)
			a.Trigger()
		case err, ok := <-a.watcher.Errors():
			if !ok {
				return
			}
			a.log.Warn("cgroup watcher", "err", err)
			a.Trigger()
		}
	}
}

// followCiliumIPCache loads the verdict with Cilium's ipcache again when
// its pin is a new map (Cilium re-creates it when its agent restarts): the
// old map is no longer written, so new peers would not be found in it.
func (a *Agent) followCiliumIPCache() {
	p := a.cfg.CiliumIPCachePath
	if p == "" {
		return
	}
	ino := pinInode(p)
	if a.ipcacheIno == 0 {
		a.ipcacheIno = ino // the map Start loaded
		a.ipcacheSeen.Store(ino)
		return
	}
	if ino == 0 || ino == a.ipcacheIno {
		return
	}
	m, err := OpenCiliumIPCache(p)
	if err == nil {
		err = a.cfg.Datapath.SetCiliumIPCache(m)
		m.Close()
	}
	if err != nil {
		a.log.Error("Cilium re-created its ipcache and the verdict cannot read the new one; it reads the old map, which Cilium no longer writes", "path", p, "err", err)
		a.ipcacheSeen.Store(ino) // reported once per new map
		return
	}
	a.ipcacheIno = ino
	a.ipcacheSeen.Store(ino)
	a.log.Info("Cilium re-created its ipcache: the verdict reads the new map", "path", p)
}

// pinInode is the inode of a bpffs pin, 0 if there is none.
func pinInode(path string) uint64 {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0
	}
	return st.Ino
}

// askRuntime names the container of a new cgroup through the runtime,
// for the reconcile this event triggers. A container the runtime does not
// know (a sandbox's cgroup) or names for another pod is left to the pod
// status, as without a runtime.
func (a *Agent) askRuntime(ctx context.Context, ev cgroups.Event) {
	if a.cfg.Runtime == nil || ev.Container.ID == "" {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	c, err := a.cfg.Runtime.Container(ctx, ev.Container.ID)
	switch {
	case errors.Is(err, cri.ErrNotFound):
		a.log.Debug("runtime does not know the container (a sandbox?)", "pod", ev.PodUID, "container", ev.Container.ID)
		return
	case err != nil:
		a.cfg.Metrics.runtimeErrors.Inc()
		a.log.Warn("ask the runtime for a new container; it waits for the pod status", "pod", ev.PodUID, "container", ev.Container.ID, "err", err)
		return
	case c.PodUID != ev.PodUID:
		a.log.Warn("the runtime names a container for another pod than its cgroup's; ignored",
			"cgroupPod", ev.PodUID, "runtimePod", c.PodUID, "container", ev.Container.ID)
		return
	}
	a.mu.Lock()
	if a.hints[ev.PodUID] == nil {
		a.hints[ev.PodUID] = map[uint64]runtimeHint{}
	}
	a.hints[ev.PodUID][ev.CgroupID] = runtimeHint{name: c.Name, path: ev.Path}
	a.mu.Unlock()
}

// runtimeContainers adds to containers (name -> cgroup id, from the pod
// status) the containers of pod the runtime named, whose cgroups still
// exist and whose names the spec has; a newer instance wins over the
// status. A hint the status now names is dropped: it is needed no more.
func (a *Agent) runtimeContainers(pod *corev1.Pod, containers map[string]uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	hints := a.hints[pod.UID]
	if len(hints) == 0 {
		return
	}
	inStatus := make(map[uint64]bool, len(containers))
	for _, cg := range containers {
		inStatus[cg] = true
	}
	for cg, h := range hints {
		if inStatus[cg] {
			delete(hints, cg)
			continue
		}
		if id, err := cgroups.ID(h.path); err != nil || id != cg {
			delete(hints, cg)
			continue
		}
		for _, c := range translator.PodContainers(pod) {
			if c.Name == h.name {
				containers[h.name] = cg
			}
		}
	}
}

// ClassifyTimes returns the unclassified times measured most recently
// (up to 4096), oldest first: from a container's cgroup appearing to the
// datapath holding its classification.
func (a *Agent) ClassifyTimes() []time.Duration {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.classifyTimes)
}

// Handler serves /metrics, /healthz (the process is up) and /readyz (a
// reconcile has completed: the datapath holds the API's state).
func (a *Agent) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", a.cfg.Metrics.Handler())
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !a.Ready() {
			http.Error(w, "not reconciled yet", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n"))
	})
	return mux
}
