package proxy

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/innovartx/deskgate/internal/redistest"
	"github.com/innovartx/deskgate/metrics"
	"github.com/innovartx/deskgate/ratelimit"
)

func redisLimiter(t *testing.T, srv *redistest.Server, onFailure ratelimit.OnFailure) *ratelimit.Limiter {
	t.Helper()
	l := ratelimit.NewLimiter(ratelimit.LimiterOptions{
		Redis:       ratelimit.NewRedis(srv.Client(t)),
		Local:       ratelimit.NewMemory(time.Hour),
		OnFailure:   onFailure,
		Timeout:     200 * time.Millisecond,
		HealthEvery: 20 * time.Millisecond,
		Metrics:     metrics.New(prometheus.NewRegistry(), "test"),
	})
	t.Cleanup(l.Close)
	return l
}

// TestTwoGatewaysShareRedis guards SPEC §4 across replicas: two gateways
// sharing one real Redis admit exactly 3 of a burst of 40 concurrent
// requests from one key split over both, and the upstream sees 3.
func TestTwoGatewaysShareRedis(t *testing.T) {
	srv := redistest.Start(t)
	a := newHarness(t, harnessOpt{limiter: redisLimiter(t, srv, ratelimit.FailClosed)})
	b := newHarness(t, harnessOpt{limiter: redisLimiter(t, srv, ratelimit.FailClosed)})
	var ok, limited, other atomic.Int64
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range 40 {
		h := a
		if i%2 == 1 {
			h = b
		}
		wg.Go(func() {
			req, _ := http.NewRequest("GET", h.gw.URL+"/api/v1/tickets", nil)
			req.Header.Set("X-API-Key", skLive)
			<-start
			res, err := h.gw.Client().Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			res.Body.Close()
			switch res.StatusCode {
			case 200:
				ok.Add(1)
			case 429:
				limited.Add(1)
			default:
				other.Add(1)
			}
		})
	}
	close(start)
	wg.Wait()
	if ok.Load() != 3 || limited.Load() != 37 || other.Load() != 0 {
		t.Fatalf("200: %d, 429: %d, other: %d; want 3, 37, 0", ok.Load(), limited.Load(), other.Load())
	}
	if n := a.hitCount() + b.hitCount(); n != 3 {
		t.Fatalf("the upstreams received %d requests, want 3", n)
	}
}

// TestRedisDownHTTP guards redis.on_failure as clients see it: with
// `local` no request gets a 5xx and the tiers still hold; with `deny`
// the answer is 503 SERVICE_UNAVAILABLE in the standard shape.
func TestRedisDownHTTP(t *testing.T) {
	t.Run("local", func(t *testing.T) {
		srv := redistest.Start(t)
		h := newHarness(t, harnessOpt{limiter: redisLimiter(t, srv, ratelimit.FailLocal)})
		srv.Kill()
		for i := range 5 {
			r := h.do("GET", "/api/v1/tickets", "", "X-API-Key", skLive)
			want := 200
			if i >= 3 {
				want = 429
			}
			if r.StatusCode != want {
				t.Fatalf("request %d with Redis dead: %d %s, want %d", i, r.StatusCode, r.body, want)
			}
		}
	})
	t.Run("deny", func(t *testing.T) {
		srv := redistest.Start(t)
		h := newHarness(t, harnessOpt{limiter: redisLimiter(t, srv, ratelimit.FailClosed)})
		srv.Kill()
		e := h.wantError(h.do("GET", "/api/v1/tickets", "", "X-API-Key", skLive), 503, "SERVICE_UNAVAILABLE")
		if e.Message != "Service temporairement indisponible" {
			t.Errorf("message %q", e.Message)
		}
		if h.hitCount() != 0 {
			t.Error("a request reached the upstream with on_failure: deny")
		}
	})
	t.Run("allow", func(t *testing.T) {
		srv := redistest.Start(t)
		h := newHarness(t, harnessOpt{limiter: redisLimiter(t, srv, ratelimit.FailOpen)})
		srv.Kill()
		for i := range 5 {
			r := h.do("GET", "/api/v1/tickets", "", "X-API-Key", skLive)
			if r.StatusCode != 200 {
				t.Fatalf("request %d: %d", i, r.StatusCode)
			}
			if r.Header.Get("RateLimit") != "" {
				t.Errorf("RateLimit %q with no store counting", r.Header.Get("RateLimit"))
			}
		}
	})
}

// TestRedisKeyStoreBadRecordRealRedis runs badRecordThroughGateway on a
// real redis-server that holds both the key store and the rate limits,
// and checks in Redis itself that the refused requests left no rate-limit
// state: nothing was counted before the record was fixed.
func TestRedisKeyStoreBadRecordRealRedis(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	ctx := context.Background()
	rlKeys := func() []string {
		keys, err := c.Keys(ctx, "*").Result()
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, k := range keys {
			if !strings.HasPrefix(k, "deskgate:apikey:") {
				out = append(out, k)
			}
		}
		return out
	}
	badRecordThroughGateway(t, c, redisLimiter(t, srv, ratelimit.FailClosed), func() {
		if keys := rlKeys(); len(keys) != 0 {
			t.Errorf("rate-limit state in Redis after refused requests only: %q", keys)
		}
	})
	if len(rlKeys()) == 0 {
		t.Error("no rate-limit state after the fix: the limiter did not use this Redis")
	}
}
