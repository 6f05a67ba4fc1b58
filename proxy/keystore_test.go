package proxy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/innovartx/deskgate/auth"
	"github.com/innovartx/deskgate/config"
)

func sha(key string) string { h := sha256.Sum256([]byte(key)); return hex.EncodeToString(h[:]) }

const keyStoreConfig = `
upstream: {url: "${UPSTREAM}"}
auth: {store: file, file: keys.yaml}
rate_limit:
  plans:
    pro: {tiers: [{limit: 5, window: 1s}]}
routes:
  - {pattern: "POST /api/v1/tickets", auth: public}
  - {pattern: "/api/v1/", auth: secret}
`

// TestFileKeyStore guards SPEC §3 with `auth.store: file`: the app's id
// goes upstream as X-App-Id (a client's copy never does), unknown and
// disabled keys are refused, an app's pk_ and sk_ keys share one budget
// (key_by: app), and the app's plan selects its tiers.
func TestFileKeyStore(t *testing.T) {
	h := newHarness(t, harnessOpt{yaml: keyStoreConfig, keyFile: `
apps:
  - id: app_demo
    keys:
      - sha256: ` + sha(skLive) + `
      - key: ` + pkLive + `
  - id: app_pro
    plan: pro
    keys: [{key: ` + skLive2 + `}]
  - id: app_off
    disabled: true
    keys: [{key: sk_live_DisabledDisabledDisabled01}]
`})
	r := h.do("GET", "/api/v1/tickets", "", "X-API-Key", skLive, "X-App-Id", "app_spoofed")
	if r.StatusCode != 200 {
		t.Fatalf("%d %s", r.StatusCode, r.body)
	}
	if v := h.lastHit().Header.Values("X-App-Id"); len(v) != 1 || v[0] != "app_demo" {
		t.Errorf("X-App-Id to upstream %q, want [app_demo]", v)
	}
	if !strings.Contains(h.logs.String(), `"app_id":"app_demo"`) {
		t.Error("access log lacks app_id")
	}
	h.wantError(h.do("GET", "/api/v1/tickets", "", "X-API-Key", skTest), 401, "AUTH_API_KEY_INVALID")
	h.wantError(h.do("GET", "/api/v1/tickets", "", "X-API-Key", "sk_live_UnknownUnknownUnknownUnk"), 401, "AUTH_API_KEY_INVALID")
	h.wantError(h.do("GET", "/api/v1/tickets", "", "X-API-Key", "sk_live_DisabledDisabledDisabled01"), 401, "AUTH_API_KEY_INVALID")

	// One budget for the app: the sk key used 1, the pk key gets 2 more.
	for i := range 2 {
		if r := h.do("POST", "/api/v1/tickets", "{}", "X-API-Key", pkLive); r.StatusCode != 200 {
			t.Fatalf("pk request %d: %d", i, r.StatusCode)
		}
	}
	h.wantError(h.do("GET", "/api/v1/tickets", "", "X-API-Key", skLive), 429, "TOO_MANY_REQUESTS")

	// The pro plan: 5 a second.
	for i := range 5 {
		r := h.do("GET", "/api/v1/tickets", "", "X-API-Key", skLive2)
		if r.StatusCode != 200 {
			t.Fatalf("pro request %d: %d", i, r.StatusCode)
		}
		if i == 0 && r.Header.Get("RateLimit-Policy") != `"1s";q=5;w=1` {
			t.Errorf("pro RateLimit-Policy %q", r.Header.Get("RateLimit-Policy"))
		}
	}
	h.wantError(h.do("GET", "/api/v1/tickets", "", "X-API-Key", skLive2), 429, "TOO_MANY_REQUESTS")
}

// TestRedisKeyStore guards SPEC §3 with `auth.store: redis` end to end
// (miniredis): a registered key passes with its app, a revoked one is
// refused once the cache expires, and Redis down with nothing cached is
// 503, never a pass.
func TestRedisKeyStore(t *testing.T) {
	mr := miniredis.RunT(t)
	c := redis.NewClient(&redis.Options{Addr: mr.Addr(), MaxRetries: -1, ContextTimeoutEnabled: true})
	defer c.Close()
	c.HSet(context.Background(), "deskgate:apikey:"+sha(skLive), "app", "app_r", "status", "active")
	cfg := config.Default().Auth
	cfg.Store = "redis"
	cfg.CacheTTL = config.Duration(50 * time.Millisecond)
	store := auth.NewRedisStore(auth.RedisStoreOptions{Client: c, Config: cfg, Timeout: 100 * time.Millisecond})
	h := newHarness(t, harnessOpt{keyStore: store, yaml: `
upstream: {url: "${UPSTREAM}"}
redis: {url: "redis://127.0.0.1:1"}
auth: {store: redis}
routes: [{pattern: "/api/v1/", auth: secret, rate_limit: false}]
`})
	if r := h.do("GET", "/api/v1/tickets", "", "X-API-Key", skLive); r.StatusCode != 200 {
		t.Fatalf("%d %s", r.StatusCode, r.body)
	}
	if v := h.lastHit().Header.Get("X-App-Id"); v != "app_r" {
		t.Errorf("X-App-Id %q", v)
	}
	c.HSet(context.Background(), "deskgate:apikey:"+sha(skLive), "status", "revoked")
	time.Sleep(60 * time.Millisecond)
	h.wantError(h.do("GET", "/api/v1/tickets", "", "X-API-Key", skLive), 401, "AUTH_API_KEY_INVALID")
	mr.Close()
	h.wantError(h.do("GET", "/api/v1/tickets", "", "X-API-Key", skLive2), 503, "SERVICE_UNAVAILABLE")
	if h.hitCount() != 1 {
		t.Errorf("the upstream received %d requests, want 1", h.hitCount())
	}
}

// badRecordThroughGateway is issue 13 item 9 as a client meets it: the
// key store record of skLive holds an app id with CR/LF (a header
// injection had it reached X-App-Id). Every request with that key gets
// 503 SERVICE_UNAVAILABLE in the standard shape — not 502, not forwarded,
// no budget spent — and the access log names the key by its prefix and
// the record by its hash prefix, never the full key or the bad value.
// Once the operator fixes the record the key gets its whole budget
// (limit 3 a minute), which the bad requests did not touch. lim is the
// rate limiter (nil: the harness's in-process one); beforeFix, if not nil,
// runs between the refused requests and the fix.
func badRecordThroughGateway(t *testing.T, c redis.UniversalClient, lim Limiter, beforeFix func()) {
	t.Helper()
	ctx := context.Background()
	rec := "deskgate:apikey:" + sha(skLive)
	if err := c.HSet(ctx, rec, "app", "app_x\r\nX-Evil: 1", "status", "active").Err(); err != nil {
		t.Fatal(err)
	}
	cfg := config.Default().Auth
	cfg.Store = "redis"
	cfg.NegativeCacheTTL = config.Duration(30 * time.Millisecond)
	store := auth.NewRedisStore(auth.RedisStoreOptions{Client: c, Config: cfg, Timeout: 500 * time.Millisecond})
	h := newHarness(t, harnessOpt{keyStore: store, limiter: lim, yaml: `
upstream: {url: "${UPSTREAM}"}
redis: {url: "redis://127.0.0.1:1"}
auth: {store: redis}
rate_limit: {tiers: [{limit: 3, window: 1m}]}
routes: [{pattern: "/api/v1/", auth: secret}]
`})
	for range 5 {
		r := h.do("GET", "/api/v1/tickets", "", "X-API-Key", skLive)
		h.wantError(r, 503, "SERVICE_UNAVAILABLE")
		if r.Header.Get("RateLimit") != "" {
			t.Errorf("RateLimit %q on a request refused before the limit", r.Header.Get("RateLimit"))
		}
	}
	if n := h.hitCount(); n != 0 {
		t.Fatalf("the upstream received %d requests with a bad record", n)
	}
	logs := h.logs.String()
	for _, want := range []string{
		`"code":"SERVICE_UNAVAILABLE"`,
		`"key_prefix":"sk_live_AbCd"`,
		`key store: record deskgate:apikey:` + sha(skLive)[:8] + `…: field \"app\"`,
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %s:\n%s", want, logs)
		}
	}
	for _, leak := range []string{skLive, sha(skLive), "X-Evil"} {
		if strings.Contains(logs, leak) {
			t.Errorf("log shows %q:\n%s", leak, logs)
		}
	}

	if beforeFix != nil {
		beforeFix()
	}
	// Fixed: the whole budget is there.
	if err := c.HSet(ctx, rec, "app", "app_x").Err(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // past negative_cache_ttl
	for i := range 3 {
		if r := h.do("GET", "/api/v1/tickets", "", "X-API-Key", skLive); r.StatusCode != 200 {
			t.Fatalf("request %d after the fix: %d %s (budget spent by refused requests?)", i, r.StatusCode, r.body)
		}
	}
	if v := h.lastHit().Header.Values("X-App-Id"); len(v) != 1 || v[0] != "app_x" {
		t.Errorf("X-App-Id %q", v)
	}
	h.wantError(h.do("GET", "/api/v1/tickets", "", "X-API-Key", skLive), 429, "TOO_MANY_REQUESTS")
}

// TestRedisKeyStoreBadRecord runs badRecordThroughGateway on miniredis.
func TestRedisKeyStoreBadRecord(t *testing.T) {
	mr := miniredis.RunT(t)
	c := redis.NewClient(&redis.Options{Addr: mr.Addr(), MaxRetries: -1, ContextTimeoutEnabled: true})
	defer c.Close()
	badRecordThroughGateway(t, c, nil, nil)
}
