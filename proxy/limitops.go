package proxy

// Operating the limits (SPEC §10, issue 16): shadow mode and the upstream's
// own 429. Budget inspection is in budget.go.

import (
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/innovartx/deskgate/apierror"
	"github.com/innovartx/deskgate/auth"
	"github.com/innovartx/deskgate/config"
	"github.com/innovartx/deskgate/ratelimit"
)

// identityKey is the rate-limit identity of a request on rt (SPEC §4):
// the client's address on `auth: none` routes and with key_by: ip, the
// app with key_by: app when the store knows it, else the key. A
// request's key is derived once (a SHA-256 for an app or an address) and
// kept in its state for the rate limit, the quotas and the upstream's
// 429; st is nil for /budget, which has no request state (and no route
// limited per address).
func (rt *route) identityKey(st *state, id auth.Identity) ratelimit.Key {
	if st != nil && st.keyed {
		return st.key
	}
	var k ratelimit.Key
	switch {
	case rt.keyByIP:
		k = ratelimit.KeyFromAddr(st.clientIP)
	case id.AppID != "" && rt.keyBy == config.KeyByApp:
		k = ratelimit.KeyFromApp(id.AppID)
	default:
		k = ratelimit.KeyFromHash(id.Key.Hash)
	}
	if st != nil {
		st.key, st.keyed = k, true
	}
	return k
}

// shadowed records that a budget in shadow mode would have refused the
// request with code: counted and logged, then forwarded. The caller has
// consumed nothing, exactly as the refusal would not have.
func (rt *route) shadowed(st *state, code apierror.Code) *apierror.Error {
	st.shadow = code
	st.route.Shadow(string(code))
	return nil
}

// upstreamLimited answers a request whose identity the upstream itself
// told to wait on this bucket (an earlier 429 with Retry-After): 429 with
// the wait left, without asking the store or the upstream. It reports
// false when there is no such wait.
func (rt *route) upstreamLimited(st *state, lp *limitPolicy, k ratelimit.Key) (*apierror.Error, bool) {
	wait, ok := rt.g.upstream.get(lp.bucketID, k)
	if !ok {
		return nil, false
	}
	st.limitedBy = "upstream"
	h := st.w.Header()
	h["Ratelimit-Policy"] = lp.header
	if rt.limit.shadow {
		// Forwarded, and as a refusal would, it consumes nothing of the
		// local budget.
		return rt.shadowed(st, apierror.TooManyRequests), true
	}
	st.route.UpstreamLimited()
	secs := retrySeconds(wait)
	h["Retry-After"] = []string{strconv.FormatInt(secs, 10)}
	details := make([]byte, 0, 64)
	details = append(details, `{"retry_after_seconds":`...)
	details = strconv.AppendInt(details, secs, 10)
	details = append(details, `,"limited_by":"upstream"}`...)
	return &apierror.Error{Code: apierror.TooManyRequests, Details: details}, true
}

// noteUpstream429 remembers, after the upstream answered 429, until when
// it told the identity to wait (Retry-After, capped by
// rate_limit.max_upstream_retry_after). A missing or unreadable
// Retry-After is ignored.
func (rt *route) noteUpstream429(st *state, id auth.Identity) {
	g := rt.g
	if g.maxUpstreamRetry <= 0 {
		return
	}
	now := g.upstream.now()
	d, ok := parseRetryAfter(st.w.Header()["Retry-After"], now)
	if !ok {
		return
	}
	g.upstream.put(rt.limit.def.bucketID, rt.identityKey(st, id), min(d, g.maxUpstreamRetry), now)
}

// parseRetryAfter reads a Retry-After value (RFC 9110 §10.2.3):
// delta-seconds or an HTTP date. Anything else, a wait of zero, a date in
// the past, or several values is not a wait.
func parseRetryAfter(v []string, now time.Time) (time.Duration, bool) {
	if len(v) != 1 {
		return 0, false
	}
	s := strings.TrimSpace(v[0])
	if s == "" {
		return 0, false
	}
	if s[0] >= '0' && s[0] <= '9' {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			if ne, ok := err.(*strconv.NumError); ok && ne.Err == strconv.ErrRange {
				return time.Duration(1<<63 - 1), true // capped by the caller
			}
			return 0, false
		}
		if n == 0 {
			return 0, false
		}
		if n > uint64((1<<63-1)/time.Second) {
			return time.Duration(1<<63 - 1), true
		}
		return time.Duration(n) * time.Second, true
	}
	t, err := http.ParseTime(s)
	if err != nil {
		return 0, false
	}
	d := t.Sub(now)
	if d <= 0 {
		return 0, false
	}
	return d, true
}

// UpstreamLimits remembers the upstream's 429s: per bucket and identity,
// until when the upstream said to wait. It is local to one process (each
// replica learns from the 429s it proxied) and outlives reloads when
// [Options.UpstreamLimits] passes the same one to each gateway. It is
// bounded: past its size, expired entries are swept, and if none has
// expired a new wait is not remembered (the upstream answers again).
type UpstreamLimits struct {
	now func() time.Time
	// n is the number of entries held: while it is zero (no upstream
	// 429 to honour, the common case) a lookup takes no lock.
	n      atomic.Int64
	size   int
	shards [16]upShard
}

type upKey struct {
	bucket string
	k      ratelimit.Key
}

type upShard struct {
	mu sync.Mutex
	m  map[upKey]time.Time
	// sweepAt is the earliest wait's end once a full shard was swept:
	// until then no wait can have ended, so a put into the full shard
	// does not scan it again (at a million identities a scan per put
	// was a CPU cliff).
	sweepAt time.Time
}

// NewUpstreamLimits returns a store of at most size waits (100,000 when
// size is zero or less).
func NewUpstreamLimits(size int) *UpstreamLimits {
	if size <= 0 {
		size = 100_000
	}
	u := &UpstreamLimits{now: time.Now, size: max(1, size/16)}
	for i := range u.shards {
		u.shards[i].m = map[upKey]time.Time{}
	}
	return u
}

func (u *UpstreamLimits) shard(k ratelimit.Key) *upShard { return &u.shards[k[2]%16] }

// Len returns the number of waits held.
func (u *UpstreamLimits) Len() int { return int(u.n.Load()) }

// get returns the wait left for k on bucket.
func (u *UpstreamLimits) get(bucket string, k ratelimit.Key) (time.Duration, bool) {
	if u.n.Load() == 0 {
		return 0, false
	}
	s := u.shard(k)
	key := upKey{bucket, k}
	s.mu.Lock()
	until, ok := s.m[key]
	if !ok {
		s.mu.Unlock()
		return 0, false
	}
	left := until.Sub(u.now())
	if left <= 0 {
		delete(s.m, key)
		u.n.Add(-1)
		s.mu.Unlock()
		return 0, false
	}
	s.mu.Unlock()
	return left, true
}

// put remembers that k must wait d from now on bucket. A longer wait
// already held is kept.
func (u *UpstreamLimits) put(bucket string, k ratelimit.Key, d time.Duration, now time.Time) {
	until := now.Add(d)
	s := u.shard(k)
	key := upKey{bucket, k}
	s.mu.Lock()
	defer s.mu.Unlock()
	if prev, ok := s.m[key]; ok {
		if until.After(prev) {
			s.m[key] = until
		}
		return
	}
	if len(s.m) >= u.size {
		if now.Before(s.sweepAt) {
			return
		}
		var next time.Time
		for key, t := range s.m {
			if !t.After(now) {
				delete(s.m, key)
				u.n.Add(-1)
			} else if next.IsZero() || t.Before(next) {
				next = t
			}
		}
		s.sweepAt = next
		if len(s.m) >= u.size {
			return
		}
	}
	s.m[key] = until
	if until.Before(s.sweepAt) {
		s.sweepAt = until
	}
	u.n.Add(1)
}
