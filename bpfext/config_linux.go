package bpfext

import (
	"errors"
	"fmt"
	"time"

	"github.com/sidewall/sidewall/bpfext/objs"
)

// changed bumps the epoch after a map change (also a failed one, which may
// have written part of a batch), so sockets decide again instead of using
// their cached verdicts.
func (d *Datapath) changed(err error) error {
	return errors.Join(err, d.bumpEpoch())
}

func (d *Datapath) bumpEpoch() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var c objs.SkbConfig
	if err := d.skb.SwConfig.Lookup(uint32(0), &c); err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	// Strictly increasing across agent restarts too.
	c.Epoch = max(c.Epoch+1, uint64(time.Now().UnixNano()))
	if err := d.skb.SwConfig.Put(uint32(0), &c); err != nil {
		return fmt.Errorf("bump epoch: %w", err)
	}
	return nil
}

// SetSocketCache turns the per-socket verdict cache on (the default) or
// off. Off, every packet takes the full verdict: for measurements, and as a
// switch should the cache ever be suspected.
func (d *Datapath) SetSocketCache(enabled bool) error {
	d.mu.Lock()
	var c objs.SkbConfig
	if err := d.skb.SwConfig.Lookup(uint32(0), &c); err != nil {
		d.mu.Unlock()
		return fmt.Errorf("read config: %w", err)
	}
	if enabled {
		c.Flags &^= configNoSocketCache
	} else {
		c.Flags |= configNoSocketCache
	}
	if err := d.skb.SwConfig.Put(uint32(0), &c); err != nil {
		d.mu.Unlock()
		return fmt.Errorf("set socket cache: %w", err)
	}
	d.mu.Unlock()
	return d.bumpEpoch()
}

func (d *Datapath) setLimits(rate, burst, aggregateMS, share uint32) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var c objs.SkbConfig
	if err := d.skb.SwConfig.Lookup(uint32(0), &c); err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	c.EventRate, c.EventBurst, c.DenyAggregateMs, c.PodPortShare = rate, burst, aggregateMS, share
	if err := d.skb.SwConfig.Put(uint32(0), &c); err != nil {
		return fmt.Errorf("set event and port limits: %w", err)
	}
	return nil
}

// EventBudgets returns, per classified cgroup, how many events its budget
// did not admit (summed over CPUs; entries of a quiet container may be
// evicted, so this is a recent view, not a lifetime total).
func (d *Datapath) EventBudgets() (map[uint64]uint64, error) {
	out := map[uint64]uint64{}
	var k uint64
	var per []objs.SkbEventBudget
	it := d.skb.SwEventBudget.Iterate()
	for it.Next(&k, &per) {
		var sum uint64
		for _, b := range per {
			sum += b.Dropped
		}
		out[k] = sum
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read event budgets: %w", err)
	}
	return out, nil
}

const configNoSocketCache = uint64(objs.SkbConfigFlagCONFIG_NO_SOCKET_CACHE)
