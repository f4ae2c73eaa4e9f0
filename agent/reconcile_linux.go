package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"

	"github.com/cilium/cilium/pkg/option"

	"github.com/sidewall/sidewall/agent/cgroups"
	"github.com/sidewall/sidewall/bpfext"
	"github.com/sidewall/sidewall/crds/v1alpha1"
	"github.com/sidewall/sidewall/translator"
)

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
	a.log.Info("adopted pinned datapath", "pinDir", dp.PinDir(), "containers", len(cs), "pods", len(pods), "policies", len(slices.Compact(policies)))
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

// reconcile makes the datapath hold what the API says now: it compiles the
// node's pods and every policy, fits the result into the maps, and applies
// it.
func (a *Agent) reconcile(ctx context.Context) error {
	start := time.Now()
	a.followCiliumIPCache()
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

	services, err := a.serviceTable()
	if err != nil {
		return fmt.Errorf("list services: %w", err)
	}
	in := Input{RuleSets: sets, Identities: a.cfg.Identities.Snapshot(), Services: services,
		HostByPolicy: a.cfg.AllowLocalhost == option.AllowLocalhostPolicy}
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
			// The runtime named these from their cgroup events, before the
			// status had their ids.
			a.runtimeContainers(pod, ps.Containers)
		}
		in.Pods = append(in.Pods, ps)
	}
	desired := Compile(in, a.ids)
	for _, w := range desired.Warnings {
		a.log.Warn("compile", "warning", w)
	}
	changed, err := a.changedRules(desired)
	if err != nil {
		return err
	}
	before, err := a.fit(desired, changed, in.Pods)
	if err != nil {
		return err
	}
	a.reportFailClosed(desired, in.Pods)
	if err := a.apply(desired, changed, in.Pods); err != nil {
		return err
	}
	a.syncDNS(desired, in.Pods)
	a.watchPods(in.Pods)
	a.forgetGonePods(in.Pods)
	a.forgetJoin(a.state.Swap(desired), desired)
	// After the store: an event handled now names pods of the new state.
	livePods := make(map[podKey]bool, len(in.Pods))
	for _, ps := range in.Pods {
		livePods[podKey{ps.Pod.Namespace, ps.Pod.Name}] = true
	}
	a.cfg.Metrics.forgetPods(livePods)
	a.ready.Store(true)
	a.cfg.Metrics.reconcileDuration.Observe(time.Since(start).Seconds())
	if n, err := a.cfg.Datapath.MapEntries(); err == nil {
		for name, v := range n {
			a.cfg.Metrics.mapEntries.WithLabelValues(name).Set(float64(v))
		}
		// The budget counted entries this apply deleted at its end: a pod
		// refused for them may fit now.
		if len(desired.FailClosed) > 0 && (n[bpfext.MapRules] < before.rules || n[bpfext.MapPolicies] < before.policies) {
			a.Trigger()
		}
	}
	a.log.Debug("reconciled", "pods", len(in.Pods), "policies", len(sets), "containers", len(desired.Containers),
		"notReady", notReady, "took", time.Since(start))
	return nil
}

func (a *Agent) forgetGonePods(pods []PodState) {
	live := map[types.UID]bool{}
	for _, ps := range pods {
		live[ps.Pod.UID] = true
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for uid := range a.hints {
		if !live[uid] {
			delete(a.hints, uid)
		}
	}
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
func (a *Agent) watchPods(pods []PodState) {
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
	a.mu.Lock()
	if len(a.classifyTimes) >= 4096 {
		a.classifyTimes = slices.Delete(a.classifyTimes, 0, 1)
	}
	a.classifyTimes = append(a.classifyTimes, d)
	a.mu.Unlock()
	a.log.Info("container classified", "pod", info.Namespace+"/"+info.Pod, "container", info.Container, "cgroup", cg, "unclassifiedFor", d)
}
