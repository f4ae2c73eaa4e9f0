package agent

import (
	"errors"

	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"

	"github.com/sidewall/sidewall/bpfext"
)

// tables are the datapath tables apply reconciles, one mapSync each.
type tables struct {
	identities mapSync[netip.Prefix, uint32]
	pods       mapSync[uint32, bpfext.Pod]
	rules      mapSync[uint32, []bpfext.Rule]
	containers mapSync[uint64, bpfext.Container]
	attached   mapSync[uint64, string]
}

func (a *Agent) newTables() tables {
	dp := a.cfg.Datapath
	return tables{
		identities: mapSync[netip.Prefix, uint32]{
			what: "identities",
			list: func() (map[netip.Prefix]uint32, error) {
				ids, err := dp.Identities()
				out := make(map[netip.Prefix]uint32, len(ids))
				for _, id := range ids {
					out[id.Prefix] = id.Identity
				}
				return out, err
			},
			equal: comparableEqual[uint32],
			update: func(m map[netip.Prefix]uint32) error {
				ids := make([]bpfext.PeerIdentity, 0, len(m))
				for p, id := range m {
					ids = append(ids, bpfext.PeerIdentity{Prefix: p, Identity: id})
				}
				return dp.UpsertIdentities(ids)
			},
			delete: dp.DeleteIdentities,
		},
		pods: mapSync[uint32, bpfext.Pod]{
			what: "pods",
			list: func() (map[uint32]bpfext.Pod, error) {
				return indexed(dp.Pods, func(p bpfext.Pod) uint32 { return p.ID })
			},
			equal:  podEqual,
			update: func(m map[uint32]bpfext.Pod) error { return dp.UpsertPods(valuesOf(m)) },
			delete: dp.DeletePods,
		},
		// The rules of a policy are compared with what this agent wrote
		// (applied), not read back: after a restart every policy is
		// rewritten, in one batch that scans the rules map once.
		rules: mapSync[uint32, []bpfext.Rule]{
			what: "rules",
			list: func() (map[uint32][]bpfext.Rule, error) {
				ids, err := dp.PolicyIDs()
				out := make(map[uint32][]bpfext.Rule, len(ids)+len(a.applied))
				for _, id := range ids {
					out[id] = nil
				}
				for id, rules := range a.applied {
					out[id] = rules
				}
				return out, err
			},
			// No equal: changedRules decides, from what this agent wrote.
			update: func(m map[uint32][]bpfext.Rule) error {
				if err := dp.ReplaceRules(m); err != nil {
					return err
				}
				for id, rules := range m {
					a.applied[id] = rules
				}
				return nil
			},
			delete: func(ids []uint32) error {
				gone := make(map[uint32][]bpfext.Rule, len(ids))
				for _, id := range ids {
					gone[id] = nil
				}
				if err := dp.ReplaceRules(gone); err != nil {
					return err
				}
				for _, id := range ids {
					delete(a.applied, id)
				}
				return nil
			},
		},
		containers: mapSync[uint64, bpfext.Container]{
			what: "containers",
			list: func() (map[uint64]bpfext.Container, error) {
				return indexed(dp.Containers, func(c bpfext.Container) uint64 { return c.CgroupID })
			},
			equal:  comparableEqual[bpfext.Container],
			update: func(m map[uint64]bpfext.Container) error { return dp.UpsertContainers(valuesOf(m)) },
			delete: dp.DeleteContainers,
		},
		// An attachment is complete or not; its path is needed only to
		// attach. One that failed halfway is attached again until every
		// hook is there (Attach adds the missing ones).
		attached: mapSync[uint64, string]{
			what: "attachments",
			list: func() (map[uint64]string, error) {
				as, err := dp.Attachments()
				out := make(map[uint64]string, len(as))
				for cg, complete := range as {
					out[cg] = ""
					if !complete {
						out[cg] = partialAttachment
					}
				}
				return out, err
			},
			equal: func(have, _ string) bool { return have != partialAttachment },
			update: func(m map[uint64]string) error {
				var errs []error
				for cg, path := range m {
					if _, err := dp.Attach(path); err != nil {
						// The kernel refuses with EPERM below an ancestor's
						// exclusive attachment: name it.
						if errors.Is(err, unix.EPERM) {
							if why := bpfext.CheckAttachable(a.cfg.Cgroups.Mount(), filepath.Dir(path)); why != nil {
								err = fmt.Errorf("%w: %w", err, why)
							}
						}
						errs = append(errs, err)
						a.attachFailed[cg] = err
						continue
					}
					delete(a.attachFailed, cg)
					a.log.Info("attached pod cgroup", "path", path, "cgroup", cg)
				}
				return errors.Join(errs...)
			},
			delete: func(cgs []uint64) error {
				var errs []error
				for _, cg := range cgs {
					if err := dp.DetachID(cg); err != nil && !errors.Is(err, bpfext.ErrNotAttached) {
						errs = append(errs, err)
						continue
					}
					a.log.Info("detached pod cgroup", "cgroup", cg)
				}
				return errors.Join(errs...)
			},
		},
	}
}

// partialAttachment marks, in the attachments table, a cgroup whose
// attachment failed halfway.
const partialAttachment = "partial"

// changedRules reads which policies' rules desired adds or changes: those
// this agent has not written as they are now. fit and apply both work on
// this one set.
func (a *Agent) changedRules(desired *State) (map[uint32][]bpfext.Rule, error) {
	if a.applied == nil {
		a.applied = map[uint32][]bpfext.Rule{}
	}
	// Read what the map holds, for the deletions at the end of apply.
	if _, err := a.tables.rules.plan(nil); err != nil {
		return nil, err
	}
	changed := map[uint32][]bpfext.Rule{}
	for id, rules := range desired.Rules {
		if old, ok := a.applied[id]; ok && slices.Equal(old, rules) {
			continue
		}
		changed[id] = rules
	}
	return changed, nil
}

// apply makes the datapath hold exactly desired, with the rules of the
// policies in changed rewritten (changedRules, after fit). Additions and
// changes go first and deletions last, so no traffic that desired denies
// passes in between, and no container points at rules not yet written.
func (a *Agent) apply(desired *State, changed map[uint32][]bpfext.Rule, pods []PodState) error {
	t := &a.tables
	// 1. Identities and pods.
	if _, err := t.identities.sync(desired.Identities); err != nil {
		return err
	}
	if _, err := t.pods.sync(desired.Pods); err != nil {
		return err
	}
	// Declared ports, reserved before a container of a new pod may bind.
	if err := a.cfg.Datapath.ReservePorts(valuesOf(desired.Pods)); err != nil {
		return err
	}

	// 2. Rules of new and changed policies, in one batch. A policy that
	// had rules before may now allow less: its containers' flows are
	// decided again.
	var shrunk []uint32
	for id := range changed {
		if _, ok := a.applied[id]; ok {
			shrunk = append(shrunk, id)
		}
	}
	if err := t.rules.write(changed); err != nil {
		return err
	}

	// 3. Classifications, then attachments.
	upCs, err := t.containers.plan(desired.Containers)
	if err != nil {
		return err
	}
	now := time.Now()
	for cg, c := range upCs {
		if !t.containers.held(cg) && !c.DenyAll {
			a.observeClassify(cg, desired.Cgroups[cg], pods, now)
		}
	}
	if err := t.containers.write(upCs); err != nil {
		return err
	}
	var errs []error
	if _, err := t.attached.sync(desired.Attach); err != nil {
		errs = append(errs, err)
	}
	a.reportAttachFailures(pods)

	// 4. Deletions.
	if _, err := t.attached.prune(desired.Attach); err != nil {
		errs = append(errs, err)
	}
	staleCs, err := t.containers.prune(desired.Containers)
	if err != nil {
		errs = append(errs, err)
	}
	a.mu.Lock()
	for _, cg := range staleCs {
		delete(a.firstSeen, cg)
	}
	a.mu.Unlock()
	forget := slices.Clone(staleCs)
	for cg, c := range desired.Containers {
		if slices.Contains(shrunk, c.PolicyID) {
			forget = append(forget, cg)
		}
	}
	if len(forget) > 0 {
		if err := a.cfg.Datapath.ForgetFlows(forget); err != nil {
			errs = append(errs, fmt.Errorf("forget flows: %w", err))
		}
	}
	for _, prune := range []func() error{
		func() error { _, err := t.rules.prune(desired.Rules); return err },
		func() error { _, err := t.pods.prune(desired.Pods); return err },
		func() error { _, err := t.identities.prune(desired.Identities); return err },
	} {
		if err := prune(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// indexed reads a table's entries and keys them.
func indexed[K comparable, V any](read func() ([]V, error), key func(V) K) (map[K]V, error) {
	vs, err := read()
	out := make(map[K]V, len(vs))
	for _, v := range vs {
		out[key(v)] = v
	}
	return out, err
}

func valuesOf[K comparable, V any](m map[K]V) []V {
	out := make([]V, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	return out
}

// reportAttachFailures logs, counts and records an Event on a pod whose
// cgroup could not be attached, once per failure; the reconcile that
// failed is retried with backoff until every hook is attached.
func (a *Agent) reportAttachFailures(pods []PodState) {
	live := make(map[uint64]bool, len(pods))
	for _, ps := range pods {
		live[ps.CgroupID] = true
	}
	for cg := range a.attachFailed {
		if !live[cg] {
			delete(a.attachFailed, cg)
			delete(a.attachReported, cg)
		}
	}
	for _, ps := range pods {
		err, failed := a.attachFailed[ps.CgroupID]
		switch {
		case failed && !a.attachReported[ps.CgroupID]:
			a.attachReported[ps.CgroupID] = true
			a.cfg.Metrics.attachErrors.Inc()
			a.log.Error("pod cgroup not attached: its containers are not enforced until it is; retrying",
				"pod", ps.Pod.Namespace+"/"+ps.Pod.Name, "cgroup", ps.CgroupID, "err", err)
			if a.cfg.Events != nil {
				a.cfg.Events.Eventf(ps.Pod, nil, corev1.EventTypeWarning, EventReasonAttachFailed, EventActionAttach,
					"sidewall-agent on %s: cannot attach the datapath to the pod's cgroup (%v); its containers are not enforced until it is, retrying", a.cfg.NodeName, err)
			}
		case !failed && a.attachReported[ps.CgroupID]:
			delete(a.attachReported, ps.CgroupID)
			a.log.Info("pod cgroup attached after a failure", "pod", ps.Pod.Namespace+"/"+ps.Pod.Name, "cgroup", ps.CgroupID)
			if a.cfg.Events != nil {
				a.cfg.Events.Eventf(ps.Pod, nil, corev1.EventTypeNormal, EventReasonEnforced, EventActionAttach,
					"sidewall-agent on %s: the datapath is attached to the pod's cgroup", a.cfg.NodeName)
			}
		}
	}
}
