package hubble

import (
	"container/list"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"github.com/cilium/cilium/pkg/labels"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
)

// How a Cilium flow was matched to a container (the "join" extension and
// the sidewall_hubble_cilium_flows_total metric).
const (
	JoinTuple  = "5-tuple"    // a sidewall event of the same connection
	JoinCgroup = "cgroup"     // Cilium's own cgroup_id (socket-LB traces)
	JoinPort   = "bound-port" // the container that holds the destination port
	JoinNone   = "none"       // not joined: the flow is as Cilium sent it
)

const (
	// DefaultJoinEntries bounds the 5-tuple join state.
	DefaultJoinEntries = 65536
	// DefaultJoinTTL is how long a connection learned from a sidewall
	// event names the Cilium flows of that connection.
	DefaultJoinTTL = 10 * time.Minute
)

// ContainerRef names a container of a pod on this node.
type ContainerRef struct {
	Namespace, Pod, Container string
	// PodUID groups the entries of one pod (Joiner.ForgetPods).
	PodUID string
}

// JoinLookup answers the joins that need the agent's state. Both are
// called for every Cilium flow the 5-tuple does not name, so they must be
// cheap.
type JoinLookup interface {
	// ByCgroup names the container of a cgroup id.
	ByCgroup(id uint64) (ContainerRef, bool)
	// ByPort names the container of the pod with address ip that holds (or
	// declares) the port.
	ByPort(ip netip.Addr, proto uint8, port uint16) (ContainerRef, bool)
}

// JoinStats counts the Cilium flows joined, by how.
type JoinStats struct {
	Tuple, Cgroup, Port, None uint64
	// Entries is the size of the 5-tuple state; Evicted counts entries
	// dropped for room before their TTL.
	Entries int
	Evicted uint64
}

type joinKey struct {
	proto         uint8
	local, remote netip.AddrPort
}

type joinEntry struct {
	key     joinKey
	ref     ContainerRef
	expires time.Time
}

// Joiner names the container of Cilium's flows. It learns each
// connection's container from sidewall's own events (which carry the
// cgroup), keeping a bounded LRU of 5-tuples, and falls back to Cilium's
// cgroup id and to the holder of the destination port.
type Joiner struct {
	lookup JoinLookup
	max    int
	ttl    time.Duration
	now    func() time.Time

	mu    sync.Mutex
	lru   *list.List // front: most recently learned
	byKey map[joinKey]*list.Element
	stats JoinStats
}

// NewJoiner builds a joiner holding at most maxEntries connections for ttl
// each (the defaults when 0). lookup may be nil.
func NewJoiner(lookup JoinLookup, maxEntries int, ttl time.Duration) *Joiner {
	if maxEntries <= 0 {
		maxEntries = DefaultJoinEntries
	}
	if ttl <= 0 {
		ttl = DefaultJoinTTL
	}
	return &Joiner{lookup: lookup, max: maxEntries, ttl: ttl, now: time.Now, lru: list.New(), byKey: map[joinKey]*list.Element{}}
}

// SetLookup sets the lookup of the cgroup and port joins (before the
// first Join).
func (j *Joiner) SetLookup(l JoinLookup) { j.lookup = l }

// Learn records that the connection between local (an address of the
// container's pod) and remote belongs to ref.
func (j *Joiner) Learn(proto uint8, local, remote netip.AddrPort, ref ContainerRef) {
	k := joinKey{proto: proto, local: unmapAP(local), remote: unmapAP(remote)}
	exp := j.now().Add(j.ttl)
	j.mu.Lock()
	defer j.mu.Unlock()
	if el, ok := j.byKey[k]; ok {
		e := el.Value.(*joinEntry)
		e.ref, e.expires = ref, exp
		j.lru.MoveToFront(el)
		return
	}
	for j.lru.Len() >= j.max {
		j.removeLocked(j.lru.Back())
		j.stats.Evicted++
	}
	j.byKey[k] = j.lru.PushFront(&joinEntry{key: k, ref: ref, expires: exp})
}

func (j *Joiner) removeLocked(el *list.Element) {
	delete(j.byKey, el.Value.(*joinEntry).key)
	j.lru.Remove(el)
}

// ForgetPods drops what was learned for pods that are gone (by UID), in
// one pass over the state.
func (j *Joiner) ForgetPods(uids map[string]bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	for el := j.lru.Front(); el != nil; {
		next := el.Next()
		if uids[el.Value.(*joinEntry).ref.PodUID] {
			j.removeLocked(el)
		}
		el = next
	}
}

// Stats returns the counters.
func (j *Joiner) Stats() JoinStats {
	j.mu.Lock()
	defer j.mu.Unlock()
	s := j.stats
	s.Entries = j.lru.Len()
	return s
}

func (j *Joiner) tuple(k joinKey, now time.Time) (ContainerRef, bool) {
	el, ok := j.byKey[k]
	if !ok {
		return ContainerRef{}, false
	}
	e := el.Value.(*joinEntry)
	if now.After(e.expires) {
		j.removeLocked(el)
		return ContainerRef{}, false
	}
	return e.ref, true
}

// Join names the containers of a flow from Cilium in place: the
// `k8s:sidewall.io/container=NAME` label on the endpoint, the container in
// the summary (which the compact output prints) and the extensions
// ("sourceContainer", "destinationContainer", "join"). It returns how the
// flow was joined (JoinNone: left as Cilium sent it, marked "join": "none").
func (j *Joiner) Join(f *flowpb.Flow) string {
	src, err1 := netip.ParseAddr(f.GetIP().GetSource())
	dst, err2 := netip.ParseAddr(f.GetIP().GetDestination())
	proto, sport, dport := l4Of(f)
	var srcRef, dstRef ContainerRef
	var srcOK, dstOK bool
	how := JoinNone
	if err1 == nil && err2 == nil {
		src, dst = src.Unmap(), dst.Unmap()
		s, d := netip.AddrPortFrom(src, sport), netip.AddrPortFrom(dst, dport)
		now := j.now()
		j.mu.Lock()
		srcRef, srcOK = j.tuple(joinKey{proto: proto, local: s, remote: d}, now)
		dstRef, dstOK = j.tuple(joinKey{proto: proto, local: d, remote: s}, now)
		j.mu.Unlock()
		srcOK = srcOK && sameEndpoint(f.GetSource(), srcRef)
		dstOK = dstOK && sameEndpoint(f.GetDestination(), dstRef)
		if srcOK || dstOK {
			how = JoinTuple
		}
	}
	if how == JoinNone && j.lookup != nil && f.GetCgroupId() != 0 {
		if ref, ok := j.lookup.ByCgroup(f.GetCgroupId()); ok {
			switch {
			case sameEndpoint(f.GetSource(), ref):
				srcRef, srcOK, how = ref, true, JoinCgroup
			case sameEndpoint(f.GetDestination(), ref):
				dstRef, dstOK, how = ref, true, JoinCgroup
			}
		}
	}
	if how == JoinNone && j.lookup != nil && err1 == nil && err2 == nil && proto != 0 {
		// The serving side of the connection: the destination, or the
		// source of a reply.
		if ref, ok := j.lookup.ByPort(dst, proto, dport); ok && sameEndpoint(f.GetDestination(), ref) {
			dstRef, dstOK, how = ref, true, JoinPort
		} else if f.GetIsReply().GetValue() {
			if ref, ok := j.lookup.ByPort(src, proto, sport); ok && sameEndpoint(f.GetSource(), ref) {
				srcRef, srcOK, how = ref, true, JoinPort
			}
		}
	}
	j.mu.Lock()
	switch how {
	case JoinTuple:
		j.stats.Tuple++
	case JoinCgroup:
		j.stats.Cgroup++
	case JoinPort:
		j.stats.Port++
	default:
		j.stats.None++
	}
	j.mu.Unlock()

	fields := map[string]any{"join": how}
	var names []string
	if srcOK {
		f.Source.Labels = withContainerLabel(f.Source.Labels, srcRef.Container)
		fields["sourceContainer"] = srcRef.Container
		names = append(names, "from "+srcRef.Container)
	}
	if dstOK {
		f.Destination.Labels = withContainerLabel(f.Destination.Labels, dstRef.Container)
		fields["destinationContainer"] = dstRef.Container
		names = append(names, "to "+dstRef.Container)
	}
	if len(names) > 0 {
		sum := "container " + strings.Join(names, ", ")
		if f.Summary != "" {
			sum = f.Summary + "; " + sum
		}
		f.Summary = sum
	}
	if f.Extensions == nil {
		if st, err := structpb.NewStruct(fields); err == nil {
			if a, err := anypb.New(st); err == nil {
				f.Extensions = a
			}
		}
	}
	return how
}

// sameEndpoint: the container is of the pod Cilium names, so a stale
// entry (an address reused by another pod) never names a container.
func sameEndpoint(ep *flowpb.Endpoint, ref ContainerRef) bool {
	return ep != nil && ep.GetPodName() != "" && ep.GetPodName() == ref.Pod && ep.GetNamespace() == ref.Namespace
}

func withContainerLabel(ls []string, name string) []string {
	lb := labels.NewLabel(ContainerLabel, name, labels.LabelSourceK8s)
	l := lb.String()
	if slices.Contains(ls, l) {
		return ls
	}
	ls = append(ls, l)
	slices.Sort(ls)
	return ls
}

func l4Of(f *flowpb.Flow) (proto uint8, sport, dport uint16) {
	switch l4 := f.GetL4().GetProtocol().(type) {
	case *flowpb.Layer4_TCP:
		return ProtoTCP, uint16(l4.TCP.GetSourcePort()), uint16(l4.TCP.GetDestinationPort())
	case *flowpb.Layer4_UDP:
		return ProtoUDP, uint16(l4.UDP.GetSourcePort()), uint16(l4.UDP.GetDestinationPort())
	case *flowpb.Layer4_SCTP:
		return ProtoSCTP, uint16(l4.SCTP.GetSourcePort()), uint16(l4.SCTP.GetDestinationPort())
	case *flowpb.Layer4_ICMPv4:
		return ProtoICMP, 0, 0
	case *flowpb.Layer4_ICMPv6:
		return ProtoICMPv6, 0, 0
	}
	return 0, 0, 0
}

func unmapAP(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
