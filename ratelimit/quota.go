package ratelimit

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// Monthly plan quotas (SPEC §9). A quota counts, per identity and calendar
// month (UTC), the requests that the upstream answered with a 2xx. A
// request reserves a slot before it is forwarded ([QuotaStore.Reserve]),
// and the slot is then committed (2xx) or released (anything else) with
// [QuotaStore.Settle]. A reservation counts against the limit until it is
// settled or expires (its ttl: the route's upstream timeout plus a margin),
// so that concurrent requests at the boundary never admit more than the
// limit, and a replica that dies between reserve and commit does not hold
// the slot forever.
//
// A commit counts in the month of its reservation: a request reserved on
// the 31st at 23:59:59 and answered after midnight counts in the month that
// admitted it, which has ended (so it changes nothing).

// Quota names one quota's state: two quotas with one name share counts, so
// that a reload keeps them.
type Quota struct {
	Name string
	id   string // "quota:<name>", the budget part of its keys
}

// NewQuota returns the quota called name.
func NewQuota(name string) *Quota { return &Quota{Name: name, id: "quota:" + name} }

// Reservation is a slot held for one request, to settle once. Its zero
// value holds nothing (a store that could not count: on_failure allow);
// settling it does nothing.
type Reservation struct {
	// ID is the slot's id within its identity and quota; 0 is none.
	ID int64
	// Month is the month the slot was reserved in (year*12 + month-1).
	Month int64
	// store says which store holds it (storeRedis or storeMemory).
	store uint8
}

// Held reports whether r holds a slot.
func (r Reservation) Held() bool { return r.ID != 0 }

// QuotaDecision is the outcome of one reservation.
type QuotaDecision struct {
	// Allowed reports whether a slot was reserved.
	Allowed bool
	Limit   int64
	// Remaining is what is left after this request (0 when refused);
	// negative when no store could count (on_failure: allow).
	Remaining int64
	// ResetAt is the start of the next month (UTC), and ResetIn the time
	// until then, both by the store's clock; Period is the month's length.
	ResetAt time.Time
	ResetIn time.Duration
	Period  time.Duration
	Reservation
}

// QuotaAsk is a reservation asked with a rate-limit decision
// ([Limiter.AllowQuotas]): made in the same Redis call, and only when the
// rate limit admits the request.
type QuotaAsk struct {
	Quota *Quota
	Limit int64
	TTL   time.Duration
	// Stop: when this quota refuses, the ones after it are not asked (the
	// request will be refused).
	Stop bool

	// Done is set when the reservation was decided with the request:
	// Decision is then its outcome. Otherwise the caller reserves it with
	// [QuotaStore.Reserve] if it still needs it.
	Done     bool
	Decision QuotaDecision
}

// QuotaStore reserves and settles quota slots. *Memory, *Redis and
// *Limiter implement it.
type QuotaStore interface {
	Reserve(ctx context.Context, q *Quota, k Key, limit int64, ttl time.Duration) (QuotaDecision, error)
	// Settle commits (the upstream answered 2xx) or releases r.
	Settle(ctx context.Context, q *Quota, k Key, r Reservation, commit bool) error
}

var (
	_ QuotaStore = (*Memory)(nil)
	_ QuotaStore = (*Redis)(nil)
	_ QuotaStore = (*Limiter)(nil)
)

// monthIndex returns t's calendar month (UTC) as year*12 + month-1.
func monthIndex(t time.Time) int64 {
	t = t.UTC()
	return int64(t.Year())*12 + int64(t.Month()) - 1
}

// monthBounds returns the start of t's month and of the next, in UTC.
func monthBounds(t time.Time) (start, next time.Time) {
	t = t.UTC()
	start = time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC)
	return start, start.AddDate(0, 1, 0)
}

// memQuotas is the in-process state of every quota, inside a [Memory].
type memQuotas struct {
	wall   func() time.Time // nil: time.Now
	mu     sync.Mutex
	m      map[memQuotaKey]*memQuota
	lastID int64
}

type memQuotaKey struct {
	id string
	k  Key
}

// memQuota is one identity's count for one quota: used in month, and the
// slots reserved (id → expiry, on the store's monotonic clock).
type memQuota struct {
	month int64
	used  int64
	res   map[int64]int64
}

// WithWallClock makes the store read the calendar (for quotas' months)
// from now. Tests use it to cross a month.
func WithWallClock(now func() time.Time) MemoryOption {
	return func(m *Memory) { m.quota.wall = now }
}

func (q *memQuotas) now() time.Time {
	if q.wall != nil {
		return q.wall()
	}
	return time.Now()
}

// Reserve takes a slot of q for k if fewer than limit are used or
// reserved this month. It never fails.
func (m *Memory) Reserve(_ context.Context, q *Quota, k Key, limit int64, ttl time.Duration) (QuotaDecision, error) {
	s := &m.quota
	s.mu.Lock()
	defer s.mu.Unlock()
	wall := s.now()
	mono := m.clock()
	month := monthIndex(wall)
	start, next := monthBounds(wall)
	d := QuotaDecision{Limit: limit, ResetAt: next, ResetIn: next.Sub(wall), Period: next.Sub(start)}
	if s.m == nil {
		s.m = map[memQuotaKey]*memQuota{}
	}
	key := memQuotaKey{q.id, k}
	e := s.m[key]
	if e == nil {
		e = &memQuota{month: month, res: map[int64]int64{}}
		s.m[key] = e
	}
	if e.month != month {
		// A new month: nothing used, and the slots reserved in the last
		// one will count there (that is, nowhere) when they settle.
		e.month, e.used = month, 0
		clear(e.res)
	}
	for id, exp := range e.res {
		if exp <= mono {
			delete(e.res, id)
		}
	}
	taken := e.used + int64(len(e.res))
	if taken >= limit {
		return d, nil
	}
	s.lastID++
	e.res[s.lastID] = mono + int64(ttl)
	d.Allowed = true
	d.Remaining = limit - taken - 1
	d.Reservation = Reservation{ID: s.lastID, Month: month, store: storeMemory}
	return d, nil
}

// Settle commits or releases r. It never fails.
func (m *Memory) Settle(_ context.Context, q *Quota, k Key, r Reservation, commit bool) error {
	if !r.Held() {
		return nil
	}
	s := &m.quota
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.m[memQuotaKey{q.id, k}]
	if e == nil {
		return nil
	}
	delete(e.res, r.ID)
	// Committed even when the slot had expired: the upstream did the
	// work; never lost.
	if commit && e.month == r.Month {
		e.used++
	}
	return nil
}

// QuotaUsage is an identity's standing against a quota this month (SPEC
// §10), read without consuming.
type QuotaUsage struct {
	// Used is what was committed this month; Reserved the slots held by
	// requests in progress (they count until settled or expired).
	Used, Reserved int64
	// ResetAt is the start of the next month (UTC) and ResetIn the time
	// until then, by the store's clock.
	ResetAt time.Time
	ResetIn time.Duration
	// Store is memory, redis or local_fallback, as [Usage.Store].
	Store string
}

// QuotaUsed returns k's count of q this month and the slots it holds, for
// tests and budget inspection.
func (m *Memory) QuotaUsed(q *Quota, k Key) (used, reserved int64) {
	u, _ := m.QuotaUsage(context.Background(), q, k)
	return u.Used, u.Reserved
}

// QuotaUsage returns k's standing against q this month. It reads only:
// no entry is made for an identity the store does not hold. It never
// fails.
func (m *Memory) QuotaUsage(_ context.Context, q *Quota, k Key) (QuotaUsage, error) {
	s := &m.quota
	s.mu.Lock()
	defer s.mu.Unlock()
	wall := s.now()
	_, next := monthBounds(wall)
	u := QuotaUsage{ResetAt: next, ResetIn: next.Sub(wall), Store: storeNames[storeMemory]}
	e := s.m[memQuotaKey{q.id, k}]
	if e == nil || e.month != monthIndex(wall) {
		return u, nil
	}
	mono := m.clock()
	for _, exp := range e.res {
		if exp > mono {
			u.Reserved++
		}
	}
	u.Used = e.used
	return u, nil
}

// sweepQuotas drops the counts of past months that hold no slot.
func (m *Memory) sweepQuotas() {
	s := &m.quota
	s.mu.Lock()
	defer s.mu.Unlock()
	month := monthIndex(s.now())
	mono := m.clock()
	for key, e := range s.m {
		for id, exp := range e.res {
			if exp <= mono {
				delete(e.res, id)
			}
		}
		if e.month != month && len(e.res) == 0 {
			delete(s.m, key)
		}
	}
}

// String describes d for test failures.
func (d QuotaDecision) String() string {
	return fmt.Sprintf("allowed=%v limit=%d remaining=%d reset=%s id=%d", d.Allowed, d.Limit, d.Remaining, d.ResetAt.Format(time.RFC3339), d.ID)
}

// QuotaLen is how many identities' quota counts the store holds (tests).
func (m *Memory) QuotaLen() int {
	s := &m.quota
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m)
}
