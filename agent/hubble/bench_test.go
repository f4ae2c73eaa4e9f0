package hubble

import (
	"bufio"
	"context"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
)

// BenchmarkFollowThroughput measures the flows per second the server
// delivers to one `--follow` client over loopback TCP (the stream the hubble
// CLI opens), publishing pre-built flows as fast as possible. Flows the
// client could not keep up with are reported as lost, not waited for.
func BenchmarkFollowThroughput(b *testing.B) {
	for _, tc := range []struct {
		name   string
		filter []*flowpb.FlowFilter
	}{
		{"all", nil},
		{"from-label", []*flowpb.FlowFilter{{SourceLabel: []string{"sidewall.io/container=log-shipper"}}}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			benchFollow(b, tc.filter)
		})
	}
}

func benchFollow(b *testing.B, whitelist []*flowpb.FlowFilter) {
	benchFollowFlows(b, whitelist, 0, nil, func(i int, f *flowpb.Flow) *flowpb.Flow { f.SocketCookie = uint64(i); return f })
}

// benchFollowFlows publishes b.N flows (mk turns the template into the
// i-th) to a server with the sort delay, each through join when it is not
// nil, and measures their delivery to one follower.
func benchFollowFlows(b *testing.B, whitelist []*flowpb.FlowFilter, delay time.Duration, join func(*flowpb.Flow), mk func(int, *flowpb.Flow) *flowpb.Flow) {
	s, err := New(Options{UnixSocket: "-", TCPAddress: "127.0.0.1:0", MaxFlows: 65535, NodeName: "bench", SortDelay: delay})
	if err != nil {
		b.Fatal(err)
	}
	if err := s.Listen(); err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.Serve(ctx)
	conn, err := grpc.NewClient(s.Addrs()[0].String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	stream, err := observerpb.NewObserverClient(conn).GetFlows(ctx, &observerpb.GetFlowsRequest{Follow: true, Whitelist: whitelist})
	if err != nil {
		b.Fatal(err)
	}

	ev := testEvents(time.Now())[2]
	conv := Converter{NodeName: "bench", Version: "bench"}
	proto, err := conv.Flow(ev)
	if err != nil {
		b.Fatal(err)
	}
	// Attach: publish until the follower sees a flow.
	got := make(chan struct{}, 1)
	go func() {
		if _, err := stream.Recv(); err == nil {
			got <- struct{}{}
		}
	}()
	for attached := false; !attached; {
		s.Publish(proto)
		select {
		case <-got:
			attached = true
		case <-time.After(20 * time.Millisecond):
		}
	}

	const endCookie = ^uint64(0)
	flows := make([]*flowpb.Flow, b.N)
	for i := range flows {
		f, err := conv.Flow(ev)
		if err != nil {
			b.Fatal(err)
		}
		flows[i] = mk(i, f)
	}
	end, _ := conv.Flow(ev)
	end.SocketCookie = endCookie
	// After every flow, for the sort buffer.
	end.Time = timestamppb.New(end.GetTime().AsTime().Add(time.Second))

	done := make(chan [2]uint64)
	b.ResetTimer()
	start := time.Now()
	go func() {
		var delivered, lost uint64
		for {
			r, err := stream.Recv()
			if err != nil {
				b.Error(err)
				done <- [2]uint64{delivered, lost}
				return
			}
			if f := r.GetFlow(); f != nil {
				if f.GetSocketCookie() == endCookie {
					done <- [2]uint64{delivered, lost}
					return
				}
				delivered++
			}
			lost += r.GetLostEvents().GetNumEventsLost()
		}
	}()
	for _, f := range flows {
		s.PublishJoined(f, join)
	}
	s.Publish(end)
	res := <-done
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(res[0])/elapsed.Seconds(), "delivered-flows/s")
	b.ReportMetric(float64(res[1])/float64(b.N), "lost/op")
}

// BenchmarkConvert is the cost of turning one datapath event into a flow.
func BenchmarkConvert(b *testing.B) {
	ev := testEvents(time.Now())[2]
	conv := Converter{NodeName: "bench", Version: "bench"}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := conv.Flow(ev); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkFollowThroughputHubbleCLI measures the flows per second the real
// `hubble observe --follow -o compact` prints when flows are published as
// fast as possible; the CLI's own decoding and printing is part of the
// figure, as it is for a user.
func BenchmarkFollowThroughputHubbleCLI(b *testing.B) {
	bin := hubbleBin(b)
	s, err := New(Options{UnixSocket: "-", TCPAddress: "127.0.0.1:0", MaxFlows: 65535, NodeName: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	if err := s.Listen(); err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.Serve(ctx)

	cmd := exec.CommandContext(ctx, bin, "observe", "--server", s.Addrs()[0].String(), "--follow", "-o", "compact")
	cmd.Env = append(os.Environ(), "HOME="+b.TempDir())
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	lines := make(chan string, 1024)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()

	conv := Converter{NodeName: "bench", Version: "bench"}
	ev := *testEvents(time.Now())[2]
	probe, _ := conv.Flow(&ev)
	for attached := false; !attached; {
		s.Publish(probe)
		select {
		case <-lines:
			attached = true
		case <-time.After(50 * time.Millisecond):
		}
	}
	time.Sleep(100 * time.Millisecond)
	for drained := false; !drained; {
		select {
		case <-lines:
		default:
			drained = true
		}
	}

	flows := make([]*flowpb.Flow, b.N)
	for i := range flows {
		flows[i], _ = conv.Flow(&ev)
	}
	endEv := ev
	endEv.Source.PodName = "end-marker"
	end, _ := conv.Flow(&endEv)

	b.ResetTimer()
	start := time.Now()
	for _, f := range flows {
		s.Publish(f)
	}
	s.Publish(end)
	var printed int
	for l := range lines {
		if strings.Contains(l, "end-marker") {
			break
		}
		printed++
	}
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(printed)/elapsed.Seconds(), "printed-flows/s")
	b.ReportMetric(float64(b.N-printed)/float64(b.N), "lost/op")
}

// benchJoiner is a joiner holding entries connections of the web pod, with
// the app's port for the bound-port join.
func benchJoiner(entries int) *Joiner {
	lk := testLookup{ports: map[netip.AddrPort]ContainerRef{netip.AddrPortFrom(podWeb, 9090): appRef}}
	j := NewJoiner(lk, entries, 0)
	remote := netip.AddrPortFrom(worldAddr, 443)
	for i := range entries {
		j.Learn(ProtoTCP, netip.AddrPortFrom(podWeb, uint16(i)), netip.AddrPortFrom(remote.Addr(), uint16(i>>16)), shipper)
	}
	return j
}

// BenchmarkJoin is the cost of naming the container of one Cilium flow, on
// one core, by each join, against a full default-size join state. The
// flow is re-made for each op outside the timer's reach (its labels grow).
func BenchmarkJoin(b *testing.B) {
	j := benchJoiner(DefaultJoinEntries)
	now := time.Now()
	for _, tc := range []struct {
		name string
		flow *flowpb.Flow
		want string
	}{
		{"5-tuple", ciliumFlow(now, netip.AddrPortFrom(podWeb, 1234), netip.AddrPortFrom(worldAddr, 0), "web", "", flowpb.Verdict_FORWARDED), JoinTuple},
		{"bound-port", ciliumFlow(now, netip.AddrPortFrom(podLog, 50000), netip.AddrPortFrom(podWeb, 9090), "logging", "web", flowpb.Verdict_DROPPED), JoinPort},
		{"none", ciliumFlow(now, netip.AddrPortFrom(podLog, 50000), netip.AddrPortFrom(worldAddr, 443), "logging", "", flowpb.Verdict_FORWARDED), JoinNone},
	} {
		b.Run(tc.name, func(b *testing.B) {
			flows := make([]*flowpb.Flow, b.N)
			for i := range flows {
				flows[i] = proto.Clone(tc.flow).(*flowpb.Flow)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				if how := j.Join(flows[i]); how != tc.want {
					b.Fatalf("joined by %q, want %q", how, tc.want)
				}
			}
			b.StopTimer()
			perFlow := b.Elapsed().Seconds() / float64(b.N)
			b.ReportMetric(1/perFlow, "flows/s")
			b.ReportMetric(perFlow*1000*1e6, "µs-cpu/1000-flows")
		})
	}
}

// BenchmarkJoinFollow is the whole path of Cilium's flows on one core
// (GOMAXPROCS 1): join, sort buffer, ring and delivery to one `--follow`
// client over loopback gRPC. The plain case is sidewall's own flows
// without the sort buffer, for the ratio.
func BenchmarkJoinFollow(b *testing.B) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	b.Run("plain", func(b *testing.B) { benchFollow(b, nil) })
	b.Run("joined", func(b *testing.B) {
		j := benchJoiner(DefaultJoinEntries)
		mk := func(i int, f *flowpb.Flow) *flowpb.Flow {
			f.SocketCookie = uint64(i)
			// A connection of the state: 5-tuple joined.
			f.IP.Source, f.IP.Destination = podWeb.String(), worldAddr.String()
			f.Source.PodName = shipper.Pod
			f.L4 = &flowpb.Layer4{Protocol: &flowpb.Layer4_TCP{TCP: &flowpb.TCP{SourcePort: uint32(i % DefaultJoinEntries), DestinationPort: uint32(i % DefaultJoinEntries >> 16)}}}
			f.Extensions = nil
			return f
		}
		benchFollowFlows(b, nil, DefaultSortDelay, func(f *flowpb.Flow) { j.Join(f) }, mk)
		if s := j.Stats(); s.Tuple == 0 || s.None != 0 {
			b.Fatalf("join stats %+v: the flows were not all joined", s)
		}
	})
}

// BenchmarkJoinStateMemory is the heap one 5-tuple entry costs, at the
// default bound.
func BenchmarkJoinStateMemory(b *testing.B) {
	for range b.N {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		j := benchJoiner(DefaultJoinEntries)
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/DefaultJoinEntries, "bytes/entry")
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/(1<<20), "MiB/default-bound")
		runtime.KeepAlive(j)
	}
}
