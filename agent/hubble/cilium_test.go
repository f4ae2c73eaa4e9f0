package hubble

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
)

func TestSortBufferMergesSourcesInTimeOrder(t *testing.T) {
	s := startServer(t, Options{MaxFlows: 4095, SortDelay: 100 * time.Millisecond})
	base := time.Now().Add(-time.Second)
	var mu sync.Mutex
	var joinedAt []int
	at := func(ms int) *flowpb.Flow {
		return ciliumFlow(base.Add(time.Duration(ms)*time.Millisecond), netip.AddrPortFrom(podWeb, uint16(40000+ms)), netip.AddrPortFrom(worldAddr, 443), "web", "", flowpb.Verdict_FORWARDED)
	}
	// Two sources, each in its own order, one a little behind.
	for _, ms := range []int{5, 1, 3} {
		s.PublishJoined(at(ms), func(f *flowpb.Flow) {
			mu.Lock()
			joinedAt = append(joinedAt, int(f.GetL4().GetTCP().GetSourcePort())-40000)
			mu.Unlock()
		})
	}
	for _, ms := range []int{2, 4} {
		s.Publish(at(ms))
	}
	deadline := time.Now().Add(10 * time.Second)
	for s.SeenFlows() < 5 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	var got []uint32
	for _, f := range parseJSON(t, hubble(t, "observe", "--server", s.tcp, "-o", "json")) {
		got = append(got, f.GetL4().GetTCP().GetSourcePort()-40000)
	}
	if !slices.Equal(got, []uint32{1, 2, 3, 4, 5}) {
		t.Errorf("flows in the ring: %v, want in time order 1..5", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(joinedAt, []int{1, 3, 5}) {
		t.Errorf("joins ran in order %v, want as each flow left the buffer: 1 3 5", joinedAt)
	}
}

// ciliumStandIn serves sidewall's own Hubble server as if it were a
// Cilium agent's: the same Observer API (its GetFlows follows Hubble's
// LocalObserverServer), with a Cilium version. No Cilium agent runs in this
// package's tests; agent/e2e follows the real one.
type ciliumStandIn struct {
	*Server
	version string
}

func (c ciliumStandIn) ServerStatus(ctx context.Context, req *observerpb.ServerStatusRequest) (*observerpb.ServerStatusResponse, error) {
	st, err := c.Server.ServerStatus(ctx, req)
	if st != nil {
		st.Version = c.version
	}
	return st, err
}

// startStandIn serves a stand-in Cilium Hubble on a unix socket at path.
func startStandIn(t *testing.T, path, version string) *Server {
	t.Helper()
	s, err := New(Options{UnixSocket: path, TCPAddress: "-", NodeName: "node-a", Version: "x"})
	if err != nil {
		t.Fatal(err)
	}
	s.grpc = grpc.NewServer()
	observerpb.RegisterObserverServer(s.grpc, ciliumStandIn{Server: s, version: version})
	healthpb.RegisterHealthServer(s.grpc, s.health)
	if err := s.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = s.Serve(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return s
}

type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestCiliumSourceResumesWithoutDuplicates(t *testing.T) {
	dir, err := os.MkdirTemp("", "sw-cil-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "hubble.sock")
	var base time.Time
	flow := func(i int) *flowpb.Flow {
		f := ciliumFlow(base.Add(time.Duration(i)*time.Millisecond), netip.AddrPortFrom(podWeb, uint16(40000+i)), netip.AddrPortFrom(worldAddr, 443), "web", "", flowpb.Verdict_FORWARDED)
		f.Uuid = fmt.Sprintf("uuid-%d", i)
		return f
	}
	up := startStandIn(t, sock, "cilium v1.20.2+g63aa1b8")
	// Flows from before the source started are not followed (and a
	// Cilium with flows is followed from the source's start).
	up.Publish(ciliumFlow(time.Now().Add(-time.Minute), netip.AddrPortFrom(podWeb, 39999), netip.AddrPortFrom(worldAddr, 443), "web", "", flowpb.Verdict_FORWARDED))
	down := startServer(t, Options{MaxFlows: 4095, SortDelay: 20 * time.Millisecond})
	var logs logBuffer
	src := &CiliumSource{Address: "unix://" + sock, Sink: down.Publish, MinBackoff: 50 * time.Millisecond, MaxBackoff: 100 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))}
	down.SetUpstream(src)
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { src.Run(ctx); close(ran) }()
	t.Cleanup(func() { cancel(); <-ran })
	// (Two flows with the same time: a resumed stream starts at that
	// time and must repeat neither.)
	base = time.Now().Add(10 * time.Millisecond)
	for i := 1; i <= 3; i++ {
		up.Publish(flow(i))
	}
	same := flow(3)
	same.Uuid = "uuid-3b"
	up.Publish(same)

	waitFor(t, "4 flows from the first stream", func() bool { return down.SeenFlows() == 4 })
	if name, err := src.UpstreamStatus(); err != nil || name != "cilium hubble unix://"+sock {
		t.Errorf("status %q %v, want connected", name, err)
	}

	// Cilium restarts. The new one (for the test) still holds the old
	// flows, as a lost connection to a running Cilium does, and has new.
	up.Close()
	waitFor(t, "the stream to end", func() bool { _, err := src.UpstreamStatus(); return err != nil })
	out := hubble(t, "status", "--server", down.tcp)
	if !strings.Contains(out, "Connected Nodes: 1/2") || !strings.Contains(out, "Unavailable Nodes: 1") || !strings.Contains(out, "node-a (cilium hubble unix://"+sock+")") {
		t.Errorf("hubble status while Cilium is away:\n%s", out)
	}
	up2 := startStandIn(t, sock, "cilium v1.20.2+g63aa1b8")
	for i := 1; i <= 3; i++ {
		up2.Publish(flow(i))
	}
	up2.Publish(same)
	up2.Publish(flow(4))
	up2.Publish(flow(5))
	waitFor(t, "the new flows", func() bool { return down.SeenFlows() >= 6 })
	time.Sleep(200 * time.Millisecond) // a duplicate would come now

	var uuids []string
	for _, f := range parseJSON(t, hubble(t, "observe", "--server", down.tcp, "-o", "json")) {
		uuids = append(uuids, f.GetUuid())
	}
	if want := []string{"uuid-1", "uuid-2", "uuid-3", "uuid-3b", "uuid-4", "uuid-5"}; !slices.Equal(uuids, want) {
		t.Errorf("flows after the restart: %v, want each once: %v", uuids, want)
	}
	if !strings.Contains(logs.String(), "stream ended") || !strings.Contains(logs.String(), "stream resumed") {
		t.Errorf("log does not note the lost and resumed stream:\n%s", logs.String())
	}
	if out := hubble(t, "status", "--server", down.tcp); !strings.Contains(out, "Connected Nodes: 2/2") {
		t.Errorf("hubble status after the resume:\n%s", out)
	}
}

func TestCiliumSourceBadUpstreamIsReportedAndOwnFlowsFlow(t *testing.T) {
	dir, err := os.MkdirTemp("", "sw-cil-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	old := filepath.Join(dir, "old.sock")
	startStandIn(t, old, "cilium v1.14.3+g1234567")
	notCilium := startServer(t, Options{MaxFlows: 15}) // sidewall's own Hubble

	for _, tc := range []struct {
		name, addr, want string
	}{
		{"unreachable", "unix://" + filepath.Join(dir, "absent.sock"), "no such file or directory"},
		{"old Cilium", "unix://" + old, "sidewall needs Cilium 1.16 or newer"},
		{"not Cilium", notCilium.unix, "not a Cilium agent's Hubble"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			down := startServer(t, Options{MaxFlows: 4095, SortDelay: 10 * time.Millisecond})
			src := &CiliumSource{Address: tc.addr, Sink: down.Publish, MinBackoff: 20 * time.Millisecond, MaxBackoff: 50 * time.Millisecond}
			down.SetUpstream(src)
			ctx, cancel := context.WithCancel(context.Background())
			ran := make(chan struct{})
			go func() { src.Run(ctx); close(ran) }()
			defer func() { cancel(); <-ran }()
			waitFor(t, "the error", func() bool {
				_, err := src.UpstreamStatus()
				return err != nil && strings.Contains(err.Error(), tc.want)
			})
			out := hubble(t, "status", "--server", down.tcp)
			if !strings.Contains(out, "Unavailable Nodes: 1") || !strings.Contains(out, tc.want) {
				t.Errorf("hubble status does not show the bad upstream (%q):\n%s", tc.want, out)
			}
			// sidewall's own flows keep flowing.
			publishAll(t, down, testEvents(time.Now())[2:3])
			waitFor(t, "sidewall's own flow", func() bool { return down.SeenFlows() == 1 })
			if fs := parseJSON(t, hubble(t, "observe", "--server", down.tcp, "-o", "json")); len(fs) != 1 || fs[0].GetVerdict() != flowpb.Verdict_DROPPED {
				t.Errorf("own flows: %v", fs)
			}
		})
	}
}

func TestCheckCiliumVersion(t *testing.T) {
	// The forms pkg/hubble/build's Version.String produces.
	for v, ok := range map[string]bool{
		"cilium v1.20.2+g63aa1b8": true,
		"cilium v1.16.0":          true,
		"cilium v1.15.9+gabc":     false,
		"cilium":                  true, // unstamped build: a warning
		"hubble-relay v1.20.2":    false,
		"sidewall v0.1.0":         false,
		"":                        false,
		"cilium vX":               false,
	} {
		if _, err := checkCiliumVersion(v); (err == nil) != ok {
			t.Errorf("checkCiliumVersion(%q) = %v, want ok %v", v, err, ok)
		}
	}
}

func TestCheckAddress(t *testing.T) {
	for addr, ok := range map[string]bool{
		"unix:///var/run/cilium/hubble.sock": true,
		"127.0.0.1:4244":                     true,
		"localhost:4244":                     true,
		"unix://relative/hubble.sock":        false,
		"/var/run/cilium/hubble.sock":        false,
		"http://127.0.0.1:4244":              false,
		"127.0.0.1":                          false,
	} {
		if err := CheckAddress(addr); (err == nil) != ok {
			t.Errorf("CheckAddress(%q) = %v, want ok %v", addr, err, ok)
		}
	}
}
