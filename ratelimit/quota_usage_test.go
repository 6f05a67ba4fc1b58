package ratelimit

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/innovartx/deskgate/internal/redistest"
)

// TestQuotaUsageReadsOnly: SPEC §10 — QuotaUsage reports used, reserved
// and the month's end; reading a fresh identity creates nothing (no
// in-process entry, no Redis key), and reading never consumes.
func TestQuotaUsageReadsOnly(t *testing.T) {
	start := time.Date(2027, 2, 10, 12, 0, 0, 0, time.UTC)
	next := time.Date(2027, 3, 1, 0, 0, 0, 0, time.UTC)
	q := NewQuota("tickets")
	k, fresh := KeyFromApp("app_used"), KeyFromApp("app_fresh")
	check := func(t *testing.T, s interface {
		QuotaStore
		QuotaUsage(context.Context, *Quota, Key) (QuotaUsage, error)
	}, store string, fixed bool, count func() int) {
		d := mustReserve(t, s, q, k, 3, time.Minute)
		if err := s.Settle(ctxBG, q, k, d.Reservation, true); err != nil {
			t.Fatal(err)
		}
		mustReserve(t, s, q, k, 3, time.Minute) // held
		before := count()
		for range 20 {
			u, err := s.QuotaUsage(ctxBG, q, k)
			if err != nil || u.Used != 1 || u.Reserved != 1 || u.Store != store {
				t.Fatalf("used: %+v %v", u, err)
			}
			if fixed && (!u.ResetAt.Equal(next) || u.ResetIn != next.Sub(start)) {
				t.Errorf("reset %v in %v, want %v in %v", u.ResetAt, u.ResetIn, next, next.Sub(start))
			}
			if !fixed && (u.ResetAt.Day() != 1 || u.ResetIn <= 0 || u.ResetIn > 31*24*time.Hour) {
				t.Errorf("reset %v in %v", u.ResetAt, u.ResetIn)
			}
			u, err = s.QuotaUsage(ctxBG, q, fresh)
			if err != nil || u.Used != 0 || u.Reserved != 0 {
				t.Fatalf("fresh: %+v %v", u, err)
			}
		}
		if n := count(); n != before {
			t.Errorf("%d entries before reading, %d after", before, n)
		}
		// Nothing consumed: exactly one slot left.
		if d := mustReserve(t, s, q, k, 3, time.Minute); !d.Allowed || d.Remaining != 0 {
			t.Errorf("after the reads: %v", d)
		}
	}
	t.Run("memory", func(t *testing.T) {
		b := memoryQuotaBackend(t, start)
		m := b.store.(*Memory)
		check(t, m, "memory", true, func() int { m.quota.mu.Lock(); defer m.quota.mu.Unlock(); return len(m.quota.m) })
	})
	keys := func(t *testing.T, c redis.UniversalClient) func() int {
		return func() int {
			ks, err := c.Keys(ctxBG, "*").Result()
			if err != nil {
				t.Fatal(err)
			}
			return len(ks)
		}
	}
	t.Run("miniredis", func(t *testing.T) {
		b, _, c := miniQuotaBackend(t, start)
		check(t, b.store.(*Redis), "redis", true, keys(t, c))
	})
	t.Run("redis-server", func(t *testing.T) {
		b := realQuotaBackend(t, redistest.Start(t).Client(t))
		c := b.store.(*Redis).client
		check(t, b.store.(*Redis), "redis", false, keys(t, c))
	})
}
