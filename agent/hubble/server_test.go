package hubble

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"

	"github.com/sidewall/sidewall/hack/harness"
)

// hubbleBin is the stock hubble CLI that `make tools` builds from the cilium
// module go.mod pins; SIDEWALL_HUBBLE overrides the path.
func hubbleBin(t testing.TB) string {
	t.Helper()
	harness.RequireIntegration(t)
	p, err := harness.Tool("hubble")
	if err != nil {
		t.Fatalf("the real hubble CLI is needed: %v", err)
	}
	return p
}

type testServer struct {
	*Server
	unix string // unix:///... as the CLI takes it
	tcp  string // 127.0.0.1:port
}

func startServer(t *testing.T, opts Options) *testServer {
	t.Helper()
	// Unix socket paths are limited to 108 bytes; t.TempDir() can be longer.
	dir, err := os.MkdirTemp("", "sw-obs-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	opts.UnixSocket = filepath.Join(dir, "hubble.sock")
	opts.TCPAddress = "127.0.0.1:0"
	if opts.NodeName == "" {
		opts.NodeName = "node-a"
	}
	if opts.Version == "" {
		opts.Version = "v0.0.0-test"
	}
	s, err := New(opts)
	if err != nil {
		t.Fatalf("new server: %v", err)
	}
	if err := s.Listen(); err != nil {
		t.Fatalf("listen: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	addrs := s.Addrs()
	return &testServer{Server: s, unix: "unix://" + addrs[0].String(), tcp: addrs[1].String()}
}

// hubble runs the real CLI to completion and returns its stdout.
func hubble(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, hubbleBin(t), args...)
	cmd.Env = hubbleEnv(t)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("hubble %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// hubbleEnv keeps the CLI away from any config of the machine's user.
func hubbleEnv(t *testing.T) []string {
	home := t.TempDir()
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "HUBBLE_") && !strings.HasPrefix(kv, "HOME=") && !strings.HasPrefix(kv, "XDG_CONFIG_HOME=") {
			env = append(env, kv)
		}
	}
	return append(env, "HOME="+home, "XDG_CONFIG_HOME="+filepath.Join(home, ".config"))
}

// parseJSON reads `hubble observe -o json` output: one GetFlowsResponse per
// line.
func parseJSON(t *testing.T, out string) []*flowpb.Flow {
	t.Helper()
	var flows []*flowpb.Flow
	for line := range strings.Lines(out) {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		var resp observerpb.GetFlowsResponse
		if err := protojson.Unmarshal([]byte(line), &resp); err != nil {
			t.Fatalf("parse hubble json line %q: %v", line, err)
		}
		if f := resp.GetFlow(); f != nil {
			flows = append(flows, f)
		}
	}
	return flows
}

// cookies identifies flows in output by their socket cookie, unique per test
// flow.
func cookies(flows []*flowpb.Flow) []uint64 {
	var out []uint64
	for _, f := range flows {
		out = append(out, f.GetSocketCookie())
	}
	return out
}

var (
	web = Endpoint{
		Namespace: "shop", PodName: "web-1", Identity: 31001,
		Labels: []string{"app=web", "k8s:io.kubernetes.pod.namespace=shop"},
	}
	db = Endpoint{
		Namespace: "shop", PodName: "db-0", Identity: 31002,
		Labels: []string{"k8s:app=db", "k8s:io.kubernetes.pod.namespace=shop"},
	}
	world  = Endpoint{Identity: 2, Labels: []string{"reserved:world"}}
	metric = Endpoint{
		Namespace: "ops", PodName: "collector-7", Identity: 31003,
		Labels: []string{"app=collector", "k8s:io.kubernetes.pod.namespace=ops"},
	}
)

func withContainer(e Endpoint, name string) Endpoint {
	e.ContainerName = name
	return e
}

// testEvents is a small traffic mix. Cookies 1..6 identify the events; two
// of them are two hours old, the rest from the last minute, in time order.
func testEvents(now time.Time) []*Event {
	return []*Event{
		{ // 1: old allowed egress of the app to the db
			Time: now.Add(-2 * time.Hour), CgroupID: 9001, SocketCookie: 1, Direction: DirectionEgress,
			SrcIP: netip.MustParseAddr("10.0.1.10"), DstIP: netip.MustParseAddr("10.0.1.20"),
			Proto: ProtoTCP, SrcPort: 41000, DstPort: 5432, TCPFlags: TCPFlagSYN,
			Verdict: VerdictAllow, Match: MatchL3L4, Policy: Policy{Namespace: "shop", Name: "web-app", ID: 7},
			Source: withContainer(web, "app"), Destination: db,
		},
		{ // 2: old denied DNS of the log shipper
			Time: now.Add(-2*time.Hour + time.Second), CgroupID: 9002, SocketCookie: 2, Direction: DirectionEgress,
			SrcIP: netip.MustParseAddr("10.0.1.10"), DstIP: netip.MustParseAddr("198.51.100.53"),
			Proto: ProtoUDP, SrcPort: 53001, DstPort: 53,
			Verdict: VerdictDeny, Policy: Policy{Namespace: "shop", Name: "sidecar-egress", ID: 8},
			Source: withContainer(web, "log-shipper"), Destination: world,
		},
		{ // 3: denied HTTPS of the log shipper to the world
			Time: now.Add(-50 * time.Second), CgroupID: 9002, SocketCookie: 3, Direction: DirectionEgress,
			SrcIP: netip.MustParseAddr("10.0.1.10"), DstIP: netip.MustParseAddr("203.0.113.10"),
			Proto: ProtoTCP, SrcPort: 40000, DstPort: 443, TCPFlags: TCPFlagSYN,
			Verdict: VerdictDeny, Reason: "no-rule", Hook: "connect", Policy: Policy{Namespace: "shop", Name: "sidecar-egress", ID: 8},
			Source: withContainer(web, "log-shipper"), Destination: world,
		},
		{ // 4: audited scrape of the app by the collector (ingress)
			Time: now.Add(-40 * time.Second), CgroupID: 9001, SocketCookie: 4, Direction: DirectionIngress,
			SrcIP: netip.MustParseAddr("10.0.2.30"), DstIP: netip.MustParseAddr("10.0.1.10"),
			Proto: ProtoTCP, SrcPort: 50000, DstPort: 9090, TCPFlags: TCPFlagSYN | TCPFlagACK,
			Verdict: VerdictAudit, Match: MatchL4Only, Policy: Policy{Namespace: "shop", Name: "web-app", ID: 7},
			Source: metric, Destination: withContainer(web, "app"),
		},
		{ // 5: allowed SCTP of the app over IPv6
			Time: now.Add(-30 * time.Second), CgroupID: 9001, SocketCookie: 5, Direction: DirectionEgress,
			SrcIP: netip.MustParseAddr("fd00::10"), DstIP: netip.MustParseAddr("fd00::20"),
			Proto: ProtoSCTP, SrcPort: 36412, DstPort: 36412,
			Verdict: VerdictAllow, Match: MatchL3Only, Policy: Policy{Namespace: "shop", Name: "web-app", ID: 7},
			Source: withContainer(web, "app"), Destination: db,
		},
		{ // 6: denied ping of the log shipper
			Time: now.Add(-20 * time.Second), CgroupID: 9002, SocketCookie: 6, Direction: DirectionEgress,
			SrcIP: netip.MustParseAddr("10.0.1.10"), DstIP: netip.MustParseAddr("203.0.113.10"),
			Proto: ProtoICMP, ICMPType: 8,
			Verdict: VerdictDeny, Policy: Policy{Namespace: "shop", Name: "sidecar-egress", ID: 8},
			Source: withContainer(web, "log-shipper"), Destination: world,
		},
	}
}

func publishAll(t *testing.T, s *testServer, evs []*Event) {
	t.Helper()
	for i, ev := range evs {
		if err := s.PublishEvent(ev); err != nil {
			t.Fatalf("publish event %d: %v", i, err)
		}
	}
}

func TestObserveCompactPrintsVerdictsLikeCilium(t *testing.T) {
	s := startServer(t, Options{})
	now := time.Now()
	publishAll(t, s, testEvents(now))

	out := hubble(t, "observe", "--server", s.tcp, "-o", "compact", "--last", "100")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 6 {
		t.Fatalf("want 6 flows, got %d:\n%s", len(lines), out)
	}
	want := []string{
		"shop/web-1:41000 (ID:31001) -> shop/db-0:5432 (ID:31002) policy-verdict:L3-L4 EGRESS ALLOWED (TCP Flags: SYN)",
		"shop/web-1:53001 (ID:31001) -> 198.51.100.53:53 (world) Policy denied DROPPED (UDP)",
		"shop/web-1:40000 (ID:31001) -> 203.0.113.10:443 (world) Policy denied DROPPED (TCP Flags: SYN)",
		"ops/collector-7:50000 (ID:31003) -> shop/web-1:9090 (ID:31001) policy-verdict:L4-Only INGRESS AUDITED (TCP Flags: SYN, ACK)",
		"shop/web-1:36412 (ID:31001) -> shop/db-0:36412 (ID:31002) policy-verdict:L3-Only EGRESS ALLOWED (SCTP)",
		"shop/web-1 (ID:31001) -> 203.0.113.10 (world) Policy denied DROPPED (ICMPv4 EchoRequest)",
	}
	for i, w := range want {
		if !strings.HasSuffix(lines[i], w) {
			t.Errorf("line %d:\n got %q\nwant suffix %q", i, lines[i], w)
		}
	}
	if strings.Contains(out, "Success DROPPED ()") {
		t.Errorf("compact output shows an unfilled drop:\n%s", out)
	}

	// --print-policy-names shows which ContainerNetworkPolicy decided.
	out = hubble(t, "observe", "--server", s.tcp, "-o", "compact", "--last", "1", "--print-policy-names", "--verdict", "AUDIT")
	if !strings.Contains(out, "AUDITED BY web-app (ContainerNetworkPolicy)") {
		t.Errorf("policy name missing from audited flow:\n%s", out)
	}
}

func TestObserveJSONCarriesContainerAndPolicy(t *testing.T) {
	s := startServer(t, Options{})
	now := time.Now()
	evs := testEvents(now)
	publishAll(t, s, evs)

	// Over the unix socket this time.
	flows := parseJSON(t, hubble(t, "observe", "--server", s.unix, "-o", "json", "--last", "100",
		"--from-label", "sidewall.io/container=log-shipper", "--protocol", "tcp"))
	if len(flows) != 1 {
		t.Fatalf("want the one TCP flow of log-shipper, got %v", cookies(flows))
	}
	f := flows[0]
	ev := evs[2]
	checks := []struct {
		name      string
		got, want any
	}{
		{"verdict", f.GetVerdict(), flowpb.Verdict_DROPPED},
		{"drop_reason_desc", f.GetDropReasonDesc(), flowpb.DropReason_POLICY_DENIED},
		{"drop_reason", f.GetDropReason(), uint32(133)},
		{"event_type", fmt.Sprint(f.GetEventType().GetType(), "/", f.GetEventType().GetSubType()), "1/133"},
		{"traffic_direction", f.GetTrafficDirection(), flowpb.TrafficDirection_EGRESS},
		{"is_reply", f.GetIsReply() != nil && !f.GetIsReply().GetValue(), true},
		{"cgroup_id", f.GetCgroupId(), ev.CgroupID},
		{"socket_cookie", f.GetSocketCookie(), ev.SocketCookie},
		{"time", f.GetTime().AsTime().Equal(ev.Time), true},
		{"node_name", f.GetNodeName(), "node-a"},
		{"emitter", f.GetEmitter().GetName() + " " + f.GetEmitter().GetVersion(), "sidewall v0.0.0-test"},
		{"ip", fmt.Sprint(f.GetIP().GetSource(), ">", f.GetIP().GetDestination(), " ", f.GetIP().GetIpVersion()), "10.0.1.10>203.0.113.10 IPv4"},
		{"tcp", fmt.Sprint(f.GetL4().GetTCP().GetSourcePort(), ">", f.GetL4().GetTCP().GetDestinationPort(), " syn=", f.GetL4().GetTCP().GetFlags().GetSYN()), "40000>443 syn=true"},
		{"source pod", f.GetSource().GetNamespace() + "/" + f.GetSource().GetPodName(), "shop/web-1"},
		{"source identity", f.GetSource().GetIdentity(), uint32(31001)},
		{"source labels", f.GetSource().GetLabels(), []string{"k8s:app=web", "k8s:io.kubernetes.pod.namespace=shop", "k8s:sidewall.io/container=log-shipper"}},
		{"destination identity", f.GetDestination().GetIdentity(), uint32(2)},
		{"destination labels", f.GetDestination().GetLabels(), []string{"reserved:world"}},
		{"egress_denied_by", fmt.Sprint(f.GetEgressDeniedBy()[0].GetKind(), " ", f.GetEgressDeniedBy()[0].GetNamespace(), "/", f.GetEgressDeniedBy()[0].GetName()), "ContainerNetworkPolicy shop/sidecar-egress"},
	}
	for _, c := range checks {
		if fmt.Sprint(c.got) != fmt.Sprint(c.want) {
			t.Errorf("%s: got %v, want %v", c.name, c.got, c.want)
		}
	}
	var ext structpb.Struct
	if err := f.GetExtensions().UnmarshalTo(&ext); err != nil {
		t.Fatalf("extensions are not a google.protobuf.Struct: %v", err)
	}
	m := ext.AsMap()
	for k, want := range map[string]any{"container": "log-shipper", "policy": "sidecar-egress", "policyNamespace": "shop", "policyID": float64(8), "verdict": "deny", "direction": "egress", "reason": "no-rule", "hook": "connect"} {
		if m[k] != want {
			t.Errorf("extensions[%q] = %v, want %v (all: %v)", k, m[k], want, m)
		}
	}
}

func TestObserveFilters(t *testing.T) {
	s := startServer(t, Options{})
	publishAll(t, s, testEvents(time.Now()))
	until := time.Now().Add(-35 * time.Second).UTC().Format(time.RFC3339)

	for _, tc := range []struct {
		args []string
		want []uint64
	}{
		{nil, []uint64{1, 2, 3, 4, 5, 6}},
		{[]string{"--last", "2"}, []uint64{5, 6}},
		{[]string{"--first", "2"}, []uint64{1, 2}},
		{[]string{"--verdict", "DROPPED"}, []uint64{2, 3, 6}},
		{[]string{"--verdict", "AUDIT"}, []uint64{4}},
		{[]string{"--verdict", "FORWARDED"}, []uint64{1, 5}},
		{[]string{"--from-label", "sidewall.io/container=log-shipper"}, []uint64{2, 3, 6}},
		{[]string{"--from-label", "k8s:sidewall.io/container=app"}, []uint64{1, 5}},
		{[]string{"--to-label", "sidewall.io/container=app"}, []uint64{4}},
		{[]string{"--label", "sidewall.io/container=app"}, []uint64{1, 4, 5}},
		{[]string{"--to-label", "reserved:world"}, []uint64{2, 3, 6}},
		{[]string{"--pod", "shop/db-0"}, []uint64{1, 5}},
		{[]string{"--from-pod", "ops/collector"}, []uint64{4}},
		{[]string{"--namespace", "ops"}, []uint64{4}},
		{[]string{"--port", "443"}, []uint64{3}},
		{[]string{"--to-port", "5432"}, []uint64{1}},
		{[]string{"--protocol", "udp"}, []uint64{2}},
		{[]string{"--protocol", "sctp"}, []uint64{5}},
		{[]string{"--protocol", "icmp"}, []uint64{6}},
		{[]string{"--type", "drop"}, []uint64{2, 3, 6}},
		{[]string{"--type", "policy-verdict"}, []uint64{1, 4, 5}},
		{[]string{"--to-ip", "203.0.113.10"}, []uint64{3, 6}},
		{[]string{"--ip-version", "v6"}, []uint64{5}},
		{[]string{"--traffic-direction", "ingress"}, []uint64{4}},
		{[]string{"--tcp-flags", "SYN"}, []uint64{1, 3, 4}},
		{[]string{"--identity", "2"}, []uint64{2, 3, 6}},
		{[]string{"--drop-reason-desc", "POLICY_DENIED"}, []uint64{2, 3, 6}},
		{[]string{"--not", "--verdict", "DROPPED"}, []uint64{1, 4, 5}},
		{[]string{"--verdict", "DROPPED", "--protocol", "tcp"}, []uint64{3}},
		{[]string{"--since", "1h"}, []uint64{3, 4, 5, 6}},
		{[]string{"--since", "1h", "--until", until}, []uint64{3, 4}},
		// As in Hubble, --since takes precedence over --last: N counts from
		// the start of the time range.
		{[]string{"--since", "1h", "--verdict", "DROPPED", "--last", "1"}, []uint64{3}},
		{[]string{"--node-name", "node-a"}, []uint64{1, 2, 3, 4, 5, 6}},
		{[]string{"--node-name", "node-b"}, nil},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			args := []string{"observe", "--server", s.tcp, "-o", "json"}
			if !slices.Contains(tc.args, "--first") && !slices.Contains(tc.args, "--last") {
				args = append(args, "--last", "1000")
			}
			got := cookies(parseJSON(t, hubble(t, append(args, tc.args...)...)))
			if !slices.Equal(got, tc.want) {
				t.Errorf("got flows %v, want %v", got, tc.want)
			}
		})
	}
}

func TestObserveFollowStreamsNewFlows(t *testing.T) {
	s := startServer(t, Options{})
	now := time.Now()
	publishAll(t, s, testEvents(now)) // history a follower must not replay

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, hubbleBin(t), "observe", "--server", s.tcp, "--follow", "-o", "json",
		"--from-label", "sidewall.io/container=log-shipper")
	cmd.Env = hubbleEnv(t)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start hubble observe --follow: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	next := func() *flowpb.Flow {
		t.Helper()
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("hubble exited early; stderr:\n%s", stderr.String())
			}
			fs := parseJSON(t, l)
			if len(fs) != 1 {
				t.Fatalf("want one flow per line, got %q", l)
			}
			return fs[0]
		case <-ctx.Done():
			t.Fatalf("no flow from hubble --follow; stderr:\n%s", stderr.String())
		}
		return nil
	}

	// The CLI connects asynchronously: publish a probe until one arrives.
	probe := *testEvents(now)[2]
	probe.SocketCookie = 100
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var first *flowpb.Flow
	for first == nil {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("hubble exited early; stderr:\n%s", stderr.String())
			}
			first = parseJSON(t, l)[0]
		case <-tick.C:
			probe.Time = time.Now()
			if err := s.PublishEvent(&probe); err != nil {
				t.Fatal(err)
			}
		case <-ctx.Done():
			t.Fatalf("hubble --follow never printed a flow; stderr:\n%s", stderr.String())
		}
	}
	if first.GetSocketCookie() != 100 {
		t.Fatalf("follower replayed history: first flow has cookie %d", first.GetSocketCookie())
	}
	tick.Stop()
	time.Sleep(100 * time.Millisecond) // let in-flight probes arrive before the marked flows
	drain := true
	for drain {
		select {
		case <-lines:
		default:
			drain = false
		}
	}

	// A non-matching flow is filtered out on the server; matching ones
	// arrive in order.
	evs := testEvents(time.Now())
	for i, cookie := range []uint64{201, 202, 203} {
		ev := *evs[2]
		if i == 1 {
			ev = *evs[0] // the app's flow: not log-shipper
		}
		ev.Time = time.Now()
		ev.SocketCookie = cookie
		if err := s.PublishEvent(&ev); err != nil {
			t.Fatal(err)
		}
	}
	if c := next().GetSocketCookie(); c != 201 {
		t.Errorf("first followed flow: cookie %d, want 201", c)
	}
	if c := next().GetSocketCookie(); c != 203 {
		t.Errorf("second followed flow: cookie %d, want 203 (202 is not log-shipper's)", c)
	}
}

func TestStatus(t *testing.T) {
	s := startServer(t, Options{MaxFlows: 4095})
	publishAll(t, s, testEvents(time.Now()))

	out := hubble(t, "status", "--server", s.tcp)
	for _, want := range []string{
		"Healthcheck (via " + s.tcp + "): Ok",
		"Current/Max Flows: 6/4,095 (0.15%)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("hubble status: missing %q in:\n%s", want, out)
		}
	}
	out = hubble(t, "status", "--server", s.unix, "-o", "json")
	var st struct {
		NumFlows  json.Number `json:"num_flows"`
		MaxFlows  json.Number `json:"max_flows"`
		SeenFlows json.Number `json:"seen_flows"`
		UptimeNs  json.Number `json:"uptime_ns"`
		Version   string      `json:"version"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("parse hubble status json %q: %v", out, err)
	}
	if st.NumFlows != "6" || st.MaxFlows != "4095" || st.SeenFlows != "6" || st.Version != "sidewall v0.0.0-test" || st.UptimeNs == "" {
		t.Errorf("hubble status json: %+v", st)
	}
}

func TestRingKeepsNewestFlows(t *testing.T) {
	s := startServer(t, Options{MaxFlows: 7})
	base := *testEvents(time.Now())[2]
	for i := 1; i <= 20; i++ {
		ev := base
		ev.Time = time.Now()
		ev.SocketCookie = uint64(i)
		if err := s.PublishEvent(&ev); err != nil {
			t.Fatal(err)
		}
	}
	got := cookies(parseJSON(t, hubble(t, "observe", "--server", s.tcp, "-o", "json", "--last", "100")))
	if want := []uint64{14, 15, 16, 17, 18, 19, 20}; !slices.Equal(got, want) {
		t.Errorf("ring of 7 after 20 flows: got %v, want %v", got, want)
	}
	st, err := s.ServerStatus(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if st.GetNumFlows() != 7 || st.GetMaxFlows() != 7 || st.GetSeenFlows() != 20 {
		t.Errorf("status after overflow: %v", st)
	}
}

// A follower that stops reading must not hold up the publisher; when it
// resumes it is told how many flows it lost, as Hubble does.
func TestSlowFollowerGetsLostEventsAndDoesNotBlockPublisher(t *testing.T) {
	s := startServer(t, Options{MaxFlows: 63, LostEventInterval: time.Nanosecond})
	conn, err := grpc.NewClient(s.tcp, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	stream, err := observerpb.NewObserverClient(conn).GetFlows(ctx, &observerpb.GetFlowsRequest{Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	// Unbuffered: while the test does not read, the client holds at most
	// one response and gRPC's flow control pushes back on the server.
	resps := make(chan *observerpb.GetFlowsResponse)
	go func() {
		defer close(resps)
		for {
			r, err := stream.Recv()
			if err != nil {
				return
			}
			select {
			case resps <- r:
			case <-ctx.Done():
				return
			}
		}
	}()
	base := *testEvents(time.Now())[2]
	publish := func(cookie uint64) {
		ev := base
		ev.Time = time.Now()
		ev.SocketCookie = cookie
		if err := s.PublishEvent(&ev); err != nil {
			t.Fatal(err)
		}
	}
	// Probe until the follower is attached.
	probes := uint64(0)
	for attached := false; !attached; {
		probes++
		publish(probes)
		select {
		case <-resps:
			attached = true
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
			t.Fatal("follower never attached")
		}
	}

	// The client does not read while 50,000 flows of 1 KiB are published:
	// far more than gRPC's largest flow-control window (16 MiB) and the
	// reader's batch hold. The flows are built up front so that only
	// Publish is timed.
	const n = 50_000
	pad := strings.Repeat("x", 1024)
	batch := make([]*flowpb.Flow, n)
	for i := range batch {
		batch[i] = &flowpb.Flow{Time: timestamppb.Now(), SocketCookie: 1_000_000 + uint64(i), Summary: pad}
	}
	start := time.Now()
	for _, f := range batch {
		s.Publish(f)
	}
	t.Logf("published %d flows in %s with a stalled follower", n, time.Since(start))

	var flows, lost, last uint64
	for last != 1_000_000+n-1 {
		r, ok := <-resps
		if !ok {
			t.Fatalf("stream ended after %d flows, %d lost", flows, lost)
		}
		switch {
		case r.GetFlow() != nil:
			c := r.GetFlow().GetSocketCookie()
			if c >= 1_000_000 {
				if c <= last {
					t.Fatalf("flows out of order: %d after %d", c, last)
				}
				last = c
				flows++
			}
		case r.GetLostEvents() != nil:
			le := r.GetLostEvents()
			if le.GetSource() != flowpb.LostEventSource_HUBBLE_RING_BUFFER {
				t.Errorf("lost event source %v", le.GetSource())
			}
			lost += le.GetNumEventsLost()
		}
	}
	t.Logf("follower received %d flows and was told %d were lost", flows, lost)
	if flows == n || lost == 0 {
		t.Errorf("stalled follower received %d of %d flows and was told of %d lost: the ring did not overtake it", flows, n, lost)
	}
	// Every flow is either delivered or counted as lost (a few probes may
	// be among the lost).
	if flows+lost < n || flows+lost > n+probes {
		t.Errorf("delivered %d + lost %d != published %d (+%d probes)", flows, lost, n, probes)
	}
}

func TestGetNodesAndNamespaces(t *testing.T) {
	s := startServer(t, Options{})
	publishAll(t, s, testEvents(time.Now()))
	conn, err := grpc.NewClient(s.tcp, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := observerpb.NewObserverClient(conn)
	nodes, err := c.GetNodes(context.Background(), &observerpb.GetNodesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes.GetNodes()) != 1 || nodes.GetNodes()[0].GetName() != "node-a" || nodes.GetNodes()[0].GetNumFlows() != 6 {
		t.Errorf("GetNodes: %v", nodes)
	}
	nss, err := c.GetNamespaces(context.Background(), &observerpb.GetNamespacesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, ns := range nss.GetNamespaces() {
		names = append(names, ns.GetNamespace())
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"ops", "shop"}) {
		t.Errorf("GetNamespaces: %v", names)
	}
}

func TestConverterRejectsBadEvents(t *testing.T) {
	good := func() *Event { return testEvents(time.Now())[2] }
	for _, tc := range []struct {
		name   string
		mutate func(*Event)
		want   string
	}{
		{"no src", func(e *Event) { e.SrcIP = netip.Addr{} }, "SrcIP"},
		{"no dst", func(e *Event) { e.DstIP = netip.Addr{} }, "DstIP"},
		{"mixed families", func(e *Event) { e.DstIP = netip.MustParseAddr("fd00::1") }, "different IP families"},
		{"direction", func(e *Event) { e.Direction = 0 }, "Direction"},
		{"verdict", func(e *Event) { e.Verdict = 9 }, "Verdict"},
		{"proto", func(e *Event) { e.Proto = 47 }, "Proto: unsupported IP protocol 47"},
		{"icmp over v6", func(e *Event) {
			e.Proto = ProtoICMP
			e.SrcIP, e.DstIP = netip.MustParseAddr("fd00::1"), netip.MustParseAddr("fd00::2")
		}, "Proto: ICMP"},
		{"empty label", func(e *Event) { e.Source.Labels = []string{""} }, "Source: Labels[0]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ev := good()
			tc.mutate(ev)
			_, err := Converter{}.Flow(ev)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got error %v, want one containing %q", err, tc.want)
			}
		})
	}
	if _, err := (Converter{}).Flow(good()); err != nil {
		t.Errorf("good event: %v", err)
	}
}

func TestCloseEndsFollowers(t *testing.T) {
	s := startServer(t, Options{})
	conn, err := grpc.NewClient(s.tcp, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	stream, err := observerpb.NewObserverClient(conn).GetFlows(context.Background(), &observerpb.GetFlowsRequest{Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		for {
			if _, err := stream.Recv(); err != nil {
				done <- err
				return
			}
		}
	}()
	time.Sleep(100 * time.Millisecond)
	closed := make(chan struct{})
	go func() { s.Close(); close(closed) }()
	select {
	case err := <-done:
		if err != io.EOF {
			t.Logf("follower ended with %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("follower still open 10s after Close")
	}
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return")
	}
}

// A client that stopped reading must not keep Close from returning.
func TestCloseWithStalledClient(t *testing.T) {
	s := startServer(t, Options{})
	conn, err := grpc.NewClient(s.tcp, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	stream, err := observerpb.NewObserverClient(conn).GetFlows(context.Background(), &observerpb.GetFlowsRequest{Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	// Attach, then never read again while 50 MiB of flows are published.
	base := *testEvents(time.Now())[2]
	got := make(chan struct{})
	go func() {
		if _, err := stream.Recv(); err == nil {
			close(got)
		}
	}()
	for attached := false; !attached; {
		if err := s.PublishEvent(&base); err != nil {
			t.Fatal(err)
		}
		select {
		case <-got:
			attached = true
		case <-time.After(200 * time.Millisecond):
		}
	}
	pad := strings.Repeat("x", 1024)
	for i := range 50_000 {
		s.Publish(&flowpb.Flow{Time: timestamppb.Now(), SocketCookie: uint64(i), Summary: pad})
	}
	closed := make(chan struct{})
	go func() { s.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(3 * closeGrace):
		t.Fatal("Close blocked by a client that does not read")
	}
}
