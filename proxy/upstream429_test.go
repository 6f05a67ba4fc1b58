package proxy

import (
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/innovartx/deskgate/ratelimit"
)

const upstream429Config = `
upstream: {url: "${UPSTREAM}"}
rate_limit:
  tiers: [{limit: 100, window: 1m}]
  max_upstream_retry_after: {CAP}
  mode: {MODE}
routes:
  - {pattern: "GET /a", auth: secret}
  - {pattern: "GET /other", auth: secret, rate_limit: {bucket: other, tiers: [{limit: 100, window: 1m}]}}
`

// upstream429Harness serves an upstream that answers 429 with retryAfter
// while *limited is set, 200 otherwise; the gateway's clock is clock.
func upstream429Harness(t *testing.T, retryAfter, capacity, mode string, limited *atomic.Bool, clock *time.Time) *harness {
	yml := strings.NewReplacer("{CAP}", capacity, "{MODE}", mode).Replace(upstream429Config)
	h := newHarness(t, harnessOpt{yaml: yml, upstream: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if limited.Load() {
			if retryAfter != "" {
				w.Header().Set("Retry-After", retryAfter)
			}
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(429)
			io.WriteString(w, `{"code":"TOO_MANY_REQUESTS","message":"slow down"}`)
			return
		}
		io.WriteString(w, `{"ok":true}`)
	})})
	h.gateway.upstream.now = func() time.Time { return *clock }
	return h
}

// TestUpstream429 guards SPEC §10's upstream 429: after the upstream
// answered an identity 429 with Retry-After (seconds or an HTTP date),
// deskgate answers that identity's next requests to the same bucket itself
// — 429, the remaining Retry-After, logged limited_by=upstream, counted —
// without calling the upstream, until then and at most
// max_upstream_retry_after; other identities and buckets go through, and a
// garbage Retry-After is ignored.
func TestUpstream429(t *testing.T) {
	base := time.Date(2027, 1, 1, 12, 0, 0, 0, time.UTC)
	cases := []struct {
		name, retryAfter, cap string
		wantSecs              int64 // Retry-After deskgate answers first; 0: none remembered
	}{
		{"seconds", "30", "60s", 30},
		{"http_date", base.Add(20 * time.Second).Format(http.TimeFormat), "60s", 20},
		{"capped", "3600", "60s", 60},
		{"huge_capped", "99999999999999999999999", "60s", 60},
		{"garbage", "soon", "60s", 0},
		{"garbage_unit", "30s", "60s", 0},
		{"negative", "-5", "60s", 0},
		{"zero", "0", "60s", 0},
		{"date_in_past", base.Add(-time.Minute).Format(http.TimeFormat), "60s", 0},
		{"missing", "", "60s", 0},
		{"turned_off", "30", "0s", 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var limited atomic.Bool
			clock := base
			h := upstream429Harness(t, c.retryAfter, c.cap, "enforce", &limited, &clock)
			limited.Store(true)
			r := h.do("GET", "/a", "", "X-API-Key", skLive)
			if r.StatusCode != 429 {
				t.Fatalf("upstream's 429 answered %d", r.StatusCode)
			}
			limited.Store(false)
			hits := h.hitCount()
			clock = clock.Add(time.Second)
			r = h.do("GET", "/a", "", "X-API-Key", skLive, "X-Request-Id", "next")
			if c.wantSecs == 0 {
				if r.StatusCode != 200 || h.hitCount() != hits+1 {
					t.Fatalf("Retry-After %q remembered: %d %s", c.retryAfter, r.StatusCode, r.body)
				}
				if h.gateway.upstream.Len() != 0 {
					t.Errorf("%d waits held", h.gateway.upstream.Len())
				}
				return
			}
			e := h.wantError(r, 429, "TOO_MANY_REQUESTS")
			if h.hitCount() != hits {
				t.Fatal("the upstream was called")
			}
			want := c.wantSecs - 1 // one second has passed
			if ra := r.Header.Get("Retry-After"); ra != strconv.FormatInt(want, 10) {
				t.Errorf("Retry-After %q, want %d", ra, want)
			}
			if !strings.Contains(string(e.Details), `"limited_by":"upstream"`) {
				t.Errorf("details %s", e.Details)
			}
			if l := logLine(t, h, "next"); l["limited_by"] != "upstream" || l["code"] != "TOO_MANY_REQUESTS" {
				t.Errorf("log %v", l)
			}
			if n := testutil.ToFloat64(h.metrics.UpstreamRateLimited); n != 1 {
				t.Errorf("deskgate_upstream_ratelimited_total = %v", n)
			}
			if n := testutil.ToFloat64(h.metrics.Rejections.WithLabelValues("GET /a", "TOO_MANY_REQUESTS")); n != 1 {
				t.Errorf("rejections = %v", n)
			}
			// Another identity, and another bucket, go through.
			if r := h.do("GET", "/a", "", "X-API-Key", skLive2); r.StatusCode != 200 {
				t.Errorf("another key: %d", r.StatusCode)
			}
			if r := h.do("GET", "/other", "", "X-API-Key", skLive); r.StatusCode != 200 {
				t.Errorf("another bucket: %d", r.StatusCode)
			}
			// Until the wait is over, and not after.
			clock = base.Add(time.Duration(c.wantSecs)*time.Second - time.Millisecond)
			if r := h.do("GET", "/a", "", "X-API-Key", skLive); r.StatusCode != 429 || r.Header.Get("Retry-After") != "1" {
				t.Errorf("just before the end: %d Retry-After %q", r.StatusCode, r.Header.Get("Retry-After"))
			}
			clock = base.Add(time.Duration(c.wantSecs) * time.Second)
			if r := h.do("GET", "/a", "", "X-API-Key", skLive); r.StatusCode != 200 {
				t.Errorf("after the wait: %d %s", r.StatusCode, r.body)
			}
			if h.gateway.upstream.Len() != 0 {
				t.Errorf("%d waits still held", h.gateway.upstream.Len())
			}
		})
	}
}

// TestUpstream429Shadow: a bucket in shadow mode forwards what the
// upstream's Retry-After would refuse, flagged shadow and limited_by.
func TestUpstream429Shadow(t *testing.T) {
	var limited atomic.Bool
	clock := time.Now()
	h := upstream429Harness(t, "30", "60s", "shadow", &limited, &clock)
	limited.Store(true)
	h.do("GET", "/a", "", "X-API-Key", skLive)
	limited.Store(false)
	r := h.do("GET", "/a", "", "X-API-Key", skLive, "X-Request-Id", "next")
	if r.StatusCode != 200 || r.Header.Get("Retry-After") != "" {
		t.Fatalf("%d Retry-After %q", r.StatusCode, r.Header.Get("Retry-After"))
	}
	if l := logLine(t, h, "next"); l["shadow"] != "TOO_MANY_REQUESTS" || l["limited_by"] != "upstream" {
		t.Errorf("log %v", l)
	}
	if n := testutil.ToFloat64(h.metrics.UpstreamRateLimited); n != 0 {
		t.Errorf("deskgate_upstream_ratelimited_total = %v under shadow", n)
	}
}

// TestUpstreamLimitsBounded: the store never holds more than its size;
// expired waits make room.
func TestUpstreamLimitsBounded(t *testing.T) {
	u := NewUpstreamLimits(64)
	now := time.Now()
	u.now = func() time.Time { return now }
	for i := range 10_000 {
		k := ratelimit.KeyFromApp("app" + strconv.Itoa(i))
		u.put("global", k, time.Minute, now)
	}
	if n := u.Len(); n > 64 {
		t.Fatalf("%d waits held, size 64", n)
	}
	now = now.Add(2 * time.Minute)
	k := ratelimit.KeyFromApp("late")
	u.put("global", k, time.Minute, now)
	if _, ok := u.get("global", k); !ok {
		t.Error("expired waits did not make room")
	}
}
