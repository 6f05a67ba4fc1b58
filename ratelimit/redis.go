package ratelimit

import (
	"context"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"

	"github.com/innovartx/deskgate/config"
)

// slidingLogScript decides requests against every tier of their policies,
// atomically (SPEC §4): one call decides a batch of concurrent requests
// (see batch.go), in the order given, with one Redis TIME. The admitted
// requests' times of one identity and budget (µs) are one string of
// fixed-width hex stamps, oldest first, which serves all tiers at once: a
// tier of window w counts the stamps after now-w, found by binary search.
// A request is recorded only if every tier admits it. Per request, a GET
// and a SET; per call, one TIME — where redis_rate's GCRA runs TIME, GET
// and SET for each request.
//
// As no tier ever holds more than its limit, the string never needs more
// than the largest limit of stamps ("capacity"); stamps older than the
// longest window are dropped when the next request is recorded, and the key
// expires with the longest window.
//
// A request may carry quota reservations (SPEC §9, [QuotaAsk]): the
// script makes them, in order, only when it admits the request — a 429
// consumes no quota — so that a request both limits count costs one round
// trip. Their keys share the identity's hash tag with its log: one
// request's keys are in one Cluster slot.
//
// KEYS: per request, its log, then the hash and the set of each of its
// quotas. ARGV: the number of policies in the call; per policy, its number
// of tiers n, capacity, longest window in µs and the key's TTL in ms, then
// n pairs of limit and window in µs; then, per request, the index (from 1)
// of its policy, its number of quotas, and per quota its limit, the
// slot's ttl in ms and 1 when a refusal ends the reservations (0 when the
// next are still made). Reply: one string, per request four numbers —
// allowed, tier, remaining, reset µs, with the meaning of [Decision] — or
// "e 0 0 0" for a request whose key Redis refused (a key of another type,
// a write refused for memory), followed per quota by seven numbers —
// allowed, slots taken, reservation id, month, month start and next month
// start (Unix s), now (ms), as the quota's own script — or "x" when it was
// not reserved (the request refused, an earlier quota refused it, or
// Redis refused the quota's keys); then "|" and the first error of a
// request.
var slidingLogScript = redis.NewScript(slidingLogLua)

const slidingLogLua = quotaMonthLua + quotaReserveFnLua + `
local W = 13
local t = redis.call('TIME')
local clock = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function at(s, i)
  return tonumber(string.sub(s, i * W + 1, i * W + W), 16)
end
local function first_after(s, size, cutoff)
  local lo, hi = 0, size
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if at(s, mid) <= cutoff then lo = mid + 1 else hi = mid end
  end
  return lo
end
local pols = {}
local a = 2
for q = 1, tonumber(ARGV[1]) do
  local n = tonumber(ARGV[a])
  local pol = {n = n, capacity = tonumber(ARGV[a + 1]), maxw = tonumber(ARGV[a + 2]), ttl = ARGV[a + 3]}
  a = a + 4
  for i = 1, 2 * n do
    pol[i] = tonumber(ARGV[a])
    a = a + 1
  end
  pols[q] = pol
end
local out, failure = {}, nil
local qmonth, qstart, qreset, qnow
local kc, j = 1, 0
while a <= #ARGV do
  j = j + 1
  local key = KEYS[kc]
  local pol = pols[tonumber(ARGV[a])]
  local nq = tonumber(ARGV[a + 1])
  local qa, qk = a + 2, kc + 1
  a = a + 2 + 3 * nq
  kc = kc + 1 + 2 * nq
  local admitted = false
  local s = redis.pcall('GET', key)
  if type(s) == 'table' and s.err then
    failure = failure or s.err
    out[j] = 'e 0 0 0'
  else
    s = s or ''
    local now = clock
    local size = math.floor(#s / W)
    if size > 0 then
      -- A Redis clock stepped back must not free slots early.
      local last = at(s, size - 1)
      if now < last then now = last end
    end
    local blocked = false
    local dtier, dwait = 0, 0
    local rtier, rrem, rreset = 0, -1, 0
    local drop = 0
    for i = 0, pol.n - 1 do
      local limit, w = pol[2 * i + 1], pol[2 * i + 2]
      local first = first_after(s, size, now - w)
      if w == pol.maxw then drop = first end
      local count = size - first
      if count >= limit then
        local wait = at(s, first + count - limit) + w - now
        if (not blocked) or wait > dwait then
          dtier, dwait = i, wait
        end
        blocked = true
      elseif not blocked then
        local oldest = now
        if count > 0 then oldest = at(s, first) end
        local rem = limit - count - 1
        local reset = oldest + w - now
        if rrem < 0 or rem < rrem or (rem == rrem and reset > rreset) then
          rtier, rrem, rreset = i, rem, reset
        end
      end
    end
    if blocked then
      out[j] = string.format('0 %d 0 %d', dtier, dwait)
    else
      if size - drop >= pol.capacity then drop = size - pol.capacity + 1 end
      s = string.sub(s, drop * W + 1) .. string.format('%013x', now)
      local r = redis.pcall('SET', key, s, 'PX', pol.ttl)
      if type(r) == 'table' and r.err then
        failure = failure or r.err
        out[j] = 'e 0 0 0'
      else
        out[j] = string.format('1 %d %d %d', rtier, rrem, rreset)
        admitted = true
      end
    end
  end
  if nq > 0 then
    local parts = {out[j]}
    if admitted and not qmonth then
      -- The quotas' month and time, from the call's one TIME.
      local sec = math.floor(clock / 1000000)
      qnow = math.floor(clock / 1000)
      qmonth, qstart, qreset = month_of(sec)
    end
    local go = admitted
    for i = 0, nq - 1 do
      local ok, allowed, taken, id = false, 0, 0, 0
      if go then
        local lim, ttl = tonumber(ARGV[qa + 3 * i]), tonumber(ARGV[qa + 3 * i + 1])
        ok, allowed, taken, id = pcall(reserve, KEYS[qk + 2 * i], KEYS[qk + 2 * i + 1], lim, ttl, qnow, qmonth, qreset)
      end
      if ok then
        parts[i + 2] = string.format('%d %d %d %d %d %d %d', allowed, taken, id, qmonth, qstart, qreset, qnow)
        if allowed == 0 and ARGV[qa + 3 * i + 2] == '1' then go = false end
      else
        parts[i + 2] = 'x'
        go = false
      end
    end
    out[j] = table.concat(parts, ' ')
  end
end
local reply = table.concat(out, ' ')
if failure then reply = reply .. '|' .. failure end
return reply
`

// Redis is the shared store: every replica that uses one Redis shares
// each identity's budgets. Time comes from Redis, not from the replicas'
// clocks.
type Redis struct {
	client redis.UniversalClient
	gcra   *redis_rate.Limiter
	prefix string
	batch  batcher
}

var _ Store = (*Redis)(nil)

// KeyPrefix is the prefix of every rate-limit key in Redis.
const KeyPrefix = "deskgate:rl:"

// NewRedis returns a store on client. The script is loaded on first use
// (EVALSHA, falling back to EVAL on NOSCRIPT, as after a Redis restart).
func NewRedis(client redis.UniversalClient) *Redis {
	r := &Redis{client: client, gcra: redis_rate.NewLimiter(client), prefix: KeyPrefix}
	r.batch.maxInflight = defaultInflight()
	return r
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

// healthID names the budget of the health check's key: no policy has it
// (theirs are "global", "plan:<name>" and "bucket:<name>").
const healthID = "health"

// healthPolicy is the health check's own budget: far more than one check a
// second ever uses, so that every check is admitted and writes; its key
// expires 5 s after the last check.
var healthPolicy = func() *Policy {
	p, err := NewPolicy(healthID, SlidingLog, []Tier{{Limit: 1000, Window: 5 * time.Second, Name: "5s"}})
	if err != nil {
		panic(err)
	}
	return p
}()

// Probe runs what a decision runs — the rate-limit script, GET and SET with
// an expiry — on the health key of k, deskgate:rl:{<k>}:health: in the
// Cluster slot of k's budgets, but on none of them. A Redis that answers
// PING but refuses writes (out of memory under noeviction, a read-only
// replica) fails it as it fails the requests. ctx's deadline bounds it.
func (r *Redis) Probe(ctx context.Context, k Key) error {
	deadline, _ := ctx.Deadline()
	it := &pending{ctx: ctx, deadline: deadline, p: healthPolicy}
	it.key = appendRedisKey(nil, r.prefix, healthID, k)
	r.run(&call{items: []*pending{it}})
	return it.err
}

// EvictionPolicy is the maxmemory-policy of one Redis server.
type EvictionPolicy struct {
	// Addr is the server, for a Cluster master; empty otherwise.
	Addr   string
	Policy string
}

// Evicts reports whether the policy may evict any key, including those
// without an expiry: the allkeys-* policies. SPEC §4 accepts noeviction
// and volatile-* (README "Stores" says why).
func (p EvictionPolicy) Evicts() bool { return strings.HasPrefix(p.Policy, "allkeys-") }

func (p EvictionPolicy) String() string {
	if p.Addr == "" {
		return p.Policy
	}
	return p.Addr + "=" + p.Policy
}

// EvictionPolicies reads maxmemory-policy from the server, or from every
// master of a Cluster (sorted by address), with CONFIG GET or, where CONFIG
// is disabled or renamed (managed services), the maxmemory_policy field of
// INFO memory. It returns what it could read, and the first error.
func (r *Redis) EvictionPolicies(ctx context.Context) ([]EvictionPolicy, error) {
	cc, ok := r.client.(*redis.ClusterClient)
	if !ok {
		p, err := evictionPolicy(ctx, r.client)
		if err != nil {
			return nil, err
		}
		return []EvictionPolicy{{Policy: p}}, nil
	}
	var mu sync.Mutex
	var out []EvictionPolicy
	err := cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
		addr := c.Options().Addr
		p, err := evictionPolicy(ctx, c)
		if err != nil {
			return fmt.Errorf("%s: %w", addr, err)
		}
		mu.Lock()
		out = append(out, EvictionPolicy{Addr: addr, Policy: p})
		mu.Unlock()
		return nil
	})
	slices.SortFunc(out, func(a, b EvictionPolicy) int { return strings.Compare(a.Addr, b.Addr) })
	return out, err
}

func evictionPolicy(ctx context.Context, c redis.Cmdable) (string, error) {
	m, err := c.ConfigGet(ctx, "maxmemory-policy").Result()
	if p := m["maxmemory-policy"]; err == nil && p != "" {
		return p, nil
	}
	if err != nil && !answered(err) {
		return "", err // no answer: INFO would not get one either
	}
	info, ierr := c.Info(ctx, "memory").Result()
	if ierr == nil {
		if p := infoField(info, "maxmemory_policy"); p != "" {
			return p, nil
		}
		ierr = errors.New("no maxmemory_policy field")
	}
	if err == nil {
		err = errors.New("no maxmemory-policy")
	}
	return "", fmt.Errorf("CONFIG GET maxmemory-policy: %v; INFO memory: %w", err, ierr)
}

// infoField returns the value of field in an INFO reply.
func infoField(info, field string) string {
	for line := range strings.Lines(info) {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok && k == field {
			return v
		}
	}
	return ""
}

// answered reports whether err is an error reply of Redis itself (the
// server is there and said no), not the absence of an answer.
func answered(err error) bool {
	var e redis.Error
	return errors.As(err, &e)
}

// RedisKey returns the key of k's state under policy id: the identity's
// hash in a Cluster hash tag, so that all of an identity's budgets live in
// one slot, then the budget.
func RedisKey(prefix string, id string, k Key) string {
	return string(appendRedisKey(make([]byte, 0, len(prefix)+2+2*len(k)+1+len(id)), prefix, id, k))
}

func appendRedisKey(b []byte, prefix string, id string, k Key) []byte {
	b = append(b, prefix...)
	b = append(b, '{')
	b = hex.AppendEncode(b, k[:])
	b = append(b, '}', ':')
	return append(b, id...)
}

// Allow decides one request in one round trip, shared with the requests
// decided at the same time. The caller bounds it with ctx.
func (r *Redis) Allow(ctx context.Context, p *Policy, k Key) (Decision, error) {
	if p.Algorithm == GCRA {
		return r.allowGCRA(ctx, p.Tiers[0], RedisKey(r.prefix, p.ID, k))
	}
	deadline, _ := ctx.Deadline()
	return r.allow(ctx, deadline, p, k)
}

// allowGCRA runs one tier through redis_rate: requests spaced by
// window/limit, with a burst of limit.
func (r *Redis) allowGCRA(ctx context.Context, t Tier, key string) (Decision, error) {
	ctx, span := startSpan(ctx)
	res, err := r.gcra.Allow(ctx, key, redis_rate.Limit{Rate: int(t.Limit), Burst: int(t.Limit), Period: t.Window})
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

// Describe names the Redis of cfg for the start-up log, without any
// password: "redis://host:port/db" (or rediss://) for a URL, the address
// for one server, "cluster(a, b, c)" for Cluster seeds and
// "sentinel(master at a, b)" for Sentinel.
func Describe(cfg config.Redis) string {
	switch {
	case cfg.URL != "":
		u, err := redis.ParseURL(cfg.URL)
		if err != nil {
			return "invalid url"
		}
		scheme := "redis"
		if u.TLSConfig != nil {
			scheme = "rediss"
		}
		return scheme + "://" + u.Addr + "/" + strconv.Itoa(u.DB)
	case cfg.Cluster:
		return "cluster(" + strings.Join(cfg.Addrs, ", ") + ")"
	case cfg.MasterName != "":
		return "sentinel(" + cfg.MasterName + " at " + strings.Join(cfg.Addrs, ", ") + ")"
	}
	return strings.Join(cfg.Addrs, ", ")
}
