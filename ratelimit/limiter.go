package ratelimit

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/innovartx/deskgate/metrics"
)

// OnFailure is what the limiter does when Redis cannot decide.
type OnFailure uint8

// The failure policies of `redis.on_failure`.
const (
	// FailLocal decides in process with the same tiers until Redis
	// answers again.
	FailLocal OnFailure = iota
	// FailOpen admits the request.
	FailOpen
	// FailClosed refuses it with 503.
	FailClosed
)

// ErrUnavailable is returned when Redis cannot decide and the policy is
// [FailClosed].
var ErrUnavailable = errors.New("rate-limit store unavailable")

// Limiter is what the gateway asks: the in-process store alone, or Redis
// with the local deny cache in front and a failure policy behind. It
// counts every decision in deskgate_ratelimit_decisions_total.
type Limiter struct {
	// shared is the store the replicas share (Redis), asked through the
	// operations every store has; nil: the in-process store decides
	// alone.
	shared limitStore
	// redis is the same store for what only Redis does: the health
	// checks (health.go), the quota settlements' queue (settle.go), the
	// eviction policy. Nil without Redis.
	redis *Redis
	// local is the in-process store: the store itself without a shared
	// one, the fallback (redis.on_failure: local) with one. It is held as
	// itself, not as a limitStore: it never fails, so its errors are not
	// looked at, and without Redis it decides every request, by a direct
	// call.
	local     *Memory
	deny      *denyCache
	inflight  *flights
	onFailure OnFailure
	timeout   time.Duration
	log       *slog.Logger
	clock     func() time.Duration

	// healthy is false from a failed Redis call (or a failed start-up
	// check) until a health check succeeds; meanwhile no request waits on
	// Redis. The rest of the store's health is in health.go.
	healthy atomic.Bool
	every   time.Duration // first health-check interval
	maxWait time.Duration // its cap
	health  health
	policy  policyState

	bg     context.Context // ends at Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	decisions   [4][2]prometheus.Counter // [store][allowed]
	storeErrors prometheus.Counter
	fallback    prometheus.Gauge
	evicting    prometheus.Gauge
}

// The store label values of deskgate_ratelimit_decisions_total.
const (
	storeRedis = iota
	storeMemory
	storeFallback
	storeDenyCache
)

var storeNames = [...]string{"redis", "memory", "local_fallback", "local_deny_cache"}

// limitStore is what the limiter asks of a store, whichever it is:
// *Memory and *Redis implement it, so that another shared store, or a
// shadow in front of one, plugs in as shared without a new branch in the
// limiter. What only Redis does (health, settlement queue, eviction
// policy, batching) is not in it.
type limitStore interface {
	// decide decides one request of k against p, by deadline when it is
	// not zero; it makes asks' reservations in the same call when the
	// store and p's algorithm can, marking them Done, and leaves the
	// others to Reserve.
	decide(ctx context.Context, deadline time.Time, p *Policy, k Key, asks []QuotaAsk) (Decision, error)
	// peek reads k's usage of p without consuming (SPEC §10).
	peek(ctx context.Context, p *Policy, k Key) (Usage, error)
	QuotaStore
	QuotaUsage(ctx context.Context, q *Quota, k Key) (QuotaUsage, error)
}

var (
	_ limitStore = (*Memory)(nil)
	_ limitStore = (*Redis)(nil)
)

// LimiterOptions configure [NewLimiter].
type LimiterOptions struct {
	// Redis is the shared store; nil means in process only.
	Redis *Redis
	// Local is the in-process store: the store itself without Redis, the
	// fallback with it.
	Local     *Memory
	OnFailure OnFailure
	// Timeout bounds each Redis call (redis.timeout).
	Timeout time.Duration
	// HealthEvery is the interval of the health check while Redis is
	// down (1s when zero); after 10 intervals of an outage it doubles at
	// each failed check, up to HealthMax (30s when zero). Each check comes
	// up to a quarter early, at random.
	HealthEvery time.Duration
	HealthMax   time.Duration
	// DenyCacheSize caps the deny cache's entries (100,000 when zero).
	DenyCacheSize int
	Metrics       *metrics.Metrics
	Logger        *slog.Logger
	// Clock is a monotonic clock for the deny cache (tests).
	Clock func() time.Duration
}

// NewLimiter returns a limiter. Close stops its health checks.
func NewLimiter(o LimiterOptions) *Limiter {
	l := &Limiter{
		local:     o.Local,
		onFailure: o.OnFailure,
		timeout:   o.Timeout,
		log:       o.Logger,
		clock:     o.Clock,
		every:     o.HealthEvery,
		maxWait:   o.HealthMax,
	}
	if o.Redis != nil {
		l.shared, l.redis = o.Redis, o.Redis
	}
	l.bg, l.cancel = context.WithCancel(context.Background())
	l.health.remindEvery = remindEvery
	l.health.configEvery = configErrorEvery
	l.policy.every = policyEvery
	if l.log == nil {
		l.log = slog.New(slog.DiscardHandler)
	}
	if l.clock == nil {
		start := time.Now()
		l.clock = func() time.Duration { return time.Since(start) }
	}
	if l.every <= 0 {
		l.every = time.Second
	}
	if l.maxWait <= 0 {
		l.maxWait = 30 * time.Second
	}
	l.maxWait = max(l.maxWait, l.every)
	if l.timeout <= 0 {
		l.timeout = 50 * time.Millisecond
	}
	size := o.DenyCacheSize
	if size <= 0 {
		size = 100_000
	}
	l.deny = newDenyCache(size)
	l.inflight = newFlights()
	l.healthy.Store(true)
	m := o.Metrics
	for s, name := range storeNames {
		l.decisions[s][0] = m.RateLimitDecisions.WithLabelValues(name, "denied")
		l.decisions[s][1] = m.RateLimitDecisions.WithLabelValues(name, "allowed")
	}
	l.storeErrors = m.RateLimitStoreErrors
	l.fallback = m.RateLimitFallback
	l.fallback.Set(0)
	l.evicting = m.RateLimitEvicting
	l.evicting.Set(0)
	if l.redis != nil {
		l.redis.settles.failed = l.settleFailed
	}
	return l
}

// settleFailed is told of a call for quota settlements alone that
// failed (own: a store error; a decision call's is counted where it
// failed) and of the settlements it drops for good, which are logged
// (their slots expire; a dropped commit is a request the month does not
// count).
func (l *Limiter) settleFailed(err error, dropped int, own bool) {
	if own {
		l.storeErrors.Inc()
	}
	if dropped > 0 {
		l.log.LogAttrs(context.Background(), slog.LevelWarn, "quota settlements dropped after retries",
			slog.Int("dropped", dropped), slog.String("error", err.Error()))
	}
}

// Close stops the background checks and the local store's sweep, and
// writes the quota commits still queued.
func (l *Limiter) Close() {
	l.health.mu.Lock()
	l.health.closed = true
	l.health.mu.Unlock()
	l.cancel()
	l.wg.Wait()
	if l.redis != nil {
		// The commits still queued (settle.go).
		l.redis.settles.stop()
		ctx, cancel := context.WithTimeout(context.Background(), max(l.timeout, settleTimeout))
		if err := l.redis.flushSettlements(ctx); err != nil {
			l.log.LogAttrs(ctx, slog.LevelWarn, "quota settlements not written at shutdown", slog.String("error", err.Error()))
		}
		cancel()
	}
	l.local.Close()
}

// StoreName names the store that decides now, for the start-up log:
// "memory" without Redis, "redis" while it answers, and while it does not,
// what redis.on_failure makes of it ("local fallback", "none (fail open)",
// "none (fail closed)").
func (l *Limiter) StoreName() string {
	switch {
	case l.shared == nil:
		return "memory"
	case l.healthy.Load():
		return "redis"
	case l.onFailure == FailOpen:
		return "none (fail open)"
	case l.onFailure == FailClosed:
		return "none (fail closed)"
	}
	return "local fallback"
}

// FallbackActive reports whether redis.on_failure applies now, as
// deskgate_ratelimit_fallback_active does.
func (l *Limiter) FallbackActive() bool { return l.shared != nil && !l.healthy.Load() }

func (l *Limiter) count(store int, d Decision) Decision {
	if d.Allowed {
		l.decisions[store][1].Inc()
	} else {
		l.decisions[store][0].Inc()
	}
	return d
}

// Allow decides one request of k against p. The only error is
// [ErrUnavailable], under [FailClosed].
func (l *Limiter) Allow(ctx context.Context, p *Policy, k Key) (Decision, error) {
	return l.AllowQuotas(ctx, p, k, nil)
}

// AllowQuotas decides one request as Allow does and, when Redis decides it
// with the sliding log, makes the quota reservations of asks in the same
// script call, only if the request is admitted (SPEC §9: one round trip
// for both). It marks Done the asks so decided; the others (the request
// refused, or decided elsewhere: the deny cache, GCRA, the in-process
// store, redis.on_failure) are the caller's to reserve with Reserve.
func (l *Limiter) AllowQuotas(ctx context.Context, p *Policy, k Key, asks []QuotaAsk) (Decision, error) {
	for i := range asks {
		asks[i].Done, asks[i].Decision = false, QuotaDecision{}
	}
	if l.shared == nil {
		d, _ := l.local.Allow(ctx, p, k)
		return l.count(storeMemory, d), nil
	}
	// SPEC §4: a replica that was told "denied until T" denies locally
	// until T without asking Redis.
	now := l.clock()
	if d, ok := l.deny.get(p, k, now); ok {
		return l.count(storeDenyCache, d), nil
	}
	if !l.healthy.Load() {
		return l.failed(ctx, p, k)
	}
	// Requests of one identity that miss the cache together (a flood when
	// a denial expires) queue behind one Redis call instead of racing to
	// Redis: if it says no, they are denied with it; if it admitted its
	// request with little quota left, the next in line asks, one at a
	// time. An identity with quota to spare asks concurrently.
	for {
		f, leader := l.inflight.join(p, k)
		if leader {
			return l.decide(ctx, p, k, now, f, asks)
		}
		select {
		case <-f.done:
		case <-ctx.Done():
			return Decision{}, ctx.Err()
		}
		now = l.clock()
		if d, ok := l.deny.get(p, k, now); ok {
			return l.count(storeDenyCache, d), nil
		}
		if !l.healthy.Load() {
			return l.failed(ctx, p, k)
		}
		if f.remaining >= queueBelow {
			return l.decide(ctx, p, k, now, nil, asks)
		}
	}
}

// queueBelow is the quota left under which requests of one identity that
// miss the deny cache together ask Redis one at a time.
const queueBelow = 8

// decide asks the shared store, with asks' reservations when it makes
// them in the same call. now is read before the call; f, when not nil, is
// the flight this call leads, released when the answer is known.
func (l *Limiter) decide(ctx context.Context, p *Policy, k Key, now time.Duration, f *flight, asks []QuotaAsk) (Decision, error) {
	// Bounded by a deadline, without a timer of its own where the
	// algorithm can do without one (the sliding log: see allow).
	d, err := l.shared.decide(ctx, time.Now().Add(l.timeout), p, k, asks)
	if f != nil {
		// Waiters read the cache (filled below) after done closes.
		f.remaining = d.Remaining
		if err != nil || !d.Allowed {
			f.remaining = 0
		}
		defer l.inflight.land(p, k, f)
	}
	if err != nil {
		if ctx.Err() != nil {
			// The client went away: not Redis' fault.
			return Decision{}, ctx.Err()
		}
		l.storeErrors.Inc()
		l.markDown(err, k)
		return l.failed(ctx, p, k)
	}
	switch {
	case !d.Allowed:
		// now was read before the call, so now+Reset is never later than
		// Redis' own "admitted again" time: the cache can only deny what
		// Redis would deny.
		l.deny.put(p, k, now+d.Reset, d)
	case d.Remaining == 0 && p.Algorithm.lastSlotDenies():
		// This request took the last slot of the reported tier, which
		// frees its next one after Reset: until then Redis would deny.
		l.deny.put(p, k, now+d.Reset, Decision{Tier: d.Tier, Reset: d.Reset})
	}
	return l.count(storeRedis, d), nil
}

// failed applies the failure policy.
func (l *Limiter) failed(ctx context.Context, p *Policy, k Key) (Decision, error) {
	switch l.onFailure {
	case FailOpen:
		return l.count(storeFallback, Decision{Allowed: true, Remaining: -1}), nil
	case FailClosed:
		return Decision{}, ErrUnavailable
	}
	d, _ := l.local.Allow(ctx, p, k)
	return l.count(storeFallback, d), nil
}
