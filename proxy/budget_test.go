package proxy

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/innovartx/deskgate/auth"
	"github.com/innovartx/deskgate/internal/redistest"
	"github.com/innovartx/deskgate/metrics"
	"github.com/innovartx/deskgate/ratelimit"
)

const budgetConfig = `
upstream: {url: "${UPSTREAM}"}
auth: {store: file, file: keys.yaml}
rate_limit:
  tiers: [{limit: 3, window: 10s}, {limit: 5, window: 1m}]
  plans:
    pro: {tiers: [{limit: 4, window: 10s}]}
routes:
  - {pattern: "GET /health", auth: none}
  - {pattern: "GET /a", auth: secret}
  - {pattern: "GET /a2", auth: public}
  - {pattern: "GET /b", auth: secret, rate_limit: {bucket: b, tiers: [{limit: 2, window: 10s}], mode: shadow}}
  - {pattern: "GET /free", auth: secret, rate_limit: false}
`

const budgetKeys = "apps:\n" +
	"  - {id: app_pro, plan: pro, keys: [{key: " + skLive + "}]}\n" +
	"  - {id: app_std, keys: [{key: " + skLive2 + "}]}\n"

// getBudget asks the gateway's /budget handler with header.
func getBudget(t *testing.T, h *harness, target string, header ...string) (int, string, *BudgetReport) {
	t.Helper()
	req := httptest.NewRequest("GET", target, nil)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Add(header[i], header[i+1])
	}
	rec := httptest.NewRecorder()
	h.gateway.ServeBudget(rec, req)
	body := rec.Body.String()
	if rec.Code != 200 {
		return rec.Code, body, nil
	}
	var rep BudgetReport
	dec := json.NewDecoder(strings.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rep); err != nil {
		t.Fatalf("%v: %s", err, body)
	}
	return rec.Code, body, &rep
}

// TestBudget guards GET /budget (SPEC §10): after a scripted sequence the
// figures of every bucket the key reaches (global with its plan, the
// route bucket) match the state; 100 reads change nothing and consume
// nothing; a fresh identity gets a full budget and no entry; no answer
// holds the full key; bad keys get the gateway's 401; a query string is
// refused.
func TestBudget(t *testing.T) {
	h := newHarness(t, harnessOpt{yaml: budgetConfig, keyFile: budgetKeys})
	for range 2 {
		h.do("GET", "/a", "", "X-API-Key", skLive)
	}
	h.do("GET", "/a2", "", "X-API-Key", skLive)
	for range 3 {
		h.do("GET", "/b", "", "X-API-Key", skLive) // shadow: 2, then flagged
	}
	h.do("GET", "/health", "")

	check := func(rep *BudgetReport) {
		t.Helper()
		if rep.AppID != "app_pro" || rep.Plan != "pro" || rep.KeyBy != "app" || rep.KeyPrefix != "sk_live_AbCd" {
			t.Fatalf("identity %+v", rep)
		}
		if len(rep.Buckets) != 2 {
			t.Fatalf("buckets %+v", rep.Buckets)
		}
		g, b := rep.Buckets[0], rep.Buckets[1]
		if g.Bucket != "global" || g.Policy != "plan:pro" || g.Mode != "enforce" || strings.Join(g.Routes, ",") != "GET /a,GET /a2" {
			t.Errorf("global bucket %+v", g)
		}
		if len(g.Tiers) != 1 || g.Tiers[0].Limit != 4 || g.Tiers[0].Used != 3 || g.Tiers[0].Remaining != 1 ||
			g.Tiers[0].WindowSeconds != 10 || g.Tiers[0].ResetInSeconds != 10 || g.Tiers[0].ResetAt == "" || g.Tiers[0].NextSlotAt != "" {
			t.Errorf("global tiers %+v", g.Tiers)
		}
		if b.Bucket != "bucket:b" || b.Mode != "shadow" || len(b.Tiers) != 1 || b.Tiers[0].Used != 2 || b.Tiers[0].Remaining != 0 ||
			b.Tiers[0].NextSlotInSeconds != 10 || b.Tiers[0].NextSlotAt == "" {
			t.Errorf("bucket b %+v", b)
		}
		if rep.Note == "" {
			t.Error("no note about the per-IP route")
		}
		if rep.Quotas == nil {
			t.Error("quotas is null, want []")
		}
	}
	_, first, rep := getBudget(t, h, "/budget", "X-API-Key", skLive)
	if rep == nil {
		t.Fatalf("no report: %s", first)
	}
	check(rep)
	entries := h.store.Len()
	for range 100 {
		_, body, rep := getBudget(t, h, "/budget", "X-API-Key", skLive)
		if rep == nil {
			t.Fatalf("no report: %s", body)
		}
		check(rep)
	}
	// Reading consumed nothing: exactly one more fits the plan's tier.
	if r := h.do("GET", "/a", "", "X-API-Key", skLive); r.StatusCode != 200 {
		t.Fatalf("after 100 reads: %d", r.StatusCode)
	}
	if r := h.do("GET", "/a", "", "X-API-Key", skLive); r.StatusCode != 429 {
		t.Fatalf("after 100 reads, the 5th: %d", r.StatusCode)
	}

	// A fresh identity: full budgets, no entry created.
	_, body, rep := getBudget(t, h, "/budget", "X-API-Key", skLive2)
	if rep == nil {
		t.Fatalf("no report: %s", body)
	}
	if rep.AppID != "app_std" || rep.Plan != "" || rep.Buckets[0].Policy != "global" || len(rep.Buckets[0].Tiers) != 2 {
		t.Fatalf("fresh: %s", body)
	}
	for _, b := range rep.Buckets {
		for _, tb := range b.Tiers {
			if tb.Used != 0 || tb.Remaining != tb.Limit || tb.ResetAt != "" {
				t.Errorf("fresh %s %s: %+v", b.Bucket, tb.Name, tb)
			}
		}
	}
	if n := h.store.Len(); n != entries {
		t.Errorf("%d entries before, %d after reading a fresh identity", entries, n)
	}

	// Bad keys answer as the gateway does; the key never in the answer.
	for _, c := range []struct {
		header []string
		status int
		code   string
	}{
		{nil, 401, "AUTH_API_KEY_MISSING"},
		{[]string{"X-API-Key", "sk_live_NotAKeyOfAnyAppAtAllXYZ12"}, 401, "AUTH_API_KEY_INVALID"},
		{[]string{"X-API-Key", "garbage"}, 401, "AUTH_API_KEY_INVALID"},
	} {
		status, body, _ := getBudget(t, h, "/budget", c.header...)
		if status != c.status || !strings.Contains(body, c.code) {
			t.Errorf("%v: %d %s, want %d %s", c.header, status, body, c.status, c.code)
		}
	}
	status, body, _ := getBudget(t, h, "/budget?key="+skLive, "X-API-Key", skLive)
	if status != http.StatusBadRequest {
		t.Errorf("key in the URL: %d %s", status, body)
	}
	for _, out := range []string{first, body, h.logs.String()} {
		for _, k := range []string{skLive, skLive2, skLive[:20]} {
			if strings.Contains(out, k) {
				t.Errorf("an answer holds the key %q: %s", k, out)
			}
		}
	}
}

// TestBudgetUpstreamWait: a wait from the upstream's 429 shows on its
// bucket.
func TestBudgetUpstreamWait(t *testing.T) {
	h := newHarness(t, harnessOpt{yaml: budgetConfig, keyFile: budgetKeys})
	h.gateway.upstream.put("global", h.gateway.routes[1].identityKey(nil, identityOf(t, h, skLive)), 30*time.Second, time.Now())
	_, body, rep := getBudget(t, h, "/budget", "X-API-Key", skLive)
	if rep == nil || rep.Buckets[0].UpstreamRetryAfter < 29 || rep.Buckets[1].UpstreamRetryAfter != 0 {
		t.Fatalf("%s", body)
	}
}

func identityOf(t *testing.T, h *harness, key string) (id authIdentity) {
	t.Helper()
	id, e := h.gateway.auth.Authenticate(t.Context(), []string{key}, authPublicOK)
	if e != nil {
		t.Fatal(e)
	}
	return id
}

type authIdentity = auth.Identity

const authPublicOK = auth.PublicOK

// budgetQuotaConfig is budgetConfig with a route and two quotas: tickets,
// 3 a month (5 for the pro plan), and a shadow one on GET /a.
const budgetQuotaConfig = budgetConfig + `  - {pattern: "POST /t", auth: secret, rate_limit: {bucket: t, tiers: [{limit: 100, window: 10s}]}}
quotas:
  - {name: tickets, match: "POST /t", limit: 3, plans: {pro: 5}}
  - {name: watched, match: "GET /a", limit: 100, mode: shadow}
`

// TestBudgetQuotas guards the quotas of GET /budget (SPEC §9, §10): each
// quota that counts the identity, with its plan's limit, used, reserved,
// remaining and the month's end; reading consumes nothing, and reading a
// fresh identity creates nothing — no in-process entry, no Redis key.
func TestBudgetQuotas(t *testing.T) {
	for _, name := range []string{"memory", "redis-server"} {
		t.Run(name, func(t *testing.T) {
			o := harnessOpt{yaml: budgetQuotaConfig, keyFile: budgetKeys, upstream: statusUpstream()}
			var client *redis.Client
			if name == "redis-server" {
				client = redistest.Start(t).Client(t)
				l := ratelimit.NewLimiter(ratelimit.LimiterOptions{
					Redis:   ratelimit.NewRedis(client),
					Local:   ratelimit.NewMemory(time.Hour),
					Timeout: time.Second,
					Metrics: metrics.New(prometheus.NewRegistry(), "test"),
				})
				t.Cleanup(l.Close)
				o.limiter = l
			}
			h := newHarness(t, o)
			for range 2 {
				if res := h.do("POST", "/t", "", "X-API-Key", skLive); res.StatusCode != 200 {
					t.Fatalf("POST /t: %d", res.StatusCode)
				}
			}
			now := time.Now().UTC()
			next := time.Date(now.Year(), now.Month()+1, 1, 0, 0, 0, 0, time.UTC)
			var rep *BudgetReport
			for range 100 { // settling ends after the answer
				var body string
				if _, body, rep = getBudget(t, h, "/budget", "X-API-Key", skLive); rep == nil {
					t.Fatalf("no report: %s", body)
				}
				if len(rep.Quotas) == 2 && rep.Quotas[0].Reserved+rep.Quotas[1].Reserved == 0 {
					break
				}
				time.Sleep(5 * time.Millisecond)
			}
			if len(rep.Quotas) != 2 {
				t.Fatalf("quotas %+v", rep.Quotas)
			}
			tq, wq := rep.Quotas[0], rep.Quotas[1]
			if tq.Name == "watched" {
				tq, wq = wq, tq
			}
			store := "memory"
			if name == "redis-server" {
				store = "redis"
			}
			want := QuotaBudget{Name: "tickets", Match: "POST /t", Mode: "enforce", Limit: 5, Used: 2, Remaining: 3,
				ResetsAt: next.Format(time.RFC3339), ResetInSeconds: tq.ResetInSeconds, Store: store}
			if tq != want || tq.ResetInSeconds <= 0 || tq.ResetInSeconds > int64(next.Sub(now)/time.Second)+1 {
				t.Errorf("tickets %+v\nwant %+v", tq, want)
			}
			if wq.Name != "watched" || wq.Mode != "shadow" || wq.Limit != 100 || wq.Used != 0 || wq.Remaining != 100 {
				t.Errorf("watched %+v", wq)
			}
			for range 50 {
				getBudget(t, h, "/budget", "X-API-Key", skLive)
			}
			// Reading consumed nothing: exactly three more fit.
			for i := range 3 {
				if res := h.do("POST", "/t", "", "X-API-Key", skLive); res.StatusCode != 200 {
					t.Fatalf("after the reads, request %d: %d", i, res.StatusCode)
				}
			}
			h.wantError(h.do("POST", "/t", "", "X-API-Key", skLive), 403, "PLAN_LIMIT_REACHED")

			// A fresh identity: the default plan's limit, nothing used,
			// nothing created.
			entries := func() any {
				if client == nil {
					return h.store.QuotaLen()
				}
				ks, err := client.Keys(context.Background(), "*").Result()
				if err != nil {
					t.Fatal(err)
				}
				slices.Sort(ks)
				return strings.Join(ks, " ")
			}
			before := entries()
			_, body, fresh := getBudget(t, h, "/budget", "X-API-Key", skLive2)
			if fresh == nil {
				t.Fatalf("no report: %s", body)
			}
			for _, q := range fresh.Quotas {
				if q.Name == "tickets" && (q.Limit != 3 || q.Used != 0 || q.Reserved != 0 || q.Remaining != 3) {
					t.Errorf("fresh tickets %+v", q)
				}
			}
			if after := entries(); after != before {
				t.Errorf("reading a fresh identity created state: before %v, after %v", before, after)
			}
		})
	}
}
