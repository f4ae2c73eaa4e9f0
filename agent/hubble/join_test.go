package hubble

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	flowpb "github.com/cilium/cilium/api/v1/flow"
)

// ciliumFlow is a flow as Cilium's Hubble sends it: pod endpoints named,
// no container.
func ciliumFlow(t time.Time, src, dst netip.AddrPort, srcPod, dstPod string, verdict flowpb.Verdict) *flowpb.Flow {
	ep := func(pod string) *flowpb.Endpoint {
		if pod == "" {
			return &flowpb.Endpoint{Identity: 2, Labels: []string{"reserved:world"}}
		}
		return &flowpb.Endpoint{ID: 100, Identity: 48025, Namespace: "shop", PodName: pod,
			Labels: []string{"k8s:app=" + pod, "k8s:io.kubernetes.pod.namespace=shop"}}
	}
	return &flowpb.Flow{
		Time: timestamppb.New(t), Uuid: t.Format(time.RFC3339Nano) + src.String() + dst.String(),
		Verdict: verdict, Type: flowpb.FlowType_L3_L4, NodeName: "node-a",
		IP:          &flowpb.IP{Source: src.Addr().String(), Destination: dst.Addr().String(), IpVersion: flowpb.IPVersion_IPv4},
		L4:          &flowpb.Layer4{Protocol: &flowpb.Layer4_TCP{TCP: &flowpb.TCP{SourcePort: uint32(src.Port()), DestinationPort: uint32(dst.Port())}}},
		Source:      ep(srcPod),
		Destination: ep(dstPod),
		IsReply:     wrapperspb.Bool(false),
		Summary:     "TCP Flags: SYN",
	}
}

// testLookup is the agent's side of the join (the agent implements it from
// its state; agent/e2e tests that one on a real node).
type testLookup struct {
	cgroups map[uint64]ContainerRef
	ports   map[netip.AddrPort]ContainerRef
}

func (l testLookup) ByCgroup(id uint64) (ContainerRef, bool) {
	r, ok := l.cgroups[id]
	return r, ok
}

func (l testLookup) ByPort(ip netip.Addr, proto uint8, port uint16) (ContainerRef, bool) {
	if proto != ProtoTCP {
		return ContainerRef{}, false
	}
	r, ok := l.ports[netip.AddrPortFrom(ip, port)]
	return r, ok
}

var (
	podWeb    = netip.MustParseAddr("10.0.1.10")
	podLog    = netip.MustParseAddr("10.0.1.30")
	worldAddr = netip.MustParseAddr("203.0.113.10")
	shipper   = ContainerRef{Namespace: "shop", Pod: "web", Container: "log-shipper", PodUID: "uid-web"}
	appRef    = ContainerRef{Namespace: "shop", Pod: "web", Container: "app", PodUID: "uid-web"}
)

func extFields(t *testing.T, f *flowpb.Flow) map[string]any {
	t.Helper()
	if f.Extensions == nil {
		t.Fatalf("flow has no extensions")
	}
	var st structpb.Struct
	if err := f.Extensions.UnmarshalTo(&st); err != nil {
		t.Fatalf("extensions: %v", err)
	}
	return st.AsMap()
}

func TestJoinByTupleNamesBothDirections(t *testing.T) {
	j := NewJoiner(nil, 0, 0)
	local, remote := netip.AddrPortFrom(podWeb, 40000), netip.AddrPortFrom(podLog, 8080)
	j.Learn(ProtoTCP, local, remote, shipper)
	now := time.Now()

	out := ciliumFlow(now, local, remote, "web", "logging", flowpb.Verdict_FORWARDED)
	if how := j.Join(out); how != JoinTuple {
		t.Fatalf("egress flow joined by %q, want %q", how, JoinTuple)
	}
	if !slices.Contains(out.Source.Labels, "k8s:sidewall.io/container=log-shipper") {
		t.Errorf("source labels %v: no container label", out.Source.Labels)
	}
	if slices.ContainsFunc(out.Destination.Labels, func(l string) bool { return strings.Contains(l, "sidewall.io") }) {
		t.Errorf("destination labels %v: the logging pod is not joined", out.Destination.Labels)
	}
	if !strings.HasSuffix(out.Summary, "; container from log-shipper") {
		t.Errorf("summary %q does not name the container", out.Summary)
	}
	if m := extFields(t, out); m["join"] != JoinTuple || m["sourceContainer"] != "log-shipper" || m["destinationContainer"] != nil {
		t.Errorf("extensions %v", m)
	}

	// The reply of the same connection names the destination.
	reply := ciliumFlow(now, remote, local, "logging", "web", flowpb.Verdict_FORWARDED)
	reply.IsReply = wrapperspb.Bool(true)
	if how := j.Join(reply); how != JoinTuple {
		t.Fatalf("reply joined by %q", how)
	}
	if !slices.Contains(reply.Destination.Labels, "k8s:sidewall.io/container=log-shipper") || reply.Summary != "TCP Flags: SYN; container to log-shipper" {
		t.Errorf("reply: labels %v summary %q", reply.Destination.Labels, reply.Summary)
	}
	// Joining is idempotent on the labels (a flow seen twice).
	n := len(reply.Destination.Labels)
	j.Join(reply)
	if len(reply.Destination.Labels) != n {
		t.Errorf("second join added a label: %v", reply.Destination.Labels)
	}
	if s := j.Stats(); s.Tuple != 3 || s.None != 0 || s.Entries != 1 {
		t.Errorf("stats %+v", s)
	}
}

func TestJoinNeverNamesAnotherPod(t *testing.T) {
	// The address was the web pod's; it now belongs to a new pod, and
	// Cilium names that one: the stale entry must not name a container.
	j := NewJoiner(nil, 0, 0)
	local, remote := netip.AddrPortFrom(podWeb, 40000), netip.AddrPortFrom(worldAddr, 443)
	j.Learn(ProtoTCP, local, remote, shipper)
	f := ciliumFlow(time.Now(), local, remote, "web-2", "", flowpb.Verdict_DROPPED)
	if how := j.Join(f); how != JoinNone {
		t.Fatalf("joined by %q", how)
	}
	if slices.ContainsFunc(f.Source.Labels, func(l string) bool { return strings.Contains(l, "sidewall.io") }) || f.Summary != "TCP Flags: SYN" {
		t.Errorf("not-joined flow changed: labels %v summary %q", f.Source.Labels, f.Summary)
	}
	if m := extFields(t, f); m["join"] != JoinNone {
		t.Errorf("not-joined flow is not marked: %v", m)
	}
}

func TestJoinFallsBackToCgroupThenPort(t *testing.T) {
	lk := testLookup{
		cgroups: map[uint64]ContainerRef{77: shipper},
		ports:   map[netip.AddrPort]ContainerRef{netip.AddrPortFrom(podWeb, 9090): appRef},
	}
	j := NewJoiner(lk, 0, 0)
	now := time.Now()

	// A socket-LB trace carries the socket's cgroup.
	sock := ciliumFlow(now, netip.AddrPortFrom(podWeb, 41000), netip.AddrPortFrom(netip.MustParseAddr("10.96.0.10"), 53), "web", "", flowpb.Verdict_TRACED)
	sock.CgroupId = 77
	if how := j.Join(sock); how != JoinCgroup || !slices.Contains(sock.Source.Labels, "k8s:sidewall.io/container=log-shipper") {
		t.Errorf("socket-LB flow: joined by %q, labels %v", how, sock.Source.Labels)
	}
	// An unknown cgroup falls through to nothing.
	other := ciliumFlow(now, netip.AddrPortFrom(podWeb, 41001), netip.AddrPortFrom(worldAddr, 53), "web", "", flowpb.Verdict_TRACED)
	other.CgroupId = 78
	if how := j.Join(other); how != JoinNone {
		t.Errorf("unknown cgroup: joined by %q", how)
	}

	// Ingress to the app's port, and its reply.
	in := ciliumFlow(now, netip.AddrPortFrom(podLog, 50000), netip.AddrPortFrom(podWeb, 9090), "logging", "web", flowpb.Verdict_DROPPED)
	if how := j.Join(in); how != JoinPort || !slices.Contains(in.Destination.Labels, "k8s:sidewall.io/container=app") {
		t.Errorf("ingress: joined by %q, labels %v", how, in.Destination.Labels)
	}
	if !strings.HasSuffix(in.Summary, "container to app") {
		t.Errorf("ingress summary %q", in.Summary)
	}
	reply := ciliumFlow(now, netip.AddrPortFrom(podWeb, 9090), netip.AddrPortFrom(podLog, 50000), "web", "logging", flowpb.Verdict_FORWARDED)
	reply.IsReply = wrapperspb.Bool(true)
	if how := j.Join(reply); how != JoinPort || !slices.Contains(reply.Source.Labels, "k8s:sidewall.io/container=app") {
		t.Errorf("reply: joined by %q, labels %v", how, reply.Source.Labels)
	}
	// A non-reply from the port is a new connection of unknown origin.
	fromPort := ciliumFlow(now, netip.AddrPortFrom(podWeb, 9090), netip.AddrPortFrom(podLog, 50001), "web", "logging", flowpb.Verdict_FORWARDED)
	if how := j.Join(fromPort); how != JoinNone {
		t.Errorf("non-reply from the bound port: joined by %q", how)
	}
	if s := j.Stats(); s.Cgroup != 1 || s.Port != 2 || s.None != 2 {
		t.Errorf("stats %+v", s)
	}
}

func TestJoinStateIsBounded(t *testing.T) {
	j := NewJoiner(nil, 2, time.Minute)
	clock := time.Now()
	j.now = func() time.Time { return clock }
	remote := netip.AddrPortFrom(worldAddr, 443)
	ap := func(port uint16) netip.AddrPort { return netip.AddrPortFrom(podWeb, port) }
	j.Learn(ProtoTCP, ap(1), remote, shipper)
	j.Learn(ProtoTCP, ap(2), remote, appRef)
	j.Learn(ProtoTCP, ap(1), remote, shipper) // refreshes 1: 2 is the oldest
	j.Learn(ProtoTCP, ap(3), remote, shipper) // evicts 2
	if s := j.Stats(); s.Entries != 2 || s.Evicted != 1 {
		t.Fatalf("stats %+v, want 2 entries and 1 eviction", s)
	}
	joined := func(port uint16) bool {
		return j.Join(ciliumFlow(clock, ap(port), remote, "web", "", flowpb.Verdict_FORWARDED)) == JoinTuple
	}
	if !joined(1) || joined(2) || !joined(3) {
		t.Errorf("after eviction: 1 %v, 2 %v, 3 %v; want the least recently learned (2) gone", joined(1), joined(2), joined(3))
	}

	// Past its TTL an entry names nothing, and is dropped.
	clock = clock.Add(2 * time.Minute)
	if joined(1) {
		t.Errorf("an expired entry joined")
	}
	if s := j.Stats(); s.Entries != 1 {
		t.Errorf("expired entry kept: %+v", s)
	}

	// A removed pod's entries go.
	j.Learn(ProtoTCP, ap(4), remote, ContainerRef{Namespace: "shop", Pod: "db", Container: "db", PodUID: "uid-db"})
	j.ForgetPods(map[string]bool{"uid-web": true})
	if s := j.Stats(); s.Entries != 1 {
		t.Errorf("after ForgetPods(uid-web): %+v, want only the db entry", s)
	}
}

// TestJoinedFlowsFilterByContainerLabel: the stock CLI's --from-label and
// --to-label select the joined container, through the server's Hubble
// filters.
func TestJoinedFlowsFilterByContainerLabel(t *testing.T) {
	s := startServer(t, Options{MaxFlows: 4095})
	j := NewJoiner(testLookup{ports: map[netip.AddrPort]ContainerRef{netip.AddrPortFrom(podWeb, 9090): appRef}}, 0, 0)
	now := time.Now().Add(-time.Second)
	remote := netip.AddrPortFrom(worldAddr, 443)
	j.Learn(ProtoTCP, netip.AddrPortFrom(podWeb, 40001), remote, shipper)
	j.Learn(ProtoTCP, netip.AddrPortFrom(podWeb, 40002), remote, appRef)
	flows := []*flowpb.Flow{
		ciliumFlow(now, netip.AddrPortFrom(podWeb, 40001), remote, "web", "", flowpb.Verdict_DROPPED),
		ciliumFlow(now.Add(time.Millisecond), netip.AddrPortFrom(podWeb, 40002), remote, "web", "", flowpb.Verdict_FORWARDED),
		ciliumFlow(now.Add(2*time.Millisecond), netip.AddrPortFrom(podLog, 50000), netip.AddrPortFrom(podWeb, 9090), "logging", "web", flowpb.Verdict_FORWARDED),
		ciliumFlow(now.Add(3*time.Millisecond), netip.AddrPortFrom(podLog, 50001), remote, "logging", "", flowpb.Verdict_FORWARDED),
	}
	for _, f := range flows {
		s.PublishJoined(f, func(f *flowpb.Flow) { j.Join(f) })
	}
	ports := func(out string) []uint32 {
		var ps []uint32
		for _, f := range parseJSON(t, out) {
			ps = append(ps, f.GetL4().GetTCP().GetSourcePort())
		}
		return ps
	}
	if got := ports(hubble(t, "observe", "--server", s.tcp, "-o", "json", "--from-label", "sidewall.io/container=log-shipper")); !slices.Equal(got, []uint32{40001}) {
		t.Errorf("--from-label sidewall.io/container=log-shipper: source ports %v, want [40001]", got)
	}
	if got := ports(hubble(t, "observe", "--server", s.tcp, "-o", "json", "--from-label", "sidewall.io/container=app")); !slices.Equal(got, []uint32{40002}) {
		t.Errorf("--from-label sidewall.io/container=app: source ports %v, want [40002]", got)
	}
	if got := ports(hubble(t, "observe", "--server", s.tcp, "-o", "json", "--to-label", "k8s:sidewall.io/container=app")); !slices.Equal(got, []uint32{50000}) {
		t.Errorf("--to-label k8s:sidewall.io/container=app: source ports %v, want [50000]", got)
	}
	// The compact output shows the container of a Cilium flow.
	out := hubble(t, "observe", "--server", s.tcp, "--from-label", "sidewall.io/container=log-shipper")
	if !strings.Contains(out, "container from log-shipper") || !strings.Contains(out, "DROPPED") {
		t.Errorf("compact output does not show the container and Cilium's verdict:\n%s", out)
	}
	// The flow nobody joined is there as Cilium sent it.
	if got := ports(hubble(t, "observe", "--server", s.tcp, "-o", "json", "--from-pod", "shop/logging", "--to-ip", worldAddr.String())); !slices.Equal(got, []uint32{50001}) {
		t.Errorf("not-joined flow: %v", got)
	}
}
