package ratelimit

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/innovartx/deskgate/internal/redistest"
)

// quotaStores runs f on miniredis and on a real redis-server, with the
// plain client (f may count script calls on it).
func quotaStores(t *testing.T, f func(t *testing.T, c *redis.Client)) {
	t.Run("miniredis", func(t *testing.T) {
		mr := miniredis.RunT(t)
		c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
		t.Cleanup(func() { c.Close() })
		f(t, c)
	})
	t.Run("redis-server", func(t *testing.T) { f(t, redistest.Start(t).Client(t)) })
}

// TestAllowQuotasOneCall: SPEC §9 with issue 15 — the rate-limit decision
// and the quotas' reservations are one script call; a request the rate
// limit refuses reserves nothing (no quota key is even created); a quota
// that refuses with Stop ends the reservations; the slots are the same
// as Reserve's (settled, counted, read back by QuotaUsed).
func TestAllowQuotasOneCall(t *testing.T) {
	quotaStores(t, func(t *testing.T, c *redis.Client) {
		r := NewRedis(c)
		l, _ := newTestLimiter(t, r, FailLocal, nil)
		p := defaultPolicy(t) // 3 a second
		k := KeyFromApp("app_one")
		qa, qb := NewQuota("a"), NewQuota("b")
		asks := func() []QuotaAsk {
			return []QuotaAsk{
				{Quota: qa, Limit: 2, TTL: time.Minute, Stop: true},
				{Quota: qb, Limit: 10, TTL: time.Minute, Stop: true},
			}
		}
		ctx := context.Background()
		// Warm: the script loaded.
		if _, err := l.Allow(ctx, p, KeyFromApp("warm")); err != nil {
			t.Fatal(err)
		}
		_ = c.ConfigResetStat(ctx).Err()
		var kept []Reservation
		for i := range 2 {
			a := asks()
			d, err := l.AllowQuotas(ctx, p, k, a)
			if err != nil || !d.Allowed {
				t.Fatalf("request %d: %v %v", i, d, err)
			}
			for j, x := range a {
				if !x.Done || !x.Decision.Allowed || !x.Decision.Held() {
					t.Fatalf("request %d, quota %d: %+v", i, j, x)
				}
			}
			if a[0].Decision.Remaining != int64(1-i) || a[1].Decision.Remaining != int64(9-i) {
				t.Errorf("request %d: remaining %d and %d", i, a[0].Decision.Remaining, a[1].Decision.Remaining)
			}
			if a[0].Decision.ResetAt.IsZero() || a[0].Decision.Period < 28*24*time.Hour {
				t.Errorf("request %d: reset %v period %v", i, a[0].Decision.ResetAt, a[0].Decision.Period)
			}
			kept = append(kept, a[0].Decision.Reservation)
		}
		if t.Name() == "TestAllowQuotasOneCall/miniredis" {
			// miniredis has no INFO commandstats.
		} else if n := scriptCalls(t, c); n != 2 {
			t.Errorf("%d script calls for 2 requests with 2 quotas each, want 2", n)
		}
		// Quota a is used up: refused, and b (after a Stop) not asked.
		a := asks()
		d, err := l.AllowQuotas(ctx, p, k, a)
		if err != nil || !d.Allowed {
			t.Fatalf("third: %v %v", d, err)
		}
		if !a[0].Done || a[0].Decision.Allowed || a[0].Decision.Held() || a[1].Done {
			t.Errorf("third: %+v", a)
		}
		// The rate limit (3 a second) refuses the fourth: no quota asked.
		// (Asked of Redis itself: the limiter's deny cache would answer.)
		a = asks()
		if d, err := r.allowQuotas(ctx, time.Time{}, p, k, a); err != nil || d.Allowed || a[0].Done || a[1].Done {
			t.Errorf("fourth: %v %v %+v", d, err, a)
		}
		if u, res, err := r.QuotaUsed(ctx, qb, k); err != nil || u != 0 || res != 2 {
			t.Errorf("b: used %d reserved %d (%v), want 0 and 2", u, res, err)
		}
		if err := l.Settle(ctx, qa, k, kept[0], true); err != nil {
			t.Fatal(err)
		}
		if err := l.Settle(ctx, qa, k, kept[1], false); err != nil {
			t.Fatal(err)
		}
		if u, res, err := r.QuotaUsed(ctx, qa, k); err != nil || u != 1 || res != 0 {
			t.Errorf("a: used %d reserved %d (%v), want 1 and 0", u, res, err)
		}
		// An identity refused by the rate limit before any quota call has
		// no quota key.
		fresh := KeyFromApp("app_fresh")
		for range 3 {
			if _, err := l.Allow(ctx, p, fresh); err != nil {
				t.Fatal(err)
			}
		}
		a = asks()
		if d, _ := r.allowQuotas(ctx, time.Time{}, p, fresh, a); d.Allowed || a[0].Done {
			t.Fatalf("fresh: %v %+v", d, a)
		}
		if n, err := c.Exists(ctx, r.quotaKey(qa, fresh)).Result(); err != nil || n != 0 {
			t.Errorf("a refused request created %d quota keys (%v)", n, err)
		}
		// A shadow-style ask (no Stop): a refusal does not end the others.
		a = []QuotaAsk{{Quota: qa, Limit: 1, TTL: time.Minute}, {Quota: qb, Limit: 10, TTL: time.Minute}}
		if d, _ := l.AllowQuotas(ctx, p, KeyFromApp("app_one_more"), a); !d.Allowed || !a[0].Done || !a[1].Done {
			t.Errorf("no stop: %v %+v", d, a)
		}
	})
}

// TestAllowQuotasConcurrentBoundary: through batched calls (many requests
// in one script run), 60 concurrent requests with 5 slots left reserve
// exactly 5.
func TestAllowQuotasConcurrentBoundary(t *testing.T) {
	quotaStores(t, func(t *testing.T, c *redis.Client) {
		r := NewRedis(c)
		l, _ := newTestLimiter(t, r, FailLocal, nil)
		p, err := NewPolicy("global", SlidingLog, []Tier{{Limit: 1000, Window: time.Second, Name: "1s"}})
		if err != nil {
			t.Fatal(err)
		}
		k := KeyFromApp("app_boundary")
		q := NewQuota("tickets")
		ctx := context.Background()
		for i := range 15 {
			a := []QuotaAsk{{Quota: q, Limit: 20, TTL: time.Minute, Stop: true}}
			if d, err := l.AllowQuotas(ctx, p, k, a); err != nil || !d.Allowed || !a[0].Decision.Allowed {
				t.Fatalf("request %d: %v %v %+v", i, d, err, a)
			}
			if err := l.Settle(ctx, q, k, a[0].Decision.Reservation, true); err != nil {
				t.Fatal(err)
			}
		}
		var got, done atomic.Int64
		var wg sync.WaitGroup
		start := make(chan struct{})
		for range 60 {
			wg.Go(func() {
				<-start
				a := []QuotaAsk{{Quota: q, Limit: 20, TTL: time.Minute, Stop: true}}
				d, err := l.AllowQuotas(ctx, p, k, a)
				if err != nil || !d.Allowed {
					t.Errorf("%v %v", d, err)
					return
				}
				if a[0].Done {
					done.Add(1)
				}
				if a[0].Decision.Allowed {
					got.Add(1)
				}
			})
		}
		close(start)
		wg.Wait()
		if got.Load() != 5 || done.Load() != 60 {
			t.Errorf("%d reserved (%d decided in the call) of 60 with 5 left; want 5 (60)", got.Load(), done.Load())
		}
		if u, res, err := r.QuotaUsed(ctx, q, k); err != nil || u != 15 || res != 5 {
			t.Errorf("used %d reserved %d (%v), want 15 and 5", u, res, err)
		}
	})
}

// TestAllowQuotasCluster: in a Cluster a batch is a pipeline of
// single-request calls; a request's quota keys share its log's slot.
func TestAllowQuotasCluster(t *testing.T) {
	c := redistest.StartCluster(t, 3)
	r := NewRedis(clusterClient(t, c))
	l, _ := newTestLimiter(t, r, FailClosed, nil)
	p := defaultPolicy(t)
	q := NewQuota("tickets")
	ctx := context.Background()
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			k := KeyFromApp("app_" + string(rune('a'+i)))
			for j := range 3 {
				a := []QuotaAsk{{Quota: q, Limit: 2, TTL: time.Minute, Stop: true}}
				d, err := l.AllowQuotas(ctx, p, k, a)
				if err != nil || !d.Allowed || !a[0].Done || a[0].Decision.Allowed != (j < 2) {
					t.Errorf("identity %d request %d: %v %v %+v", i, j, d, err, a)
				}
			}
			if u, res, err := r.QuotaUsed(ctx, q, k); err != nil || u != 0 || res != 2 {
				t.Errorf("identity %d: used %d reserved %d (%v)", i, u, res, err)
			}
		})
	}
	wg.Wait()
}

// TestAllowQuotasInOneBatch: requests decided together in one script run,
// some with quotas and some without, each get their own outcome; the one
// the rate limit refuses reserves nothing.
func TestAllowQuotasInOneBatch(t *testing.T) {
	quotaStores(t, func(t *testing.T, c *redis.Client) {
		r := NewRedis(c)
		p, err := NewPolicy("global", SlidingLog, []Tier{{Limit: 1, Window: time.Minute, Name: "1m"}})
		if err != nil {
			t.Fatal(err)
		}
		q := NewQuota("tickets")
		ka, kb := KeyFromApp("app_a"), KeyFromApp("app_b")
		cl := batchOf(r, p, ka, ka, kb)
		for i, it := range cl.items {
			if i < 2 {
				it.asks = []QuotaAsk{{Quota: q, Limit: 5, TTL: time.Minute, Stop: true}}
				it.qkeys = []string{r.quotaKey(q, ka)}
			}
		}
		r.run(cl)
		a, b, other := cl.items[0], cl.items[1], cl.items[2]
		if a.err != nil || !a.d.Allowed || !a.asks[0].Done || !a.asks[0].Decision.Allowed || a.asks[0].Decision.Remaining != 4 {
			t.Errorf("first: %v %v %+v", a.d, a.err, a.asks)
		}
		if b.err != nil || b.d.Allowed || b.asks[0].Done {
			t.Errorf("second (rate-limited): %v %v %+v", b.d, b.err, b.asks)
		}
		if other.err != nil || !other.d.Allowed {
			t.Errorf("other identity: %v %v", other.d, other.err)
		}
		if u, res, err := r.QuotaUsed(context.Background(), q, ka); err != nil || u != 0 || res != 1 {
			t.Errorf("used %d reserved %d (%v), want 0 and 1", u, res, err)
		}
	})
}

// TestAllowQuotasKeyRefused: a quota whose value cannot be read (not
// written by deskgate) is left to the caller (not Done), and the
// rate-limit decision stands.
func TestAllowQuotasKeyRefused(t *testing.T) {
	quotaStores(t, func(t *testing.T, c *redis.Client) {
		r := NewRedis(c)
		p := defaultPolicy(t)
		k := KeyFromApp("app_wrongtype")
		q := NewQuota("tickets")
		if err := c.Set(context.Background(), r.quotaKey(q, k), "not a quota", 0).Err(); err != nil {
			t.Fatal(err)
		}
		a := []QuotaAsk{{Quota: q, Limit: 5, TTL: time.Minute, Stop: true}, {Quota: NewQuota("other"), Limit: 5, TTL: time.Minute}}
		d, err := r.allowQuotas(context.Background(), time.Time{}, p, k, a)
		if err != nil || !d.Allowed || a[0].Done || a[1].Done {
			t.Errorf("%v %v %+v", d, err, a)
		}
	})
}
