package ratelimit

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/innovartx/deskgate/internal/redistest"
)

// peekStore is a store that can be peeked, with its clock and a way to
// list the Redis keys (nil in process) or count the entries held.
type peekStore struct {
	timedStore
	peek    func(p *Policy, k Key) Usage
	keys    func() []string
	entries func() int
}

func memoryPeek(t *testing.T) peekStore {
	ts := memoryTimed(t)
	m := ts.s.(*Memory)
	return peekStore{timedStore: ts, peek: m.Peek, entries: m.Len}
}

func redisPeek(t *testing.T, ts timedStore, c *redis.Client) peekStore {
	r := ts.s.(*Redis)
	return peekStore{
		timedStore: ts,
		peek: func(p *Policy, k Key) Usage {
			u, err := r.Peek(context.Background(), p, k)
			if err != nil {
				t.Fatal(err)
			}
			return u
		},
		keys: func() []string {
			ks, err := c.Keys(context.Background(), "*").Result()
			if err != nil {
				t.Fatal(err)
			}
			return ks
		},
	}
}

// TestPeekMatchesState guards budget inspection (SPEC §10): after a
// scripted sequence the figures match the state — used, remaining, and
// exactly Remaining more requests are then admitted — 100 reads change
// nothing, and reading a fresh identity creates no state (no Redis key,
// no in-process entry). In process, on miniredis and on a real Redis.
func TestPeekMatchesState(t *testing.T) {
	sliding, err := NewPolicy("global", SlidingLog, []Tier{
		{Limit: 3, Window: 10 * time.Second, Name: "10s"},
		{Limit: 5, Window: time.Minute, Name: "1m"},
	})
	if err != nil {
		t.Fatal(err)
	}
	gcra, err := NewPolicy("bucket:g", GCRA, []Tier{{Limit: 5, Window: 10 * time.Second, Name: "10s"}})
	if err != nil {
		t.Fatal(err)
	}
	stores := map[string]func(t *testing.T) (peekStore, bool){
		"memory": func(t *testing.T) (peekStore, bool) { return memoryPeek(t), true },
		"miniredis": func(t *testing.T) (peekStore, bool) {
			ts, mr := miniredisTimed(t)
			c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
			t.Cleanup(func() { c.Close() })
			return redisPeek(t, ts, c), true
		},
		"real_redis": func(t *testing.T) (peekStore, bool) {
			srv := redistest.Start(t)
			c := srv.Client(t)
			ts := timedStore{"redis", NewRedis(c), func(time.Duration) {}}
			return redisPeek(t, ts, c), false
		},
	}
	for name, mk := range stores {
		t.Run(name, func(t *testing.T) {
			ps, scripted := mk(t)
			ctx := context.Background()
			k := KeyFromApp("app_peek")
			allow := func(p *Policy, n int) (admitted int) {
				for range n {
					d, err := ps.s.Allow(ctx, p, k)
					if err != nil {
						t.Fatal(err)
					}
					if d.Allowed {
						admitted++
					}
				}
				return admitted
			}
			// Sliding log: 4 at 0 (3 admitted), then 3 at 11s (2 admitted:
			// 5 in the minute).
			ps.set(0)
			allow(sliding, 4)
			want := [][2]int64{{3, 0}, {3, 2}}
			check := func(u Usage) {
				t.Helper()
				for i, w := range want {
					if u.Tiers[i].Used != w[0] || u.Tiers[i].Remaining != w[1] {
						t.Fatalf("tier %s: used %d remaining %d, want %d %d", u.Tiers[i].Tier.Name, u.Tiers[i].Used, u.Tiers[i].Remaining, w[0], w[1])
					}
				}
			}
			u := ps.peek(sliding, k)
			check(u)
			if r := u.Tiers[0].NextSlot; r <= 9*time.Second || r > 10*time.Second {
				t.Errorf("10s tier full: next slot in %s", r)
			}
			if r := u.Tiers[1].Reset; r <= 59*time.Second || r > time.Minute {
				t.Errorf("1m tier: reset in %s", r)
			}
			for range 100 {
				check(ps.peek(sliding, k))
			}
			if scripted {
				ps.set(11 * time.Second)
				want = [][2]int64{{0, 3}, {3, 2}}
				check(ps.peek(sliding, k))
				if n := allow(sliding, 3); n != 2 {
					t.Fatalf("after a read saying 2 remain, %d admitted", n)
				}
				want = [][2]int64{{2, 1}, {5, 0}}
				check(ps.peek(sliding, k))
			} else if n := allow(sliding, 1); n != 0 {
				t.Fatalf("after a read saying 0 remain, %d admitted", n)
			}
			// GCRA: 3 of 5 used, with the clock still.
			if scripted {
				allow(gcra, 3)
				g := ps.peek(gcra, k)
				if g.Tiers[0].Used != 3 || g.Tiers[0].Remaining != 2 {
					t.Errorf("gcra: used %d remaining %d, want 3 2", g.Tiers[0].Used, g.Tiers[0].Remaining)
				}
				if n := allow(gcra, 5); n != 2 {
					t.Errorf("gcra: after a read saying 2 remain, %d admitted", n)
				}
			}

			// A fresh identity: full budget, and no state created.
			var keysBefore []string
			entriesBefore := 0
			if ps.keys != nil {
				keysBefore = ps.keys()
			} else {
				entriesBefore = ps.entries()
			}
			fresh := KeyFromApp("app_never_seen")
			for range 100 {
				for _, p := range []*Policy{sliding, gcra} {
					for _, tu := range ps.peek(p, fresh).Tiers {
						if tu.Used != 0 || tu.Remaining != tu.Tier.Limit {
							t.Fatalf("fresh identity: %+v", tu)
						}
					}
				}
			}
			if ps.keys != nil {
				if after := ps.keys(); len(after) != len(keysBefore) {
					t.Errorf("keys before %q, after reads %q", keysBefore, after)
				}
			} else if n := ps.entries(); n != entriesBefore {
				t.Errorf("%d entries before, %d after reads", entriesBefore, n)
			}
		})
	}
}
