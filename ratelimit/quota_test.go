package ratelimit

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/innovartx/deskgate/internal/redistest"
)

// quotaBackend is one store under test with the means to move its clocks.
type quotaBackend struct {
	store QuotaStore
	// setWall moves the calendar (nil: the store's time cannot be set).
	setWall func(time.Time)
	// advance moves the clock reservations expire on.
	advance func(time.Duration)
	used    func(q *Quota, k Key) (used, reserved int64)
}

// memoryQuotaBackend is a Memory with a fake calendar and clock.
func memoryQuotaBackend(t *testing.T, start time.Time) quotaBackend {
	var mu sync.Mutex
	wall, mono := start, time.Duration(1)
	m := NewMemory(time.Hour,
		WithClock(func() time.Duration { mu.Lock(); defer mu.Unlock(); return mono }),
		WithWallClock(func() time.Time { mu.Lock(); defer mu.Unlock(); return wall }))
	t.Cleanup(func() { m.Close() })
	return quotaBackend{
		store:   m,
		setWall: func(w time.Time) { mu.Lock(); wall = w; mu.Unlock() },
		advance: func(d time.Duration) { mu.Lock(); mono += d; wall = wall.Add(d); mu.Unlock() },
		used:    m.QuotaUsed,
	}
}

// miniQuotaBackend is a Redis store on miniredis, whose TIME is set.
func miniQuotaBackend(t *testing.T, start time.Time) (quotaBackend, *miniredis.Miniredis, redis.UniversalClient) {
	mr := miniredis.RunT(t)
	var mu sync.Mutex
	now := start
	mr.SetTime(now)
	c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { c.Close() })
	r := NewRedis(c)
	set := func(w time.Time) { mu.Lock(); now = w; mr.SetTime(w); mu.Unlock() }
	return quotaBackend{
		store:   r,
		setWall: set,
		advance: func(d time.Duration) { mu.Lock(); w := now.Add(d); mu.Unlock(); set(w) },
		used: func(q *Quota, k Key) (int64, int64) {
			u, res, err := r.QuotaUsed(context.Background(), q, k)
			if err != nil {
				t.Fatal(err)
			}
			return u, res
		},
	}, mr, c
}

// realQuotaBackend is a Redis store on a real redis-server: its time is
// the machine's.
func realQuotaBackend(t *testing.T, c redis.UniversalClient) quotaBackend {
	r := NewRedis(c)
	return quotaBackend{
		store: r,
		used: func(q *Quota, k Key) (int64, int64) {
			u, res, err := r.QuotaUsed(context.Background(), q, k)
			if err != nil {
				t.Fatal(err)
			}
			return u, res
		},
	}
}

// quotaBackends returns the three stores, each run as a subtest.
func forQuotaBackends(t *testing.T, start time.Time, f func(t *testing.T, b quotaBackend)) {
	t.Run("memory", func(t *testing.T) { f(t, memoryQuotaBackend(t, start)) })
	t.Run("miniredis", func(t *testing.T) { b, _, _ := miniQuotaBackend(t, start); f(t, b) })
	t.Run("redis-server", func(t *testing.T) { f(t, realQuotaBackend(t, redistest.Start(t).Client(t))) })
}

var ctxBG = context.Background()

func mustReserve(t *testing.T, s QuotaStore, q *Quota, k Key, limit int64, ttl time.Duration) QuotaDecision {
	t.Helper()
	d, err := s.Reserve(ctxBG, q, k, limit, ttl)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestQuotaExactCounts: reserve up to the limit, refuse past it; a release
// gives the slot back, a commit keeps it; counts are exact, per identity
// and per quota.
func TestQuotaExactCounts(t *testing.T) {
	start := time.Date(2026, 12, 15, 10, 0, 0, 0, time.UTC)
	forQuotaBackends(t, start, func(t *testing.T, b quotaBackend) {
		q, other := NewQuota("tickets"), NewQuota("exports")
		k, k2 := KeyFromApp("a"), KeyFromApp("b")
		var held []Reservation
		for i := range 5 {
			d := mustReserve(t, b.store, q, k, 5, time.Minute)
			if !d.Allowed || d.Remaining != int64(4-i) {
				t.Fatalf("reserve %d: %v, want allowed with %d left", i, d, 4-i)
			}
			held = append(held, d.Reservation)
		}
		d := mustReserve(t, b.store, q, k, 5, time.Minute)
		if d.Allowed || d.Remaining != 0 || d.Limit != 5 {
			t.Fatalf("6th: %v, want refused", d)
		}
		if want := time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC); !d.ResetAt.Equal(want) {
			t.Errorf("ResetAt %s, want %s", d.ResetAt, want)
		}
		if d.Period != 31*24*time.Hour {
			t.Errorf("Period %s, want 31 days (December)", d.Period)
		}
		if b.setWall != nil && (d.ResetIn <= 16*24*time.Hour || d.ResetIn > 17*24*time.Hour) {
			t.Errorf("ResetIn %s, want 16 days 14 hours", d.ResetIn)
		}
		// Other identities and quotas are untouched.
		if d := mustReserve(t, b.store, q, k2, 5, time.Minute); !d.Allowed || d.Remaining != 4 {
			t.Errorf("other identity: %v", d)
		}
		if d := mustReserve(t, b.store, other, k, 5, time.Minute); !d.Allowed || d.Remaining != 4 {
			t.Errorf("other quota: %v", d)
		}
		// Two commits, one release: one slot comes back.
		for i, commit := range []bool{true, true, false} {
			if err := b.store.Settle(ctxBG, q, k, held[i], commit); err != nil {
				t.Fatal(err)
			}
		}
		if u, r := b.used(q, k); u != 2 || r != 2 {
			t.Errorf("used %d reserved %d, want 2 and 2", u, r)
		}
		if d := mustReserve(t, b.store, q, k, 5, time.Minute); !d.Allowed || d.Remaining != 0 {
			t.Errorf("after a release: %v, want the freed slot", d)
		}
		if d := mustReserve(t, b.store, q, k, 5, time.Minute); d.Allowed {
			t.Errorf("after the freed slot: %v, want refused", d)
		}
		// A lower limit (a plan change) refuses at once; a higher one admits.
		if d := mustReserve(t, b.store, q, k, 3, time.Minute); d.Allowed {
			t.Errorf("limit 3: %v", d)
		}
		if d := mustReserve(t, b.store, q, k, 7, time.Minute); !d.Allowed || d.Remaining != 1 {
			t.Errorf("limit 7: %v, want 1 left", d)
		}
	})
}

// TestQuotaConcurrentBoundary: 50 concurrent reservations with 5 slots
// left admit exactly 5, on every store.
func TestQuotaConcurrentBoundary(t *testing.T) {
	start := time.Date(2026, 3, 3, 0, 0, 0, 0, time.UTC)
	forQuotaBackends(t, start, func(t *testing.T, b quotaBackend) {
		q, k := NewQuota("tickets"), KeyFromApp("a")
		for range 15 {
			d := mustReserve(t, b.store, q, k, 20, time.Minute)
			if err := b.store.Settle(ctxBG, q, k, d.Reservation, true); err != nil {
				t.Fatal(err)
			}
		}
		var admitted atomic.Int64
		var wg sync.WaitGroup
		for range 50 {
			wg.Go(func() {
				d, err := b.store.Reserve(ctxBG, q, k, 20, time.Minute)
				if err != nil {
					t.Error(err)
					return
				}
				if d.Allowed {
					admitted.Add(1)
				}
			})
		}
		wg.Wait()
		if n := admitted.Load(); n != 5 {
			t.Errorf("%d admitted, want exactly 5", n)
		}
	})
}

// TestQuotaMonthRollover: the count starts afresh with the month (by the
// store's clock), across December to January; a slot reserved in the old
// month and committed in the new one counts in neither.
func TestQuotaMonthRollover(t *testing.T) {
	start := time.Date(2026, 12, 31, 23, 59, 0, 0, time.UTC)
	run := func(t *testing.T, b quotaBackend) {
		q, k := NewQuota("tickets"), KeyFromApp("a")
		d1 := mustReserve(t, b.store, q, k, 2, time.Hour)
		d2 := mustReserve(t, b.store, q, k, 2, time.Hour)
		if err := b.store.Settle(ctxBG, q, k, d1.Reservation, true); err != nil {
			t.Fatal(err)
		}
		if d := mustReserve(t, b.store, q, k, 2, time.Hour); d.Allowed {
			t.Fatalf("December, full: %v", d)
		}
		b.setWall(time.Date(2027, 1, 1, 0, 0, 1, 0, time.UTC))
		d := mustReserve(t, b.store, q, k, 2, time.Hour)
		if !d.Allowed || d.Remaining != 1 {
			t.Fatalf("January: %v, want 1 left", d)
		}
		if want := time.Date(2027, 2, 1, 0, 0, 0, 0, time.UTC); !d.ResetAt.Equal(want) {
			t.Errorf("ResetAt %s, want %s", d.ResetAt, want)
		}
		// December's reservation settles in January: it counts nowhere.
		if err := b.store.Settle(ctxBG, q, k, d2.Reservation, true); err != nil {
			t.Fatal(err)
		}
		if u, r := b.used(q, k); u != 0 || r != 1 {
			t.Errorf("January: used %d reserved %d, want 0 and 1", u, r)
		}
	}
	t.Run("memory", func(t *testing.T) { run(t, memoryQuotaBackend(t, start)) })
	t.Run("miniredis", func(t *testing.T) { b, _, _ := miniQuotaBackend(t, start); run(t, b) })
}

// TestQuotaReservationExpires: a slot never settled (a replica that died
// between reserve and commit) is free again after its ttl.
func TestQuotaReservationExpires(t *testing.T) {
	start := time.Date(2026, 5, 5, 0, 0, 0, 0, time.UTC)
	run := func(t *testing.T, b quotaBackend) {
		q, k := NewQuota("tickets"), KeyFromApp("a")
		mustReserve(t, b.store, q, k, 1, 10*time.Second)
		if d := mustReserve(t, b.store, q, k, 1, 10*time.Second); d.Allowed {
			t.Fatalf("held slot: %v", d)
		}
		b.advance(9 * time.Second)
		if d := mustReserve(t, b.store, q, k, 1, 10*time.Second); d.Allowed {
			t.Fatalf("before the expiry: %v", d)
		}
		b.advance(2 * time.Second)
		if d := mustReserve(t, b.store, q, k, 1, 10*time.Second); !d.Allowed {
			t.Fatalf("after the expiry: %v", d)
		}
	}
	t.Run("memory", func(t *testing.T) { run(t, memoryQuotaBackend(t, start)) })
	t.Run("miniredis", func(t *testing.T) { b, _, _ := miniQuotaBackend(t, start); run(t, b) })
	t.Run("redis-server", func(t *testing.T) {
		b := realQuotaBackend(t, redistest.Start(t).Client(t))
		q, k := NewQuota("tickets"), KeyFromApp("a")
		mustReserve(t, b.store, q, k, 1, 200*time.Millisecond)
		if d := mustReserve(t, b.store, q, k, 1, time.Second); d.Allowed {
			t.Fatalf("held slot: %v", d)
		}
		time.Sleep(300 * time.Millisecond)
		if d := mustReserve(t, b.store, q, k, 1, time.Second); !d.Allowed {
			t.Fatalf("after the expiry: %v", d)
		}
	})
}

// TestQuotaKeysExpireAfterMonth: the quota's key is in the identity's hash
// slot and expires a day after the month.
func TestQuotaKeysExpireAfterMonth(t *testing.T) {
	start := time.Date(2028, 2, 10, 0, 0, 0, 0, time.UTC)
	b, mr, _ := miniQuotaBackend(t, start)
	q, k := NewQuota("tickets"), KeyFromApp("a")
	mustReserve(t, b.store, q, k, 5, time.Minute)
	hash := RedisKey(KeyPrefix, "quota:tickets", k)
	for _, key := range []string{hash} {
		if !strings.Contains(key, fmt.Sprintf("{%x}", k[:])) {
			t.Errorf("key %s lacks the identity's hash tag", key)
		}
		// 2028 is a leap year: March starts on day 29+1 of February.
		want := time.Date(2028, 3, 2, 0, 0, 0, 0, time.UTC).Sub(start)
		if got := mr.TTL(key); got != want {
			t.Errorf("TTL %s = %s, want %s", key, got, want)
		}
	}
}

// TestQuotaMonthLua checks the script's calendar against Go's for many
// timestamps: month starts and ends, Dec→Jan, Feb 29 of leap years and
// 1900/2000/2100, on miniredis and a real Redis (both run Lua 5.1 with
// double numbers).
func TestQuotaMonthLua(t *testing.T) {
	var secs []int64
	for y := 1970; y <= 2200; y++ {
		for m := time.January; m <= time.December; m++ {
			s := time.Date(y, m, 1, 0, 0, 0, 0, time.UTC).Unix()
			secs = append(secs, s-1, s, s+1, s+86400*14+3600*7+59)
		}
		secs = append(secs, time.Date(y, 2, 29, 12, 0, 0, 0, time.UTC).Unix())
	}
	script := redis.NewScript(quotaMonthLua + `
local out = {}
for i = 1, #ARGV do
  local m, s, n = month_of(tonumber(ARGV[i]))
  out[#out + 1] = string.format('%d %d %d', m, s, n)
end
return out
`)
	args := make([]any, len(secs))
	for i, s := range secs {
		args[i] = s
	}
	check := func(t *testing.T, c redis.UniversalClient) {
		got, err := script.Run(ctxBG, c, nil, args...).StringSlice()
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(secs) {
			t.Fatalf("%d replies for %d timestamps", len(got), len(secs))
		}
		bad := 0
		for i, s := range secs {
			tm := time.Unix(s, 0)
			st, nx := monthBounds(tm)
			want := fmt.Sprintf("%d %d %d", monthIndex(tm), st.Unix(), nx.Unix())
			if got[i] != want && bad < 10 {
				bad++
				t.Errorf("%s: Lua %q, Go %q", tm.UTC(), got[i], want)
			}
		}
	}
	t.Run("miniredis", func(t *testing.T) {
		mr := miniredis.RunT(t)
		c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
		defer c.Close()
		check(t, c)
	})
	t.Run("redis-server", func(t *testing.T) { check(t, redistest.Start(t).Client(t)) })
}

// TestQuotaTwoLimitersShareRedis: two gateways (two Limiters on one
// Redis) share one quota exactly; a restarted gateway (a new Limiter) and
// a restarted Redis (with its append-only file) keep the count.
func TestQuotaTwoLimitersShareRedis(t *testing.T) {
	srv := redistest.Start(t, "--appendonly", "yes", "--appendfsync", "always")
	c := srv.Client(t)
	a, _ := newTestLimiter(t, NewRedis(c), FailLocal, nil)
	b, _ := newTestLimiter(t, NewRedis(c), FailLocal, nil)
	q, k := NewQuota("tickets"), KeyFromApp("shared")
	for i := range 6 {
		l := a
		if i%2 == 1 {
			l = b
		}
		d := mustReserve(t, l, q, k, 6, time.Minute)
		want := int64(5 - i)
		if i == 5 {
			want = 1 // request 4 was released
		}
		if !d.Allowed || d.Remaining != want {
			t.Fatalf("request %d: %v", i, d)
		}
		if err := l.Settle(ctxBG, q, k, d.Reservation, i < 4); err != nil {
			t.Fatal(err)
		}
	}
	// 4 committed, 2 released.
	c2, _ := newTestLimiter(t, NewRedis(c), FailLocal, nil)
	if d := mustReserve(t, c2, q, k, 6, time.Minute); !d.Allowed || d.Remaining != 1 {
		t.Fatalf("new gateway: %v, want 1 left", d)
	}
	srv.Stop()
	srv.Restart(t)
	r := realQuotaBackend(t, c)
	// The unsettled reservation was persisted too.
	if u, res := r.used(q, k); u != 4 || res != 1 {
		t.Fatalf("after a Redis restart: used %d reserved %d, want 4 and 1", u, res)
	}
}

// TestQuotaOnFailure: with Redis down, local counts in process, allow
// admits without counting, deny fails with ErrUnavailable.
func TestQuotaOnFailure(t *testing.T) {
	q, k := NewQuota("tickets"), KeyFromApp("a")
	for _, tc := range []struct {
		of      OnFailure
		allowed bool
		err     error
	}{{FailLocal, true, nil}, {FailOpen, true, nil}, {FailClosed, false, ErrUnavailable}} {
		t.Run(onFailureNames[tc.of], func(t *testing.T) {
			mr := miniredis.RunT(t)
			c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
			defer c.Close()
			l, _ := newTestLimiter(t, NewRedis(c), tc.of, nil)
			mr.Close()
			for i := range 3 {
				d, err := l.Reserve(ctxBG, q, k, 2, time.Minute)
				if err != tc.err {
					t.Fatalf("err %v, want %v", err, tc.err)
				}
				want := tc.allowed && (tc.of != FailLocal || i < 2)
				if d.Allowed != want {
					t.Fatalf("request %d: %v, want allowed=%v", i, d, want)
				}
				if tc.of == FailOpen && d.Remaining != -1 {
					t.Errorf("allow: remaining %d, want -1 (not counted)", d.Remaining)
				}
				if err := l.Settle(ctxBG, q, k, d.Reservation, true); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}
