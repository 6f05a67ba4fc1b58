package ratelimit

import (
	"context"
	"time"
)

// Algorithm is how a store counts.
type Algorithm uint8

// The algorithms.
const (
	// SlidingLog is exact: it keeps the time of every admitted request
	// within the longest window.
	SlidingLog Algorithm = iota
	// GCRA is the generic cell rate algorithm of redis_rate: one tier,
	// requests spaced by Window/Limit with a burst of Limit.
	GCRA
)

// The algorithm seam. Everything that differs between the sliding log and
// GCRA is chosen here, and nowhere else: a [Policy] carries its Algorithm,
// and its callers ask it (p.Algorithm.allowMemory, ...) instead of
// comparing it. Each algorithm is implemented once: the sliding log in
// process in memory.go, its Lua twin in redis.go (run by batch.go), its
// reading in peek.go; GCRA for both stores in gcra.go.
//
// The methods branch rather than dispatch through an interface or a table
// of functions: allowMemory is on the hot path (every request without
// Redis), where a compare and direct calls are what it always had, and an
// indirect call would not be. Anything that is not GCRA counts as the
// sliding log, as it always has.

// String returns the config name of a.
func (a Algorithm) String() string {
	if a == GCRA {
		return "gcra"
	}
	return "sliding_log"
}

// oneTier reports whether a takes exactly one tier (GCRA: one interval
// and burst).
func (a Algorithm) oneTier() bool { return a == GCRA }

// lastSlotDenies reports whether a request admitted with nothing left
// (Remaining 0) leaves its identity denied until the decision's Reset: so
// for the sliding log, whose Reset is when the slot taken first frees.
// GCRA's Reset is when its bucket is full again, and the next request
// fits one interval after the last, so the deny cache may not say so.
func (a Algorithm) lastSlotDenies() bool { return a != GCRA }

// allowMemory decides one request on e, the identity's in-process state,
// at now (ns); it records the request if it is admitted.
func (a Algorithm) allowMemory(e *memEntry, p *Policy, now int64) Decision {
	if a == GCRA {
		return e.gcra(p.Tiers[0], now)
	}
	return e.slidingLog(p, now)
}

// allowRedis decides one request of k in Redis, bounded by deadline when
// it is not zero. The sliding log makes asks' reservations in the same
// script call (marking them Done); GCRA makes none.
func (a Algorithm) allowRedis(ctx context.Context, r *Redis, deadline time.Time, p *Policy, k Key, asks []QuotaAsk) (Decision, error) {
	if a == GCRA {
		return r.allowGCRA(ctx, deadline, p, k)
	}
	return r.allowQuotas(ctx, deadline, p, k, asks)
}

// usageMemory reads the usage of p from e, the identity's in-process
// state, at now (ns), without changing it.
func (a Algorithm) usageMemory(e *memEntry, p *Policy, now int64) Usage {
	if a == GCRA {
		return gcraUsage(p, e.tat, now, 1)
	}
	return slidingLogUsage(p, e.stamps(), now, 1)
}

// redisKey returns the key of k's state under p in Redis.
func (a Algorithm) redisKey(prefix string, p *Policy, k Key) string {
	if a == GCRA {
		return gcraPrefix + RedisKey(prefix, p.ID, k)
	}
	return RedisKey(prefix, p.ID, k)
}

// usageRedis reads the usage of p from state, the value of the identity's
// key (empty when it has none), at now (µs, Redis' clock).
func (a Algorithm) usageRedis(p *Policy, key, state string, now int64) (Usage, error) {
	if a == GCRA {
		return gcraUsageRedis(p, state, now)
	}
	return slidingLogUsageRedis(p, key, state, now)
}
