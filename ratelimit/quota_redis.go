package ratelimit

import (
	_ "embed"

	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// In Redis, one identity's quota is two keys in the identity's hash slot
// (the {hash} tag of [RedisKey]), so that a Cluster keeps them together:
//
//   - deskgate:rl:{<identity>}:quota:<name>, a hash: m, the month it
//     counts (year*12 + month-1, from Redis TIME); u, the slots committed
//     in it; n, the last reservation id;
//   - deskgate:rl:{<identity>}:quota:<name>:r, a sorted set of the
//     reserved slots' ids, scored by their expiry (ms, Redis time).
//
// Both expire a day after the end of their month. Reserving trims the
// expired slots, starts the month afresh when it changed, and takes a slot
// while used + reserved < limit: all in one script, so that concurrent
// requests on any number of replicas never take more than the limit.

// quotaMonthLua computes the calendar month (UTC) of Unix seconds, with
// Howard Hinnant's civil-from-days algorithms: Lua has no date functions
// in Redis.
//
//go:embed lua/month.lua
var quotaMonthLua string

// quotaReserveFnLua is the reservation itself, shared by the quota's own
// script and the rate-limit script (which reserves with its decision, see
// batch.go): reserve takes a slot of the quota whose hash is hk and set
// sk, for ttl ms, when fewer than limit are used or reserved in month; now
// is Redis' time in ms and reset the next month's start (Unix s). It
// returns allowed (0/1), the slots taken after it and the slot's id (0
// when refused).
//
//go:embed lua/quota_reserve_fn.lua
var quotaReserveFnLua string

// quotaReserveLua: KEYS: the hash, the set. ARGV: limit, ttl ms. Reply:
// allowed (0/1), slots taken after the call, the reservation id (0 when
// refused), month, month start and next month start (Unix s), now (ms).
var quotaReserveLua = quotaMonthLua + quotaReserveFnLua + quotaReserveMainLua

//go:embed lua/quota_reserve.lua
var quotaReserveMainLua string

// quotaCommitLua: KEYS: the hash, the set. ARGV: reservation id, its
// month. The slot leaves the set and, if its month is still the hash's,
// counts — even when it had expired: the upstream did the work.
//
//go:embed lua/quota_commit.lua
var quotaCommitLua string

var (
	quotaReserveScript = redis.NewScript(quotaReserveLua)
	quotaCommitScript  = redis.NewScript(quotaCommitLua)
)

// quotaKeys returns the hash and set keys of k's count of q.
func (r *Redis) quotaKeys(q *Quota, k Key) (hash, set string) {
	hash = RedisKey(r.prefix, q.id, k)
	return hash, hash + ":r"
}

// Reserve takes a slot of q for k in one script call. The caller bounds
// it with ctx.
func (r *Redis) Reserve(ctx context.Context, q *Quota, k Key, limit int64, ttl time.Duration) (QuotaDecision, error) {
	hash, set := r.quotaKeys(q, k)
	ttlMS := max(int64(ttl/time.Millisecond), 1)
	v, err := quotaReserveScript.Run(ctx, r.client, []string{hash, set}, limit, ttlMS).Int64Slice()
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

// Settle commits or releases r in one call.
func (r *Redis) Settle(ctx context.Context, q *Quota, k Key, res Reservation, commit bool) error {
	if !res.Held() {
		return nil
	}
	hash, set := r.quotaKeys(q, k)
	id := strconv.FormatInt(res.ID, 10)
	var err error
	if commit {
		err = quotaCommitScript.Run(ctx, r.client, []string{hash, set}, id, strconv.FormatInt(res.Month, 10)).Err()
	} else {
		err = r.client.ZRem(ctx, set, id).Err()
	}
	if err != nil {
		return fmt.Errorf("quota %s: %w", settleVerb(commit), err)
	}
	return nil
}

// QuotaUsed returns k's count of q in the month Redis is in and the slots
// it holds, for tests and budget inspection. It reads only.
func (r *Redis) QuotaUsed(ctx context.Context, q *Quota, k Key) (used, reserved int64, err error) {
	u, err := r.QuotaUsage(ctx, q, k)
	return u.Used, u.Reserved, err
}

// QuotaUsage returns k's standing against q in the month Redis is in, by
// Redis' clock, in one script call that writes nothing (no key is made
// for an identity that has none).
func (r *Redis) QuotaUsage(ctx context.Context, q *Quota, k Key) (QuotaUsage, error) {
	hash, set := r.quotaKeys(q, k)
	v, err := quotaUsedScript.Run(ctx, r.client, []string{hash, set}).Int64Slice()
	if err != nil || len(v) != 4 {
		return QuotaUsage{}, fmt.Errorf("quota read: %v %w", v, err)
	}
	next := time.Unix(v[2], 0).UTC()
	return QuotaUsage{Used: v[0], Reserved: v[1], ResetAt: next, ResetIn: next.Sub(time.UnixMilli(v[3])), Store: storeNames[storeRedis]}, nil
}

// quotaUsedScript: KEYS: the hash, the set. Reply: used, reserved, the
// next month's start (Unix s), now (ms). It reads only.
var quotaUsedScript = redis.NewScript(quotaMonthLua + quotaUsedMainLua)

//go:embed lua/quota_used.lua
var quotaUsedMainLua string

func settleVerb(commit bool) string {
	if commit {
		return "commit"
	}
	return "release"
}
