package ratelimit

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/innovartx/deskgate/metrics"
)

// rawUsed reads k's count of q with the quota's read script alone: what
// Redis holds, without writing the queued settlements first (as
// QuotaUsage does).
func rawUsed(t *testing.T, r *Redis, q *Quota, k Key) (used, held int64) {
	t.Helper()
	v, err := quotaUsedScript.Run(ctxBG, r.client, []string{r.quotaKey(q, k)}).Int64Slice()
	if err != nil {
		t.Fatal(err)
	}
	return v[0], v[1]
}

// TestSettleRidesOtherCalls: a commit takes no call of its own while
// others go: it is appended by the next decision, whoever it is for, or
// folded into its identity's next reservation; a release is written at
// once.
func TestSettleRidesOtherCalls(t *testing.T) {
	quotaStores(t, func(t *testing.T, c *redis.Client) {
		r := NewRedis(c)
		r.settles.flush = nil // no timer: only calls write the queue
		p := defaultPolicy(t)
		q := NewQuota("tickets")
		ka, kb := KeyFromApp("settle_a"), KeyFromApp("settle_b")
		ask := func() []QuotaAsk { return []QuotaAsk{{Quota: q, Limit: 10, TTL: time.Minute, Stop: true}} }

		a := ask()
		if d, err := r.allowQuotas(ctxBG, time.Time{}, p, ka, a); err != nil || !d.Allowed || !a[0].Decision.Allowed {
			t.Fatalf("reserve: %v %v %+v", d, err, a)
		}
		if err := r.Settle(ctxBG, q, ka, a[0].Decision.Reservation, true); err != nil {
			t.Fatal(err)
		}
		if u, h := rawUsed(t, r, q, ka); u != 0 || h != 1 {
			t.Fatalf("commit queued: used %d held %d, want 0 and 1", u, h)
		}
		// Another identity's decision carries it (an APPEND).
		if _, err := r.allow(ctxBG, time.Time{}, p, kb); err != nil {
			t.Fatal(err)
		}
		if u, h := rawUsed(t, r, q, ka); u != 1 || h != 0 {
			t.Fatalf("after another call: used %d held %d, want 1 and 0", u, h)
		}
		raw, _ := c.Get(ctxBG, r.quotaKey(q, ka)).Result()
		if !strings.HasSuffix(raw, " c1") {
			t.Errorf("value %q: want the commit appended", raw)
		}

		// The identity's own next reservation folds its commit in.
		a = ask()
		if d, _ := r.allowQuotas(ctxBG, time.Time{}, p, ka, a); !d.Allowed || a[0].Decision.Remaining != 8 {
			t.Fatalf("second: %v %+v", d, a)
		}
		if err := r.Settle(ctxBG, q, ka, a[0].Decision.Reservation, true); err != nil {
			t.Fatal(err)
		}
		a = ask()
		if d, _ := r.allowQuotas(ctxBG, time.Time{}, p, ka, a); !d.Allowed || a[0].Decision.Remaining != 7 {
			t.Fatalf("third: %v %+v", d, a)
		}
		raw, _ = c.Get(ctxBG, r.quotaKey(q, ka)).Result()
		if f := strings.Fields(raw); len(f) != 4 || f[1] != "2" || f[2] != "3" || !strings.HasPrefix(f[3], "r3:") {
			t.Errorf("value %q: want the commits folded (used 2, last id 3, slot 3 held)", raw)
		}
		// A release is written at once.
		if err := r.Settle(ctxBG, q, ka, a[0].Decision.Reservation, false); err != nil {
			t.Fatal(err)
		}
		if u, h := rawUsed(t, r, q, ka); u != 2 || h != 0 {
			t.Errorf("after the release: used %d held %d, want 2 and 0", u, h)
		}
		if n := r.settles.n.Load(); n != 0 {
			t.Errorf("%d settlements still queued", n)
		}
	})
}

// TestSettleTwiceCountsOnce: a settlement written twice (a call retried
// after a timeout that had in fact been run) counts once, and one for a
// slot that expired counts nothing and makes no key.
func TestSettleTwiceCountsOnce(t *testing.T) {
	quotaStores(t, func(t *testing.T, c *redis.Client) {
		r := NewRedis(c)
		r.settles.flush = nil
		q, k := NewQuota("tickets"), KeyFromApp("twice")
		d := mustReserve(t, r, q, k, 5, time.Minute)
		for range 2 {
			r.settles.add(r.quotaKey(q, k), d.ID, true)
			if err := r.flushSettlements(ctxBG); err != nil {
				t.Fatal(err)
			}
		}
		if u, h := rawUsed(t, r, q, k); u != 1 || h != 0 {
			t.Errorf("used %d held %d, want 1 and 0", u, h)
		}
		// A slot whose key is gone: its commit makes no key.
		gone := KeyFromApp("gone")
		r.settles.add(r.quotaKey(q, gone), 7, true)
		if err := r.flushSettlements(ctxBG); err != nil {
			t.Fatal(err)
		}
		if n, _ := c.Exists(ctxBG, r.quotaKey(q, gone)).Result(); n != 0 {
			t.Errorf("a commit for a missing key made it")
		}
	})
}

// TestSettleTimerAndRetry: with no other call, the queue's timer writes a
// commit within settleDelay; a call that fails is counted as a store
// error and its settlements are written once Redis answers again.
func TestSettleTimerAndRetry(t *testing.T) {
	mr := miniredis.RunT(t)
	c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { c.Close() })
	r := NewRedis(c)
	l, m := newTestLimiter(t, r, FailLocal, nil)
	q, k := NewQuota("tickets"), KeyFromApp("timer")
	d := mustReserve(t, l, q, k, 5, time.Minute)
	if err := l.Settle(ctxBG, q, k, d.Reservation, true); err != nil {
		t.Fatal(err)
	}
	waitUsed := func(want int64) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			u, _ := rawUsed(t, r, q, k)
			if u == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("used %d, want %d", u, want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitUsed(1)

	d = mustReserve(t, l, q, k, 5, time.Minute)
	mr.SetError("ERR injected")
	errs := testutil.ToFloat64(m.RateLimitStoreErrors)
	if err := l.Settle(ctxBG, q, k, d.Reservation, true); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * settleDelay)
	if got := testutil.ToFloat64(m.RateLimitStoreErrors); got <= errs {
		t.Errorf("store errors %v, want more than %v after a failed settlement call", got, errs)
	}
	if r.settles.n.Load() != 1 {
		t.Errorf("queued %d, want the commit queued again", r.settles.n.Load())
	}
	mr.SetError("")
	waitUsed(2)
}

// TestLimiterCloseWritesCommits: commits still queued when the limiter
// closes are written.
func TestLimiterCloseWritesCommits(t *testing.T) {
	mr := miniredis.RunT(t)
	c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { c.Close() })
	r := NewRedis(c)
	r.settles.flush = nil
	l, _ := newTestLimiter(t, r, FailLocal, nil)
	q, k := NewQuota("tickets"), KeyFromApp("closing")
	d := mustReserve(t, l, q, k, 5, time.Minute)
	if err := l.Settle(context.Background(), q, k, d.Reservation, true); err != nil {
		t.Fatal(err)
	}
	l.Close()
	if u, h := rawUsed(t, r, q, k); u != 1 || h != 0 {
		t.Errorf("after Close: used %d held %d, want 1 and 0", u, h)
	}
}

// TestSettleDroppedAfterGiveUp: a settlement still not written
// settleGiveUp after it was queued is dropped when its call fails again,
// and the limiter logs it; younger ones stay queued.
func TestSettleDroppedAfterGiveUp(t *testing.T) {
	mr := miniredis.RunT(t)
	c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { c.Close() })
	r := NewRedis(c)
	r.settles.flush = nil
	var logs strings.Builder
	l := NewLimiter(LimiterOptions{Redis: r, Local: NewMemory(time.Hour), Timeout: 100 * time.Millisecond,
		Metrics: metrics.New(prometheus.NewRegistry(), "test"), Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	t.Cleanup(l.Close)
	r.settles.add("deskgate:rl:{old}:quota:tickets", 1, true)
	r.settles.q[0].since = time.Now().Add(-settleGiveUp - time.Second)
	r.settles.add("deskgate:rl:{new}:quota:tickets", 2, true)
	mr.SetError("ERR injected")
	if err := r.flushSettlements(ctxBG); err == nil {
		t.Fatal("flush succeeded against a failing Redis")
	}
	if n := r.settles.n.Load(); n != 1 || r.settles.q[0].mark != " c2" {
		t.Errorf("queued %d (%+v), want only the younger one", n, r.settles.q)
	}
	if !strings.Contains(logs.String(), "quota settlements dropped after retries") || !strings.Contains(logs.String(), "dropped=1") {
		t.Errorf("log %q: want the drop logged", logs.String())
	}
	mr.SetError("")
}

// TestQuotaKeyOfAnotherTypeReplaced: a quota key of another type (the
// first quota builds kept a hash) is read as none and replaced by the
// next reservation, by the rate-limit script and by the quota's own.
func TestQuotaKeyOfAnotherTypeReplaced(t *testing.T) {
	quotaStores(t, func(t *testing.T, c *redis.Client) {
		r := NewRedis(c)
		r.settles.flush = nil
		p := defaultPolicy(t)
		q := NewQuota("tickets")
		for i, reserve := range []func(k Key) (QuotaDecision, error){
			func(k Key) (QuotaDecision, error) {
				a := []QuotaAsk{{Quota: q, Limit: 5, TTL: time.Minute, Stop: true}}
				_, err := r.allowQuotas(ctxBG, time.Time{}, p, k, a)
				return a[0].Decision, err
			},
			func(k Key) (QuotaDecision, error) { return r.Reserve(ctxBG, q, k, 5, time.Minute) },
		} {
			k := KeyFromApp("old_format_" + string(rune('a'+i)))
			if err := c.HSet(ctxBG, r.quotaKey(q, k), "m", "1", "u", "3").Err(); err != nil {
				t.Fatal(err)
			}
			if u, h := rawUsed(t, r, q, k); u != 0 || h != 0 {
				t.Errorf("%d: read of the old key: used %d held %d, want none", i, u, h)
			}
			d, err := reserve(k)
			if err != nil || !d.Allowed || d.Remaining != 4 {
				t.Fatalf("%d: %+v %v", i, d, err)
			}
			if typ, _ := c.Type(ctxBG, r.quotaKey(q, k)).Result(); typ != "string" {
				t.Errorf("%d: key type %q after the reservation, want string", i, typ)
			}
		}
	})
}
