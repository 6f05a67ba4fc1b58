package ratelimit

import (
	"context"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"

	"github.com/innovartx/deskgate/config"
)

// slidingLogScript decides one request against every tier of a policy in
// one round trip, atomically (SPEC §4). The admitted requests' times of
// one identity and budget (µs, from Redis TIME) are one string of
// fixed-width hex stamps, oldest first, which serves all tiers at once: a
// tier of window w counts the stamps after now-w, found by binary search.
// The request is recorded only if every tier admits it. Three commands per
// decision (TIME, GET, SET) — as many as redis_rate's GCRA — instead of a
// sorted-set command per tier.
//
// As no tier ever holds more than its limit, the string never needs more
// than the largest limit of stamps ("capacity"); stamps older than the
// longest window are dropped when the next request is recorded, and the key
// expires with the longest window.
//
// KEYS[1]: the log. ARGV: capacity, the number of tiers n, then n pairs of
// limit and window in µs. Reply: {allowed, tier, remaining, reset µs}, with
// the meaning of [Decision].
var slidingLogScript = redis.NewScript(`
local W = 13
local key = KEYS[1]
local capacity = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local s = redis.call('GET', key) or ''
local size = math.floor(#s / W)
local function at(i)
  return tonumber(string.sub(s, i * W + 1, i * W + W), 16)
end
if size > 0 then
  -- A Redis clock stepped back must not free slots early.
  local last = at(size - 1)
  if now < last then now = last end
end
local function first_after(cutoff)
  local lo, hi = 0, size
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if at(mid) <= cutoff then lo = mid + 1 else hi = mid end
  end
  return lo
end
local maxw = 0
local blocked = false
local dtier, dwait = 0, 0
local rtier, rrem, rreset = 0, -1, 0
for i = 1, n do
  local limit = tonumber(ARGV[1 + 2 * i])
  local w = tonumber(ARGV[2 + 2 * i])
  if w > maxw then maxw = w end
  local first = first_after(now - w)
  local count = size - first
  if count >= limit then
    local wait = at(first + count - limit) + w - now
    if (not blocked) or wait > dwait then
      dtier, dwait = i - 1, wait
    end
    blocked = true
  elseif not blocked then
    local oldest = now
    if count > 0 then oldest = at(first) end
    local rem = limit - count - 1
    local reset = oldest + w - now
    if rrem < 0 or rem < rrem or (rem == rrem and reset > rreset) then
      rtier, rrem, rreset = i - 1, rem, reset
    end
  end
end
if blocked then
  return {0, dtier, 0, dwait}
end
local drop = first_after(now - maxw)
if size - drop >= capacity then drop = size - capacity + 1 end
s = string.sub(s, drop * W + 1) .. string.format('%013x', now)
redis.call('SET', key, s, 'PX', math.ceil(maxw / 1000))
return {1, rtier, rrem, rreset}
`)

// Redis is the shared store: every replica that uses one Redis shares
// each identity's budgets. Time comes from Redis, not from the replicas'
// clocks.
type Redis struct {
	client redis.UniversalClient
	gcra   *redis_rate.Limiter
	prefix string
}

var _ Store = (*Redis)(nil)

// KeyPrefix is the prefix of every rate-limit key in Redis.
const KeyPrefix = "deskgate:rl:"

// NewRedis returns a store on client. The script is loaded on first use
// (EVALSHA, falling back to EVAL on NOSCRIPT, as after a Redis restart).
func NewRedis(client redis.UniversalClient) *Redis {
	return &Redis{client: client, gcra: redis_rate.NewLimiter(client), prefix: KeyPrefix}
}

// Load loads the script into Redis (every master, for a Cluster), so that
// the first requests need no EVAL.
func (r *Redis) Load(ctx context.Context) error {
	if cc, ok := r.client.(*redis.ClusterClient); ok {
		return cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
			return slidingLogScript.Load(ctx, c).Err()
		})
	}
	return slidingLogScript.Load(ctx, r.client).Err()
}

// Ping reports whether Redis answers.
func (r *Redis) Ping(ctx context.Context) error { return r.client.Ping(ctx).Err() }

// RedisKey returns the key of k's state under policy id: the identity's
// hash in a Cluster hash tag, so that all of an identity's budgets live in
// one slot, then the budget.
func RedisKey(prefix string, id string, k Key) string {
	b := make([]byte, 0, len(prefix)+2+2*len(k)+1+len(id))
	b = append(b, prefix...)
	b = append(b, '{')
	b = hex.AppendEncode(b, k[:])
	b = append(b, '}', ':')
	b = append(b, id...)
	return string(b)
}

// Allow decides one request in one round trip. The caller bounds it with
// ctx.
func (r *Redis) Allow(ctx context.Context, p *Policy, k Key) (Decision, error) {
	key := RedisKey(r.prefix, p.ID, k)
	if p.Algorithm == GCRA {
		return r.allowGCRA(ctx, p.Tiers[0], key)
	}
	v, err := slidingLogScript.Run(ctx, r.client, []string{key}, p.scriptArgs...).Int64Slice()
	if err != nil {
		return Decision{}, fmt.Errorf("rate-limit script: %w", err)
	}
	if len(v) != 4 || v[1] < 0 || int(v[1]) >= len(p.Tiers) {
		return Decision{}, fmt.Errorf("rate-limit script: unexpected reply %v", v)
	}
	return Decision{
		Allowed:   v[0] == 1,
		Tier:      int(v[1]),
		Remaining: v[2],
		Reset:     time.Duration(v[3]) * time.Microsecond,
	}, nil
}

// allowGCRA runs one tier through redis_rate: requests spaced by
// window/limit, with a burst of limit.
func (r *Redis) allowGCRA(ctx context.Context, t Tier, key string) (Decision, error) {
	res, err := r.gcra.Allow(ctx, key, redis_rate.Limit{Rate: int(t.Limit), Burst: int(t.Limit), Period: t.Window})
	if err != nil {
		return Decision{}, fmt.Errorf("redis_rate: %w", err)
	}
	if res.Allowed > 0 {
		return Decision{Allowed: true, Remaining: int64(res.Remaining), Reset: res.ResetAfter}, nil
	}
	return Decision{Reset: res.RetryAfter}, nil
}

// NewClient returns the go-redis client of cfg: one server (url, or one
// addr), Sentinel (master_name with the sentinels' addrs) or Cluster
// (addrs with cluster: true). Every call honours its context's deadline
// and is never retried: a request waits redis.timeout at most.
func NewClient(cfg config.Redis) (redis.UniversalClient, error) {
	timeout := cfg.Timeout.D()
	o := &redis.UniversalOptions{
		Addrs:                 cfg.Addrs,
		MasterName:            cfg.MasterName,
		IsClusterMode:         cfg.Cluster,
		Username:              cfg.Username,
		Password:              cfg.Password,
		ContextTimeoutEnabled: true,
		MaxRetries:            -1,
		DialerRetries:         1,
		DialTimeout:           max(timeout, time.Second),
		ReadTimeout:           timeout,
		WriteTimeout:          timeout,
		PoolTimeout:           timeout,
	}
	if cfg.URL != "" {
		u, err := redis.ParseURL(cfg.URL)
		if err != nil {
			return nil, fmt.Errorf("redis.url: %w", err)
		}
		o.Addrs = []string{u.Addr}
		o.Username, o.Password, o.DB = u.Username, u.Password, u.DB
		o.TLSConfig = u.TLSConfig
	}
	if cfg.TLS && o.TLSConfig == nil {
		o.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	if len(o.Addrs) == 0 {
		return nil, errors.New("redis: no address")
	}
	return redis.NewUniversalClient(o), nil
}

// SetLogger sends go-redis' own messages (dial failures, pool notices) to
// log at debug level: the limiter already reports store failures once, with
// their effect.
func SetLogger(log *slog.Logger) { redis.SetLogger(slogPrintf{log}) }

type slogPrintf struct{ log *slog.Logger }

func (s slogPrintf) Printf(ctx context.Context, format string, v ...any) {
	if s.log.Enabled(ctx, slog.LevelDebug) {
		s.log.Debug("redis: " + fmt.Sprintf(format, v...))
	}
}

// Describe names the topology of cfg for the start-up log.
func Describe(cfg config.Redis) string {
	switch {
	case cfg.Cluster:
		return "cluster(" + strconv.Itoa(len(cfg.Addrs)) + " seeds)"
	case cfg.MasterName != "":
		return "sentinel(" + cfg.MasterName + ")"
	}
	return "single"
}
