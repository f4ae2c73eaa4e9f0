package hubble

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

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
		f.SocketCookie = uint64(i)
		flows[i] = f
	}
	end, _ := conv.Flow(ev)
	end.SocketCookie = endCookie

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
		s.Publish(f)
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
