package hubble

import (
	"container/heap"
	"sync"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	v1 "github.com/cilium/cilium/pkg/hubble/api/v1"
)

const (
	// DefaultSortDelay is how long flows wait to be merged in time order
	// when a second source (Cilium's Hubble) feeds the server. Hubble
	// Relay sorts the same way (its sort buffer drains after a second).
	DefaultSortDelay = 200 * time.Millisecond
	// sortMax bounds the flows waiting: past it the oldest goes at once.
	sortMax = 1 << 16
)

type sortItem struct {
	ev   *v1.Event
	join func(*flowpb.Flow)
}

type sortHeap []sortItem

func (h sortHeap) Len() int { return len(h) }
func (h sortHeap) Less(i, j int) bool {
	a, b := h[i].ev.Timestamp, h[j].ev.Timestamp
	return a.GetSeconds() < b.GetSeconds() || (a.GetSeconds() == b.GetSeconds() && a.GetNanos() < b.GetNanos())
}
func (h sortHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *sortHeap) Push(x any)   { *h = append(*h, x.(sortItem)) }
func (h *sortHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	old[len(old)-1] = sortItem{}
	*h = old[:len(old)-1]
	return it
}

// sorter merges flows of several sources into the ring in time order: a
// flow waits delay, so one from a source a little behind still lands in
// its place. A join runs when the flow leaves, by which time sidewall's
// event of the same connection (which the kernel wrote first) has been
// learned.
type sorter struct {
	delay time.Duration
	out   func(sortItem)

	mu    sync.Mutex
	h     sortHeap
	wake  chan struct{}
	done  chan struct{}
	ended chan struct{}
}

func newSorter(delay time.Duration, out func(sortItem)) *sorter {
	s := &sorter{delay: delay, out: out, wake: make(chan struct{}, 1), done: make(chan struct{}), ended: make(chan struct{})}
	go s.run()
	return s
}

func (s *sorter) push(it sortItem) {
	s.mu.Lock()
	heap.Push(&s.h, it)
	var over []sortItem
	for s.h.Len() > sortMax {
		over = append(over, heap.Pop(&s.h).(sortItem))
	}
	s.mu.Unlock()
	for _, it := range over {
		s.out(it)
	}
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// drain sends every flow older than the delay (all of them when all is
// set) and returns when the next one is due, or 0 if none waits.
func (s *sorter) drain(now time.Time, all bool) time.Duration {
	cut := now.Add(-s.delay)
	for {
		s.mu.Lock()
		if s.h.Len() == 0 {
			s.mu.Unlock()
			return 0
		}
		ts := s.h[0].ev.Timestamp.AsTime()
		if !all && ts.After(cut) {
			s.mu.Unlock()
			return ts.Sub(cut)
		}
		it := heap.Pop(&s.h).(sortItem)
		s.mu.Unlock()
		s.out(it)
	}
}

func (s *sorter) run() {
	defer close(s.ended)
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			s.drain(time.Now(), true)
			return
		case <-s.wake:
		case <-t.C:
		}
		next := s.drain(time.Now(), false)
		if next == 0 {
			next = time.Hour
		}
		t.Reset(next)
	}
}

func (s *sorter) close() {
	close(s.done)
	<-s.ended
}
