package ratelimit

import (
	"sync"
	"time"
)

// denyCache remembers, per policy and identity, until when Redis said no.
// It is bounded: past size entries, new denials are not cached (Redis
// still decides), and expired entries are dropped as they are met and by
// a sweep when the cache fills.
type denyCache struct {
	size   int
	shards [32]denyShard
}

// denyKey names a denial by policy ID (its slot), not by *Policy: a
// reload rebuilds every policy, and the identities denied until T under a
// budget stay denied under the same budget of the new config.
type denyKey struct {
	slot uint32
	k    Key
}

type denyEntry struct {
	until time.Duration
	d     Decision
}

type denyShard struct {
	mu sync.Mutex
	m  map[denyKey]denyEntry
	// sweepAt is the earliest denial's end once a full shard was swept:
	// until then none can have ended, so a put into the full shard does
	// not scan it again (a scan per put was a CPU cliff under a flood of
	// distinct identities).
	sweepAt time.Duration
}

func newDenyCache(size int) *denyCache {
	c := &denyCache{size: max(1, size/len(denyCache{}.shards))}
	for i := range c.shards {
		c.shards[i].m = map[denyKey]denyEntry{}
	}
	return c
}

func (c *denyCache) shard(k Key) *denyShard { return &c.shards[k[1]%uint8(len(c.shards))] }

// get returns the cached denial of k under p, with the wait left.
func (c *denyCache) get(p *Policy, k Key, now time.Duration) (Decision, bool) {
	s := c.shard(k)
	s.mu.Lock()
	e, ok := s.m[denyKey{p.slot, k}]
	if ok && e.until <= now {
		delete(s.m, denyKey{p.slot, k})
		ok = false
	}
	s.mu.Unlock()
	if !ok {
		return Decision{}, false
	}
	d := e.d
	d.Reset = e.until - now
	return d, true
}

func (c *denyCache) put(p *Policy, k Key, until time.Duration, d Decision) {
	s := c.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.m) >= c.size {
		now := until - d.Reset // as of the call
		if now < s.sweepAt {
			return
		}
		next := time.Duration(0)
		for key, e := range s.m {
			if e.until <= now {
				delete(s.m, key)
			} else if next == 0 || e.until < next {
				next = e.until
			}
		}
		s.sweepAt = next
		if len(s.m) >= c.size {
			return
		}
	}
	s.m[denyKey{p.slot, k}] = denyEntry{until: until, d: d}
	if until < s.sweepAt {
		s.sweepAt = until
	}
}
