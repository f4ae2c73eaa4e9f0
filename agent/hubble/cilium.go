package hubble

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	"github.com/cilium/cilium/pkg/versioncheck"
)

// DefaultCiliumSocket is where the Cilium agent serves its Hubble.
const DefaultCiliumSocket = "unix:///var/run/cilium/hubble.sock"

// minCiliumVersion is the oldest Cilium Hubble the source reads: the
// Flow fields the join uses (cgroup_id, socket_cookie) came in 1.16.
var minCiliumVersion = versioncheck.MustCompile(">=1.16.0")

// CiliumSource follows the local Cilium agent's Hubble and hands each flow
// on. After a lost connection (a Cilium restart) it resumes from the last
// flow it passed on, and passes none twice.
type CiliumSource struct {
	// Address of Cilium's Hubble ("unix:///var/run/cilium/hubble.sock").
	Address string
	// Sink receives each flow, in Cilium's order.
	Sink func(*flowpb.Flow)
	// Logger; nil discards.
	Logger *slog.Logger
	// Backoff bounds the wait between reconnects (1 s to 30 s when zero).
	MinBackoff, MaxBackoff time.Duration

	flows, lost, streams atomic.Uint64
	mu                   sync.Mutex
	err                  error
	// last is the newest flow time passed on; atLast the UUIDs passed on
	// with exactly that time (a resumed stream starts there).
	last   time.Time
	atLast map[string]bool
}

var errNotConnected = errors.New("not connected yet")

// emptyRingPoll is how often a Cilium with no flows yet is asked again.
const emptyRingPoll = 250 * time.Millisecond

// UpstreamStatus implements Upstream.
func (c *CiliumSource) UpstreamStatus() (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return "cilium hubble " + c.Address, c.err
}

// Flows is the number of flows passed on; Lost the flows Cilium reported
// lost to this client.
func (c *CiliumSource) Flows() uint64 { return c.flows.Load() }
func (c *CiliumSource) Lost() uint64  { return c.lost.Load() }

// Streams is the number of streams opened: 1 plus the resumes.
func (c *CiliumSource) Streams() uint64 { return c.streams.Load() }

func (c *CiliumSource) setErr(err error) {
	c.mu.Lock()
	c.err = err
	c.mu.Unlock()
}

// Run follows Cilium's Hubble until ctx ends, reconnecting after errors.
func (c *CiliumSource) Run(ctx context.Context) {
	log := c.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	minB, maxB := c.MinBackoff, c.MaxBackoff
	if minB <= 0 {
		minB = time.Second
	}
	if maxB < minB {
		maxB = max(30*time.Second, minB)
	}
	c.mu.Lock()
	if c.err == nil {
		c.err = errNotConnected
	}
	if c.last.IsZero() {
		// Cilium's flows from now on, none missed between the connect
		// and the follow; older ones were before sidewall could learn
		// their connections.
		c.last = time.Now()
	}
	c.mu.Unlock()
	backoff := minB
	for attempt := 0; ; attempt++ {
		start := time.Now()
		err := c.follow(ctx, log, attempt > 0)
		if ctx.Err() != nil {
			return
		}
		c.setErr(err)
		if time.Since(start) > maxB {
			backoff = minB
		}
		log.Warn("cilium hubble: stream ended; sidewall's own flows keep flowing, retrying", "address", c.Address, "err", err, "retry-in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, maxB)
	}
}

func (c *CiliumSource) follow(ctx context.Context, log *slog.Logger, resumed bool) error {
	conn, err := grpc.NewClient(c.Address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("address %q: %w", c.Address, err)
	}
	defer conn.Close()
	cl := observerpb.NewObserverClient(conn)
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	st, err := cl.ServerStatus(sctx, &observerpb.ServerStatusRequest{})
	cancel()
	if err != nil {
		if status.Code(err) == codes.Unimplemented {
			return fmt.Errorf("not a Hubble observer: %w", err)
		}
		return fmt.Errorf("server status: %w", err)
	}
	warning, err := checkCiliumVersion(st.GetVersion())
	if err != nil {
		return err
	}
	if warning != "" && !resumed {
		log.Warn("cilium hubble: "+warning, "address", c.Address, "version", st.GetVersion())
	}

	// A follower of a Cilium whose ring holds fewer than two flows (just
	// started) gets nothing, ever: Cilium 1.20.2's ring reader starts at
	// LastWriteParallel, an index not yet written on such a ring
	// (TestCiliumRingFollowNeedsTwoFlows). Wait for them.
	for st.GetNumFlows() < 2 {
		c.setErr(nil)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(emptyRingPoll):
		}
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		st, err = cl.ServerStatus(sctx, &observerpb.ServerStatusRequest{})
		cancel()
		if err != nil {
			return fmt.Errorf("server status: %w", err)
		}
	}

	req := &observerpb.GetFlowsRequest{Follow: true}
	c.mu.Lock()
	since := c.last
	c.mu.Unlock()
	req.Since = timestamppb.New(since)
	fctx, fcancel := context.WithCancel(ctx)
	defer fcancel()
	stream, err := cl.GetFlows(fctx, req)
	if err != nil {
		return fmt.Errorf("get flows: %w", err)
	}
	c.setErr(nil)
	c.streams.Add(1)
	if resumed {
		log.Info("cilium hubble: stream resumed", "address", c.Address, "since", since, "version", st.GetVersion())
	} else {
		log.Info("cilium hubble: following", "address", c.Address, "version", st.GetVersion())
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return fmt.Errorf("flows: %w", err)
		}
		switch r := resp.GetResponseTypes().(type) {
		case *observerpb.GetFlowsResponse_Flow:
			if c.fresh(r.Flow) {
				c.flows.Add(1)
				c.Sink(r.Flow)
			}
		case *observerpb.GetFlowsResponse_LostEvents:
			c.lost.Add(r.LostEvents.GetNumEventsLost())
		}
	}
}

// fresh says whether a flow was not passed on before, and records it.
func (c *CiliumSource) fresh(f *flowpb.Flow) bool {
	t := f.GetTime().AsTime()
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case t.Before(c.last):
		// A resumed stream starts at c.last (Since), so an older flow is
		// new: Cilium's CPUs write its ring out of time order by
		// microseconds.
		return true
	case t.Equal(c.last):
		if c.atLast[f.GetUuid()] {
			return false
		}
	default:
		c.last = t
		clear(c.atLast)
	}
	if c.atLast == nil {
		c.atLast = map[string]bool{}
	}
	c.atLast[f.GetUuid()] = true
	return true
}

// CheckAddress says whether addr is an address CiliumSource can dial:
// "unix:///absolute/path" or "host:port".
func CheckAddress(addr string) error {
	if p, ok := strings.CutPrefix(addr, "unix://"); ok {
		if !filepath.IsAbs(p) {
			return fmt.Errorf("a unix socket address needs an absolute path (unix:///var/run/cilium/hubble.sock)")
		}
		return nil
	}
	if strings.Contains(addr, "://") {
		return fmt.Errorf("scheme not supported: use unix:///path or host:port")
	}
	if _, port, err := net.SplitHostPort(addr); err != nil || port == "" {
		return fmt.Errorf("not host:port or unix:///path")
	}
	return nil
}

// checkCiliumVersion reads the version Cilium's Hubble reports, as
// pkg/hubble/build formats it: "cilium v1.20.2+g63aa1b8", or "cilium" alone
// from a build without a version stamp.
func checkCiliumVersion(v string) (warning string, err error) {
	component, semver, _ := strings.Cut(strings.TrimSpace(v), " ")
	if component != "cilium" {
		return "", fmt.Errorf("Hubble version %q: not a Cilium agent's Hubble (its version names %q)", v, component)
	}
	if semver == "" {
		return "Cilium reports no version (a build without its version stamp): not checked", nil
	}
	core, _, _ := strings.Cut(strings.TrimPrefix(semver, "v"), "+")
	ver, err := versioncheck.Version(core)
	if err != nil {
		return "", fmt.Errorf("Hubble version %q: not a Cilium version: %w", v, err)
	}
	if !minCiliumVersion(ver) {
		return "", fmt.Errorf("Hubble version %q: sidewall needs Cilium 1.16 or newer", v)
	}
	return "", nil
}
