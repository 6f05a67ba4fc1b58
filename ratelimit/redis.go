package ratelimit

import (
	_ "embed"
	"strconv"

	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"
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
// request's keys are in one Cluster slot. A call also carries the quota
// settlements queued since the last call (settle.go), written first.
//
// KEYS: the settlements' keys; then per request, its log, then the key of
// each of its quotas. ARGV: the number of settlements and their marks
// (" c<id>", " x<id>"); the number of policies in the call; per policy,
// its number of tiers n, capacity, longest window in µs and the key's TTL
// in ms, then n pairs of limit and window in µs; then, per request, the
// index (from 1) of its policy, its number of quotas, and per quota its
// limit, the slot's ttl in ms and 1 when a refusal ends the reservations
// (0 when the next are still made). Reply: one string, per request four
// numbers — allowed, tier, remaining, reset µs, with the meaning of
// [Decision] — or "e 0 0 0" for a request whose key Redis refused (a key
// of another type, a write refused for memory), followed per quota by
// seven numbers — allowed, slots taken, reservation id, month, month start
// and next month start (Unix s), now (ms), as the quota's own script — or
// "x" when it was not reserved (the request refused, an earlier quota
// refused it, or Redis refused the quota's write); then "|" and the first
// error of a request.
var slidingLogScript = redis.NewScript(slidingLogLua)

// slidingLogArgs encodes p for the sliding-log script, once per policy:
// its number of tiers, capacity, longest window (µs) and key TTL (ms, as a
// ready string: no float formatting in Redis), then each tier's limit and
// window (µs). Boxed once, so that a call appends them without
// allocating.
func slidingLogArgs(p *Policy) []any {
	ttl := (p.maxWindow + time.Millisecond - 1) / time.Millisecond
	args := []any{len(p.Tiers), p.capacity, p.maxWindow.Microseconds(), strconv.FormatInt(int64(ttl), 10)}
	for _, t := range p.Tiers {
		args = append(args, t.Limit, t.Window.Microseconds())
	}
	return args
}

var slidingLogLua = quotaMonthLua + quotaFnLua + slidingLogMainLua

// slidingLogMainLua is the script's body; its Go twin, deciding the same
// way in process, is memory.go.
//
//go:embed lua/sliding_log.lua
var slidingLogMainLua string

// Redis is the shared store: every replica that uses one Redis shares
// each identity's budgets. Time comes from Redis, not from the replicas'
// clocks.
type Redis struct {
	client redis.UniversalClient
	gcra   *redis_rate.Limiter
	prefix string
	batch  batcher
	// settles are the quota settlements waiting for the next call.
	settles settleQueue
}

var _ Store = (*Redis)(nil)

// KeyPrefix is the prefix of every rate-limit key in Redis.
const KeyPrefix = "deskgate:rl:"

// NewRedis returns a store on client. The script is loaded on first use
// (EVALSHA, falling back to EVAL on NOSCRIPT, as after a Redis restart).
func NewRedis(client redis.UniversalClient) *Redis {
	r := &Redis{client: client, gcra: redis_rate.NewLimiter(client), prefix: KeyPrefix}
	r.batch.maxInflight = defaultInflight()
	r.settles.flush = r.flushTimer
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
// and volatile-* (docs/rate-limits.md, "Stores", says why).
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
	deadline, _ := ctx.Deadline()
	return r.decide(ctx, deadline, p, k, nil)
}

// decide is Allow bounded by deadline (when not zero) rather than by ctx
// alone, making asks' reservations in the same call when p's algorithm
// can (the sliding log).
func (r *Redis) decide(ctx context.Context, deadline time.Time, p *Policy, k Key, asks []QuotaAsk) (Decision, error) {
	return p.Algorithm.allowRedis(ctx, r, deadline, p, k, asks)
}
