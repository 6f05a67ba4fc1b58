package proxy

import (
	"encoding/json"
	"fmt"
	"net"
	"strings"
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

// shadowConfig has a global budget and a route bucket, both in mode
// {MODE}, with windows long enough for a real Redis' clock.
const shadowConfig = `
upstream: {url: "${UPSTREAM}"}
rate_limit:
  mode: {MODE}
  tiers: [{limit: 3, window: 10s}, {limit: 5, window: 1m}]
routes:
  - {pattern: "GET /a", auth: secret}
  - {pattern: "GET /b", auth: secret, rate_limit: {bucket: b, tiers: [{limit: 2, window: 10s}], mode: {MODE}}}
`

func shadowYAML(mode string) string { return strings.ReplaceAll(shadowConfig, "{MODE}", mode) }

// limitEnv is a rate-limit store with a way to move its clock.
type limitEnv struct {
	limiter Limiter
	// advance moves the store's clock (nil: it cannot, real Redis).
	advance func(time.Duration)
}

func memoryEnv(t *testing.T) limitEnv {
	c := &fakeClock{}
	c.Advance(time.Hour)
	m := ratelimit.NewMemory(time.Hour, ratelimit.WithClock(c.Now))
	t.Cleanup(func() { m.Close() })
	return limitEnv{m, c.Advance}
}

func miniredisEnv(t *testing.T) (limitEnv, *miniredis.Miniredis) {
	mr := miniredis.RunT(t)
	client := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { client.Close() })
	c := &fakeClock{}
	at := time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)
	mr.SetTime(at)
	l := ratelimit.NewLimiter(ratelimit.LimiterOptions{
		Redis:   ratelimit.NewRedis(client),
		Local:   ratelimit.NewMemory(time.Hour),
		Timeout: time.Second,
		Metrics: metrics.New(prometheus.NewRegistry(), "test"),
		Clock:   c.Now, // the deny cache's clock moves with miniredis'
	})
	t.Cleanup(l.Close)
	return limitEnv{l, func(d time.Duration) {
		at = at.Add(d)
		mr.SetTime(at)
		mr.FastForward(d)
		c.Advance(d)
	}}, mr
}

func realRedisEnv(t *testing.T, srv *redistest.Server) limitEnv {
	return limitEnv{limiter: redisLimiter(t, srv, ratelimit.FailClosed)}
}

// outcome is what one request of a scripted sequence got.
type outcome struct {
	refused   bool   // 429 under enforce, "shadow" in the log under shadow
	rateLimit string // the RateLimit header
}

// shadowStep is a pause then requests to a path.
type shadowStep struct {
	after time.Duration
	path  string
	n     int
}

// shadowScript crosses the global budget's two tiers and the route
// bucket's, with refusals in between that must consume nothing.
var shadowScript = []shadowStep{
	{0, "/a", 4}, {0, "/b", 3}, // a: 3 then refused; b: 2 then refused
	{11 * time.Second, "/a", 3}, {0, "/b", 1}, // a: 2 (5 in 1m) then refused
	{50 * time.Second, "/a", 4}, // the first 3 left the minute at 60s
}

// runShadowScript runs the script against a gateway in mode on env and
// checks what each mode must show; it returns the outcomes.
func runShadowScript(t *testing.T, env limitEnv, mode string, steps []shadowStep) []outcome {
	t.Helper()
	h := newHarness(t, harnessOpt{yaml: shadowYAML(mode), limiter: env.limiter})
	var out []outcome
	i := 0
	for _, s := range steps {
		if s.after > 0 {
			env.advance(s.after)
		}
		for range s.n {
			i++
			id := fmt.Sprintf("req-%s-%d", mode, i)
			r := h.do("GET", s.path, "", "X-API-Key", skLive, "X-Request-Id", id)
			line := logLine(t, h, id)
			o := outcome{rateLimit: r.Header.Get("RateLimit")}
			switch mode {
			case "enforce":
				o.refused = r.StatusCode == 429
				if !o.refused && r.StatusCode != 200 {
					t.Fatalf("%s: status %d %s", id, r.StatusCode, r.body)
				}
				if _, ok := line["shadow"]; ok {
					t.Errorf("%s: enforce mode logged shadow: %v", id, line)
				}
			case "shadow":
				if r.StatusCode != 200 {
					t.Fatalf("%s: shadow mode answered %d %s", id, r.StatusCode, r.body)
				}
				o.refused = line["shadow"] == "TOO_MANY_REQUESTS"
				if ra := r.Header.Get("Retry-After"); ra != "" {
					t.Errorf("%s: shadow response with Retry-After %q", id, ra)
				}
				if r.Header.Get("RateLimit-Policy") == "" {
					t.Errorf("%s: no RateLimit-Policy", id)
				}
			}
			out = append(out, o)
		}
	}
	refused := 0
	for _, o := range out {
		if o.refused {
			refused++
		}
	}
	if mode == "shadow" {
		if n := h.hitCount(); n != len(out) {
			t.Errorf("shadow: the upstream got %d of %d requests", n, len(out))
		}
		got := testutil.ToFloat64(h.metrics.ShadowRejections.WithLabelValues("GET /a", "TOO_MANY_REQUESTS")) +
			testutil.ToFloat64(h.metrics.ShadowRejections.WithLabelValues("GET /b", "TOO_MANY_REQUESTS"))
		if int(got) != refused {
			t.Errorf("deskgate_shadow_rejections_total = %v, want %d", got, refused)
		}
		if n := testutil.ToFloat64(h.metrics.Rejections.WithLabelValues("GET /a", "TOO_MANY_REQUESTS")); n != 0 {
			t.Errorf("shadow mode counted %v real rejections", n)
		}
	} else if n := h.hitCount(); n != len(out)-refused {
		t.Errorf("enforce: the upstream got %d requests, want %d", n, len(out)-refused)
	}
	return out
}

// logLine returns the access-log line of request id, decoded.
func logLine(t *testing.T, h *harness, id string) map[string]any {
	t.Helper()
	for _, l := range strings.Split(h.logs.String(), "\n") {
		if strings.Contains(l, `"request_id":"`+id+`"`) && strings.Contains(l, `"msg":"request"`) {
			var m map[string]any
			if err := json.Unmarshal([]byte(l), &m); err != nil {
				t.Fatalf("log line %q: %v", l, err)
			}
			return m
		}
	}
	t.Fatalf("no access-log line for %s in:\n%s", id, h.logs.String())
	return nil
}

// TestShadowDecidesAsEnforce guards SPEC §10's shadow mode: on one
// scripted sequence, shadow refuses nothing yet flags exactly the requests
// enforce refuses (a flagged request consumes nothing, as a refusal), with
// the same RateLimit headers and no Retry-After, in process, on miniredis
// and on a real Redis.
func TestShadowDecidesAsEnforce(t *testing.T) {
	check := func(t *testing.T, enforce, shadow []outcome, headers bool) {
		t.Helper()
		want := 0
		for i := range enforce {
			if enforce[i].refused {
				want++
			}
			if enforce[i].refused != shadow[i].refused {
				t.Errorf("request %d: enforce refused=%v, shadow flagged=%v", i+1, enforce[i].refused, shadow[i].refused)
			}
			if headers && enforce[i].rateLimit != shadow[i].rateLimit {
				t.Errorf("request %d: RateLimit %q under enforce, %q under shadow", i+1, enforce[i].rateLimit, shadow[i].rateLimit)
			}
		}
		if want == 0 {
			t.Fatal("the script refused nothing: it tests nothing")
		}
		t.Logf("%d requests, %d refused by enforce and flagged by shadow", len(enforce), want)
	}
	t.Run("memory", func(t *testing.T) {
		e := runShadowScript(t, memoryEnv(t), "enforce", shadowScript)
		s := runShadowScript(t, memoryEnv(t), "shadow", shadowScript)
		check(t, e, s, true)
	})
	t.Run("miniredis", func(t *testing.T) {
		ee, _ := miniredisEnv(t)
		se, _ := miniredisEnv(t)
		e := runShadowScript(t, ee, "enforce", shadowScript)
		s := runShadowScript(t, se, "shadow", shadowScript)
		check(t, e, s, true)
	})
	t.Run("real_redis", func(t *testing.T) {
		// No clock to move: the first step of the script only.
		e := runShadowScript(t, realRedisEnv(t, redistest.Start(t)), "enforce", shadowScript[:2])
		s := runShadowScript(t, realRedisEnv(t, redistest.Start(t)), "shadow", shadowScript[:2])
		check(t, e, s, false)
	})
}

// TestShadowEnforceSwitchKeepsCounts guards a reload that switches modes:
// the policies keep their IDs, so the identity's counts carry over, and a
// denial cached by the limiter in one mode is served in the other as the
// mode of the new gateway says (refused under enforce, flagged under
// shadow) — never as the old mode's.
func TestShadowEnforceSwitchKeepsCounts(t *testing.T) {
	for _, order := range [][2]string{{"shadow", "enforce"}, {"enforce", "shadow"}} {
		t.Run(order[0]+"_then_"+order[1], func(t *testing.T) {
			env, _ := miniredisEnv(t)
			first := newHarness(t, harnessOpt{yaml: shadowYAML(order[0]), limiter: env.limiter})
			for range 3 {
				if r := first.do("GET", "/a", "", "X-API-Key", skLive); r.StatusCode != 200 {
					t.Fatalf("%d %s", r.StatusCode, r.body)
				}
			}
			// The 4th is refused (or flagged): the limiter caches the denial.
			first.do("GET", "/a", "", "X-API-Key", skLive, "X-Request-Id", "fourth")
			if l := logLine(t, first, "fourth"); order[0] == "shadow" && l["shadow"] != "TOO_MANY_REQUESTS" ||
				order[0] == "enforce" && l["status"] != float64(429) {
				t.Fatalf("4th request under %s: %v", order[0], l)
			}
			second := newHarness(t, harnessOpt{yaml: shadowYAML(order[1]), limiter: env.limiter})
			r := second.do("GET", "/a", "", "X-API-Key", skLive, "X-Request-Id", "fifth")
			l := logLine(t, second, "fifth")
			switch order[1] {
			case "enforce":
				second.wantError(r, 429, "TOO_MANY_REQUESTS")
				if r.Header.Get("Retry-After") == "" {
					t.Error("no Retry-After")
				}
			case "shadow":
				if r.StatusCode != 200 || l["shadow"] != "TOO_MANY_REQUESTS" {
					t.Fatalf("under shadow after enforce: %d, log %v", r.StatusCode, l)
				}
			}
			// The counts carried over: past the 10s tier, 2 more fit the
			// minute (5), then the next is refused again.
			env.advance(11 * time.Second)
			for i := range 3 {
				r := second.do("GET", "/a", "", "X-API-Key", skLive, "X-Request-Id", fmt.Sprint("after-", i))
				l := logLine(t, second, fmt.Sprint("after-", i))
				refused := r.StatusCode == 429 || l["shadow"] == "TOO_MANY_REQUESTS"
				if refused != (i == 2) {
					t.Fatalf("request %d after the switch: status %d, log %v", i, r.StatusCode, l)
				}
			}
		})
	}
}

// TestShadowStoreDownIsNotRefused: with redis.on_failure: deny and Redis
// gone, a shadow budget forwards and flags SERVICE_UNAVAILABLE.
func TestShadowStoreDownIsNotRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close() // connecting is refused
	client := redis.NewClient(&redis.Options{Addr: dead, MaxRetries: -1})
	t.Cleanup(func() { client.Close() })
	l := ratelimit.NewLimiter(ratelimit.LimiterOptions{
		Redis:     ratelimit.NewRedis(client),
		Local:     ratelimit.NewMemory(time.Hour),
		OnFailure: ratelimit.FailClosed,
		Timeout:   100 * time.Millisecond,
		Metrics:   metrics.New(prometheus.NewRegistry(), "test"),
	})
	t.Cleanup(l.Close)
	h := newHarness(t, harnessOpt{yaml: shadowYAML("shadow"), limiter: l})
	r := h.do("GET", "/a", "", "X-API-Key", skLive, "X-Request-Id", "down")
	if r.StatusCode != 200 {
		t.Fatalf("status %d %s", r.StatusCode, r.body)
	}
	if line := logLine(t, h, "down"); line["shadow"] != "SERVICE_UNAVAILABLE" || line["error"] == nil {
		t.Errorf("log %v: want shadow SERVICE_UNAVAILABLE and the error", line)
	}
}

// TestShadowTextLog: the text access log carries shadow= too.
func TestShadowTextLog(t *testing.T) {
	var buf syncBuffer
	st := &state{shadow: "TOO_MANY_REQUESTS", limitedBy: "upstream"}
	st.route = metrics.New(prometheus.NewRegistry(), "t").ForRoute("GET /a", nil)
	for _, text := range []bool{false, true} {
		a := &accessWriter{w: &buf, level: nil, text: text}
		a.write(st, "GET", "/a", 200, 0, time.Millisecond)
	}
	out := buf.String()
	for _, want := range []string{`"shadow":"TOO_MANY_REQUESTS"`, `"limited_by":"upstream"`, `shadow=TOO_MANY_REQUESTS`, `limited_by=upstream`} {
		if !strings.Contains(out, want) {
			t.Errorf("no %s in %s", want, out)
		}
	}
}
