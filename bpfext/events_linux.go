package bpfext

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/cilium/ebpf/ringbuf"

	"github.com/sidewall/sidewall/bpfext/objs"
)

// ErrClosed is returned by EventReader.Read after Close.
var ErrClosed = errors.New("event reader closed")

// EventReader reads datapath events from the pinned ring buffer. One reader
// per ring buffer: records are consumed by whoever reads them first.
type EventReader struct {
	rd *ringbuf.Reader
}

// NewEventReader opens the event ring buffer.
func (d *Datapath) NewEventReader() (*EventReader, error) {
	rd, err := ringbuf.NewReader(d.skb.SwEvents)
	if err != nil {
		return nil, fmt.Errorf("open event ring buffer: %w", err)
	}
	return &EventReader{rd: rd}, nil
}

// Read blocks until the next event, the deadline set with SetDeadline
// (os.ErrDeadlineExceeded) or Close (ErrClosed).
func (r *EventReader) Read() (Event, error) {
	rec, err := r.rd.Read()
	if err != nil {
		if errors.Is(err, ringbuf.ErrClosed) {
			return Event{}, ErrClosed
		}
		return Event{}, fmt.Errorf("read event: %w", err)
	}
	return DecodeEvent(rec.RawSample)
}

// SetDeadline makes Read return os.ErrDeadlineExceeded after t; zero clears.
func (r *EventReader) SetDeadline(t time.Time) { r.rd.SetDeadline(t) }

// Close stops the reader and wakes a blocked Read.
func (r *EventReader) Close() error { return r.rd.Close() }

// DecodeEvent decodes one raw ring buffer record.
func DecodeEvent(raw []byte) (Event, error) {
	var e objs.SkbEvent
	if len(raw) < binary.Size(e) {
		return Event{}, fmt.Errorf("decode event: record of %d bytes, want %d", len(raw), binary.Size(e))
	}
	if err := binary.Read(bytes.NewReader(raw), binary.NativeEndian, &e); err != nil {
		return Event{}, fmt.Errorf("decode event: %w", err)
	}
	out := Event{
		TimestampNs: e.TimestampNs, CgroupID: e.CgroupId, PolicyCgroupID: e.PolicyCgroup,
		SocketCookie: e.SocketCookie, PolicyID: e.PolicyId, RuleID: e.RuleId,
		PeerIdentity: e.PeerIdentity, ContainerID: e.ContainerId,
		SrcPort: e.Sport, DstPort: e.Dport, Protocol: e.Proto,
		Direction: Direction(e.Direction), Verdict: Verdict(e.Verdict), Reason: Reason(e.Reason),
		Hook: Hook(e.Hook), Local: e.Local != 0, NewFlow: e.NewFlow != 0,
	}
	// A record the datapath cannot have written is refused rather than
	// turned into a flow with a made-up address or verdict.
	switch e.Family {
	case 4:
		out.Src = netip.AddrFrom4([4]byte(e.Saddr[:4]))
		out.Dst = netip.AddrFrom4([4]byte(e.Daddr[:4]))
	case 6:
		out.Src = netip.AddrFrom16(e.Saddr)
		out.Dst = netip.AddrFrom16(e.Daddr)
	case 0:
		// A packet too short or malformed to carry addresses.
	default:
		return Event{}, fmt.Errorf("decode event: family %d, want 0, 4 or 6", e.Family)
	}
	switch {
	case out.Direction > Ingress:
		return Event{}, fmt.Errorf("decode event: direction %d out of range", e.Direction)
	case out.Verdict > Audit:
		return Event{}, fmt.Errorf("decode event: verdict %d out of range", e.Verdict)
	case uint32(out.Reason) >= reasonMax:
		return Event{}, fmt.Errorf("decode event: reason %d out of range", e.Reason)
	case out.Hook > HookBind:
		return Event{}, fmt.Errorf("decode event: hook %d out of range", e.Hook)
	}
	return out, nil
}

// Counters reads the per-CPU verdict counters, summed over CPUs.
func (d *Datapath) Counters() (Counters, error) {
	c := Counters{Verdicts: map[CounterKey]uint64{}}
	var k uint32
	var per []uint64
	it := d.skb.SwCounters.Iterate()
	for it.Next(&k, &per) {
		var sum uint64
		for _, v := range per {
			sum += v
		}
		switch {
		case k < countersPerReasonSet:
			if sum == 0 {
				continue
			}
			dir := k / (3 * reasonMax)
			v := (k / reasonMax) % 3
			c.Verdicts[CounterKey{Direction(dir), Verdict(v), Reason(k % reasonMax)}] = sum
		case k == countersPerReasonSet:
			c.EventsLost = sum
		case k == counterUnknownCgroup:
			c.UnknownCgroup = sum
		case k == counterRateLimited:
			c.EventsRateLimited = sum
		case k == counterAggregated:
			c.EventsAggregated = sum
		case k == counterPortTableFull:
			c.PortTableFull = sum
		}
	}
	if err := it.Err(); err != nil {
		return Counters{}, fmt.Errorf("read counters: %w", err)
	}
	return c, nil
}
