package ratelimit

import (
	_ "embed"

	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// In Redis, one identity's count of a quota is one string key in the
// identity's hash slot (the {hash} tag of [RedisKey]), so that a Cluster
// keeps it with the identity's logs: deskgate:rl:{<identity>}:quota:<name>,
//
//	<month> <used> <last id> r<id>:<expiry> ... c<id> x<id> ...
//
// the month it counts (year*12 + month-1, from Redis TIME), the slots
// committed in it, the last slot id, then its events in order: a slot
// reserved until its expiry (ms, Redis time), a slot committed, a slot
// released. It expires a day after the end of its month.
//
// A reservation is made by the rate-limit script with the request's
// decision (see batch.go): the key is read with the identity's log (one
// MGET instead of the GET) and written once (SET) when a slot is taken —
// one command more than the rate limit alone, in the same call. Reserving
// replays the events, drops the expired slots, starts the month afresh
// when it changed, and takes a slot while used + held < limit: in one
// script, so that concurrent requests on any number of replicas never take
// more than the limit.
//
// A settlement is one APPEND of " c<id>" or " x<id>" (see settle.go); a
// commit goes with the next call to Redis, whatever it decides, rather
// than in a round trip of its own. The next reservation folds the
// settlements into the header.
// A commit counts only while its slot is held: settling twice (a retried
// call) counts once.

// quotaMonthLua computes the calendar month (UTC) of Unix seconds, with
// Howard Hinnant's civil-from-days algorithms: Lua has no date functions
// in Redis.
//
//go:embed lua/month.lua
var quotaMonthLua string

// quotaFnLua is the reading, reserving and writing of a quota's value
// and the appending of a settlement, shared by the quota's own scripts and
// the rate-limit script.
//
//go:embed lua/quota_fn.lua
var quotaFnLua string

// quotaReserveLua: KEYS: the quota's key. ARGV: limit, ttl ms. Reply:
// allowed (0/1), slots taken after the call, the reservation id (0 when
// refused), month, month start and next month start (Unix s), now (ms).
var quotaReserveLua = quotaMonthLua + quotaFnLua + quotaReserveMainLua

//go:embed lua/quota_reserve.lua
var quotaReserveMainLua string

var quotaReserveScript = redis.NewScript(quotaReserveLua)

// quotaKey returns the key of k's count of q.
func (r *Redis) quotaKey(q *Quota, k Key) string { return RedisKey(r.prefix, q.id, k) }

// Reserve takes a slot of q for k in one script call. The caller bounds
// it with ctx.
func (r *Redis) Reserve(ctx context.Context, q *Quota, k Key, limit int64, ttl time.Duration) (QuotaDecision, error) {
	ttlMS := max(int64(ttl/time.Millisecond), 1)
	v, err := quotaReserveScript.Run(ctx, r.client, []string{r.quotaKey(q, k)}, limit, ttlMS).Int64Slice()
	if err != nil {
		return QuotaDecision{}, fmt.Errorf("quota script: %w", err)
	}
	if len(v) != 7 {
		return QuotaDecision{}, fmt.Errorf("quota script: unexpected reply %v", v)
	}
	return quotaDecision(limit, [7]int64(v)), nil
}

// quotaDecision reads a reservation's seven numbers: allowed, slots
// taken, id, month, month start, next month start (Unix s), now (ms).
func quotaDecision(limit int64, v [7]int64) QuotaDecision {
	start, next := time.Unix(v[4], 0).UTC(), time.Unix(v[5], 0).UTC()
	now := time.UnixMilli(v[6])
	d := QuotaDecision{Limit: limit, ResetAt: next, ResetIn: next.Sub(now), Period: next.Sub(start)}
	if v[0] == 1 {
		d.Allowed = true
		d.Remaining = max(limit-v[1], 0)
		d.Reservation = Reservation{ID: v[2], Month: v[3], store: storeRedis}
	}
	return d
}

// Settle commits or releases res. A commit is queued, to go with the next
// call to Redis (settle.go): the request's answer is out, and its slot,
// held until then, counts the same. A release is written now, in a call
// of its own with the queued commits, so that the slot is free for the
// next request on any replica; when that call fails, the release stays
// queued and is retried.
func (r *Redis) Settle(ctx context.Context, q *Quota, k Key, res Reservation, commit bool) error {
	if !res.Held() {
		return nil
	}
	r.settles.add(r.quotaKey(q, k), res.ID, commit)
	if commit {
		return nil
	}
	return r.flushSettlements(ctx)
}

// QuotaUsed returns k's count of q in the month Redis is in and the slots
// it holds, for tests and budget inspection. It reads only.
func (r *Redis) QuotaUsed(ctx context.Context, q *Quota, k Key) (used, reserved int64, err error) {
	u, err := r.QuotaUsage(ctx, q, k)
	return u.Used, u.Reserved, err
}

// QuotaUsage returns k's standing against q in the month Redis is in, by
// Redis' clock, in one script call that writes nothing (no key is made
// for an identity that has none), after the settlements queued so far.
func (r *Redis) QuotaUsage(ctx context.Context, q *Quota, k Key) (QuotaUsage, error) {
	if err := r.flushSettlements(ctx); err != nil {
		return QuotaUsage{}, err
	}
	v, err := quotaUsedScript.Run(ctx, r.client, []string{r.quotaKey(q, k)}).Int64Slice()
	if err != nil || len(v) != 4 {
		return QuotaUsage{}, fmt.Errorf("quota read: %v %w", v, err)
	}
	next := time.Unix(v[2], 0).UTC()
	return QuotaUsage{Used: v[0], Reserved: v[1], ResetAt: next, ResetIn: next.Sub(time.UnixMilli(v[3])), Store: storeNames[storeRedis]}, nil
}

// quotaUsedScript: KEYS: the quota's key. Reply: used, reserved, the
// next month's start (Unix s), now (ms). It reads only.
var quotaUsedScript = redis.NewScript(quotaMonthLua + quotaFnLua + quotaUsedMainLua)

//go:embed lua/quota_used.lua
var quotaUsedMainLua string
