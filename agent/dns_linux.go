package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cilium/cilium/pkg/defaults"
	"github.com/cilium/dns"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/sidewall/sidewall/agent/dnsproxy"
	"github.com/sidewall/sidewall/agent/hubble"
	"github.com/sidewall/sidewall/agent/identity"
	"github.com/sidewall/sidewall/bpfext"
)

// DNS proxy and FQDN learning defaults.
const (
	// DefaultFQDNMinTTL is Cilium's tofqdns-min-ttl default: answers count
	// for their own TTL.
	DefaultFQDNMinTTL = time.Duration(defaults.ToFQDNsMinTTL) * time.Second
	// DefaultFQDNMaxPerContainer bounds the addresses one container may
	// have learned at once: its share of the FQDN map.
	DefaultFQDNMaxPerContainer = 1024
	// PodConditionFQDN is the pod condition the agent sets to False while
	// a container of the pod cannot learn addresses (the FQDN map or its
	// share is full), and to True when it can again.
	PodConditionFQDN = "sidewall.io/FQDNLearning"
	// EventReasonFQDNFull is the Event reason of a refused learn.
	EventReasonFQDNFull = "FQDNMapFull"
)

// errShareFull: the container holds FQDNMaxPerContainer learned addresses.
var errShareFull = errors.New("the container's share of learned addresses is used up")

type podProxy struct {
	proxy *dnsproxy.Proxy
	uid   types.UID
}

// nameSeen is the last name an address was learned or refused for, to say
// in a deny which lookup the connection missed.
type nameSeen struct {
	name, container string
	learned         bool
}

type dnsState struct {
	mu      sync.Mutex
	proxies map[uint32]*podProxy
	// learned holds, per classified cgroup, the addresses it holds in the
	// FQDN map (rebuilt by each expiry sweep).
	learned map[uint64]map[netip.Addr]bool
	// full holds the pods whose containers could not learn, with the
	// time reported.
	full  map[types.UID]bool
	names map[netip.Addr]nameSeen
}

const maxNamesSeen = 4096

func (a *Agent) dnsInit() {
	a.dns.proxies = map[uint32]*podProxy{}
	a.dns.learned = map[uint64]map[netip.Addr]bool{}
	a.dns.full = map[types.UID]bool{}
	a.dns.names = map[netip.Addr]nameSeen{}
}

// podNetns finds the network namespace of a pod: the configured resolver,
// else the namespace of a process in the pod's cgroup (the sandbox's
// pause process is there from the start).
func (a *Agent) podNetns(ps PodState) (string, error) {
	if a.cfg.PodNetns != nil {
		return a.cfg.PodNetns(ps.Pod)
	}
	if ps.CgroupPath == "" {
		return "", errors.New("pod cgroup not found yet")
	}
	var pid string
	_ = filepath.WalkDir(ps.CgroupPath, func(p string, d os.DirEntry, err error) error {
		if err != nil || pid != "" || !d.IsDir() {
			return nil
		}
		b, err := os.ReadFile(filepath.Join(p, "cgroup.procs"))
		if err == nil {
			if f := strings.Fields(string(b)); len(f) > 0 {
				pid = f[0]
				return filepath.SkipAll
			}
		}
		return nil
	})
	if pid == "" {
		return "", errors.New("no process in the pod's cgroup yet")
	}
	return filepath.Join("/proc", pid, "ns", "net"), nil
}

// syncDNS runs a DNS proxy in each pod with a container that has toFQDNs
// rules, points the datapath's redirect at it, stops the others, and
// sweeps expired and orphaned learned addresses.
func (a *Agent) syncDNS(st *State, pods []PodState) {
	byUID := make(map[types.UID]PodState, len(pods))
	for _, ps := range pods {
		byUID[ps.Pod.UID] = ps
	}
	want := map[uint32]PodState{}
	for cg, c := range st.Containers {
		if !c.FQDN {
			continue
		}
		if ps, ok := byUID[st.Cgroups[cg].PodUID]; ok {
			want[c.PodID] = ps
		}
	}
	dp := a.cfg.Datapath
	a.dns.mu.Lock()
	defer a.dns.mu.Unlock()
	for id, pp := range a.dns.proxies {
		if ps, ok := want[id]; ok && ps.Pod.UID == pp.uid {
			continue
		}
		if err := dp.DeleteDNSProxy(id); err != nil {
			a.log.Warn("stop dns redirect", "pod", id, "err", err)
		}
		pp.proxy.Close()
		delete(a.dns.proxies, id)
		a.log.Info("dns proxy stopped", "podID", id)
	}
	retry := false
	for id, ps := range want {
		if _, ok := a.dns.proxies[id]; ok {
			continue
		}
		name := ps.Pod.Namespace + "/" + ps.Pod.Name
		ns, err := a.podNetns(ps)
		if err == nil {
			var p *dnsproxy.Proxy
			podID := id
			p, err = dnsproxy.Start(dnsproxy.Config{
				PodID: podID, Netns: ns, Log: a.log,
				Pending: func(proto uint8, port uint16) (bpfext.DNSQuery, bool, error) {
					return dp.DNSPending(podID, proto, port)
				},
				Learn:   func(q *dnsproxy.Query, ans dnsproxy.Answer) error { return a.learnDNS(podID, q, ans) },
				Refused: func(*dnsproxy.Query, string) { a.cfg.Metrics.dnsDropped.Inc() },
			})
			if err == nil {
				if err = dp.SetDNSProxy(podID, p.Port(), p.IPv6()); err != nil {
					p.Close()
				} else {
					a.dns.proxies[id] = &podProxy{proxy: p, uid: ps.Pod.UID}
					a.log.Info("dns proxy started", "pod", name, "port", p.Port(), "ipv6", p.IPv6())
					continue
				}
			}
		}
		// Until the proxy runs, the pod's DNS is not redirected and its
		// containers learn nothing: their toFQDNs rules allow nothing.
		a.log.Warn("dns proxy not started; toFQDNs rules allow nothing until it is", "pod", name, "err", err)
		retry = true
	}
	if retry {
		a.queue.AddAfter(queueKey, time.Second)
	}
	a.sweepFQDNLocked(st)
}

// sweepFQDNLocked deletes expired learned addresses and those of cgroups
// without toFQDNs rules, and recounts each container's share.
func (a *Agent) sweepFQDNLocked(st *State) {
	dp := a.cfg.Datapath
	keep := func(cg uint64) bool { return st.Containers[cg].FQDN }
	left, err := dp.ExpireFQDN(bpfext.MonotonicSeconds(), keep)
	if err != nil {
		a.log.Warn("sweep learned addresses", "err", err)
		return
	}
	a.cfg.Metrics.fqdnAddresses.Set(float64(len(left)))
	a.dns.learned = map[uint64]map[netip.Addr]bool{}
	for _, e := range left {
		m := a.dns.learned[e.CgroupID]
		if m == nil {
			m = map[netip.Addr]bool{}
			a.dns.learned[e.CgroupID] = m
		}
		m[e.Addr] = true
	}
}

// SweepFQDN runs the expiry sweep now (tests; the agent sweeps on each
// reconcile).
func (a *Agent) SweepFQDN() {
	st := a.state.Load()
	if st == nil {
		return
	}
	a.dns.mu.Lock()
	defer a.dns.mu.Unlock()
	a.sweepFQDNLocked(st)
}

// learnDNS writes what one answer teaches the container that asked: each
// address, for each of its toFQDNs selectors that matches the name, until
// the answer's TTL (at least FQDNMinTTL) runs out. It runs before the
// proxy passes the answer on.
func (a *Agent) learnDNS(podID uint32, q *dnsproxy.Query, ans dnsproxy.Answer) error {
	st := a.state.Load()
	if st == nil {
		return errors.New("no state yet")
	}
	ct, ok := st.Containers[q.CgroupID]
	info := st.Cgroups[q.CgroupID]
	if !ok || !ct.FQDN {
		a.cfg.Metrics.dnsAnswers.WithLabelValues("no_match").Inc()
		a.publishDNS(st, podID, q, ans, info, nil, "")
		return nil
	}
	var matched []FQDNSelector
	for _, s := range st.FQDN[ct.PolicyID] {
		if s.Matches(ans.Name) {
			matched = append(matched, s)
		}
	}
	result := "learned"
	var note string
	var errOut error
	switch {
	case len(matched) == 0:
		result = "no_match"
	case len(ans.Addrs) == 0:
		result = "no_address"
	default:
		ttl := max(time.Duration(ans.TTL)*time.Second, a.cfg.FQDNMinTTL)
		// One second more: the datapath's clock counts whole seconds, so
		// an answer with TTL 0 still lets the connection that follows it.
		until := bpfext.MonotonicSeconds() + uint32(min(ttl/time.Second, 1<<30)) + 1
		limit := a.cfg.FQDNMaxPerContainer
		if limit == 0 {
			limit = DefaultFQDNMaxPerContainer
		}
		a.dns.mu.Lock()
		have := a.dns.learned[q.CgroupID]
		if have == nil {
			have = map[netip.Addr]bool{}
			a.dns.learned[q.CgroupID] = have
		}
		for _, addr := range ans.Addrs {
			addr = addr.Unmap()
			if !have[addr] && limit > 0 && len(have) >= limit {
				errOut = fmt.Errorf("%s: %w (%d addresses)", addr, errShareFull, limit)
				break
			}
			for _, s := range matched {
				if err := a.cfg.Datapath.LearnFQDN(q.CgroupID, addr, s.Index, until); err != nil {
					errOut = err
					break
				}
			}
			if errOut != nil {
				break
			}
			have[addr] = true
			a.rememberNameLocked(addr, nameSeen{name: ans.Name, container: info.Container, learned: true})
		}
		a.dns.mu.Unlock()
		if errOut != nil {
			result = "full"
			note = "not learned: " + errOut.Error()
			if !errors.Is(errOut, bpfext.ErrFQDNFull) && !errors.Is(errOut, errShareFull) {
				result = "error"
			}
		}
	}
	if result != "learned" {
		a.dns.mu.Lock()
		for _, addr := range ans.Addrs {
			if _, seen := a.dns.names[addr.Unmap()]; !seen {
				a.rememberNameLocked(addr.Unmap(), nameSeen{name: ans.Name, container: info.Container})
			}
		}
		a.dns.mu.Unlock()
	}
	a.cfg.Metrics.dnsAnswers.WithLabelValues(result).Inc()
	a.reportFQDNFull(info, result == "full", note)
	a.publishDNS(st, podID, q, ans, info, matched, note)
	return errOut
}

func (a *Agent) rememberNameLocked(addr netip.Addr, s nameSeen) {
	if len(a.dns.names) >= maxNamesSeen {
		clear(a.dns.names)
	}
	a.dns.names[addr] = s
}

// reportFQDNFull reports a container that could not learn (an Event and
// the pod condition), once per change.
func (a *Agent) reportFQDNFull(info CgroupInfo, full bool, note string) {
	if info.PodUID == "" {
		return
	}
	a.dns.mu.Lock()
	was := a.dns.full[info.PodUID]
	if full == was {
		a.dns.mu.Unlock()
		return
	}
	if full {
		a.dns.full[info.PodUID] = true
	} else {
		delete(a.dns.full, info.PodUID)
	}
	a.dns.mu.Unlock()
	pod, err := a.pods.Pods(info.Namespace).Get(info.Pod)
	if err != nil {
		return
	}
	cond := corev1.PodCondition{Type: PodConditionFQDN, Status: corev1.ConditionTrue, Reason: "Learning",
		Message:            "sidewall-agent on " + a.cfg.NodeName + ": the pod's containers learn the addresses of their toFQDNs names",
		LastTransitionTime: metav1.Now()}
	if full {
		a.log.Warn("container cannot learn toFQDNs addresses: new names stay unreachable", "pod", info.Namespace+"/"+info.Pod,
			"container", info.Container, "why", note)
		cond.Status, cond.Reason = corev1.ConditionFalse, EventReasonFQDNFull
		cond.Message = fmt.Sprintf("sidewall-agent on %s: container %s cannot learn the addresses of new names (%s); they stay unreachable",
			a.cfg.NodeName, info.Container, note)
		if a.cfg.Events != nil {
			a.cfg.Events.Eventf(pod, nil, corev1.EventTypeWarning, EventReasonFQDNFull, EventActionFailClosed, "%s", cond.Message)
		}
	}
	go a.setPodCondition(pod, cond)
}

func (a *Agent) setPodCondition(pod *corev1.Pod, cond corev1.PodCondition) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p := pod.DeepCopy()
	i := slices.IndexFunc(p.Status.Conditions, func(c corev1.PodCondition) bool { return c.Type == cond.Type })
	if i >= 0 {
		p.Status.Conditions[i] = cond
	} else {
		p.Status.Conditions = append(p.Status.Conditions, cond)
	}
	if _, err := a.cfg.Client.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		a.log.Warn("set pod condition", "pod", p.Namespace+"/"+p.Name, "condition", cond.Type, "err", err)
	}
}

// publishDNS reports a lookup to Hubble as Cilium's DNS proxy does: an L7
// DNS response from the server to the container.
func (a *Agent) publishDNS(st *State, podID uint32, q *dnsproxy.Query, ans dnsproxy.Answer, info CgroupInfo, learned []FQDNSelector, note string) {
	if a.cfg.Observer == nil {
		return
	}
	self := hubble.Endpoint{Namespace: info.Namespace, PodName: info.Pod, Labels: info.Labels, Identity: info.Identity, ContainerName: info.Container}
	local := q.Client.Addr()
	pod := st.Pods[podID]
	if q.Server.Addr().Is4() && pod.IPv4.IsValid() {
		local = pod.IPv4
	} else if q.Server.Addr().Is6() && pod.IPv6.IsValid() {
		local = pod.IPv6
	}
	var server hubble.Endpoint
	snap := a.cfg.Identities.Snapshot()
	if p, ok := snap.Lookup(q.Server.Addr()); ok {
		server.Namespace, server.PodName = p.Namespace, p.Name
		server.Identity = uint32(p.Identity)
		if l, ok := snap.Labels(identity.NumericIdentity(p.Identity)); ok {
			server.Labels = l.GetModel()
		}
	}
	d := &hubble.DNS{Query: ans.Name, TTL: ans.TTL, CNAMEs: ans.CNAMEs, RCode: uint32(ans.RCode)}
	d.QTypes = []string{dns.TypeToString[ans.QType]}
	for _, ip := range ans.Addrs {
		d.IPs = append(d.IPs, ip.String())
	}
	if note == "" { // a note says why nothing was learned
		for _, s := range learned {
			d.Learned = append(d.Learned, s.String())
		}
	}
	ev := &hubble.Event{
		Time: time.Now(), CgroupID: q.CgroupID, Direction: hubble.DirectionEgress,
		SrcIP: q.Server.Addr(), DstIP: local, Proto: q.Proto, SrcPort: q.Server.Port(), DstPort: q.Client.Port(),
		Verdict: hubble.VerdictAllow, Reason: "dns-proxy", Hook: "dns-proxy", Match: hubble.MatchL3L4,
		Source: server, Destination: self, DNS: d, Note: note,
	}
	if ri, ok := st.RuleInfos[q.RuleID]; ok {
		ev.Policy = hubble.Policy{Namespace: ri.Policy.Namespace, Name: ri.Policy.Name}
	}
	if err := a.cfg.Observer.PublishEvent(ev); err != nil {
		a.log.Debug("publish dns flow", "err", err)
	}
}

// fqdnNote says, for a container with toFQDNs rules whose connection was
// denied by default, which of its toFQDNs rules the address missed and
// what the proxy last saw it resolved as.
func (a *Agent) fqdnNote(st *State, ev bpfext.Event) string {
	sels := st.FQDN[ev.PolicyID]
	if len(sels) == 0 || ev.Direction != bpfext.Egress || ev.Reason != bpfext.ReasonDefaultDeny || ev.Local {
		return ""
	}
	var rules []string
	for _, s := range sels {
		for _, r := range s.Rules {
			rules = append(rules, r.Origin+" ("+s.String()+")")
		}
	}
	note := fmt.Sprintf("no unexpired DNS answer of this container maps a toFQDNs name to %s: missed %s", ev.Dst, strings.Join(rules, ", "))
	a.dns.mu.Lock()
	seen, ok := a.dns.names[ev.Dst.Unmap()]
	a.dns.mu.Unlock()
	if ok {
		how := "resolved"
		if seen.learned {
			how = "learned"
		}
		note += fmt.Sprintf("; last %s as %s by container %s", how, seen.name, seen.container)
	}
	return note
}

func (a *Agent) stopDNS() {
	a.dns.mu.Lock()
	defer a.dns.mu.Unlock()
	for id, pp := range a.dns.proxies {
		pp.proxy.Close()
		delete(a.dns.proxies, id)
	}
}
