package proxy

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/innovartx/deskgate/internal/redistest"
	"github.com/innovartx/deskgate/metrics"
	"github.com/innovartx/deskgate/ratelimit"
)

// quotaConfig has a tickets quota of 3 a month (1 for the free plan's
// key file apps), a generous rate limit, and a 300ms upstream timeout.
const quotaConfig = `
upstream: {url: "${UPSTREAM}", timeout: 300ms}
rate_limit:
  tiers: [{limit: 1000, window: 1s}]
routes:
  - {pattern: "GET /api/v1/health", auth: none, rate_limit: false}
  - {pattern: "POST /api/v1/tickets", auth: public}
  - {pattern: "/api/v1/", auth: secret}
  - {pattern: "POST /api/v1/limited", auth: secret, rate_limit: {bucket: tight, tiers: [{limit: 1, window: 1m}]}}
quotas:
  - {name: tickets, match: "POST /api/v1/tickets", limit: 3}
  - {name: limited, match: "POST /api/v1/limited", limit: 5}
`

// statusUpstream answers the status named by the X-Test-Status header
// (200 when absent), after X-Test-Sleep.
func statusUpstream() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if d, err := time.ParseDuration(r.Header.Get("X-Test-Sleep")); err == nil {
			select {
			case <-time.After(d):
			case <-r.Context().Done():
				return
			}
		}
		code := 200
		if s := r.Header.Get("X-Test-Status"); s != "" {
			code, _ = strconv.Atoi(s)
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		w.Write([]byte(`{"ok":true}`))
	})
}

func keyOf(key string) ratelimit.Key { return ratelimit.KeyFromHash(sha256.Sum256([]byte(key))) }

var ticketsQuota = ratelimit.NewQuota("tickets")

func (h *harness) quotaUsed(key string) (used, reserved int64) {
	return h.store.QuotaUsed(ticketsQuota, keyOf(key))
}

// waitQuota waits (bounded) for the count to settle at used, with nothing
// reserved: settling runs after the client has its answer.
func (h *harness) waitQuota(key string, used int64) {
	h.t.Helper()
	var u, r int64
	for range 200 {
		if u, r = h.quotaUsed(key); u == used && r == 0 {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	h.t.Fatalf("quota used %d reserved %d, want %d and 0", u, r, used)
}

func quotaCount(m *metrics.Metrics, quota, result string) float64 {
	return testutil.ToFloat64(m.QuotaReservations.WithLabelValues(quota, result))
}

// TestQuotaRefusal: SPEC §9 — three 2xx consume the month's three
// slots; the fourth is 403 PLAN_LIMIT_REACHED with its details, never
// reaches the upstream, and every answer carries the quota in RateLimit
// and RateLimit-Policy.
func TestQuotaRefusal(t *testing.T) {
	h := newHarness(t, harnessOpt{yaml: quotaConfig, upstream: statusUpstream()})
	now := time.Now().UTC()
	next := time.Date(now.Year(), now.Month()+1, 1, 0, 0, 0, 0, time.UTC)
	monthSecs := strconv.FormatInt(int64(next.Sub(time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC))/time.Second), 10)
	for i := range 3 {
		res := h.do("POST", "/api/v1/tickets", `{}`, "X-API-Key", pkLive)
		if res.StatusCode != 200 {
			t.Fatalf("request %d: %d %s", i, res.StatusCode, res.body)
		}
		if got, want := res.Header.Get("RateLimit-Policy"), `"1s";q=1000;w=1, "tickets";q=3;w=`+monthSecs; got != want {
			t.Errorf("RateLimit-Policy %q, want %q", got, want)
		}
		rl := res.Header.Get("RateLimit")
		if !strings.HasPrefix(rl, `"1s";r=`) || !strings.Contains(rl, `, "tickets";r=`+strconv.Itoa(2-i)+`;t=`) {
			t.Errorf("RateLimit %q", rl)
		}
	}
	h.waitQuota(pkLive, 3)
	hits := h.hitCount()
	res := h.do("POST", "/api/v1/tickets", `{}`, "X-API-Key", pkLive)
	e := h.wantError(res, 403, "PLAN_LIMIT_REACHED")
	if e.Message != "Quota mensuel atteint pour votre offre" {
		t.Errorf("message %q", e.Message)
	}
	var details map[string]any
	if err := json.Unmarshal(e.Details, &details); err != nil {
		t.Fatal(err)
	}
	if details["quota"] != "tickets" || details["limit"] != float64(3) || details["resets_at"] != next.Format(time.RFC3339) {
		t.Errorf("details %s", e.Details)
	}
	if !strings.Contains(res.Header.Get("RateLimit"), `"tickets";r=0;t=`) {
		t.Errorf("RateLimit on the refusal: %q", res.Header.Get("RateLimit"))
	}
	if h.hitCount() != hits {
		t.Error("a refused request reached the upstream")
	}
	// Another identity, and requests the quota does not match, pass.
	if res := h.do("POST", "/api/v1/tickets", `{}`, "X-API-Key", skLive2); res.StatusCode != 200 {
		t.Errorf("other key: %d", res.StatusCode)
	}
	if res := h.do("GET", "/api/v1/tickets", "", "X-API-Key", skLive); res.StatusCode != 200 || strings.Contains(res.Header.Get("RateLimit-Policy"), "tickets") {
		t.Errorf("GET: %d, RateLimit-Policy %q", res.StatusCode, res.Header.Get("RateLimit-Policy"))
	}
	if !strings.Contains(h.logs.String(), `"code":"PLAN_LIMIT_REACHED","quota":"tickets"`) {
		t.Errorf("no quota field on the refusal's access log line:\n%s", h.logs)
	}
	if quotaCount(h.metrics, "tickets", "committed") != 4 || quotaCount(h.metrics, "tickets", "refused") != 1 {
		t.Errorf("metrics: committed %v refused %v", quotaCount(h.metrics, "tickets", "committed"), quotaCount(h.metrics, "tickets", "refused"))
	}
}

// TestQuotaRateLimitFirst: a request refused by the rate limit (429)
// consumes no quota.
func TestQuotaRateLimitFirst(t *testing.T) {
	h := newHarness(t, harnessOpt{yaml: quotaConfig, upstream: statusUpstream()})
	if res := h.do("POST", "/api/v1/limited", "", "X-API-Key", skLive); res.StatusCode != 200 {
		t.Fatalf("first: %d", res.StatusCode)
	}
	for range 3 {
		h.wantError(h.do("POST", "/api/v1/limited", "", "X-API-Key", skLive), 429, "TOO_MANY_REQUESTS")
	}
	q := ratelimit.NewQuota("limited")
	var u, r int64
	for range 100 {
		if u, r = h.store.QuotaUsed(q, keyOf(skLive)); u == 1 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if u != 1 || r != 0 {
		t.Errorf("used %d reserved %d after one 200 and three 429, want 1 and 0", u, r)
	}
}

// TestQuotaReleases: only a 2xx consumes: 400, 500, an upstream timeout
// (504), a client that goes away and a panic in the exchange give the
// slot back.
func TestQuotaReleases(t *testing.T) {
	var panics atomic.Bool
	base := http.DefaultTransport.(*http.Transport).Clone()
	base.ResponseHeaderTimeout = 300 * time.Millisecond // the route's timeout
	t.Cleanup(base.CloseIdleConnections)
	tr := roundTripFunc(func(r *http.Request) (*http.Response, error) {
		if panics.Load() {
			panic("boom")
		}
		return base.RoundTrip(r)
	})
	h := newHarness(t, harnessOpt{yaml: quotaConfig, upstream: statusUpstream(), transport: tr})
	h.wantError(h.do("POST", "/api/v1/tickets", "", "X-API-Key", pkLive, "X-Test-Status", "400"), 400, "VALIDATION_ERROR")
	h.waitQuota(pkLive, 0)
	h.wantError(h.do("POST", "/api/v1/tickets", "", "X-API-Key", pkLive, "X-Test-Status", "500"), 500, "INTERNAL_ERROR")
	h.waitQuota(pkLive, 0)
	h.wantError(h.do("POST", "/api/v1/tickets", "", "X-API-Key", pkLive, "X-Test-Sleep", "1s"), 504, "GATEWAY_TIMEOUT")
	h.waitQuota(pkLive, 0)

	// A client that goes away while the upstream works.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	req, _ := http.NewRequestWithContext(ctx, "POST", h.gw.URL+"/api/v1/tickets", nil)
	req.Header.Set("X-API-Key", pkLive)
	req.Header.Set("X-Test-Sleep", "250ms")
	if res, err := h.gw.Client().Do(req); err == nil {
		res.Body.Close()
		t.Fatalf("client abort: got %d", res.StatusCode)
	}
	cancel()
	h.waitQuota(pkLive, 0)

	panics.Store(true)
	h.wantError(h.do("POST", "/api/v1/tickets", "", "X-API-Key", pkLive), 500, "INTERNAL_ERROR")
	h.waitQuota(pkLive, 0)
	panics.Store(false)

	if got := quotaCount(h.metrics, "tickets", "released"); got != 5 {
		t.Errorf("released %v, want 5", got)
	}
	// All three slots are still there.
	for i := range 3 {
		if res := h.do("POST", "/api/v1/tickets", "", "X-API-Key", pkLive); res.StatusCode != 200 {
			t.Fatalf("request %d: %d", i, res.StatusCode)
		}
	}
	h.waitQuota(pkLive, 3)
	h.wantError(h.do("POST", "/api/v1/tickets", "", "X-API-Key", pkLive), 403, "PLAN_LIMIT_REACHED")
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestQuotaConcurrentBoundary: 50 concurrent requests with 5 slots left
// (limit 20, 15 used): exactly 5 reach the upstream.
func TestQuotaConcurrentBoundary(t *testing.T) {
	cfg := strings.Replace(quotaConfig, "limit: 3}", "limit: 20}", 1)
	h := newHarness(t, harnessOpt{yaml: cfg, upstream: statusUpstream()})
	for i := range 15 {
		if res := h.do("POST", "/api/v1/tickets", "", "X-API-Key", pkLive); res.StatusCode != 200 {
			t.Fatalf("request %d: %d", i, res.StatusCode)
		}
	}
	h.waitQuota(pkLive, 15)
	before := h.hitCount()
	var ok, refused atomic.Int64
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			req, _ := http.NewRequest("POST", h.gw.URL+"/api/v1/tickets", nil)
			req.Header.Set("X-API-Key", pkLive)
			req.Header.Set("X-Test-Sleep", "20ms")
			res, err := h.gw.Client().Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			res.Body.Close()
			switch res.StatusCode {
			case 200:
				ok.Add(1)
			case 403:
				refused.Add(1)
			default:
				t.Errorf("status %d", res.StatusCode)
			}
		})
	}
	wg.Wait()
	if ok.Load() != 5 || refused.Load() != 45 || h.hitCount()-before != 5 {
		t.Errorf("%d forwarded (%d upstream hits), %d refused; want exactly 5 and 45", ok.Load(), h.hitCount()-before, refused.Load())
	}
	h.waitQuota(pkLive, 20)
}

// TestQuotaShadow: SPEC §10 — a shadow quota refuses nothing: the would-be
// refusal is forwarded, consumes nothing, is counted and logged.
func TestQuotaShadow(t *testing.T) {
	cfg := strings.Replace(quotaConfig, "limit: 3}", "limit: 1, mode: shadow}", 1)
	h := newHarness(t, harnessOpt{yaml: cfg, upstream: statusUpstream()})
	for i := range 3 {
		if res := h.do("POST", "/api/v1/tickets", "", "X-API-Key", pkLive); res.StatusCode != 200 {
			t.Fatalf("request %d: %d %s", i, res.StatusCode, res.body)
		}
	}
	h.waitQuota(pkLive, 1)
	if got := testutil.ToFloat64(h.metrics.ShadowRejections.WithLabelValues("POST /api/v1/tickets", "PLAN_LIMIT_REACHED")); got != 2 {
		t.Errorf("shadow rejections %v, want 2", got)
	}
	if n := strings.Count(h.logs.String(), `"quota":"tickets","shadow":"PLAN_LIMIT_REACHED"`); n != 2 {
		t.Errorf("%d shadow log lines, want 2:\n%s", n, h.logs)
	}
	if quotaCount(h.metrics, "tickets", "refused") != 0 || quotaCount(h.metrics, "tickets", "committed") != 1 {
		t.Error("shadow: refused or committed miscounted")
	}
}

// TestQuotaRoutesWithoutQuotaCarryNone: a route whose pattern cannot
// overlap a quota's has no quota to check (and so costs nothing).
func TestQuotaRoutesWithoutQuotaCarryNone(t *testing.T) {
	h := newHarness(t, harnessOpt{yaml: quotaConfig})
	for _, rt := range h.gateway.routes {
		n := len(rt.quotas)
		want := 0
		switch rt.pattern {
		case "POST /api/v1/tickets", "/api/v1/", "POST /api/v1/limited":
			want = 1
			if rt.pattern == "/api/v1/" {
				want = 2
			}
		}
		if n != want {
			t.Errorf("%s: %d quotas, want %d", rt.pattern, n, want)
		}
	}
}

// TestQuotaTwoGatewaysShareRedis: two gateways, each with its own Limiter
// on one Redis (miniredis and a real redis-server), share one quota
// exactly.
func TestQuotaTwoGatewaysShareRedis(t *testing.T) {
	for _, name := range []string{"miniredis", "redis-server"} {
		t.Run(name, func(t *testing.T) {
			var client redis.UniversalClient
			if name == "miniredis" {
				mr := miniredis.RunT(t)
				c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
				t.Cleanup(func() { c.Close() })
				client = c
			} else {
				client = redistest.Start(t).Client(t)
			}
			newGW := func() *harness {
				l := ratelimit.NewLimiter(ratelimit.LimiterOptions{
					Redis:   ratelimit.NewRedis(client),
					Local:   ratelimit.NewMemory(time.Hour),
					Timeout: time.Second,
					Metrics: metrics.New(prometheus.NewRegistry(), "test"),
				})
				t.Cleanup(l.Close)
				return newHarness(t, harnessOpt{yaml: quotaConfig, upstream: statusUpstream(), limiter: l})
			}
			a, b := newGW(), newGW()
			want := []int{200, 200, 200, 403, 403}
			for i, w := range want {
				g := a
				if i%2 == 1 {
					g = b
				}
				if res := g.do("POST", "/api/v1/tickets", "", "X-API-Key", pkLive); res.StatusCode != w {
					t.Fatalf("request %d: %d, want %d", i, res.StatusCode, w)
				}
			}
			if a.hitCount()+b.hitCount() != 3 {
				t.Errorf("%d upstream hits, want 3", a.hitCount()+b.hitCount())
			}
			used, _, err := ratelimit.NewRedis(client).QuotaUsed(context.Background(), ticketsQuota, keyOf(pkLive))
			if err != nil || used != 3 {
				t.Errorf("used %d (%v), want 3", used, err)
			}
		})
	}
}

// TestQuotaRedisCommands measures what a quota costs in Redis (for
// BENCHMARKS.md): commands per request on a route with a quota and on one
// without, on a real redis-server, each request a round trip of its own.
// The reservation goes in the rate limit's script call (issue 15), as one
// MGET instead of the GET and one SET more; a commit is folded into the
// identity's next reservation, or appended by a later call (one APPEND):
// one round trip per request, one command more.
func TestQuotaRedisCommands(t *testing.T) {
	srv := redistest.Start(t)
	client := srv.Client(t)
	l := ratelimit.NewLimiter(ratelimit.LimiterOptions{
		Redis:   ratelimit.NewRedis(client),
		Local:   ratelimit.NewMemory(time.Hour),
		Timeout: time.Second,
		Metrics: metrics.New(prometheus.NewRegistry(), "test"),
	})
	t.Cleanup(l.Close)
	cfg := strings.Replace(quotaConfig, "limit: 3}", "limit: 1000}", 1)
	h := newHarness(t, harnessOpt{yaml: cfg, upstream: statusUpstream(), limiter: l})
	ctx := context.Background()
	// Warm: the scripts loaded.
	h.do("POST", "/api/v1/tickets", "", "X-API-Key", pkLive)
	h.do("GET", "/api/v1/customers", "", "X-API-Key", skLive)
	const n = 20
	count := func(path, method, key string) (calls map[string]int64) {
		if err := client.ConfigResetStat(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		for range n {
			if res := h.do(method, path, "", "X-API-Key", key); res.StatusCode != 200 {
				t.Fatalf("%s %s: %d", method, path, res.StatusCode)
			}
		}
		// The last commit is written by the queue's timer (settle.go).
		time.Sleep(200 * time.Millisecond)
		info, err := client.Info(ctx, "commandstats").Result()
		if err != nil {
			t.Fatal(err)
		}
		calls = map[string]int64{}
		for _, line := range strings.Split(info, "\r\n") {
			name, rest, ok := strings.Cut(strings.TrimPrefix(line, "cmdstat_"), ":calls=")
			if !ok || !strings.HasPrefix(line, "cmdstat_") || strings.HasPrefix(name, "config") || name == "info" {
				continue
			}
			v, _, _ := strings.Cut(rest, ",")
			x, _ := strconv.ParseInt(v, 10, 64)
			calls[name] = x
		}
		return calls
	}
	without := count("/api/v1/customers", "GET", skLive)
	with := count("/api/v1/tickets", "POST", pkLive)
	total := func(m map[string]int64) (s int64) {
		for _, v := range m {
			s += v
		}
		return s
	}
	// Every call is a script (a round trip each); the other commands
	// run inside them.
	t.Logf("per request: without a quota %d round trips, %.1f commands %v; with a quota %d round trips, %.1f commands %v",
		without["evalsha"]/n, float64(total(without))/n, without, with["evalsha"]/n, float64(total(with))/n, with)
	t.Logf("commands per request, with a quota / without: %.2f", float64(total(with))/float64(total(without)))
	if without["evalsha"] != n {
		t.Errorf("script calls without a quota: %d over %d requests, want 1 per request", without["evalsha"], n)
	}
	// One call per request, and a call of their own for the commits the
	// queue's timer finds (the last one's, and at most one during the
	// run): each one EVALSHA and one APPEND.
	alone := with["evalsha"] - n
	if alone < 0 || alone > 2 || with["append"] != alone || with["mget"] != n || with["set"] != 2*n || with["time"] != n || with["get"] != 0 {
		t.Errorf("with a quota: %v over %d requests; want per request EVALSHA, TIME, MGET and 2 SET, plus up to 2 calls of EVALSHA+APPEND", with, n)
	}
	if extra := total(with) - total(without) - 2*alone; extra != n {
		t.Errorf("a quota costs %d commands over %d requests (calls for commits alone aside), want one each", extra, n)
	}
}

// quotaShadowLimitConfig adds to quotaConfig a route whose rate limit is in
// shadow mode, with a quota of its own.
const quotaShadowLimitConfig = `
upstream: {url: "${UPSTREAM}", timeout: 300ms}
rate_limit:
  tiers: [{limit: 1000, window: 1s}]
routes:
  - {pattern: "POST /api/v1/tickets", auth: public}
  - {pattern: "POST /api/v1/limited", auth: secret, rate_limit: {bucket: tight, tiers: [{limit: 1, window: 1m}]}}
  - {pattern: "POST /api/v1/watched", auth: secret, rate_limit: {bucket: watched, tiers: [{limit: 1, window: 1m}], mode: shadow}}
quotas:
  - {name: tickets, match: "POST /api/v1/tickets", limit: 3}
  - {name: limited, match: "POST /api/v1/limited", limit: 5}
  - {name: watched, match: "POST /api/v1/watched", limit: 5}
`

// TestQuotaWithRateLimitInOneCall: with a Redis limiter the reservation
// rides in the rate limit's call (issue 15) and behaves as before: exact
// counts and the 403 past the limit, a 429 that consumes no quota, and a
// shadow rate limit's would-be refusal that is forwarded and so reserves
// (in a call of its own).
func TestQuotaWithRateLimitInOneCall(t *testing.T) {
	for _, name := range []string{"miniredis", "redis-server"} {
		t.Run(name, func(t *testing.T) {
			var client redis.UniversalClient
			if name == "miniredis" {
				mr := miniredis.RunT(t)
				c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
				t.Cleanup(func() { c.Close() })
				client = c
			} else {
				client = redistest.Start(t).Client(t)
			}
			store := ratelimit.NewRedis(client)
			l := ratelimit.NewLimiter(ratelimit.LimiterOptions{
				Redis:   store,
				Local:   ratelimit.NewMemory(time.Hour),
				Timeout: time.Second,
				Metrics: metrics.New(prometheus.NewRegistry(), "test"),
			})
			t.Cleanup(l.Close)
			h := newHarness(t, harnessOpt{yaml: quotaShadowLimitConfig, upstream: statusUpstream(), limiter: l})
			ctx := context.Background()
			used := func(q string, key string) (int64, int64) {
				t.Helper()
				var u, r int64
				var err error
				for range 100 { // settling ends after the answer
					if u, r, err = store.QuotaUsed(ctx, ratelimit.NewQuota(q), keyOf(key)); err == nil && r == 0 {
						break
					}
					time.Sleep(5 * time.Millisecond)
				}
				if err != nil {
					t.Fatal(err)
				}
				return u, r
			}
			for i := range 3 {
				res := h.do("POST", "/api/v1/tickets", "", "X-API-Key", pkLive)
				if res.StatusCode != 200 || !strings.Contains(res.Header.Get("RateLimit"), `"tickets";r=`+strconv.Itoa(2-i)) {
					t.Fatalf("request %d: %d RateLimit %q", i, res.StatusCode, res.Header.Get("RateLimit"))
				}
			}
			h.wantError(h.do("POST", "/api/v1/tickets", "", "X-API-Key", pkLive), 403, "PLAN_LIMIT_REACHED")
			if u, r := used("tickets", pkLive); u != 3 || r != 0 {
				t.Errorf("tickets: used %d reserved %d, want 3 and 0", u, r)
			}

			if res := h.do("POST", "/api/v1/limited", "", "X-API-Key", skLive); res.StatusCode != 200 {
				t.Fatalf("limited: %d", res.StatusCode)
			}
			for range 2 {
				h.wantError(h.do("POST", "/api/v1/limited", "", "X-API-Key", skLive), 429, "TOO_MANY_REQUESTS")
			}
			if u, r := used("limited", skLive); u != 1 || r != 0 {
				t.Errorf("limited: used %d reserved %d after one 200 and two 429, want 1 and 0", u, r)
			}

			for i := range 3 {
				if res := h.do("POST", "/api/v1/watched", "", "X-API-Key", skLive); res.StatusCode != 200 {
					t.Fatalf("watched %d: %d", i, res.StatusCode)
				}
			}
			if u, r := used("watched", skLive); u != 3 || r != 0 {
				t.Errorf("watched (shadow rate limit): used %d reserved %d, want 3 and 0", u, r)
			}
		})
	}
}
