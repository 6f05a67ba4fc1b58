package ratelimit

// Budget inspection (SPEC §10): what an identity has used of a policy,
// read without consuming and without creating state — no entry in the
// in-process store, no key written in Redis.

import (
	_ "embed"

	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// TierUsage is one tier of a policy as an identity stands now.
type TierUsage struct {
	Tier Tier
	// Used is what counts in the window now; Remaining what still fits.
	Used, Remaining int64
	// NextSlot is, when nothing fits (Remaining 0), the time until one
	// request fits again; 0 otherwise.
	NextSlot time.Duration
	// Reset is the time until none of the requests counted now counts
	// any more (the window is clear, or the GCRA bucket full again).
	Reset time.Duration
}

// Usage is an identity's standing against one policy.
type Usage struct {
	Tiers []TierUsage
	// Store says where the figures come from: memory, redis or
	// local_fallback (Redis down, redis.on_failure: local).
	Store string
}

// Peek returns k's usage of p in the in-process store. It takes no entry
// for an identity the store does not hold.
func (m *Memory) Peek(p *Policy, k Key) Usage {
	m.mu.RLock()
	b := m.buckets[p.ID]
	m.mu.RUnlock()
	if b == nil {
		return unusedUsage(p)
	}
	s := &b.shards[k[0]%memShards]
	s.mu.Lock()
	defer s.mu.Unlock()
	now := m.clock()
	e := s.m[k]
	if e == nil {
		return unusedUsage(p)
	}
	return p.Algorithm.usageMemory(e, p, now)
}

// peek is Peek, for the limiter's store interface.
func (m *Memory) peek(_ context.Context, p *Policy, k Key) (Usage, error) { return m.Peek(p, k), nil }

// newUsage returns a usage of p with its tiers to fill.
func newUsage(p *Policy) Usage {
	return Usage{Tiers: make([]TierUsage, len(p.Tiers)), Store: "memory"}
}

// unusedUsage is the usage of p by an identity that has none, with
// either algorithm: nothing used, every tier's limit left.
func unusedUsage(p *Policy) Usage {
	u := newUsage(p)
	for i, t := range p.Tiers {
		u.Tiers[i] = TierUsage{Tier: t, Remaining: t.Limit}
	}
	return u
}

// slidingLogUsage computes the usage of p from a sliding log's stamps
// (oldest first), at now; times are in units of unit (ns in process, µs
// in Redis).
func slidingLogUsage(p *Policy, stamps []int64, now int64, unit time.Duration) Usage {
	u := newUsage(p)
	for i, t := range p.Tiers {
		w := int64(t.Window / unit)
		tu := TierUsage{Tier: t, Remaining: t.Limit}
		first := firstAfter(stamps, now-w)
		count := int64(len(stamps) - first)
		if count > 0 {
			tu.Used = min(count, t.Limit)
			tu.Remaining = max(0, t.Limit-count)
			tu.Reset = time.Duration(stamps[len(stamps)-1]+w-now) * unit
			if tu.Remaining == 0 {
				tu.NextSlot = time.Duration(stamps[first+int(count-t.Limit)]+w-now) * unit
			}
		}
		u.Tiers[i] = tu
	}
	return u
}

// slidingLogUsageRedis reads the usage of p from state, the value of the
// sliding-log key (its stamps, µs, in fixed-width hex, oldest first; empty
// for none), at now (µs).
func slidingLogUsageRedis(p *Policy, key, state string, now int64) (Usage, error) {
	const w = 13
	stamps := make([]int64, len(state)/w)
	for i := range stamps {
		n, err := strconv.ParseInt(state[i*w:i*w+w], 16, 64)
		if err != nil {
			return Usage{}, fmt.Errorf("redis budget read: stamp %d of %s: %v", i, key, err)
		}
		stamps[i] = n
	}
	if n := len(stamps); n > 0 && now < stamps[n-1] {
		now = stamps[n-1] // as the script: a clock stepped back frees nothing
	}
	return slidingLogUsage(p, stamps, now, time.Microsecond), nil
}

func firstAfter(s []int64, cutoff int64) int {
	lo, hi := 0, len(s)
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if s[mid] <= cutoff {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	return lo
}

// peekScript reads a budget's state and Redis' clock in one call, and
// writes nothing: TIME, then GET of the key.
var peekScript = redis.NewScript(peekLua)

//go:embed lua/peek.lua
var peekLua string

// Peek returns k's usage of p in Redis, read with the clock of Redis and
// without writing anything (no key is created for an identity that has
// none). ctx bounds it.
func (r *Redis) Peek(ctx context.Context, p *Policy, k Key) (Usage, error) {
	key := p.Algorithm.redisKey(r.prefix, p, k)
	v, err := peekScript.Run(ctx, r.client, []string{key}).StringSlice()
	if err != nil {
		return Usage{}, fmt.Errorf("redis budget read: %w", err)
	}
	if len(v) != 3 {
		return Usage{}, fmt.Errorf("redis budget read: %d values", len(v))
	}
	sec, err1 := strconv.ParseInt(v[0], 10, 64)
	usec, err2 := strconv.ParseInt(v[1], 10, 64)
	if err1 != nil || err2 != nil {
		return Usage{}, fmt.Errorf("redis budget read: TIME %q %q", v[0], v[1])
	}
	u, err := p.Algorithm.usageRedis(p, key, v[2], sec*1_000_000+usec)
	if err != nil {
		return Usage{}, err
	}
	u.Store = "redis"
	return u, nil
}

// peek is Peek, for the limiter's store interface.
func (r *Redis) peek(ctx context.Context, p *Policy, k Key) (Usage, error) { return r.Peek(ctx, p, k) }

// Peek returns k's usage of p where the limiter decides now: the
// in-process store, Redis, or — while Redis is down with
// redis.on_failure: local — the fallback store. It never consumes. With
// Redis down and another failure policy, it returns [ErrUnavailable].
func (l *Limiter) Peek(ctx context.Context, p *Policy, k Key) (Usage, error) {
	if l.shared == nil {
		return l.local.Peek(p, k), nil
	}
	if l.healthy.Load() {
		cctx, cancel := context.WithTimeout(ctx, max(l.timeout, time.Second))
		defer cancel()
		return l.shared.peek(cctx, p, k)
	}
	if l.onFailure == FailLocal {
		u := l.local.Peek(p, k)
		u.Store = storeNames[storeFallback]
		return u, nil
	}
	return Usage{}, ErrUnavailable
}
