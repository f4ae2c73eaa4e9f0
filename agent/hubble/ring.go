package hubble

import (
	"sync"

	v1 "github.com/cilium/cilium/pkg/hubble/api/v1"
)

// ring holds the newest flows. Hubble's own container.Ring is lock-free for
// Cilium's parallel writers and so never exposes the newest slot until the
// next write: on a quiet node the one denied flow a user waits for would not
// show. sidewall has one writer, so a short mutex gives exact reads,
// including the newest flow, and exact lost counts.
type ring struct {
	mu     sync.Mutex
	buf    []*v1.Event
	next   uint64        // sequence number of the next write
	notify chan struct{} // closed on the next write; nil if nobody waits
}

func newRing(capacity int) *ring {
	return &ring{buf: make([]*v1.Event, capacity)}
}

func (r *ring) write(e *v1.Event) {
	r.mu.Lock()
	r.buf[r.next%uint64(len(r.buf))] = e
	r.next++
	if r.notify != nil {
		close(r.notify)
		r.notify = nil
	}
	r.mu.Unlock()
}

// bounds returns the sequence numbers [oldest, next) held.
func (r *ring) bounds() (oldest, next uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.boundsLocked()
}

func (r *ring) boundsLocked() (oldest, next uint64) {
	if n := uint64(len(r.buf)); r.next > n {
		return r.next - n, r.next
	}
	return 0, r.next
}

// at returns the event with sequence number seq, or nil if it is not held.
func (r *ring) at(seq uint64) *v1.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	oldest, next := r.boundsLocked()
	if seq < oldest || seq >= next {
		return nil
	}
	return r.buf[seq%uint64(len(r.buf))]
}

// readFrom copies up to len(dst) events from seq on. lost is how many
// events from seq on were overwritten before this read; the copied events
// start at seq+lost. wait, when no event was copied, is closed by the next
// write.
func (r *ring) readFrom(seq uint64, dst []*v1.Event) (n int, lost uint64, wait <-chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	oldest, next := r.boundsLocked()
	if seq < oldest {
		lost = oldest - seq
		seq = oldest
	}
	for ; seq < next && n < len(dst); seq, n = seq+1, n+1 {
		dst[n] = r.buf[seq%uint64(len(r.buf))]
	}
	if n == 0 {
		if r.notify == nil {
			r.notify = make(chan struct{})
		}
		wait = r.notify
	}
	return n, lost, wait
}

func (r *ring) len() uint64 {
	oldest, next := r.bounds()
	return next - oldest
}

func (r *ring) capacity() uint64 { return uint64(len(r.buf)) }
