package ratelimit

import (
	"context"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeClock is a manual clock for the in-process store.
type fakeClock struct{ now atomic.Int64 }

func (c *fakeClock) Now() time.Duration      { return time.Duration(c.now.Load()) }
func (c *fakeClock) Set(d time.Duration)     { c.now.Store(int64(d)) }
func (c *fakeClock) Advance(d time.Duration) { c.now.Add(int64(d)) }

func defaultPolicy(t testing.TB) *Policy {
	t.Helper()
	p, err := NewPolicy("global", SlidingLog, []Tier{
		{Limit: 3, Window: time.Second, Name: "1s"},
		{Limit: 20, Window: 10 * time.Second, Name: "10s"},
		{Limit: 100, Window: time.Minute, Name: "1m"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func newTestMemory(t testing.TB) (*Memory, *fakeClock) {
	t.Helper()
	c := &fakeClock{}
	c.Set(time.Hour) // far from zero, like a real monotonic clock
	m := NewMemory(time.Hour, WithClock(c.Now))
	t.Cleanup(func() { m.Close() })
	return m, c
}

var keyA = Key{1}

// step is one request of a scripted sequence: at this offset from the
// start, the store must decide so.
type step struct {
	at        time.Duration
	allowed   bool
	tier      int
	remaining int64
	reset     time.Duration
}

// run plays steps against s with clock c, starting at the clock's time.
func runSteps(t *testing.T, m *Memory, c *fakeClock, p *Policy, k Key, steps []step) {
	t.Helper()
	base := c.Now()
	for i, s := range steps {
		c.Set(base + s.at)
		d, err := m.Allow(context.Background(), p, k)
		if err != nil {
			t.Fatalf("step %d at %s: %v", i, s.at, err)
		}
		want := Decision{Allowed: s.allowed, Tier: s.tier, Remaining: s.remaining, Reset: s.reset}
		if d != want {
			t.Fatalf("step %d at %s: got %v, want %v", i, s.at, d, want)
		}
	}
}

const ms = time.Millisecond

// TestSlidingLogSecondTier guards SPEC §4's first tier: 3 requests in a
// second pass, the 4th is refused until the first leaves the window, and
// the window is exact (a request exactly one window later counts again).
func TestSlidingLogSecondTier(t *testing.T) {
	m, c := newTestMemory(t)
	runSteps(t, m, c, defaultPolicy(t), keyA, []step{
		{at: 0, allowed: true, tier: 0, remaining: 2, reset: time.Second},
		{at: 100 * ms, allowed: true, tier: 0, remaining: 1, reset: 900 * ms},
		{at: 200 * ms, allowed: true, tier: 0, remaining: 0, reset: 800 * ms},
		{at: 500 * ms, allowed: false, tier: 0, reset: 500 * ms},
		{at: 999 * ms, allowed: false, tier: 0, reset: 1 * ms},
		// The request at 0 leaves the 1s window at exactly 1s.
		{at: 1000 * ms, allowed: true, tier: 0, remaining: 0, reset: 100 * ms},
		{at: 1050 * ms, allowed: false, tier: 0, reset: 50 * ms},
	})
}

// TestSlidingLogTenSecondTier guards the second tier: at 3 req/s, the 21st
// request within 10 s is refused by the 10s tier, with the wait until the
// first request leaves that window.
func TestSlidingLogTenSecondTier(t *testing.T) {
	m, c := newTestMemory(t)
	p := defaultPolicy(t)
	base := c.Now()
	n := 0
	for sec := range 7 {
		for j := range 3 {
			if n == 20 {
				break
			}
			c.Set(base + time.Duration(sec)*time.Second + time.Duration(j)*100*ms)
			d, _ := m.Allow(context.Background(), p, keyA)
			if !d.Allowed {
				t.Fatalf("request %d at %s denied: %v", n+1, c.Now()-base, d)
			}
			n++
		}
	}
	// 20 admitted by 6.1s; the 21st at 6.2s fits the 1s tier (2 in it) but
	// not the 10s tier.
	c.Set(base + 6200*ms)
	d, _ := m.Allow(context.Background(), p, keyA)
	want := Decision{Allowed: false, Tier: 1, Reset: 3800 * ms}
	if d != want {
		t.Fatalf("21st request: got %v, want %v", d, want)
	}
	// At 10s the first request leaves the 10s window: one slot frees.
	c.Set(base + 10*time.Second)
	if d, _ := m.Allow(context.Background(), p, keyA); !d.Allowed {
		t.Fatalf("at 10s: got %v, want allowed", d)
	}
	if d, _ := m.Allow(context.Background(), p, keyA); d.Allowed || d.Tier != 1 {
		t.Fatalf("second request at 10s: got %v, want denied by tier 1", d)
	}
}

// TestSlidingLogMinuteTier guards the third tier: the 101st request within
// a minute is refused even though the shorter tiers would admit it.
func TestSlidingLogMinuteTier(t *testing.T) {
	m, c := newTestMemory(t)
	p := defaultPolicy(t)
	base := c.Now()
	// 2 requests every 1.1 s stay under 3/1s and 20/10s (at most 19 in any
	// 10 s) and reach 100 after 55 s.
	at := time.Duration(0)
	for i := range 100 {
		c.Set(base + at)
		if d, _ := m.Allow(context.Background(), p, keyA); !d.Allowed {
			t.Fatalf("request %d at %s denied: %v", i+1, at, d)
		}
		if i%2 == 1 {
			at += 1100 * ms
		} else {
			at += 10 * ms
		}
	}
	last := c.Now() - base
	c.Set(base + 59*time.Second)
	d, _ := m.Allow(context.Background(), p, keyA)
	if d.Allowed || d.Tier != 2 {
		t.Fatalf("101st request at 59s (last at %s): got %v, want denied by tier 2", last, d)
	}
	if d.Reset != time.Second {
		t.Fatalf("101st request: reset %s, want 1s (the first request leaves the minute at 60s)", d.Reset)
	}
	c.Set(base + time.Minute)
	if d, _ := m.Allow(context.Background(), p, keyA); !d.Allowed {
		t.Fatalf("at 60s: got %v, want allowed", d)
	}
}

// TestDeniedConsumesNothing guards SPEC §1: a denied request never
// consumes quota. A thousand denied requests leave the budget as it was.
func TestDeniedConsumesNothing(t *testing.T) {
	m, c := newTestMemory(t)
	p := defaultPolicy(t)
	base := c.Now()
	for range 3 {
		m.Allow(context.Background(), p, keyA)
	}
	c.Set(base + 500*ms)
	for range 1000 {
		if d, _ := m.Allow(context.Background(), p, keyA); d.Allowed {
			t.Fatal("4th request in the second admitted")
		}
	}
	c.Set(base + time.Second)
	for i := range 3 {
		if d, _ := m.Allow(context.Background(), p, keyA); !d.Allowed {
			t.Fatalf("request %d of the next second denied (denied requests were counted): %v", i+1, d)
		}
	}
	// 6 admitted in all: the 10s tier has 14 left, the 1m tier 94.
	c.Set(base + 2*time.Second)
	d, _ := m.Allow(context.Background(), p, keyA)
	if !d.Allowed || d.Tier != 0 || d.Remaining != 2 {
		t.Fatalf("got %v, want allowed with 2 left in the 1s tier", d)
	}
}

// TestReportedTier checks that the RateLimit header reports the tier with
// the least quota left, not always the first.
func TestReportedTier(t *testing.T) {
	m, c := newTestMemory(t)
	p, _ := NewPolicy("p", SlidingLog, []Tier{
		{Limit: 5, Window: time.Second, Name: "1s"},
		{Limit: 6, Window: time.Minute, Name: "1m"},
	})
	runSteps(t, m, c, p, keyA, []step{
		{at: 0, allowed: true, tier: 0, remaining: 4, reset: time.Second},
		// Both tiers have 4 left: the one that frees a slot later wins.
		{at: 2 * time.Second, allowed: true, tier: 1, remaining: 4, reset: 58 * time.Second},
		{at: 4 * time.Second, allowed: true, tier: 1, remaining: 3, reset: 56 * time.Second},
		{at: 6 * time.Second, allowed: true, tier: 1, remaining: 2, reset: 54 * time.Second},
	})
}

// TestIdentitiesAreSeparate checks that budgets are per key and per policy
// ID, and that two policies with one ID share state (a reload keeps a
// client's budget).
func TestIdentitiesAreSeparate(t *testing.T) {
	m, _ := newTestMemory(t)
	p := defaultPolicy(t)
	for range 3 {
		m.Allow(context.Background(), p, keyA)
	}
	if d, _ := m.Allow(context.Background(), p, keyA); d.Allowed {
		t.Fatal("4th request of key A admitted")
	}
	if d, _ := m.Allow(context.Background(), p, Key{2}); !d.Allowed {
		t.Fatal("key B denied by key A's budget")
	}
	other, _ := NewPolicy("bucket:exports", SlidingLog, p.Tiers)
	if d, _ := m.Allow(context.Background(), other, keyA); !d.Allowed {
		t.Fatal("a separate bucket shares key A's budget")
	}
	reloaded := defaultPolicy(t) // same ID, new value, as after a reload
	if d, _ := m.Allow(context.Background(), reloaded, keyA); d.Allowed {
		t.Fatal("a reloaded policy with the same ID reset key A's budget")
	}
}

// TestConcurrentAdmission checks atomicity: 64 goroutines hammering one
// key at one instant get exactly 3 admissions.
func TestConcurrentAdmission(t *testing.T) {
	m, _ := newTestMemory(t)
	p := defaultPolicy(t)
	var allowed atomic.Int64
	var wg sync.WaitGroup
	for range 64 {
		wg.Go(func() {
			for range 50 {
				if d, _ := m.Allow(context.Background(), p, keyA); d.Allowed {
					allowed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if got := allowed.Load(); got != 3 {
		t.Fatalf("admitted %d of 3200 concurrent requests at one instant, want 3", got)
	}
}

// TestEviction guards the memory bound of the foundation issue: idle
// identities are evicted once their requests have left the longest window.
func TestEviction(t *testing.T) {
	m, c := newTestMemory(t)
	p := defaultPolicy(t)
	for i := range 10_000 {
		m.Allow(context.Background(), p, Key{byte(i), byte(i >> 8)})
	}
	if got := m.Len(); got != 10_000 {
		t.Fatalf("Len = %d, want 10000", got)
	}
	c.Advance(30 * time.Second)
	m.Allow(context.Background(), p, keyA) // keyA stays active
	c.Advance(30 * time.Second)
	m.Sweep()
	if got := m.Len(); got != 1 {
		t.Fatalf("after a minute idle: Len = %d, want 1 (only the active key)", got)
	}
	c.Advance(30 * time.Second)
	m.Sweep()
	if got := m.Len(); got != 0 {
		t.Fatalf("Len = %d, want 0", got)
	}
}

// TestSweepRuns checks that the background sweep runs on its own.
func TestSweepRuns(t *testing.T) {
	c := &fakeClock{}
	c.Set(time.Hour)
	m := NewMemory(5*time.Millisecond, WithClock(c.Now))
	defer m.Close()
	p := defaultPolicy(t)
	m.Allow(context.Background(), p, keyA)
	c.Advance(2 * time.Minute)
	deadline := time.Now().Add(5 * time.Second)
	for m.Len() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("background sweep did not evict an idle identity within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestRingShrinkAndGrow checks the log across a reload that changes the
// largest limit: no admission beyond the new limits.
func TestRingShrinkAndGrow(t *testing.T) {
	m, c := newTestMemory(t)
	big, _ := NewPolicy("p", SlidingLog, []Tier{{Limit: 50, Window: time.Minute, Name: "1m"}})
	small, _ := NewPolicy("p", SlidingLog, []Tier{{Limit: 10, Window: time.Minute, Name: "1m"}})
	for i := range 30 {
		c.Advance(ms)
		if d, _ := m.Allow(context.Background(), big, keyA); !d.Allowed {
			t.Fatalf("request %d denied under 50/1m", i)
		}
	}
	if d, _ := m.Allow(context.Background(), small, keyA); d.Allowed {
		t.Fatal("admitted under 10/1m with 30 in the window")
	}
	c.Advance(time.Minute)
	for i := range 10 {
		c.Advance(ms)
		if d, _ := m.Allow(context.Background(), small, keyA); !d.Allowed {
			t.Fatalf("request %d denied under 10/1m after the window passed", i)
		}
	}
	if d, _ := m.Allow(context.Background(), small, keyA); d.Allowed {
		t.Fatal("11th request admitted under 10/1m")
	}
}

// TestGCRA checks the in-process GCRA: a burst of the limit, then one
// request per emission interval.
func TestGCRA(t *testing.T) {
	m, c := newTestMemory(t)
	p, err := NewPolicy("g", GCRA, []Tier{{Limit: 10, Window: time.Second, Name: "1s"}})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		d, _ := m.Allow(context.Background(), p, keyA)
		if !d.Allowed || d.Remaining != int64(9-i) {
			t.Fatalf("burst request %d: got %v, want allowed with %d left", i, d, 9-i)
		}
	}
	d, _ := m.Allow(context.Background(), p, keyA)
	if d.Allowed || d.Reset != 100*ms {
		t.Fatalf("11th: got %v, want denied for 100ms", d)
	}
	c.Advance(100 * ms)
	if d, _ := m.Allow(context.Background(), p, keyA); !d.Allowed {
		t.Fatalf("after one interval: got %v, want allowed", d)
	}
	if d, _ := m.Allow(context.Background(), p, keyA); d.Allowed {
		t.Fatal("second request in the same interval admitted")
	}
}

func TestNewPolicyErrors(t *testing.T) {
	for name, tc := range map[string]struct {
		alg   Algorithm
		tiers []Tier
	}{
		"no tiers":          {SlidingLog, nil},
		"zero limit":        {SlidingLog, []Tier{{Limit: 0, Window: time.Second}}},
		"zero window":       {SlidingLog, []Tier{{Limit: 1}}},
		"duplicate windows": {SlidingLog, []Tier{{Limit: 1, Window: time.Second}, {Limit: 2, Window: time.Second}}},
		"gcra two tiers":    {GCRA, []Tier{{Limit: 1, Window: time.Second}, {Limit: 2, Window: time.Minute}}},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := NewPolicy("x", tc.alg, tc.tiers); err == nil {
				t.Fatal("no error")
			}
		})
	}
}

func BenchmarkMemoryAllow(b *testing.B) {
	m := NewMemory(time.Hour)
	defer m.Close()
	p := defaultPolicy(b)
	keys := make([]Key, 4096)
	for i := range keys {
		keys[i] = KeyFromApp(string(rune('a'+i%26)) + string(rune(i)))
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		m.Allow(context.Background(), p, keys[i%len(keys)])
		i++
	}
}

// TestEvictionFreesMemory guards the memory bound under a flood of
// distinct identities: once they are swept, the heap they took is given
// back (Go maps keep their size after deletes, so the sweep remakes a
// shard's map that has shrunk well below its peak).
func TestEvictionFreesMemory(t *testing.T) {
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	m, c := newTestMemory(t)
	p := defaultPolicy(t)
	before := heap()
	for i := range 200_000 {
		m.Allow(context.Background(), p, KeyFromApp(strconv.Itoa(i)))
	}
	flooded := heap()
	c.Advance(2 * time.Minute)
	m.Sweep()
	after := heap()
	grew := int64(flooded) - int64(before)
	kept := int64(after) - int64(before)
	t.Logf("heap: %d KiB before, %d KiB with 200,000 identities, %d KiB after the sweep", before>>10, flooded>>10, after>>10)
	if grew < 10<<20 {
		t.Fatalf("200,000 identities took only %d KiB: the test does not measure them", grew>>10)
	}
	if kept > grew/10 {
		t.Fatalf("after the sweep the store still holds %d KiB of the %d KiB the identities took", kept>>10, grew>>10)
	}
}
