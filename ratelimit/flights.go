package ratelimit

import (
	"sync"
)

// flights coordinate the Redis calls in progress per policy and identity,
// apart from the deny cache (which only remembers answers): requests of
// one identity that miss the cache together queue behind one call (see
// [Limiter.Allow]).
type flights struct {
	shards [32]flightShard
}

type flightShard struct {
	mu sync.Mutex
	m  map[denyKey]*flight
}

func newFlights() *flights {
	c := &flights{}
	for i := range c.shards {
		c.shards[i].m = map[denyKey]*flight{}
	}
	return c
}

func (c *flights) shard(k Key) *flightShard { return &c.shards[k[1]%uint8(len(c.shards))] }

// flight is one Redis call in progress for an identity; done closes when
// its answer is known, and remaining is then the quota it left. done is
// made by the first request that waits on the flight: a flight nobody
// joined (the common case) costs no channel and goes back to the pool.
type flight struct {
	done      chan struct{}
	waiters   int // under the shard's lock
	remaining int64
}

var flightPool = sync.Pool{New: func() any { return new(flight) }}

// join returns the flight in progress for k under p, or starts one and
// reports that the caller leads it.
func (c *flights) join(p *Policy, k Key) (f *flight, leader bool) {
	s := c.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	if f := s.m[denyKey{p.slot, k}]; f != nil {
		if f.done == nil {
			f.done = make(chan struct{})
		}
		f.waiters++
		return f, false
	}
	f = flightPool.Get().(*flight)
	s.m[denyKey{p.slot, k}] = f
	return f, true
}

// land ends a flight (after its answer went into the cache).
func (c *flights) land(p *Policy, k Key, f *flight) {
	s := c.shard(k)
	s.mu.Lock()
	delete(s.m, denyKey{p.slot, k})
	done, alone := f.done, f.waiters == 0
	s.mu.Unlock()
	if done != nil {
		close(done)
	}
	if alone {
		*f = flight{}
		flightPool.Put(f)
	}
}
