package ratelimit

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/innovartx/deskgate/config"
	"github.com/innovartx/deskgate/metrics"
	"github.com/innovartx/deskgate/redisclient"
)

// epoch is where the scripted clocks start: any fixed instant does.
var epoch = time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)

// timedStore is a store whose clock a test drives: set moves it to an
// offset from the start of the run.
type timedStore struct {
	name string
	s    Store
	set  func(at time.Duration)
}

func memoryTimed(t *testing.T) timedStore {
	c := &fakeClock{}
	m := NewMemory(time.Hour, WithClock(c.Now))
	t.Cleanup(func() { m.Close() })
	base := time.Hour
	return timedStore{"memory", m, func(at time.Duration) { c.Set(base + at) }}
}

func miniredisTimed(t *testing.T) (timedStore, *miniredis.Miniredis) {
	mr := miniredis.RunT(t)
	client := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { client.Close() })
	// TIME reads SetTime; TTLs run on FastForward: drive both (they are
	// separate clocks in miniredis).
	last := time.Duration(0)
	return timedStore{"miniredis", NewRedis(client), func(at time.Duration) {
		mr.SetTime(epoch.Add(at))
		if at > last {
			mr.FastForward(at - last)
			last = at
		}
	}}, mr
}

// scriptedDefault is one sequence that crosses the exact boundary of each
// of the three default tiers, with denied requests in between that must
// consume nothing. It returns request offsets in order.
func scriptedDefault() []time.Duration {
	var at []time.Duration
	add := func(d time.Duration, n int, step time.Duration) {
		for i := range n {
			at = append(at, d+time.Duration(i)*step)
		}
	}
	// 1s tier: 3 pass, then refusals up to and across the boundary.
	add(0, 3, 100*ms)
	add(500*ms, 5, 100*ms)  // denied, 0.5s–0.9s
	add(999*ms, 1, 0)       // denied, 1µs... 1ms before the boundary
	add(1000*ms, 2, 100*ms) // the first leaves at exactly 1s
	// 10s tier: keep 3/s until the 21st within 10s is refused.
	for s := 2; s <= 7; s++ {
		add(time.Duration(s)*time.Second, 4, 50*ms) // 4th of each second denied
	}
	add(9999*ms, 2, 0)        // denied by the 10s tier
	add(10*time.Second, 2, 0) // boundary of the first request
	// 1m tier: 2 every 1.2s stays under both shorter tiers.
	for i := range 40 { // up to 58.8s
		add(12*time.Second+time.Duration(i)*1200*ms, 2, 10*ms)
	}
	add(59999*ms, 1, 0)
	add(60*time.Second, 3, 0) // boundary
	add(61*time.Second, 1, 0)
	return at
}

var stepKey = Key{7, 7, 7}

func playSteps(t *testing.T, ts timedStore, p *Policy, at []time.Duration) []Decision {
	t.Helper()
	out := make([]Decision, len(at))
	for i, a := range at {
		ts.set(a)
		d, err := ts.s.Allow(context.Background(), p, stepKey)
		if err != nil {
			t.Fatalf("%s: step %d at %s: %v", ts.name, i, a, err)
		}
		out[i] = d
	}
	return out
}

// TestStoresAgree guards issue 4's conformance rule: one scripted sequence
// gives the same decisions, to the microsecond, on the in-process store and
// on the Redis script (miniredis here; real Redis in realredis_test.go),
// across the exact boundaries of all three tiers.
func TestStoresAgree(t *testing.T) {
	p := defaultPolicy(t)
	at := scriptedDefault()
	mem := playSteps(t, memoryTimed(t), p, at)
	mini, _ := miniredisTimed(t)
	red := playSteps(t, mini, p, at)
	allowed := map[bool]int{}
	tiers := map[int]int{}
	for i := range at {
		if mem[i] != red[i] {
			t.Errorf("step %d at %s: memory %v, redis %v", i, at[i], mem[i], red[i])
		}
		allowed[mem[i].Allowed]++
		if !mem[i].Allowed {
			tiers[mem[i].Tier]++
		}
	}
	// The sequence must really exercise every tier's refusal.
	for tier := range 3 {
		if tiers[tier] == 0 {
			t.Errorf("no step was refused by tier %d: the sequence does not test it", tier)
		}
	}
	t.Logf("%d steps: %d allowed, %d denied by tier %v", len(at), allowed[true], allowed[false], tiers)
}

// TestRedisKeys guards SPEC §4's key rules: an identity is named by a hash
// in a Cluster hash tag, the key expires after the longest window, and
// denied requests write nothing.
func TestRedisKeys(t *testing.T) {
	mini, mr := miniredisTimed(t)
	p := defaultPolicy(t)
	mini.set(0)
	for range 5 {
		mini.s.Allow(context.Background(), p, stepKey)
	}
	keys := mr.Keys()
	want := "deskgate:rl:{07070700000000000000000000000000}:global"
	if len(keys) != 1 || keys[0] != want {
		t.Fatalf("keys %q, want [%s]", keys, want)
	}
	log, _ := mr.Get(want)
	if len(log) != 3*13 {
		t.Errorf("log %q: want 3 stamps of 13 hex digits after 3 admitted and 2 denied", log)
	}
	if ttl := mr.TTL(want); ttl != time.Minute {
		t.Errorf("TTL %s, want the longest window, 1m", ttl)
	}
	mini.set(61 * time.Second)
	if mr.Exists(want) {
		t.Error("key still there after the longest window")
	}
}

// TestRedisLogBounded checks that an identity's log never outgrows the
// largest limit, however long it stays busy.
func TestRedisLogBounded(t *testing.T) {
	mini, mr := miniredisTimed(t)
	p, _ := NewPolicy("b", SlidingLog, []Tier{{Limit: 5, Window: time.Second, Name: "1s"}, {Limit: 8, Window: 3 * time.Second, Name: "3s"}})
	admitted := 0
	for i := range 2000 {
		mini.set(time.Duration(i) * 150 * ms)
		d, err := mini.s.Allow(context.Background(), p, stepKey)
		if err != nil {
			t.Fatal(err)
		}
		if d.Allowed {
			admitted++
		}
		log, _ := mr.Get(RedisKey(KeyPrefix, "b", stepKey))
		if len(log) > 8*13 {
			t.Fatalf("step %d: log of %d stamps, more than the largest limit 8", i, len(log)/13)
		}
	}
	// 8 per 3 s over 300 s.
	if admitted < 790 || admitted > 801 {
		t.Errorf("admitted %d over 300s at 8/3s", admitted)
	}
}

// TestGCRARedis checks the gcra algorithm through redis_rate against the
// in-process GCRA: the same admissions on one sequence.
func TestGCRARedis(t *testing.T) {
	p, _ := NewPolicy("g", GCRA, []Tier{{Limit: 10, Window: time.Second, Name: "1s"}})
	var at []time.Duration
	for i := range 40 {
		at = append(at, time.Duration(i)*37*ms)
	}
	mem := playSteps(t, memoryTimed(t), p, at)
	mini, _ := miniredisTimed(t)
	red := playSteps(t, mini, p, at)
	for i := range at {
		if mem[i].Allowed != red[i].Allowed {
			t.Errorf("step %d at %s: memory %v, redis_rate %v", i, at[i], mem[i], red[i])
		}
	}
}

func newTestLimiter(t *testing.T, r *Redis, onFailure OnFailure, clock func() time.Duration) (*Limiter, *metrics.Metrics) {
	m := metrics.New(prometheus.NewRegistry(), "test")
	l := NewLimiter(LimiterOptions{
		Redis:       r,
		Local:       NewMemory(time.Hour),
		OnFailure:   onFailure,
		Timeout:     100 * time.Millisecond,
		HealthEvery: 20 * time.Millisecond,
		Metrics:     m,
		Clock:       clock,
	})
	t.Cleanup(l.Close)
	return l, m
}

// TestDenyCacheAgreesWithRedis guards SPEC §4's local deny cache: on a
// random sequence of requests from a few identities, the limiter with its
// cache decides exactly as Redis alone; and while an identity is denied,
// Redis sees no call for it.
func TestDenyCacheAgreesWithRedis(t *testing.T) {
	withCache, mrA := miniredisTimed(t)
	plain, _ := miniredisTimed(t)
	now := time.Duration(0)
	l, m := newTestLimiter(t, withCache.s.(*Redis), FailLocal, func() time.Duration { return now })
	p := defaultPolicy(t)
	rng := rand.New(rand.NewPCG(1, 2))
	keys := []Key{{1}, {2}, {3}}
	cached := 0
	for i := range 3000 {
		now += time.Duration(rng.IntN(300)) * ms
		if rng.IntN(10) == 0 {
			now += 1 * time.Second
		}
		withCache.set(now)
		plain.set(now)
		k := keys[rng.IntN(len(keys))]
		before := mrA.CommandCount()
		got, err := l.Allow(context.Background(), p, k)
		if err != nil {
			t.Fatal(err)
		}
		if mrA.CommandCount() == before {
			cached++
		}
		want, _ := plain.s.Allow(context.Background(), p, k)
		if got != want {
			t.Fatalf("step %d at %s key %d: limiter %v, redis alone %v", i, now, k[0], got, want)
		}
	}
	hits := testutil.ToFloat64(m.RateLimitDecisions.WithLabelValues("local_deny_cache", "denied"))
	if hits == 0 || float64(cached) != hits {
		t.Errorf("deny cache answered %v times, Redis skipped %d times", hits, cached)
	}
	t.Logf("3000 requests, %d answered by the deny cache", cached)
}

// TestDenyCacheAcrossReload: a reload rebuilds every policy; a denial
// cached under a budget still answers for the new policy of the same ID
// (issue 18: the cache was keyed by *Policy, and a reload dropped it).
func TestDenyCacheAcrossReload(t *testing.T) {
	ts, mr := miniredisTimed(t)
	now := time.Duration(0)
	l, _ := newTestLimiter(t, ts.s.(*Redis), FailLocal, func() time.Duration { return now })
	p := defaultPolicy(t)
	ts.set(0)
	for range 4 { // three admitted, the fourth denied and cached
		l.Allow(context.Background(), p, stepKey)
	}
	reloaded := defaultPolicy(t)
	if reloaded == p || reloaded.ID != p.ID {
		t.Fatal("want a new policy with the same ID")
	}
	before := mr.CommandCount()
	d, err := l.Allow(context.Background(), reloaded, stepKey)
	if err != nil || d.Allowed {
		t.Fatalf("after the reload: %v %v, want denied", d, err)
	}
	if n := mr.CommandCount() - before; n != 0 {
		t.Fatalf("%d Redis commands for a denial cached before the reload, want 0", n)
	}
	other, err := NewPolicy("bucket:other", SlidingLog, p.Tiers)
	if err != nil {
		t.Fatal(err)
	}
	if d, _ := l.Allow(context.Background(), other, stepKey); !d.Allowed {
		t.Fatalf("another budget of the same identity: %v, want allowed", d)
	}
}

// TestDenyCacheFlood guards the reject path: after the first denial, a
// flood from one identity costs no Redis call until its retry time.
func TestDenyCacheFlood(t *testing.T) {
	ts, mr := miniredisTimed(t)
	now := time.Duration(0)
	l, _ := newTestLimiter(t, ts.s.(*Redis), FailLocal, func() time.Duration { return now })
	p := defaultPolicy(t)
	ts.set(0)
	for range 3 {
		l.Allow(context.Background(), p, stepKey)
	}
	l.Allow(context.Background(), p, stepKey) // the denial that fills the cache
	before := mr.CommandCount()
	for range 10_000 {
		d, _ := l.Allow(context.Background(), p, stepKey)
		if d.Allowed || d.Reset != time.Second {
			t.Fatalf("flood: %v", d)
		}
	}
	if n := mr.CommandCount() - before; n != 0 {
		t.Fatalf("%d Redis commands during the flood, want 0", n)
	}
	now = time.Second
	ts.set(time.Second)
	if d, _ := l.Allow(context.Background(), p, stepKey); !d.Allowed {
		t.Fatalf("at the retry time: %v", d)
	}
}

// TestDenyCacheNoAlloc guards issue 4's benchmark rule: the deny-cache
// path allocates nothing.
func TestDenyCacheNoAlloc(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are not meaningful under -race")
	}
	ts, _ := miniredisTimed(t)
	l, _ := newTestLimiter(t, ts.s.(*Redis), FailLocal, func() time.Duration { return 0 })
	p := defaultPolicy(t)
	for range 4 {
		l.Allow(context.Background(), p, stepKey)
	}
	allocs := testing.AllocsPerRun(1000, func() {
		if d, _ := l.Allow(context.Background(), p, stepKey); d.Allowed {
			t.Fatal("admitted")
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per cached denial, want 0", allocs)
	}
}

// TestFailurePolicies guards SPEC §4's redis.on_failure with Redis gone
// (miniredis closed, then restarted on the same address).
func TestFailurePolicies(t *testing.T) {
	for _, tc := range []struct {
		name      string
		onFailure OnFailure
	}{{"local", FailLocal}, {"allow", FailOpen}, {"deny", FailClosed}} {
		t.Run(tc.name, func(t *testing.T) {
			mr := miniredis.RunT(t)
			client := redis.NewClient(&redis.Options{Addr: mr.Addr(), MaxRetries: -1, ContextTimeoutEnabled: true})
			defer client.Close()
			l, m := newTestLimiter(t, NewRedis(client), tc.onFailure, nil)
			p := defaultPolicy(t)
			if d, err := l.Allow(context.Background(), p, Key{1}); err != nil || !d.Allowed {
				t.Fatalf("with Redis: %v %v", d, err)
			}
			addr := mr.Addr()
			mr.Close()
			for i := range 5 {
				d, err := l.Allow(context.Background(), p, Key{2})
				switch tc.onFailure {
				case FailLocal:
					if err != nil || d.Allowed != (i < 3) {
						t.Fatalf("local request %d: %v %v (want the same tiers in process)", i, d, err)
					}
				case FailOpen:
					if err != nil || !d.Allowed || d.Remaining != -1 {
						t.Fatalf("allow: %v %v", d, err)
					}
				case FailClosed:
					if err != ErrUnavailable {
						t.Fatalf("deny: %v %v", d, err)
					}
				}
			}
			if got := testutil.ToFloat64(m.RateLimitFallback); got != 1 {
				t.Errorf("fallback gauge %v while Redis is down", got)
			}
			if got := testutil.ToFloat64(m.RateLimitStoreErrors); got != 1 {
				t.Errorf("store errors %v, want 1 (later requests do not wait on a dead Redis)", got)
			}
			mr2 := miniredis.NewMiniRedis()
			if err := mr2.StartAddr(addr); err != nil {
				t.Skipf("cannot restart miniredis on %s: %v", addr, err)
			}
			defer mr2.Close()
			deadline := time.Now().Add(5 * time.Second)
			for testutil.ToFloat64(m.RateLimitFallback) != 0 {
				if time.Now().After(deadline) {
					t.Fatal("still in fallback 5s after Redis came back")
				}
				time.Sleep(10 * time.Millisecond)
			}
			before := testutil.ToFloat64(m.RateLimitDecisions.WithLabelValues("redis", "allowed"))
			if d, err := l.Allow(context.Background(), p, Key{3}); err != nil || !d.Allowed {
				t.Fatalf("after recovery: %v %v", d, err)
			}
			if got := testutil.ToFloat64(m.RateLimitDecisions.WithLabelValues("redis", "allowed")); got != before+1 {
				t.Error("the decision after recovery was not Redis'")
			}
		})
	}
}

// TestRedisTimeout guards "a Redis call never holds a request longer than
// redis.timeout": a server that accepts and never answers.
func TestRedisTimeout(t *testing.T) {
	l, _ := newTestLimiter(t, NewRedis(silentRedis(t)), FailLocal, nil)
	start := time.Now()
	d, err := l.Allow(context.Background(), defaultPolicy(t), Key{1})
	if el := time.Since(start); el > 600*time.Millisecond {
		t.Errorf("decision took %s with a 100ms timeout", el)
	}
	if err != nil || !d.Allowed {
		t.Fatalf("fallback decision: %v %v", d, err)
	}
	start = time.Now()
	l.Allow(context.Background(), defaultPolicy(t), Key{1})
	if el := time.Since(start); el > 50*time.Millisecond {
		t.Errorf("second decision took %s: it should not wait on a Redis known to be down", el)
	}
}

// silentRedis returns a client of a server that accepts connections and
// never answers.
func silentRedis(t *testing.T) *redis.Client {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close() // held open, silent
		}
	}()
	client := redis.NewClient(&redis.Options{Addr: ln.Addr().String(), MaxRetries: -1, ContextTimeoutEnabled: true})
	t.Cleanup(func() { client.Close() })
	return client
}

// TestNewClient checks the topologies of SPEC §4 are built from config.
func TestNewClient(t *testing.T) {
	for _, tc := range []struct {
		name string
		yaml string
		want string
	}{
		{"url", "{url: 'redis://:pw@127.0.0.1:6390/2'}", "*redis.Client"},
		{"tls url", "{url: 'rediss://127.0.0.1:6390'}", "*redis.Client"},
		{"one addr", "{addrs: [127.0.0.1:6390]}", "*redis.Client"},
		{"cluster", "{addrs: [127.0.0.1:7000, 127.0.0.1:7001], cluster: true}", "*redis.ClusterClient"},
		{"sentinel", "{addrs: [127.0.0.1:26379], master_name: mymaster}", "*redis.Client"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := redisConfig(t, tc.yaml)
			c, err := redisclient.New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if got := typeName(c); got != tc.want {
				t.Errorf("client %s, want %s", got, tc.want)
			}
			if tc.name == "url" {
				o := c.(*redis.Client).Options()
				if o.Password != "pw" || o.DB != 2 || !o.ContextTimeoutEnabled || o.MaxRetries > 0 {
					t.Errorf("options %+v", o)
				}
			}
			if tc.name == "tls url" && c.(*redis.Client).Options().TLSConfig == nil {
				t.Error("rediss:// without TLS")
			}
		})
	}
}

func typeName(v any) string { return fmt.Sprintf("%T", v) }

// redisConfig parses a `redis:` block through the real config loader.
func redisConfig(t *testing.T, block string) config.Redis {
	t.Helper()
	cfg, err := config.Parse([]byte("upstream: {url: http://127.0.0.1:1}\nroutes: [{pattern: /, auth: none}]\nredis: "+block+"\n"), func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	return cfg.Redis
}

// TestDenyCacheCollapsesFlood guards the reject path against a flood of
// one identity: once its budget is spent, concurrent requests cost no
// Redis call at all — the admission that took the last slot is remembered
// as a denial until the slot frees, and requests that miss the cache
// together share one call.
func TestDenyCacheCollapsesFlood(t *testing.T) {
	ts, _ := miniredisTimed(t)
	l, m := newTestLimiter(t, ts.s.(*Redis), FailLocal, func() time.Duration { return 0 })
	p := defaultPolicy(t)
	ts.set(0)
	redisCalls := func() float64 {
		return testutil.ToFloat64(m.RateLimitDecisions.WithLabelValues("redis", "allowed")) +
			testutil.ToFloat64(m.RateLimitDecisions.WithLabelValues("redis", "denied"))
	}
	flood := func() (admitted int) {
		var mu sync.Mutex
		var wg sync.WaitGroup
		for range 50 {
			wg.Go(func() {
				d, err := l.Allow(context.Background(), p, stepKey)
				if err != nil {
					t.Error(err)
				}
				if d.Allowed {
					mu.Lock()
					admitted++
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		return admitted
	}
	if n := flood(); n != 3 {
		t.Fatalf("first flood admitted %d of 50, want 3", n)
	}
	first := redisCalls()
	if first != 3 {
		t.Fatalf("%v Redis calls for 50 concurrent requests of a fresh identity, want 3 (its admissions)", first)
	}
	for range 4 {
		if n := flood(); n != 0 {
			t.Fatalf("admitted %d with the budget spent", n)
		}
	}
	if n := redisCalls() - first; n != 0 {
		t.Fatalf("%v Redis calls for 200 requests of an identity whose budget is spent, want 0", n)
	}
	t.Logf("first flood of 50: %v Redis calls; next 200: none", first)
}
