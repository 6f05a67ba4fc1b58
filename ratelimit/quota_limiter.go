package ratelimit

import (
	"context"
	"time"
)

// Reserve takes a slot of q for k: in Redis when it is configured and
// healthy, else by redis.on_failure — in process (local: the month's
// count starts from what this replica saw, see docs/quotas.md),
// not counted (allow), or [ErrUnavailable] (deny). A Redis call that
// times out may still have reserved a slot: it is freed when it expires.
func (l *Limiter) Reserve(ctx context.Context, q *Quota, k Key, limit int64, ttl time.Duration) (QuotaDecision, error) {
	if l.shared == nil {
		return l.local.Reserve(ctx, q, k, limit, ttl)
	}
	if !l.healthy.Load() {
		return l.quotaFailed(ctx, q, k, limit, ttl)
	}
	cctx, cancel := context.WithTimeout(ctx, l.timeout)
	d, err := l.shared.Reserve(cctx, q, k, limit, ttl)
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return QuotaDecision{}, ctx.Err()
		}
		l.storeErrors.Inc()
		l.markDown(err, k)
		return l.quotaFailed(ctx, q, k, limit, ttl)
	}
	return d, nil
}

// QuotaUsage returns k's standing against q where the limiter counts
// quotas now: the in-process store, Redis, or — while Redis is down with
// redis.on_failure: local — the fallback store. It never consumes and
// creates no state. With Redis down and another failure policy, it
// returns [ErrUnavailable].
func (l *Limiter) QuotaUsage(ctx context.Context, q *Quota, k Key) (QuotaUsage, error) {
	if l.shared == nil {
		return l.local.QuotaUsage(ctx, q, k)
	}
	if l.healthy.Load() {
		cctx, cancel := context.WithTimeout(ctx, max(l.timeout, time.Second))
		defer cancel()
		return l.shared.QuotaUsage(cctx, q, k)
	}
	if l.onFailure == FailLocal {
		u, err := l.local.QuotaUsage(ctx, q, k)
		u.Store = storeNames[storeFallback]
		return u, err
	}
	return QuotaUsage{}, ErrUnavailable
}

// quotaFailed applies redis.on_failure to a reservation.
func (l *Limiter) quotaFailed(ctx context.Context, q *Quota, k Key, limit int64, ttl time.Duration) (QuotaDecision, error) {
	switch l.onFailure {
	case FailOpen:
		now := time.Now()
		start, next := monthBounds(now)
		return QuotaDecision{Allowed: true, Limit: limit, Remaining: -1, ResetAt: next, ResetIn: next.Sub(now), Period: next.Sub(start)}, nil
	case FailClosed:
		return QuotaDecision{}, ErrUnavailable
	}
	return l.local.Reserve(ctx, q, k, limit, ttl)
}

// Settle commits or releases r in the store that holds it, within
// redis.timeout. A failure is counted as a store error: the slot is then
// lost to the count (commit) or held until it expires (release).
func (l *Limiter) Settle(ctx context.Context, q *Quota, k Key, r Reservation, commit bool) error {
	if !r.Held() {
		return nil
	}
	if r.store == storeMemory || l.shared == nil {
		return l.local.Settle(ctx, q, k, r, commit)
	}
	cctx, cancel := context.WithTimeout(ctx, l.timeout)
	err := l.shared.Settle(cctx, q, k, r, commit)
	cancel()
	if err != nil {
		l.storeErrors.Inc()
		if ctx.Err() == nil {
			l.markDown(err, k)
		}
	}
	return err
}
