package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/workqueue"

	"github.com/sidewall/sidewall/bpfext"
	"github.com/sidewall/sidewall/bpfext/cgroups"
	"github.com/sidewall/sidewall/bpfext/identity"
	"github.com/sidewall/sidewall/bpfext/observer"
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
	Observer *observer.Server
	// Metrics, if set, is where the agent's metrics are registered.
	Metrics *Metrics
	// Events, if set, records Events on pods when they start and stop
	// failing closed (NewEventRecorder); nil records none.
	Events events.EventRecorder
	Logger *slog.Logger
	// Resync is the period of full reconciles; DefaultResync when 0.
	Resync time.Duration
}

// Agent is the node agent loop.
type Agent struct {
	cfg   Config
	log   *slog.Logger
	queue workqueue.TypedRateLimitingInterface[string]

	pods     corelisters.PodLister
	policies cache.Store

	ids     *IDs
	applied map[uint32][]bpfext.Rule // rules written per policy id, nil before the first reconcile
	// ruleSets caches each policy's translation by UID (reconcile only).
	ruleSets map[types.UID]cachedRuleSet
	state    atomic.Pointer[State]
	ready    atomic.Bool
	watcher  *cgroups.Watcher
	watched  map[types.UID]bool
	// failClosed holds the pods failing closed after the last reconcile,
	// with the reason, so a pod is logged when it starts and stops.
	failClosed map[types.UID]string

	mu        sync.Mutex
	firstSeen map[uint64]time.Time // container cgroup id -> when its cgroup appeared
	// classified holds the container cgroups whose time to classify was
	// measured, with their pod: a container declassified and classified
	// again (a policy deleted and created) is not measured twice.
	classified map[uint64]types.UID
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
		ids:        NewIDs(),
		ruleSets:   map[types.UID]cachedRuleSet{},
		watched:    map[types.UID]bool{},
		firstSeen:  map[uint64]time.Time{},
		classified: map[uint64]types.UID{},
	}
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

	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	idErr := make(chan error, 1)
	wg.Go(func() { idErr <- a.cfg.Identities.Run(ctx) })
	podFactory.Start(ctx.Done())
	dynFactory.Start(ctx.Done())
	defer podFactory.Shutdown()
	defer dynFactory.Shutdown()

	if !cache.WaitForCacheSync(ctx.Done(), podInf.Informer().HasSynced, polInf.HasSynced) {
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
	for {
		select {
		case <-ctx.Done():
			return
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

// adopt seeds the number allocator from the pinned maps, so the first
// reconcile after a restart rewrites what is there without giving a number
// in use another meaning.
func (a *Agent) adopt() error {
	dp := a.cfg.Datapath
	pods, err := dp.Pods()
	if err != nil {
		return fmt.Errorf("adopt pods: %w", err)
	}
	policies, err := dp.PolicyIDs()
	if err != nil {
		return fmt.Errorf("adopt policies: %w", err)
	}
	cs, err := dp.Containers()
	if err != nil {
		return fmt.Errorf("adopt containers: %w", err)
	}
	idents, err := dp.Identities()
	if err != nil {
		return fmt.Errorf("adopt identities: %w", err)
	}
	var podIDs []uint32
	for _, p := range pods {
		podIDs = append(podIDs, p.ID)
	}
	for _, c := range cs {
		podIDs = append(podIDs, c.PodID)
		policies = append(policies, c.PolicyID)
	}
	cidrs := map[netip.Prefix]uint32{}
	for _, id := range idents {
		cidrs[id.Prefix] = id.Identity
	}
	a.ids.Seed(podIDs, policies, cidrs)
	a.ids.Adopt(cs)
	slices.Sort(policies)
	a.log.Info("adopted pinned datapath", "pin_dir", dp.PinDir(), "containers", len(cs), "pods", len(pods), "policies", len(slices.Compact(policies)))
	return nil
}

// cachedRuleSet is a policy's rule set (or why it has none) for one
// resourceVersion of the policy.
type cachedRuleSet struct {
	resourceVersion string
	rs              *translator.RuleSet
	err             error
}

// ruleSet translates a policy, or returns the translation of the same
// resourceVersion made by an earlier reconcile: converting and translating
// every policy on every reconcile cost more than compiling a node's pods.
// Compile only reads rule sets, so sharing them between reconciles is safe.
func (a *Agent) ruleSet(u *unstructured.Unstructured) (*translator.RuleSet, error) {
	if c, ok := a.ruleSets[u.GetUID()]; ok && c.resourceVersion == u.GetResourceVersion() {
		return c.rs, c.err
	}
	var p v1alpha1.ContainerNetworkPolicy
	var rs *translator.RuleSet
	err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &p)
	if err == nil {
		rs, err = translator.ToRuleSet(&p)
	}
	a.ruleSets[u.GetUID()] = cachedRuleSet{resourceVersion: u.GetResourceVersion(), rs: rs, err: err}
	return rs, err
}

// Reconcile runs one reconcile now (for tests and tools; the loop calls it
// on every change).
func (a *Agent) reconcile(ctx context.Context) error {
	start := time.Now()
	pods, err := a.pods.List(labels.Everything())
	if err != nil {
		return fmt.Errorf("list pods: %w", err)
	}
	var sets []*translator.RuleSet
	live := map[types.UID]bool{}
	for _, obj := range a.policies.List() {
		u, ok := obj.(*unstructured.Unstructured)
		if !ok {
			continue
		}
		live[u.GetUID()] = true
		rs, err := a.ruleSet(u)
		if err != nil {
			a.log.Warn("skip policy", "policy", u.GetNamespace()+"/"+u.GetName(), "err", err)
			a.cfg.Metrics.policyErrors.Inc()
			continue
		}
		sets = append(sets, rs)
	}
	for uid := range a.ruleSets {
		if !live[uid] {
			delete(a.ruleSets, uid)
		}
	}

	in := Input{RuleSets: sets, Identities: a.cfg.Identities.Snapshot()}
	var notReady int
	for _, pod := range pods {
		if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
			continue
		}
		ps := PodState{Pod: pod, Containers: map[string]uint64{}}
		rp, err := a.cfg.Cgroups.ResolvePod(pod)
		if err != nil {
			if errors.Is(err, cgroups.ErrNotReady) {
				notReady++
			} else {
				a.log.Warn("resolve pod cgroups", "pod", pod.Namespace+"/"+pod.Name, "err", err)
			}
		}
		if rp != nil {
			ps.CgroupPath, ps.CgroupID = rp.Path, rp.CgroupID
			for _, c := range rp.Containers {
				ps.Containers[c.Name] = c.CgroupID
			}
		}
		in.Pods = append(in.Pods, ps)
	}
	desired := Compile(in, a.ids)
	for _, w := range desired.Warnings {
		a.log.Warn("compile", "warning", w)
	}
	before, err := a.fit(desired, in.Pods)
	if err != nil {
		return err
	}
	a.reportFailClosed(desired, in.Pods)
	if err := a.apply(desired, in.Pods); err != nil {
		return err
	}
	a.watchPods(in.Pods, desired)
	a.forgetGonePods(in.Pods)
	a.state.Store(desired)
	a.ready.Store(true)
	a.cfg.Metrics.reconcileDuration.Observe(time.Since(start).Seconds())
	if n, err := a.cfg.Datapath.MapEntries(); err == nil {
		for name, v := range n {
			a.cfg.Metrics.mapEntries.WithLabelValues(name).Set(float64(v))
		}
		// The budget counted entries this apply deleted at its end: a pod
		// refused for them may fit now.
		if len(desired.FailClosed) > 0 && (n["sw_rules"] < before.rules || n["sw_policies"] < before.policies) {
			a.Trigger()
		}
	}
	a.log.Debug("reconciled", "pods", len(in.Pods), "policies", len(sets), "containers", len(desired.Containers),
		"not_ready", notReady, "took", time.Since(start))
	return nil
}

func (a *Agent) forgetGonePods(pods []PodState) {
	live := map[types.UID]bool{}
	for _, ps := range pods {
		live[ps.Pod.UID] = true
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for cg, uid := range a.classified {
		if !live[uid] {
			delete(a.classified, cg)
			delete(a.firstSeen, cg)
		}
	}
	// Cgroups seen but never classified (a pod sandbox's) are dropped
	// after a while.
	for cg, t := range a.firstSeen {
		if time.Since(t) > time.Hour {
			delete(a.firstSeen, cg)
		}
	}
}

// watchPods keeps inotify watches on the cgroups of selected pods, so a new
// container is classified without waiting for the resync.
func (a *Agent) watchPods(pods []PodState, desired *State) {
	want := map[types.UID]bool{}
	for _, ps := range pods {
		if _, selected := a.ids.pods[string(ps.Pod.UID)]; !selected {
			continue
		}
		want[ps.Pod.UID] = true
		if a.watched[ps.Pod.UID] {
			continue
		}
		dir := ps.CgroupPath
		if dir == "" {
			d, _, err := a.cfg.Cgroups.PodDir(ps.Pod)
			if err != nil && !errors.Is(err, cgroups.ErrNotReady) {
				continue
			}
			dir = d
		}
		if _, err := a.watcher.Watch(ps.Pod.UID, dir); err != nil && !errors.Is(err, cgroups.ErrNotReady) {
			a.log.Warn("watch pod cgroup", "pod", ps.Pod.Namespace+"/"+ps.Pod.Name, "err", err)
			continue
		}
		a.watched[ps.Pod.UID] = true
	}
	for uid := range a.watched {
		if !want[uid] {
			_ = a.watcher.Unwatch(uid)
			delete(a.watched, uid)
		}
	}
	_ = desired
}

// apply makes the datapath hold exactly desired. Additions and changes go
// first and deletions last, so no traffic that desired denies passes in
// between, and no container points at rules not yet written.
func (a *Agent) apply(desired *State, pods []PodState) error {
	dp := a.cfg.Datapath
	var errs []error

	// 1. Identities and pods.
	curIDs, err := dp.Identities()
	if err != nil {
		return err
	}
	have := map[netip.Prefix]uint32{}
	for _, id := range curIDs {
		have[id.Prefix] = id.Identity
	}
	var upIDs []bpfext.PeerIdentity
	for p, id := range desired.Identities {
		if cur, ok := have[p]; !ok || cur != id {
			upIDs = append(upIDs, bpfext.PeerIdentity{Prefix: p, Identity: id})
		}
	}
	if len(upIDs) > 0 {
		if err := dp.UpsertIdentities(upIDs); err != nil {
			return fmt.Errorf("upsert identities: %w", err)
		}
	}
	curPods, err := dp.Pods()
	if err != nil {
		return err
	}
	havePods := map[uint32]bpfext.Pod{}
	for _, p := range curPods {
		havePods[p.ID] = p
	}
	var upPods []bpfext.Pod
	for id, p := range desired.Pods {
		if cur, ok := havePods[id]; !ok || cur != p {
			upPods = append(upPods, p)
		}
	}
	if len(upPods) > 0 {
		if err := dp.UpsertPods(upPods); err != nil {
			return fmt.Errorf("upsert pods: %w", err)
		}
	}

	// 2. Rules of new and changed policies, in one batch: after a restart
	// every policy is rewritten, and one pass over the rules map costs
	// O(rules) where one pass per policy cost O(policies x rules).
	var shrunk []uint32
	changed := map[uint32][]bpfext.Rule{}
	for id, rules := range desired.Rules {
		if old, ok := a.applied[id]; ok && slices.Equal(old, rules) {
			continue
		}
		changed[id] = rules
	}
	if err := dp.ReplaceRules(changed); err != nil {
		return fmt.Errorf("write rules of %d policies: %w", len(changed), err)
	}
	if a.applied == nil {
		a.applied = map[uint32][]bpfext.Rule{}
	}
	for id, rules := range changed {
		if _, ok := a.applied[id]; ok {
			shrunk = append(shrunk, id)
		}
		a.applied[id] = rules
	}

	// 3. Classifications, then attachments.
	curCs, err := dp.Containers()
	if err != nil {
		return err
	}
	haveCs := map[uint64]bpfext.Container{}
	for _, c := range curCs {
		haveCs[c.CgroupID] = c
	}
	var upCs []bpfext.Container
	now := time.Now()
	for cg, c := range desired.Containers {
		cur, ok := haveCs[cg]
		if ok && cur == c {
			continue
		}
		upCs = append(upCs, c)
		if !ok && !c.DenyAll {
			a.observeClassify(cg, desired.Cgroups[cg], pods, now)
		}
	}
	if len(upCs) > 0 {
		if err := dp.UpsertContainers(upCs); err != nil {
			return fmt.Errorf("upsert containers: %w", err)
		}
	}
	attached, err := dp.Attached()
	if err != nil {
		return err
	}
	for cg, path := range desired.Attach {
		if slices.Contains(attached, cg) {
			continue
		}
		if _, err := dp.Attach(path); err != nil {
			errs = append(errs, err)
			continue
		}
		a.log.Info("attached pod cgroup", "path", path, "cgroup", cg)
	}

	// 4. Deletions.
	for _, cg := range attached {
		if _, ok := desired.Attach[cg]; ok {
			continue
		}
		if err := dp.DetachID(cg); err != nil && !errors.Is(err, bpfext.ErrNotAttached) {
			errs = append(errs, err)
			continue
		}
		a.log.Info("detached pod cgroup", "cgroup", cg)
	}
	var staleCs []uint64
	for cg := range haveCs {
		if _, ok := desired.Containers[cg]; !ok {
			staleCs = append(staleCs, cg)
		}
	}
	if len(staleCs) > 0 {
		if err := dp.DeleteContainers(staleCs); err != nil {
			errs = append(errs, fmt.Errorf("delete containers: %w", err))
		}
		a.mu.Lock()
		for _, cg := range staleCs {
			delete(a.firstSeen, cg)
		}
		a.mu.Unlock()
	}
	forget := slices.Clone(staleCs)
	for cg, c := range desired.Containers {
		if slices.Contains(shrunk, c.PolicyID) {
			forget = append(forget, cg)
		}
	}
	if len(forget) > 0 {
		if err := dp.ForgetFlows(forget); err != nil {
			errs = append(errs, fmt.Errorf("forget flows: %w", err))
		}
	}
	policyIDs, err := dp.PolicyIDs()
	if err != nil {
		return err
	}
	for id := range a.applied {
		if !slices.Contains(policyIDs, id) {
			policyIDs = append(policyIDs, id)
		}
	}
	gone := map[uint32][]bpfext.Rule{}
	for _, id := range policyIDs {
		if _, ok := desired.Rules[id]; !ok {
			gone[id] = nil
		}
	}
	if err := dp.ReplaceRules(gone); err != nil {
		errs = append(errs, fmt.Errorf("delete rules of %d policies: %w", len(gone), err))
	} else {
		for id := range gone {
			delete(a.applied, id)
		}
	}
	var stalePods []uint32
	for id := range havePods {
		if _, ok := desired.Pods[id]; !ok {
			stalePods = append(stalePods, id)
		}
	}
	if len(stalePods) > 0 {
		if err := dp.DeletePods(stalePods); err != nil {
			errs = append(errs, fmt.Errorf("delete pods: %w", err))
		}
	}
	var staleIDs []netip.Prefix
	for p := range have {
		if _, ok := desired.Identities[p]; !ok {
			staleIDs = append(staleIDs, p)
		}
	}
	if len(staleIDs) > 0 {
		if err := dp.DeleteIdentities(staleIDs); err != nil {
			errs = append(errs, fmt.Errorf("delete identities: %w", err))
		}
	}
	return errors.Join(errs...)
}

// observeClassify records how long a container ran unclassified: since its
// cgroup appeared (inotify), or since the runtime says it started.
func (a *Agent) observeClassify(cg uint64, info CgroupInfo, pods []PodState, now time.Time) {
	a.mu.Lock()
	seen, ok := a.firstSeen[cg]
	_, measured := a.classified[cg]
	a.classified[cg] = info.PodUID
	a.mu.Unlock()
	if measured {
		return
	}
	if !ok {
		for _, ps := range pods {
			if ps.Pod.UID != info.PodUID {
				continue
			}
			for _, list := range [][]corev1.ContainerStatus{ps.Pod.Status.InitContainerStatuses, ps.Pod.Status.ContainerStatuses, ps.Pod.Status.EphemeralContainerStatuses} {
				for _, st := range list {
					if st.Name == info.Container && st.State.Running != nil {
						seen, ok = st.State.Running.StartedAt.Time, true
					}
				}
			}
		}
	}
	if !ok || seen.IsZero() || seen.After(now) {
		return
	}
	d := now.Sub(seen)
	a.cfg.Metrics.timeToClassify.Observe(d.Seconds())
	a.log.Info("container classified", "pod", info.Namespace+"/"+info.Pod, "container", info.Container, "cgroup", cg, "unclassified_for", d)
}

func (a *Agent) readEvents(rd *bpfext.EventReader) {
	for {
		ev, err := rd.Read()
		if err != nil {
			if errors.Is(err, bpfext.ErrClosed) {
				return
			}
			a.log.Warn("read datapath event", "err", err)
			continue
		}
		a.handleEvent(ev)
	}
}

func (a *Agent) handleEvent(ev bpfext.Event) {
	st := a.state.Load()
	if st == nil {
		return
	}
	oe := a.ToObserverEvent(st, ev)
	pol := oe.Policy.Namespace + "/" + oe.Policy.Name
	if oe.Policy.Name == "" {
		pol = ""
	}
	local := oe.Source
	if oe.Direction == observer.DirectionIngress {
		local = oe.Destination
	}
	a.cfg.Metrics.verdicts.WithLabelValues(local.Namespace, local.PodName, local.ContainerName, pol, ev.Direction.String(), ev.Verdict.String()).Inc()
	if a.cfg.Observer != nil {
		if err := a.cfg.Observer.PublishEvent(oe); err != nil {
			a.log.Warn("publish flow", "err", err)
		}
	}
}

// ToObserverEvent describes a datapath event with the names the state
// knows: the container's pod and name, the peer's endpoint, the policy.
func (a *Agent) ToObserverEvent(st *State, ev bpfext.Event) *observer.Event {
	info, ok := st.Cgroups[ev.CgroupID]
	if !ok {
		info = st.Cgroups[ev.PolicyCgroupID]
	}
	self := observer.Endpoint{Namespace: info.Namespace, PodName: info.Pod, Labels: info.Labels, Identity: info.Identity, ContainerName: info.Container}
	peerIP := ev.Dst
	if ev.Direction == bpfext.Ingress {
		peerIP = ev.Src
	}
	var peer observer.Endpoint
	if ev.Local {
		peer = self
		peer.ContainerName = ""
		for cg, ci := range st.Cgroups {
			if ci.PodUID == info.PodUID && st.Containers[cg].ContainerID == ev.PeerIdentity && !ci.PodCgroup {
				peer.ContainerName = ci.Container
			}
		}
	} else {
		snap := a.cfg.Identities.Snapshot()
		peer.Identity = ev.PeerIdentity
		if p, ok := snap.Lookup(peerIP); ok {
			peer.Namespace, peer.PodName = p.Namespace, p.Name
		}
		if l, ok := snap.Labels(identity.NumericIdentity(ev.PeerIdentity)); ok {
			peer.Labels = l.GetModel()
		} else if l, ok := st.CIDRLabels[ev.PeerIdentity]; ok {
			peer.Labels = l.GetModel()
		}
	}
	oe := &observer.Event{
		CgroupID: ev.CgroupID, SocketCookie: ev.SocketCookie,
		SrcIP: ev.Src, DstIP: ev.Dst, Proto: ev.Protocol, SrcPort: ev.SrcPort, DstPort: ev.DstPort,
		Reason: ev.Reason.String(), Match: observer.MatchNone,
	}
	switch ev.Direction {
	case bpfext.Egress:
		oe.Direction, oe.Source, oe.Destination = observer.DirectionEgress, self, peer
	case bpfext.Ingress:
		oe.Direction, oe.Source, oe.Destination = observer.DirectionIngress, peer, self
	}
	switch ev.Verdict {
	case bpfext.Allow:
		oe.Verdict = observer.VerdictAllow
	case bpfext.Deny:
		oe.Verdict = observer.VerdictDeny
	case bpfext.Audit:
		oe.Verdict = observer.VerdictAudit
	}
	if ev.Reason == bpfext.ReasonRuleAllow || ev.Reason == bpfext.ReasonRuleDeny || ev.Reason == bpfext.ReasonExclusive {
		oe.Match = observer.MatchL3L4
	}
	if ri, ok := st.RuleInfos[ev.RuleID]; ok && ev.RuleID != 0 {
		oe.Policy = observer.Policy{Namespace: ri.Policy.Namespace, Name: ri.Policy.Name, ID: ev.PolicyID}
	} else if refs := st.Policies[ev.PolicyID]; len(refs) > 0 {
		oe.Policy = observer.Policy{Namespace: refs[0].Namespace, Name: refs[0].Name, ID: ev.PolicyID}
	}
	return oe
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
