package agent

import (
	"net/netip"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/sidewall/sidewall/agent/hubble"
	"github.com/sidewall/sidewall/bpfext"
)

// The agent's side of the Hubble join (hubble.Joiner): it teaches the
// joiner each connection from its own events, and answers the joins by
// cgroup and by bound port from its state and the datapath's port table.

// boundRefresh bounds how often a port-join miss re-reads the datapath's
// bound-port table.
const boundRefresh = time.Second

type joinIndex struct {
	mu    sync.Mutex
	st    *State                         // the state the tables below are of
	pods  map[netip.Addr]uint32          // pod address -> pod id
	ports map[portKey]uint64             // (pod, proto, port) -> holder's cgroup
	read  time.Time                      // when ports was read
	decl  map[portKey]uint32             // declared port -> container id
	byCID map[[2]uint32]uint64           // (pod, container id) -> cgroup
	refs  map[uint64]hubble.ContainerRef // cgroup -> container
}

type portKey struct {
	pod   uint32
	proto uint8
	port  uint16
}

func refOf(ci CgroupInfo) hubble.ContainerRef {
	return hubble.ContainerRef{Namespace: ci.Namespace, Pod: ci.Pod, Container: ci.Container, PodUID: string(ci.PodUID)}
}

// learnJoin records the connection of a datapath event for the joiner.
func (a *Agent) learnJoin(st *State, ev bpfext.Event) {
	j := a.cfg.Joiner
	if j == nil || ev.Local || !ev.Src.IsValid() || !ev.Dst.IsValid() {
		return
	}
	info, ok := eventCgroup(st, ev)
	if !ok || info.Container == "" {
		return
	}
	ref := refOf(info)
	src, dst := netip.AddrPortFrom(ev.Src, ev.SrcPort), netip.AddrPortFrom(ev.Dst, ev.DstPort)
	if ev.Direction == bpfext.Ingress {
		j.Learn(ev.Protocol, dst, src, ref)
	} else {
		j.Learn(ev.Protocol, src, dst, ref)
	}
}

// joinIndexLocked returns the lookup tables of the current state, rebuilt when the
// state changed. The caller holds a.join.mu.
func (a *Agent) joinIndexLocked() *joinIndex {
	x := &a.join
	st := a.state.Load()
	if st == nil || x.st == st {
		return x
	}
	x.st = st
	x.pods = map[netip.Addr]uint32{}
	for id, p := range st.Pods {
		if p.IPv4.IsValid() {
			x.pods[p.IPv4] = id
		}
		if p.IPv6.IsValid() {
			x.pods[p.IPv6] = id
		}
	}
	x.decl = map[portKey]uint32{}
	for id, p := range st.Pods {
		for _, pp := range p.Ports {
			x.decl[portKey{id, pp.Protocol, pp.Port}] = pp.ContainerID
		}
	}
	x.byCID = map[[2]uint32]uint64{}
	for cg, c := range st.Containers {
		x.byCID[[2]uint32{c.PodID, c.ContainerID}] = cg
	}
	x.refs = map[uint64]hubble.ContainerRef{}
	for cg, ci := range st.Cgroups {
		if !ci.PodCgroup && ci.Container != "" {
			x.refs[cg] = refOf(ci)
		}
	}
	x.read = time.Time{}
	return x
}

// ByCgroup implements hubble.JoinLookup.
func (a *Agent) ByCgroup(id uint64) (hubble.ContainerRef, bool) {
	a.join.mu.Lock()
	defer a.join.mu.Unlock()
	x := a.joinIndexLocked()
	ref, ok := x.refs[id]
	return ref, ok
}

// ByPort implements hubble.JoinLookup: the container whose socket holds
// the port in the datapath's bound-port table, else the container that
// declares it.
func (a *Agent) ByPort(ip netip.Addr, proto uint8, port uint16) (hubble.ContainerRef, bool) {
	a.join.mu.Lock()
	defer a.join.mu.Unlock()
	x := a.joinIndexLocked()
	pod, ok := x.pods[ip.Unmap()]
	if !ok {
		return hubble.ContainerRef{}, false
	}
	k := portKey{pod, proto, port}
	cg, ok := x.ports[k]
	if !ok && time.Since(x.read) > boundRefresh && a.cfg.Datapath != nil {
		x.read = time.Now()
		if bound, err := a.cfg.Datapath.BoundPorts(); err == nil {
			x.ports = make(map[portKey]uint64, len(bound))
			for _, b := range bound {
				if b.CgroupID != 0 && b.Sockets > 0 {
					x.ports[portKey{b.PodID, b.Protocol, b.Port}] = b.CgroupID
				}
			}
			cg, ok = x.ports[k]
		}
	}
	if !ok {
		cid, declared := x.decl[k]
		if !declared {
			return hubble.ContainerRef{}, false
		}
		if cg, ok = x.byCID[[2]uint32{pod, cid}]; !ok {
			return hubble.ContainerRef{}, false
		}
	}
	ref, ok := x.refs[cg]
	return ref, ok
}

// forgetJoin drops the joiner's entries of pods the new state no longer
// has.
func (a *Agent) forgetJoin(old, cur *State) {
	if a.cfg.Joiner == nil || old == nil {
		return
	}
	live := map[types.UID]bool{}
	for _, ci := range cur.Cgroups {
		live[ci.PodUID] = true
	}
	gone := map[string]bool{}
	for _, ci := range old.Cgroups {
		if !live[ci.PodUID] {
			gone[string(ci.PodUID)] = true
		}
	}
	if len(gone) > 0 {
		a.cfg.Joiner.ForgetPods(gone)
	}
}
