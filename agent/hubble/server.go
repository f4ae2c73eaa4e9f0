package hubble

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	peerpb "github.com/cilium/cilium/api/v1/peer"
	relaypb "github.com/cilium/cilium/api/v1/relay"
	v1 "github.com/cilium/cilium/pkg/hubble/api/v1"
	"github.com/cilium/cilium/pkg/hubble/filters"
	"github.com/cilium/cilium/pkg/hubble/parser/fieldmask"
)

const (
	// DefaultUnixSocket is where the agent serves the API for node-local
	// clients (`hubble observe --server unix:///var/run/sidewall/hubble.sock`).
	// It is separate from Cilium's /var/run/cilium/hubble.sock.
	DefaultUnixSocket = "/var/run/sidewall/hubble.sock"
	// DefaultTCPAddress is the loopback TCP listener. Cilium's own Hubble
	// server holds 4244 on the node and Hubble Relay 4245, so sidewall takes
	// the next port.
	DefaultTCPAddress = "127.0.0.1:4246"
	// DefaultMaxFlows is Hubble's default ring size.
	DefaultMaxFlows = 4095
	// DefaultLostEventInterval is Hubble's default interval for reporting
	// lost events to a client.
	DefaultLostEventInterval = time.Second
	// EmitterName names sidewall as the producer of its flows.
	EmitterName = "sidewall"
)

// Options configures a Server. The zero value of each field selects the
// default named after it.
type Options struct {
	// UnixSocket is the unix socket path to listen on ("unix://" prefix
	// allowed); "-" disables it.
	UnixSocket string
	// TCPAddress is the TCP address to listen on; "-" disables it.
	TCPAddress string
	// MaxFlows is how many of the newest flows the ring keeps.
	MaxFlows int
	// LostEventInterval is how often a client is told about lost flows at
	// most.
	LostEventInterval time.Duration
	// NodeName is reported by GetNodes and set on flows built by PublishEvent.
	NodeName string
	// Version is sidewall's version, reported by ServerStatus, GetNodes and
	// the flows' emitter.
	Version string
	// SortDelay, when positive, merges the published flows into the ring
	// in time order, each waiting this long (DefaultSortDelay suits a
	// Cilium source); 0 writes each flow as it comes.
	SortDelay time.Duration
	// TLSAddress, with TLS, is a TCP address served with TLS (mTLS when
	// TLS asks for client certificates), Hubble's convention for what
	// Relay reads; "" or "-" serves none.
	TLSAddress string
	TLS        *tls.Config
	// Peers, if set, serves Hubble's Peer service listing them, so Hubble
	// Relay can be pointed at this server (--peer-service).
	Peers func() []Peer
	// Logger receives the server's logs; nil discards them.
	Logger *slog.Logger
}

// Upstream is a source of flows the server re-serves (Cilium's Hubble).
// ServerStatus reports it as a node: connected, or unavailable with its
// error, which `hubble status` prints.
type Upstream interface {
	// UpstreamStatus names the source and says why it is not connected
	// (nil: connected).
	UpstreamStatus() (name string, err error)
}

func (o *Options) setDefaults() {
	if o.UnixSocket == "" {
		o.UnixSocket = DefaultUnixSocket
	}
	if o.TCPAddress == "" {
		o.TCPAddress = DefaultTCPAddress
	}
	if o.MaxFlows == 0 {
		o.MaxFlows = DefaultMaxFlows
	}
	if o.LostEventInterval == 0 {
		o.LostEventInterval = DefaultLostEventInterval
	}
	if o.Version == "" {
		o.Version = "dev"
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Server is a Hubble observer for sidewall flows. Create it with New, feed it
// with Publish or PublishEvent, serve it with Listen and Serve (or Register on
// a gRPC server of your own), and stop it with Close.
type Server struct {
	observerpb.UnimplementedObserverServer

	opts      Options
	converter Converter
	start     time.Time
	ring      *ring
	health    *health.Server
	grpc      *grpc.Server
	tlsGRPC   *grpc.Server // nil without Options.TLS
	tlsLn     net.Listener
	seen      atomic.Uint64
	sorter    *sorter
	upstream  atomic.Pointer[Upstream]

	mu        sync.Mutex
	listeners []net.Listener
	closed    bool
	done      chan struct{}
}

var _ observerpb.ObserverServer = (*Server)(nil)

// New builds a server. It does not listen yet.
func New(opts Options) (*Server, error) {
	opts.setDefaults()
	if opts.MaxFlows < 0 {
		return nil, fmt.Errorf("invalid MaxFlows %d: must be positive", opts.MaxFlows)
	}
	if opts.LostEventInterval < 0 {
		return nil, fmt.Errorf("invalid LostEventInterval %s: must not be negative", opts.LostEventInterval)
	}
	if opts.SortDelay < 0 {
		return nil, fmt.Errorf("invalid SortDelay %s: must not be negative", opts.SortDelay)
	}
	s := &Server{
		opts:      opts,
		converter: Converter{NodeName: opts.NodeName, Version: opts.Version},
		start:     time.Now(),
		ring:      newRing(opts.MaxFlows),
		health:    health.NewServer(),
		grpc:      grpc.NewServer(),
		done:      make(chan struct{}),
	}
	if opts.SortDelay > 0 {
		s.sorter = newSorter(opts.SortDelay, s.write)
	}
	if opts.TLSAddress != "" && opts.TLSAddress != "-" {
		if opts.TLS == nil {
			return nil, fmt.Errorf("TLSAddress %s without a TLS config", opts.TLSAddress)
		}
		s.tlsGRPC = grpc.NewServer(grpc.Creds(credentials.NewTLS(opts.TLS)))
		s.Register(s.tlsGRPC)
	}
	s.health.SetServingStatus(v1.ObserverServiceName, healthpb.HealthCheckResponse_SERVING)
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	s.Register(s.grpc)
	return s, nil
}

// Register adds the Observer and health services to a gRPC server the caller
// runs itself; Listen and Serve do this for their own server.
func (s *Server) Register(g *grpc.Server) {
	observerpb.RegisterObserverServer(g, s)
	healthpb.RegisterHealthServer(g, s.health)
	if s.opts.Peers != nil {
		peerpb.RegisterPeerServer(g, peerService{s: s})
	}
}

// Publish stores a flow in the ring (through the sort buffer when
// SortDelay is set) and wakes the followers. It never waits for a reader:
// readers hold the ring's lock only to copy a batch of pointers. The flow
// must not be modified afterwards. Its time orders it for --since/--until;
// without SortDelay, publish flows in time order.
func (s *Server) Publish(f *flowpb.Flow) { s.PublishJoined(f, nil) }

// PublishJoined publishes a flow of another source: join, if not nil, may
// modify the flow just before it is stored, after the sort delay.
func (s *Server) PublishJoined(f *flowpb.Flow, join func(*flowpb.Flow)) {
	if f == nil {
		return
	}
	ts := f.GetTime()
	if !ts.IsValid() {
		ts = timestamppb.Now()
	}
	it := sortItem{ev: &v1.Event{Timestamp: ts, Event: f}, join: join}
	if s.sorter != nil {
		s.sorter.push(it)
		return
	}
	s.write(it)
}

func (s *Server) write(it sortItem) {
	if it.join != nil {
		it.join(it.ev.GetFlow())
	}
	s.ring.write(it.ev)
	s.seen.Add(1)
}

// SetUpstream makes ServerStatus report u.
func (s *Server) SetUpstream(u Upstream) { s.upstream.Store(&u) }

// PublishEvent converts ev with the server's node name and version and
// publishes the flow.
func (s *Server) PublishEvent(ev *Event) error {
	f, err := s.converter.Flow(ev)
	if err != nil {
		return err
	}
	s.Publish(f)
	return nil
}

// SeenFlows is the number of flows published since New.
func (s *Server) SeenFlows() uint64 { return s.seen.Load() }

// ServerStatus reports the ring's fill level, as Hubble does.
func (s *Server) ServerStatus(context.Context, *observerpb.ServerStatusRequest) (*observerpb.ServerStatusResponse, error) {
	resp := &observerpb.ServerStatusResponse{
		Version:   s.version(),
		MaxFlows:  s.ring.capacity(),
		NumFlows:  s.ring.len(),
		SeenFlows: s.seen.Load(),
		UptimeNs:  uint64(time.Since(s.start).Nanoseconds()),
		FlowsRate: s.flowRate(time.Now()),
	}
	if u := s.upstream.Load(); u != nil {
		// Two sources: sidewall's own datapath, always connected, and
		// the upstream.
		name, err := (*u).UpstreamStatus()
		if err != nil {
			resp.NumConnectedNodes = wrapperspb.UInt32(1)
			resp.NumUnavailableNodes = wrapperspb.UInt32(1)
			resp.UnavailableNodes = []string{fmt.Sprintf("%s (%s): %v", s.opts.NodeName, name, err)}
		} else {
			resp.NumConnectedNodes = wrapperspb.UInt32(2)
			resp.NumUnavailableNodes = wrapperspb.UInt32(0)
		}
	}
	return resp, nil
}

// GetNodes reports this node, the only one a node agent knows.
func (s *Server) GetNodes(ctx context.Context, _ *observerpb.GetNodesRequest) (*observerpb.GetNodesResponse, error) {
	st, _ := s.ServerStatus(ctx, nil)
	var addr string
	if addrs := s.Addrs(); len(addrs) > 0 {
		addr = addrs[len(addrs)-1].String()
	}
	return &observerpb.GetNodesResponse{Nodes: []*observerpb.Node{{
		Name:      s.opts.NodeName,
		Version:   st.GetVersion(),
		Address:   addr,
		State:     relaypb.NodeState_NODE_CONNECTED,
		UptimeNs:  st.GetUptimeNs(),
		NumFlows:  st.GetNumFlows(),
		MaxFlows:  st.GetMaxFlows(),
		SeenFlows: st.GetSeenFlows(),
	}}}, nil
}

// GetNamespaces lists the namespaces of the flows in the ring.
func (s *Server) GetNamespaces(context.Context, *observerpb.GetNamespacesRequest) (*observerpb.GetNamespacesResponse, error) {
	seen := map[string]bool{}
	var out []*observerpb.Namespace
	oldest, next := s.ring.bounds()
	for seq := oldest; seq < next; seq++ {
		f := s.ring.at(seq).GetFlow()
		for _, ns := range []string{f.GetSource().GetNamespace(), f.GetDestination().GetNamespace()} {
			if ns != "" && !seen[ns] {
				seen[ns] = true
				out = append(out, &observerpb.Namespace{Namespace: ns})
			}
		}
	}
	return &observerpb.GetNamespacesResponse{Namespaces: out}, nil
}

func (s *Server) version() string {
	return EmitterName + " " + s.opts.Version
}

// GetFlows streams the flows a request selects; it follows Hubble's
// LocalObserverServer.GetFlows.
func (s *Server) GetFlows(req *observerpb.GetFlowsRequest, stream observerpb.Observer_GetFlowsServer) error {
	if req.GetFirst() && req.GetFollow() {
		return status.Errorf(codes.InvalidArgument, "first cannot be specified with follow")
	}
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	// A follower must end when the server closes, not only when the client
	// goes away.
	go func() {
		select {
		case <-s.done:
			cancel()
		case <-ctx.Done():
		}
	}()

	filterList := filters.DefaultFilters(s.opts.Logger)
	whitelist, err := filters.BuildFilterList(ctx, req.GetWhitelist(), filterList)
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "invalid whitelist: %v", err)
	}
	blacklist, err := filters.BuildFilterList(ctx, req.GetBlacklist(), filterList)
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "invalid blacklist: %v", err)
	}
	mask, err := fieldmask.New(req.GetFieldMask())
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "invalid field mask: %v", err)
	}
	var masked *flowpb.Flow
	if mask.Active() {
		masked = new(flowpb.Flow)
		mask.Alloc(masked.ProtoReflect())
	}

	reader, err := newFlowReader(s.ring, req, whitelist, blacklist)
	if err != nil {
		return err
	}

	// Lost flows are reported in stream order, before the flows that
	// follow the gap, and at most once per interval, as Hubble does.
	var lost uint64
	var lostFirst, lostLast, lostSent time.Time
	sendLost := func(now time.Time) error {
		resp := &observerpb.GetFlowsResponse{
			Time:     timestamppb.New(now),
			NodeName: s.opts.NodeName,
			ResponseTypes: &observerpb.GetFlowsResponse_LostEvents{LostEvents: &flowpb.LostEvent{
				Source:        flowpb.LostEventSource_HUBBLE_RING_BUFFER,
				NumEventsLost: lost,
				First:         timestamppb.New(lostFirst),
				Last:          timestamppb.New(lostLast),
			}},
		}
		lost, lostSent = 0, now
		return stream.Send(resp)
	}
	for {
		e, n, err := reader.Next(ctx)
		now := time.Now()
		if err != nil {
			if errors.Is(err, io.EOF) || (ctx.Err() != nil && stream.Context().Err() == nil) {
				if lost > 0 && errors.Is(err, io.EOF) {
					return sendLost(now)
				}
				return nil
			}
			return err
		}
		if n > 0 {
			if lost == 0 {
				lostFirst = now
			}
			lost += n
			lostLast = now
			continue
		}
		if lost > 0 && now.Sub(lostSent) >= s.opts.LostEventInterval {
			if err := sendLost(now); err != nil {
				return err
			}
		}
		f := e.GetFlow()
		if mask.Active() {
			mask.Copy(masked.ProtoReflect(), f.ProtoReflect())
			f = masked
		}
		if err := stream.Send(&observerpb.GetFlowsResponse{
			Time:          f.GetTime(),
			NodeName:      f.GetNodeName(),
			ResponseTypes: &observerpb.GetFlowsResponse_Flow{Flow: f},
		}); err != nil {
			return err
		}
	}
}

// Listen opens the configured unix socket and TCP listeners. A stale socket
// file left by a previous agent is replaced.
func (s *Server) Listen() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.New("listen: server closed")
	}
	if len(s.listeners) > 0 {
		return errors.New("listen: already listening")
	}
	var ls []net.Listener
	if path := s.opts.UnixSocket; path != "-" {
		path = strings.TrimPrefix(path, "unix://")
		if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
			return fmt.Errorf("create unix socket directory: %w", err)
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove stale unix socket: %w", err)
		}
		l, err := net.Listen("unix", path)
		if err != nil {
			return fmt.Errorf("listen on unix socket %s: %w", path, err)
		}
		if err := os.Chmod(path, 0o660); err != nil {
			l.Close()
			return fmt.Errorf("chmod unix socket: %w", err)
		}
		ls = append(ls, l)
	}
	if addr := s.opts.TCPAddress; addr != "-" {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			for _, l := range ls {
				l.Close()
			}
			return fmt.Errorf("listen on tcp %s: %w", addr, err)
		}
		ls = append(ls, l)
	}
	if s.tlsGRPC != nil {
		l, err := net.Listen("tcp", s.opts.TLSAddress)
		if err != nil {
			for _, l := range ls {
				l.Close()
			}
			return fmt.Errorf("listen on tcp %s (TLS): %w", s.opts.TLSAddress, err)
		}
		s.tlsLn = l
	}
	if len(ls) == 0 && s.tlsLn == nil {
		return errors.New("listen: UnixSocket, TCPAddress and TLSAddress are all disabled")
	}
	s.listeners = ls
	return nil
}

// TLSAddr is the bound TLS address after Listen (nil without one).
func (s *Server) TLSAddr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tlsLn == nil {
		return nil
	}
	return s.tlsLn.Addr()
}

// Addrs returns the bound addresses, unix socket first, after Listen.
func (s *Server) Addrs() []net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	addrs := make([]net.Addr, 0, len(s.listeners))
	for _, l := range s.listeners {
		addrs = append(addrs, l.Addr())
	}
	return addrs
}

// Serve listens (unless Listen was called) and serves until ctx is done or
// Close is called, then closes the server.
func (s *Server) Serve(ctx context.Context) error {
	s.mu.Lock()
	n := len(s.listeners)
	if s.tlsLn != nil {
		n++
	}
	s.mu.Unlock()
	if n == 0 {
		if err := s.Listen(); err != nil {
			return err
		}
	}
	s.mu.Lock()
	ls, tl := s.listeners, s.tlsLn
	s.mu.Unlock()

	errc := make(chan error, len(ls)+1)
	for _, l := range ls {
		go func() { errc <- s.grpc.Serve(l) }()
	}
	if tl != nil {
		go func() { errc <- s.tlsGRPC.Serve(tl) }()
	}
	var err error
	select {
	case <-ctx.Done():
	case <-s.done:
	case err = <-errc:
		if err != nil {
			err = fmt.Errorf("serve hubble api: %w", err)
		}
	}
	s.Close()
	return err
}

// closeGrace bounds how long Close waits for streams to end on their own.
const closeGrace = 5 * time.Second

// Close ends every stream (followers see the end of their stream), stops
// serving and removes the unix socket. It is safe to call more than once.
func (s *Server) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	close(s.done)
	ls := s.listeners
	s.mu.Unlock()
	if s.sorter != nil {
		s.sorter.close()
	}

	s.health.Shutdown()
	for _, g := range []*grpc.Server{s.grpc, s.tlsGRPC} {
		if g == nil {
			continue
		}
		stopped := make(chan struct{})
		go func() {
			g.GracefulStop()
			close(stopped)
		}()
		select {
		case <-stopped:
		case <-time.After(closeGrace):
			// A client that stopped reading keeps Send, and so
			// GracefulStop, blocked; closing its connection releases it.
			g.Stop()
			<-stopped
		}
	}
	for _, l := range ls {
		l.Close()
	}
	if s.tlsLn != nil {
		s.tlsLn.Close()
	}
}

// flowReader yields the events a GetFlows request selects, in ring order.
// It follows Hubble's observer.newRingReader and eventsReader.
type flowReader struct {
	ring                 *ring
	seq                  uint64
	whitelist, blacklist filters.FilterFuncs
	maxEvents            uint64
	follow               bool
	since, until         *time.Time
	eventCount           uint64
	buf                  []*v1.Event
	pending              []*v1.Event
	lost                 uint64
}

func newFlowReader(r *ring, req *observerpb.GetFlowsRequest, whitelist, blacklist filters.FilterFuncs) (*flowReader, error) {
	fr := &flowReader{
		ring:      r,
		whitelist: whitelist,
		blacklist: blacklist,
		maxEvents: req.GetNumber(),
		follow:    req.GetFollow(),
		buf:       make([]*v1.Event, 256),
	}
	if since := req.GetSince(); since != nil {
		if err := since.CheckValid(); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "invalid since: %v", err)
		}
		t := since.AsTime()
		fr.since = &t
	}
	if until := req.GetUntil(); until != nil {
		if err := until.CheckValid(); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "invalid until: %v", err)
		}
		t := until.AsTime()
		fr.until = &t
	}

	oldest, next := r.bounds()
	switch {
	case req.GetFirst() && fr.since == nil:
		// --first N: from the oldest flow held.
		fr.seq = oldest
	case fr.follow && fr.maxEvents == 0 && fr.since == nil:
		// plain --follow: only what comes next.
		fr.seq = next
	default:
		// --last N or --since: rewind to the oldest matching flow within
		// the time range, or until N match, so flows are then sent in
		// order without buffering them. --since takes precedence over N.
		fr.seq = next
		var matched uint64
		for seq := next; seq > oldest; seq-- {
			e := r.at(seq - 1)
			if e == nil {
				break // overwritten while rewinding
			}
			if !filters.Apply(whitelist, blacklist, e) {
				continue
			}
			if fr.since != nil {
				if e.Timestamp.AsTime().Before(*fr.since) {
					break
				}
			}
			fr.seq = seq - 1
			matched++
			if fr.since == nil && matched == fr.maxEvents {
				break
			}
		}
	}
	return fr, nil
}

// Next returns the next matching flow, or the number of flows lost since
// the last call (lost > 0, e == nil) when the writer overtook the reader,
// or io.EOF when the request is satisfied.
func (r *flowReader) Next(ctx context.Context) (e *v1.Event, lost uint64, err error) {
	for {
		if err := ctx.Err(); err != nil {
			return nil, 0, err
		}
		if !r.follow && r.maxEvents > 0 && r.eventCount >= r.maxEvents {
			return nil, 0, io.EOF
		}
		if r.lost > 0 {
			lost, r.lost = r.lost, 0
			return nil, lost, nil
		}
		if len(r.pending) == 0 {
			n, lost, wait := r.ring.readFrom(r.seq, r.buf)
			r.seq += lost + uint64(n)
			r.pending = r.buf[:n]
			if lost > 0 {
				r.lost = lost
				continue
			}
			if n == 0 {
				if !r.follow {
					return nil, 0, io.EOF
				}
				select {
				case <-wait:
					continue
				case <-ctx.Done():
					return nil, 0, ctx.Err()
				}
			}
		}
		e, r.pending = r.pending[0], r.pending[1:]
		if r.since != nil || r.until != nil {
			ts := e.Timestamp.AsTime()
			if r.until != nil && ts.After(*r.until) {
				return nil, 0, io.EOF
			}
			if r.since != nil && ts.Before(*r.since) {
				continue
			}
		}
		if !filters.Apply(r.whitelist, r.blacklist, e) {
			continue
		}
		r.eventCount++
		return e, 0, nil
	}
}

// flowRate is the flows per second over the last minute, or over the time
// the ring covers if that is shorter (Hubble's observer.getFlowRate).
func (s *Server) flowRate(at time.Time) float64 {
	oldest, next := s.ring.bounds()
	since := at.Add(-time.Minute)
	count := 0
	var last *v1.Event
	for seq := next; seq > oldest; seq-- {
		e := s.ring.at(seq - 1)
		if e == nil {
			break
		}
		if e.Timestamp.AsTime().Before(since) {
			last = nil
			break
		}
		last = e
		count++
	}
	if last != nil && oldest > 0 {
		since = last.Timestamp.AsTime()
	}
	if d := at.Sub(since).Seconds(); d > 0 {
		return float64(count) / d
	}
	return 0
}
