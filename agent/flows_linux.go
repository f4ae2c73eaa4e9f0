package agent

import (
	"errors"

	"github.com/sidewall/sidewall/agent/hubble"
	"github.com/sidewall/sidewall/agent/identity"
	"github.com/sidewall/sidewall/bpfext"
)

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
	a.learnJoin(st, ev)
	pol := oe.Policy.Namespace + "/" + oe.Policy.Name
	if oe.Policy.Name == "" {
		pol = ""
	}
	local := oe.Source
	if oe.Direction == hubble.DirectionIngress {
		local = oe.Destination
	}
	a.cfg.Metrics.countVerdict(local.Namespace, local.PodName, local.ContainerName, pol, ev.Direction.String(), ev.Verdict.String())
	if a.cfg.Observer != nil {
		if err := a.cfg.Observer.PublishEvent(oe); err != nil {
			a.log.Warn("publish flow", "err", err)
		}
	}
}

// eventCgroup is the container (or pod) cgroup an event is of: its own,
// else the one whose policy decided it.
func eventCgroup(st *State, ev bpfext.Event) (CgroupInfo, bool) {
	if info, ok := st.Cgroups[ev.CgroupID]; ok {
		return info, true
	}
	info, ok := st.Cgroups[ev.PolicyCgroupID]
	return info, ok
}

// ToObserverEvent describes a datapath event with the names the state
// knows: the container's pod and name, the peer's endpoint, the policy.
func (a *Agent) ToObserverEvent(st *State, ev bpfext.Event) *hubble.Event {
	info, _ := eventCgroup(st, ev)
	self := hubble.Endpoint{Namespace: info.Namespace, PodName: info.Pod, Labels: info.Labels, Identity: info.Identity, ContainerName: info.Container}
	peerIP := ev.Dst
	if ev.Direction == bpfext.Ingress {
		peerIP = ev.Src
	}
	var peer hubble.Endpoint
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
	oe := &hubble.Event{
		CgroupID: ev.CgroupID, SocketCookie: ev.SocketCookie,
		SrcIP: ev.Src, DstIP: ev.Dst, Proto: ev.Protocol, SrcPort: ev.SrcPort, DstPort: ev.DstPort,
		Reason: ev.Reason.String(), Hook: ev.Hook.String(), Match: hubble.MatchNone,
	}
	switch ev.Direction {
	case bpfext.Egress:
		oe.Direction, oe.Source, oe.Destination = hubble.DirectionEgress, self, peer
	case bpfext.Ingress:
		oe.Direction, oe.Source, oe.Destination = hubble.DirectionIngress, peer, self
	}
	switch ev.Verdict {
	case bpfext.Allow:
		oe.Verdict = hubble.VerdictAllow
	case bpfext.Deny:
		oe.Verdict = hubble.VerdictDeny
	case bpfext.Audit:
		oe.Verdict = hubble.VerdictAudit
	}
	if ev.Reason == bpfext.ReasonRuleAllow || ev.Reason == bpfext.ReasonRuleDeny || ev.Reason == bpfext.ReasonExclusive {
		oe.Match = hubble.MatchL3L4
	}
	oe.Note = a.fqdnNote(st, ev)
	if ri, ok := st.RuleInfos[ev.RuleID]; ok && ev.RuleID != 0 {
		oe.Policy = hubble.Policy{Namespace: ri.Policy.Namespace, Name: ri.Policy.Name, ID: ev.PolicyID}
	} else if refs := st.Policies[ev.PolicyID]; len(refs) > 0 {
		oe.Policy = hubble.Policy{Namespace: refs[0].Namespace, Name: refs[0].Name, ID: ev.PolicyID}
	}
	return oe
}
