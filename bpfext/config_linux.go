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

const configNoSocketCache = uint64(objs.SkbConfigFlagCONFIG_NO_SOCKET_CACHE)
