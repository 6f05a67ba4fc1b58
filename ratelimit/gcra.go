package ratelimit

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
)

// GCRA, the generic cell rate algorithm, in both stores: in Redis it is
// redis_rate's (one call per request, not batched, no quota in the call);
// in process, memEntry.gcra decides the same way. One tier: requests
// spaced by window/limit, with a burst of limit. The choice between it
// and the sliding log is made in algorithm.go.

// gcra spaces requests by window/limit with a burst of limit, as
// redis_rate does.
func (e *memEntry) gcra(t Tier, now int64) Decision {
	interval := int64(t.Window) / t.Limit
	tat := max(e.tat, now)
	newTat := tat + interval
	allowAt := newTat - int64(t.Window)
	if now < allowAt {
		return Decision{Reset: time.Duration(allowAt - now)}
	}
	e.tat = newTat
	e.last = now
	remaining := (now - allowAt) / interval
	return Decision{Allowed: true, Remaining: remaining, Reset: time.Duration(newTat - now)}
}

// allowGCRA runs p's one tier through redis_rate, bounded by deadline
// when it is not zero and ctx does not end sooner.
func (r *Redis) allowGCRA(ctx context.Context, deadline time.Time, p *Policy, k Key) (Decision, error) {
	if d, ok := ctx.Deadline(); !deadline.IsZero() && (!ok || deadline.Before(d)) {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, deadline)
		defer cancel()
	}
	t := p.Tiers[0]
	ctx, span := startSpan(ctx)
	res, err := r.gcra.Allow(ctx, RedisKey(r.prefix, p.ID, k), redis_rate.Limit{Rate: int(t.Limit), Burst: int(t.Limit), Period: t.Window})
	if span != nil {
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, "rate-limit store cannot decide")
		} else {
			span.SetAttributes(attribute.Bool("deskgate.ratelimit.allowed", res.Allowed > 0))
		}
		span.End()
	}
	if err != nil {
		return Decision{}, fmt.Errorf("redis_rate: %w", err)
	}
	if res.Allowed > 0 {
		return Decision{Allowed: true, Remaining: int64(res.Remaining), Reset: res.ResetAfter}, nil
	}
	return Decision{Reset: res.RetryAfter}, nil
}

// gcraPrefix is redis_rate's own prefix, before the key it is given.
const gcraPrefix = "rate:"

// gcraEpoch is redis_rate's time origin (1 January 2017), in seconds.
const gcraEpoch = 1483228800

// gcraUsage computes the usage of p from its theoretical arrival time
// tat, at now; times are in units of unit (ns in process, µs in Redis).
func gcraUsage(p *Policy, tat, now int64, unit time.Duration) Usage {
	u := newUsage(p)
	for i, t := range p.Tiers {
		w := int64(t.Window / unit)
		tu := TierUsage{Tier: t, Remaining: t.Limit}
		interval := w / t.Limit
		if tat > now && interval > 0 {
			left := min(t.Limit, max(0, (now-(tat-w))/interval))
			tu.Remaining, tu.Used = left, t.Limit-left
			tu.Reset = time.Duration(tat-now) * unit
			if left == 0 {
				tu.NextSlot = time.Duration(tat-w+interval-now) * unit
			}
		}
		u.Tiers[i] = tu
	}
	return u
}

// gcraUsageRedis reads the usage of p from state, redis_rate's value (its
// theoretical arrival time in seconds since gcraEpoch, a float; empty for
// none), at now (µs).
func gcraUsageRedis(p *Policy, state string, now int64) (Usage, error) {
	var tat int64
	if state != "" {
		f, err := strconv.ParseFloat(state, 64)
		if err != nil {
			return Usage{}, fmt.Errorf("redis budget read: GCRA state %q", state)
		}
		tat = int64(math.Round(f*1e6)) + gcraEpoch*1_000_000
	}
	return gcraUsage(p, tat, now, time.Microsecond), nil
}
