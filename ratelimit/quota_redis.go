package ratelimit

import (
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
const quotaMonthLua = `
local function civil(days)
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local y = yoe + era * 400
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m = mp + 3
  if mp >= 10 then m = mp - 9 end
  if m <= 2 then y = y + 1 end
  return y, m
end
local function first_day(y, m)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = m - 3
  if m <= 2 then mp = m + 9 end
  local doy = math.floor((153 * mp + 2) / 5)
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end
-- month_of returns the month index (y*12 + m-1) of Unix seconds sec, and
-- the Unix seconds of its start and of the next month's.
local function month_of(sec)
  local y, m = civil(math.floor(sec / 86400))
  local ny, nm = y, m + 1
  if nm > 12 then ny, nm = y + 1, 1 end
  return y * 12 + m - 1, first_day(y, m) * 86400, first_day(ny, nm) * 86400
end
`

// quotaReserveFnLua is the reservation itself, shared by the quota's own
// script and the rate-limit script (which reserves with its decision, see
// batch.go): reserve takes a slot of the quota whose hash is hk and set
// sk, for ttl ms, when fewer than limit are used or reserved in month; now
// is Redis' time in ms and reset the next month's start (Unix s). It
// returns allowed (0/1), the slots taken after it and the slot's id (0
// when refused).
const quotaReserveFnLua = `
local function reserve(hk, sk, limit, ttl, now, month, reset)
  local h = redis.call('HMGET', hk, 'm', 'u')
  local used = 0
  if tonumber(h[1]) == month then
    used = tonumber(h[2]) or 0
  else
    redis.call('DEL', sk)
    redis.call('HSET', hk, 'm', string.format('%d', month), 'u', '0')
  end
  redis.call('ZREMRANGEBYSCORE', sk, '-inf', string.format('%d', now))
  local taken = used + redis.call('ZCARD', sk)
  local exp = string.format('%d', (reset + 86400) * 1000)
  redis.call('PEXPIREAT', hk, exp)
  if taken >= limit then
    return 0, taken, 0
  end
  local id = redis.call('HINCRBY', hk, 'n', 1)
  redis.call('ZADD', sk, string.format('%d', now + ttl), id)
  redis.call('PEXPIREAT', sk, exp)
  return 1, taken + 1, id
end
`

// quotaReserveLua: KEYS: the hash, the set. ARGV: limit, ttl ms. Reply:
// allowed (0/1), slots taken after the call, the reservation id (0 when
// refused), month, month start and next month start (Unix s), now (ms).
const quotaReserveLua = quotaMonthLua + quotaReserveFnLua + `
local t = redis.call('TIME')
local sec = tonumber(t[1])
local now = sec * 1000 + math.floor(tonumber(t[2]) / 1000)
local month, start, reset = month_of(sec)
local ok, taken, id = reserve(KEYS[1], KEYS[2], tonumber(ARGV[1]), tonumber(ARGV[2]), now, month, reset)
return {ok, taken, id, month, start, reset, now}
`

// quotaCommitLua: KEYS: the hash, the set. ARGV: reservation id, its
// month. The slot leaves the set and, if its month is still the hash's,
// counts — even when it had expired: the upstream did the work.
const quotaCommitLua = `
redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('HGET', KEYS[1], 'm') == ARGV[2] then
  return redis.call('HINCRBY', KEYS[1], 'u', 1)
end
return -1
`

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
var quotaUsedScript = redis.NewScript(quotaMonthLua + `
local t = redis.call('TIME')
local sec = tonumber(t[1])
local now = sec * 1000 + math.floor(tonumber(t[2]) / 1000)
local month, _, reset = month_of(sec)
local h = redis.call('HMGET', KEYS[1], 'm', 'u')
if tonumber(h[1]) ~= month then return {0, 0, reset, now} end
return {tonumber(h[2]) or 0, redis.call('ZCOUNT', KEYS[2], '(' .. string.format('%d', now), '+inf'), reset, now}
`)

func settleVerb(commit bool) string {
	if commit {
		return "commit"
	}
	return "release"
}
