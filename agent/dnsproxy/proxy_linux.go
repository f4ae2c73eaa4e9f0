package dnsproxy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/dns"
	"golang.org/x/sys/unix"

	"github.com/sidewall/sidewall/bpfext"
)

// DefaultTimeout bounds one exchange with the upstream server: what a
// resolver waits for an answer before it asks again (glibc's default).
const DefaultTimeout = 5 * time.Second

// Query is one query the proxy forwarded, as the datapath recorded it.
type Query struct {
	// CgroupID is the classified cgroup of the container that asked.
	CgroupID uint64
	// Client is the container socket; Server the server it asked.
	Client, Server netip.AddrPort
	// Proto is bpfext.ProtoUDP or bpfext.ProtoTCP.
	Proto uint8
	// RuleID is the rule that allowed the container the server.
	RuleID uint32
	Msg    *dns.Msg
	// Start is when the proxy received the query.
	Start time.Time
}

// Config configures one pod's proxy.
type Config struct {
	// PodID is the datapath's number of the pod.
	PodID uint32
	// Netns is the path of the pod's network namespace
	// (/proc/PID/ns/net or a bind mount of it).
	Netns string
	// Pending returns what the datapath recorded of the query the
	// container socket with this source port sent (bpfext.DNSPending).
	Pending func(proto uint8, port uint16) (bpfext.DNSQuery, bool, error)
	// Learn is called with each answer that answers its query, before the
	// answer is passed on: it writes the learned addresses. An error
	// (nothing could be learned) still passes the answer on; the
	// addresses then stay unreachable.
	Learn func(q *Query, a Answer) error
	// Refused is called for a query or answer the proxy drops, with why.
	Refused func(q *Query, reason string)
	// Timeout bounds one upstream exchange; DefaultTimeout when 0.
	Timeout time.Duration
	Log     *slog.Logger
}

// Proxy serves one pod: UDP and TCP on 127.0.0.1 and, when the pod has
// it, ::1, all on one port.
type Proxy struct {
	cfg    Config
	ns     *os.File
	port   uint16
	v6     bool
	udp    []*net.UDPConn
	tcp    []*net.TCPListener
	wg     sync.WaitGroup
	closed atomic.Bool
	ctx    context.Context
	cancel context.CancelFunc
}

// Start opens the proxy's sockets inside the pod's network namespace and
// serves them until Close.
func Start(cfg Config) (*Proxy, error) {
	if cfg.Pending == nil || cfg.Learn == nil {
		return nil, errors.New("dns proxy: Pending and Learn are required")
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	ns, err := os.Open(cfg.Netns)
	if err != nil {
		return nil, fmt.Errorf("dns proxy of pod %d: open netns: %w", cfg.PodID, err)
	}
	p := &Proxy{cfg: cfg, ns: ns}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	if err := p.listen(); err != nil {
		p.Close()
		return nil, fmt.Errorf("dns proxy of pod %d: %w", cfg.PodID, err)
	}
	for _, c := range p.udp {
		p.wg.Add(1)
		go p.serveUDP(c)
	}
	for _, l := range p.tcp {
		p.wg.Add(1)
		go p.serveTCP(l)
	}
	return p, nil
}

// Port is the proxy's port on the pod's loopback.
func (p *Proxy) Port() uint16 { return p.port }

// IPv6 reports whether the proxy also listens on ::1.
func (p *Proxy) IPv6() bool { return p.v6 }

// listen binds UDP 127.0.0.1 to a free port, then TCP and (if the pod has
// ::1) both on ::1 to the same port, trying again when one is taken.
func (p *Proxy) listen() error {
	var last error
	for range 16 {
		err := p.inNetns(func() error {
			u4, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				return err
			}
			port := u4.LocalAddr().(*net.UDPAddr).Port
			t4, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
			if err != nil {
				u4.Close()
				return err
			}
			p.udp, p.tcp, p.port = []*net.UDPConn{u4}, []*net.TCPListener{t4}, uint16(port)
			u6, err := net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6loopback, Port: port})
			if err != nil {
				return nil // no ::1 in the pod: IPv4 only
			}
			t6, err := net.ListenTCP("tcp6", &net.TCPAddr{IP: net.IPv6loopback, Port: port})
			if err != nil {
				u6.Close()
				return nil
			}
			p.udp, p.tcp, p.v6 = append(p.udp, u6), append(p.tcp, t6), true
			return nil
		})
		if err == nil {
			return nil
		}
		last = err
	}
	return fmt.Errorf("listen on the pod's loopback: %w", last)
}

// inNetns runs fn on a thread inside the pod's network namespace; sockets
// fn opens stay in it.
func (p *Proxy) inNetns(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			errc <- err
			runtime.UnlockOSThread()
			return
		}
		defer orig.Close()
		if err := unix.Setns(int(p.ns.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("enter netns: %w", err)
			runtime.UnlockOSThread()
			return
		}
		ferr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			// The thread stays locked and dies with this goroutine.
			errc <- errors.Join(ferr, fmt.Errorf("leave netns: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Close stops serving and closes every socket.
func (p *Proxy) Close() error {
	if p.closed.Swap(true) {
		return nil
	}
	p.cancel()
	for _, c := range p.udp {
		c.Close()
	}
	for _, l := range p.tcp {
		l.Close()
	}
	p.wg.Wait()
	return p.ns.Close()
}

func (p *Proxy) refuse(q *Query, reason string) {
	if p.cfg.Refused != nil {
		p.cfg.Refused(q, reason)
	}
	p.cfg.Log.Debug("dns query dropped", "pod", p.cfg.PodID, "reason", reason)
}

// query finds who sent the query arriving from client, and parses it.
func (p *Proxy) query(proto uint8, client netip.AddrPort, b []byte) (*Query, error) {
	pq, ok, err := p.cfg.Pending(proto, client.Port())
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("no redirected query from port %d: not sent through the datapath", client.Port())
	}
	q := &Query{CgroupID: pq.CgroupID, Client: client, Server: pq.Server, Proto: proto, RuleID: pq.RuleID, Start: time.Now()}
	m, err := ParseQuery(b)
	if err != nil {
		return q, err
	}
	q.Msg = m
	return q, nil
}

func (p *Proxy) serveUDP(c *net.UDPConn) {
	defer p.wg.Done()
	buf := make([]byte, MaxMessage)
	for {
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			if p.closed.Load() {
				return
			}
			p.cfg.Log.Warn("dns proxy read", "pod", p.cfg.PodID, "err", err)
			continue
		}
		b := append([]byte(nil), buf[:n]...)
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			q, err := p.query(bpfext.ProtoUDP, netip.AddrPortFrom(from.Addr().Unmap(), from.Port()), b)
			if err != nil {
				p.refuse(q, err.Error())
				return
			}
			ans, err := p.exchangeUDP(q, b)
			if err != nil {
				p.refuse(q, err.Error())
				return
			}
			if _, err := c.WriteToUDPAddrPort(ans, from); err != nil && !p.closed.Load() {
				p.cfg.Log.Debug("dns proxy reply", "pod", p.cfg.PodID, "err", err)
			}
		}()
	}
}

// exchangeUDP forwards the query from the pod's namespace and waits for its
// answer: datagrams that do not answer it are ignored, as a resolver does.
func (p *Proxy) exchangeUDP(q *Query, b []byte) ([]byte, error) {
	var up *net.UDPConn
	err := p.inNetns(func() error {
		var err error
		up, err = net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(q.Server))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", q.Server, err)
	}
	defer up.Close()
	deadline := time.Now().Add(p.cfg.Timeout)
	_ = up.SetDeadline(deadline)
	if _, err := up.Write(b); err != nil {
		return nil, fmt.Errorf("send to %s: %w", q.Server, err)
	}
	buf := make([]byte, MaxMessage)
	for {
		n, err := up.Read(buf)
		if err != nil {
			return nil, fmt.Errorf("answer from %s: %w", q.Server, err)
		}
		a, err := ParseAnswer(q.Msg, buf[:n])
		if err != nil {
			p.refuse(q, "answer ignored: "+err.Error())
			continue
		}
		if err := p.cfg.Learn(q, a); err != nil {
			p.cfg.Log.Warn("dns proxy learn", "pod", p.cfg.PodID, "name", a.Name, "err", err)
		}
		return append([]byte(nil), buf[:n]...), nil
	}
}

func (p *Proxy) serveTCP(l *net.TCPListener) {
	defer p.wg.Done()
	for {
		c, err := l.AcceptTCP()
		if err != nil {
			if p.closed.Load() {
				return
			}
			p.cfg.Log.Warn("dns proxy accept", "pod", p.cfg.PodID, "err", err)
			continue
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			defer c.Close()
			stop := context.AfterFunc(p.ctx, func() { c.Close() })
			defer stop()
			p.serveConn(c)
		}()
	}
}

// serveConn relays the length-prefixed messages of one TCP connection
// over one upstream connection to the server the container asked.
func (p *Proxy) serveConn(c *net.TCPConn) {
	from := c.RemoteAddr().(*net.TCPAddr).AddrPort()
	from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
	pq, ok, err := p.cfg.Pending(bpfext.ProtoTCP, from.Port())
	if err != nil || !ok {
		p.refuse(nil, fmt.Sprintf("no redirected TCP query from port %d", from.Port()))
		return
	}
	var up *net.TCPConn
	err = p.inNetns(func() error {
		d := net.Dialer{Timeout: p.cfg.Timeout}
		conn, err := d.Dial("tcp", pq.Server.String())
		if err == nil {
			up = conn.(*net.TCPConn)
		}
		return err
	})
	if err != nil {
		p.refuse(&Query{CgroupID: pq.CgroupID, Client: from, Server: pq.Server, Proto: bpfext.ProtoTCP}, err.Error())
		return
	}
	defer up.Close()
	for {
		_ = c.SetReadDeadline(time.Now().Add(2 * p.cfg.Timeout))
		b, err := readMsg(c)
		if err != nil {
			return
		}
		q := &Query{CgroupID: pq.CgroupID, Client: from, Server: pq.Server, Proto: bpfext.ProtoTCP, RuleID: pq.RuleID, Start: time.Now()}
		if q.Msg, err = ParseQuery(b); err != nil {
			p.refuse(q, err.Error())
			return
		}
		_ = up.SetDeadline(time.Now().Add(p.cfg.Timeout))
		if err := writeMsg(up, b); err != nil {
			p.refuse(q, err.Error())
			return
		}
		ans, err := readMsg(up)
		if err != nil {
			p.refuse(q, fmt.Sprintf("answer from %s: %v", q.Server, err))
			return
		}
		a, err := ParseAnswer(q.Msg, ans)
		if err != nil {
			p.refuse(q, "answer dropped: "+err.Error())
			return
		}
		if err := p.cfg.Learn(q, a); err != nil {
			p.cfg.Log.Warn("dns proxy learn", "pod", p.cfg.PodID, "name", a.Name, "err", err)
		}
		if err := writeMsg(c, ans); err != nil {
			return
		}
	}
}

func readMsg(r io.Reader) ([]byte, error) {
	var l [2]byte
	if _, err := io.ReadFull(r, l[:]); err != nil {
		return nil, err
	}
	b := make([]byte, binary.BigEndian.Uint16(l[:]))
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, err
	}
	return b, nil
}

func writeMsg(w io.Writer, b []byte) error {
	if len(b) > MaxMessage {
		return fmt.Errorf("message of %d bytes", len(b))
	}
	out := make([]byte, 2+len(b))
	binary.BigEndian.PutUint16(out, uint16(len(b)))
	copy(out[2:], b)
	_, err := w.Write(out)
	return err
}
