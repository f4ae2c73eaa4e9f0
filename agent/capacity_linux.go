package agent

import (
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/sidewall/sidewall/bpfext"
)

// ReasonMapFull is the fail-closed reason of a pod whose policy the
// datapath maps cannot hold.
const ReasonMapFull = "map_full"

// usage is what the rules and policies maps hold before a reconcile writes.
type usage struct{ rules, policies int }

// fit makes desired, and changed (the policies whose rules it rewrites),
// fit the rules and policies maps before anything is written, pod by pod: a pod whose new or changed policies do not fit in
// what is left fails closed as a whole. Its policies are dropped from
// desired, and every container of it that had a policy denies everything
// (the pod cgroup's DenyAll entry stays), so no container ever runs on part
// of its policy. Pods are taken in pod id order, so pods enforced before
// keep their place and a newcomer is the one refused.
//
// The budget counts the entries ReplaceRules keeps while it writes (a
// changed policy's old entries next to its new ones, and the entries of
// policies deleted only at the end of apply), so a write never fails
// halfway; reconcile runs again when those deletions made room.
func (a *Agent) fit(desired *State, changed map[uint32][]bpfext.Rule, pods []PodState) (usage, error) {
	dp := a.cfg.Datapath
	var u usage
	curPolicies, err := dp.PolicyIDs()
	if err != nil {
		return u, fmt.Errorf("count policies: %w", err)
	}
	u.policies = len(curPolicies)

	// Only keys the map lacks cost room: after a restart every policy is
	// rewritten, over entries already there.
	added, inUse, err := dp.AddedRuleEntries(changed)
	if err != nil {
		return u, fmt.Errorf("count rule entries: %w", err)
	}
	u.rules = inUse
	type cost struct{ rules, policies int }
	costs := map[uint32]*cost{}
	for id := range changed {
		pod := desired.PolicyPods[id]
		c := costs[pod]
		if c == nil {
			c = &cost{}
			costs[pod] = c
		}
		c.rules += added[id]
		// ReplaceRules writes a mask for every policy it is given, even one
		// without entries, before it drops the empty ones.
		if !slices.Contains(curPolicies, id) {
			c.policies++
		}
	}
	var podIDs []uint32
	for id := range costs {
		podIDs = append(podIDs, id)
	}
	slices.Sort(podIDs)

	freeRules := dp.Capacity(bpfext.MapRules) - u.rules
	freePolicies := dp.Capacity(bpfext.MapPolicies) - u.policies
	failed := map[uint32]bool{}
	for _, id := range podIDs {
		c := costs[id]
		if c.rules <= freeRules && c.policies <= freePolicies {
			freeRules -= c.rules
			freePolicies -= c.policies
			continue
		}
		failed[id] = true
	}
	if len(failed) == 0 {
		return u, nil
	}
	for id, pod := range desired.PolicyPods {
		if failed[pod] {
			delete(changed, id)
			delete(desired.Rules, id)
			delete(desired.Policies, id)
			delete(desired.PolicyPods, id)
		}
	}
	for cg, c := range desired.Containers {
		if failed[c.PodID] && c.PolicyID != 0 {
			desired.Containers[cg] = bpfext.Container{CgroupID: cg, PodID: c.PodID, ContainerID: c.ContainerID, DenyAll: true}
		}
	}
	for _, ps := range pods {
		if id, ok := a.ids.pods[string(ps.Pod.UID)]; ok && failed[id] {
			desired.FailClosed[ps.Pod.UID] = ReasonMapFull
		}
	}
	return u, nil
}

// reportFailClosed logs the pods that fail closed, and records an Event on
// them, when they start or stop doing so (never per reconcile, so a full map
// does not flood the API server), and sets the gauge.
func (a *Agent) reportFailClosed(desired *State, pods []PodState) {
	byReason := map[string]int{ReasonMapFull: 0}
	for _, ps := range pods {
		uid := ps.Pod.UID
		name := ps.Pod.Namespace + "/" + ps.Pod.Name
		reason, failed := desired.FailClosed[uid]
		if failed {
			byReason[reason]++
		}
		switch was := a.failClosed[uid]; {
		case failed && was != reason:
			a.log.Warn("pod fails closed: its policy does not fit the datapath maps; its restricted containers deny everything",
				"pod", name, "reason", reason)
			if a.cfg.Events != nil {
				a.cfg.Events.Eventf(ps.Pod, nil, corev1.EventTypeWarning, EventReasonMapFull, EventActionFailClosed,
					"sidewall-agent on %s: the pod's policy does not fit the datapath maps (%s); its restricted containers are denied everything until room frees",
					a.cfg.NodeName, a.capacityNote())
			}
		case !failed && was != "":
			a.log.Info("pod enforced again: its policy fits the datapath maps", "pod", name)
			if a.cfg.Events != nil {
				a.cfg.Events.Eventf(ps.Pod, nil, corev1.EventTypeNormal, EventReasonEnforced, EventActionEnforce,
					"sidewall-agent on %s: the pod's policy fits the datapath maps again and is enforced", a.cfg.NodeName)
			}
		}
	}
	a.failClosed = map[types.UID]string{}
	for uid, reason := range desired.FailClosed {
		a.failClosed[uid] = reason
	}
	for reason, n := range byReason {
		a.cfg.Metrics.podsFailClosed.WithLabelValues(reason).Set(float64(n))
	}
}

// capacityNote names the maps a pod's policy must fit in, with their use.
func (a *Agent) capacityNote() string {
	n, err := a.cfg.Datapath.MapEntries()
	var parts []string
	for _, m := range []string{bpfext.MapRules, bpfext.MapPolicies} {
		if err != nil {
			parts = append(parts, fmt.Sprintf("%s capacity %d", m, a.cfg.Datapath.Capacity(m)))
			continue
		}
		parts = append(parts, fmt.Sprintf("%s %d/%d entries", m, n[m], a.cfg.Datapath.Capacity(m)))
	}
	return strings.Join(parts, ", ")
}
