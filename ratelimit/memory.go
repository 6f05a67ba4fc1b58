package ratelimit

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// Memory is the in-process store: exact for one replica, shared by none.
// Idle identities are evicted by a background sweep, so memory is bounded
// by the requests admitted within the longest window, not by the number of
// identities ever seen.
type Memory struct {
	clock func() int64 // nanoseconds, never decreasing

	mu      sync.RWMutex
	buckets map[string]*memBucket
	quota   memQuotas // quota.go

	stop     chan struct{}
	stopOnce sync.Once
	done     chan struct{}
}

const memShards = 64

type memBucket struct {
	maxWindow atomic.Int64
	shards    [memShards]memShard
}

type memShard struct {
	mu sync.Mutex
	m  map[Key]*memEntry
	// peak is the most entries m has held since it was made: Go maps do
	// not give memory back as entries go, so the sweep remakes m once it
	// has shrunk well below its peak.
	peak int
}

// memEntry is one identity's state: for the sliding log, the times of its
// admitted requests, oldest first, in a ring; for GCRA, the theoretical
// arrival time.
type memEntry struct {
	ring []int64
	head int
	n    int
	tat  int64
	last int64
}

// MemoryOption configures a Memory.
type MemoryOption func(*Memory)

// WithClock makes the store read time from now, which must never go back.
// Tests use it to step across tier boundaries exactly.
func WithClock(now func() time.Duration) MemoryOption {
	return func(m *Memory) { m.clock = func() int64 { return int64(now()) } }
}

// NewMemory returns an in-process store and starts its sweep, which runs
// every sweepEvery (10s when zero) until Close.
func NewMemory(sweepEvery time.Duration, opts ...MemoryOption) *Memory {
	start := time.Now()
	m := &Memory{
		// +1 so that no admitted request is ever at time 0, the ring's
		// "empty" value.
		clock:   func() int64 { return int64(time.Since(start)) + 1 },
		buckets: map[string]*memBucket{},
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	for _, o := range opts {
		o(m)
	}
	if sweepEvery <= 0 {
		sweepEvery = 10 * time.Second
	}
	go m.sweepLoop(sweepEvery)
	return m
}

// Close stops the sweep. The store still answers afterwards.
func (m *Memory) Close() error {
	m.stopOnce.Do(func() { close(m.stop) })
	<-m.done
	return nil
}

func (m *Memory) bucket(p *Policy) *memBucket {
	m.mu.RLock()
	b := m.buckets[p.ID]
	m.mu.RUnlock()
	if b == nil {
		m.mu.Lock()
		if b = m.buckets[p.ID]; b == nil {
			b = &memBucket{}
			for i := range b.shards {
				b.shards[i].m = map[Key]*memEntry{}
			}
			m.buckets[p.ID] = b
		}
		m.mu.Unlock()
	}
	if w := int64(p.maxWindow); b.maxWindow.Load() < w {
		b.maxWindow.Store(w)
	}
	return b
}

// Allow decides one request of k against p and, if every tier admits it,
// records it in all of them. It never fails.
func (m *Memory) Allow(_ context.Context, p *Policy, k Key) (Decision, error) {
	b := m.bucket(p)
	s := &b.shards[k[0]%memShards]
	s.mu.Lock()
	now := m.clock()
	e := s.m[k]
	if e == nil {
		e = &memEntry{}
		s.m[k] = e
		s.peak = max(s.peak, len(s.m))
	}
	d := p.Algorithm.allowMemory(e, p, now)
	s.mu.Unlock()
	return d, nil
}

// decide is Allow, for the limiter's store interface: the in-process
// store needs no deadline and makes no reservation with a decision.
func (m *Memory) decide(ctx context.Context, _ time.Time, p *Policy, k Key, _ []QuotaAsk) (Decision, error) {
	return m.Allow(ctx, p, k)
}

// at returns the i-th oldest recorded time.
func (e *memEntry) at(i int) int64 { return e.ring[(e.head+i)%len(e.ring)] }

// stamps returns the recorded times, oldest first, in a new slice.
func (e *memEntry) stamps() []int64 {
	s := make([]int64, e.n)
	for i := range s {
		s[i] = e.at(i)
	}
	return s
}

// firstAfter returns the index of the first recorded time after cutoff.
func (e *memEntry) firstAfter(cutoff int64) int {
	lo, hi := 0, e.n
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if e.at(mid) <= cutoff {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	return lo
}

func (e *memEntry) push(t int64, capacity int64) {
	if e.n == len(e.ring) {
		if int64(len(e.ring)) < capacity {
			// Grow, unrolling the ring so that the oldest is first.
			size := min(max(4, 2*len(e.ring)), int(capacity))
			r := make([]int64, size)
			for i := range e.n {
				r[i] = e.at(i)
			}
			e.ring, e.head = r, 0
		} else {
			// Full: the oldest is outside the longest window (see
			// slidingLog), so it can go.
			e.head = (e.head + 1) % len(e.ring)
			e.n--
		}
	}
	e.ring[(e.head+e.n)%len(e.ring)] = t
	e.n++
	e.last = t
}

// slidingLog is the exact algorithm. A request at now counts in a tier's
// window w if it was admitted after now-w; a tier admits while fewer than
// its limit count. As no tier ever holds more than its limit, the log never
// needs more than the largest limit of entries.
func (e *memEntry) slidingLog(p *Policy, now int64) Decision {
	var deny, report Decision
	blocked := false
	for i, t := range p.Tiers {
		w := int64(t.Window)
		first := e.firstAfter(now - w)
		count := int64(e.n - first)
		if count >= t.Limit {
			// The request fits once the entry that takes the last slot
			// leaves the window.
			wait := time.Duration(e.at(first+int(count-t.Limit)) + w - now)
			if !blocked || wait > deny.Reset {
				deny = Decision{Tier: i, Reset: wait}
			}
			blocked = true
			continue
		}
		if blocked {
			continue
		}
		oldest := now
		if count > 0 {
			oldest = e.at(first)
		}
		d := Decision{Allowed: true, Tier: i, Remaining: t.Limit - count - 1, Reset: time.Duration(oldest + w - now)}
		if i == 0 || d.Remaining < report.Remaining || d.Remaining == report.Remaining && d.Reset > report.Reset {
			report = d
		}
	}
	if blocked {
		return deny
	}
	e.push(now, p.capacity)
	return report
}

func (m *Memory) sweepLoop(every time.Duration) {
	defer close(m.done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
			m.Sweep()
		}
	}
}

// Sweep evicts every identity whose last admitted request has left the
// longest window of its bucket (for GCRA: whose bucket is full again). It
// runs in the background; tests call it directly.
func (m *Memory) Sweep() {
	m.sweepQuotas()
	m.mu.RLock()
	buckets := make([]*memBucket, 0, len(m.buckets))
	for _, b := range m.buckets {
		buckets = append(buckets, b)
	}
	m.mu.RUnlock()
	for _, b := range buckets {
		w := b.maxWindow.Load()
		for i := range b.shards {
			s := &b.shards[i]
			s.mu.Lock()
			now := m.clock()
			for k, e := range s.m {
				if e.last <= now-w && e.tat <= now {
					delete(s.m, k)
				}
			}
			if s.peak > 64 && len(s.m) < s.peak/4 {
				m := make(map[Key]*memEntry, len(s.m))
				for k, e := range s.m {
					m[k] = e
				}
				s.m, s.peak = m, len(m)
			}
			s.mu.Unlock()
		}
	}
}

// Len returns the number of identities held, for tests and the memory
// bound.
func (m *Memory) Len() int {
	m.mu.RLock()
	defer m.mu.RUnlock()
	n := 0
	for _, b := range m.buckets {
		for i := range b.shards {
			s := &b.shards[i]
			s.mu.Lock()
			n += len(s.m)
			s.mu.Unlock()
		}
	}
	return n
}
