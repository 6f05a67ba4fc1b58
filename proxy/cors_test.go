package proxy

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

const widgetOrigin = "https://widget.example"

// corsConfig is the repo's policy with a cors: block: the ticket widget's
// origin allowed on public and none routes.
const corsConfig = `
upstream: {url: "${UPSTREAM}"}
cors: {allowed_origins: ["https://widget.example"], max_age: 5m}
routes:
  - {pattern: "GET /api/v1/health", auth: none, rate_limit: false}
  - {pattern: "POST /api/v1/tickets", auth: public}
  - {pattern: "GET /api/v1/tickets/{id}", auth: public, cors: false}
  - {pattern: "/api/v1/", auth: secret}
`

// upstreamWithCORS answers like an upstream with a CORS policy of its own
// (here a wrong one), which deskgate must replace on CORS routes.
func upstreamWithCORS(status int, body string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Access-Control-Allow-Origin", "https://evil.example")
		w.Header().Set("Access-Control-Allow-Credentials", "true")
		w.Header().Set("Access-Control-Expose-Headers", "X-Secret")
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(status)
		w.Write([]byte(body))
	})
}

func preflightReq(h *harness, path, origin, method, headers string) response {
	h.t.Helper()
	req, _ := http.NewRequest(http.MethodOptions, h.gw.URL+path, nil)
	req.Header.Set("Origin", origin)
	req.Header.Set("Access-Control-Request-Method", method)
	if headers != "" {
		req.Header.Set("Access-Control-Request-Headers", headers)
	}
	return h.send(req)
}

func noAllowHeaders(t *testing.T, r response) {
	t.Helper()
	for k := range r.Header {
		if strings.HasPrefix(k, "Access-Control-Allow-") {
			t.Errorf("refused preflight carries %s: %q", k, r.Header.Get(k))
		}
	}
}

// TestCORSPreflight guards SPEC §8's preflight rules.
func TestCORSPreflight(t *testing.T) {
	h := newHarness(t, harnessOpt{yaml: corsConfig})

	r := preflightReq(h, "/api/v1/tickets", widgetOrigin, "POST", "content-type,x-api-key")
	if r.StatusCode != 204 {
		t.Fatalf("allowed preflight: status %d %s", r.StatusCode, r.body)
	}
	for k, want := range map[string]string{
		"Access-Control-Allow-Origin":  widgetOrigin,
		"Access-Control-Allow-Methods": "POST",
		"Access-Control-Allow-Headers": "content-type,x-api-key",
		"Access-Control-Max-Age":       "300",
	} {
		if got := r.Header.Get(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	if v := strings.Join(r.Header.Values("Vary"), ", "); !strings.Contains(v, "Origin") {
		t.Errorf("Vary %q", v)
	}
	if r.Header.Get("X-Request-Id") == "" {
		t.Error("no X-Request-Id")
	}
	if got := r.Header.Get("Ratelimit"); got != "" {
		t.Errorf("a preflight consumed budget: RateLimit %q", got)
	}

	refused := []struct{ name, path, origin, method, headers string }{
		{"origin not allowed", "/api/v1/tickets", "https://evil.example", "POST", "x-api-key"},
		{"origin differs by scheme", "/api/v1/tickets", "http://widget.example", "POST", "x-api-key"},
		{"method the route does not accept", "/api/v1/tickets", widgetOrigin, "DELETE", "x-api-key"},
		{"secret route", "/api/v1/customers", widgetOrigin, "GET", "x-api-key"},
		{"public route with cors: false", "/api/v1/tickets/t_1", widgetOrigin, "GET", "x-api-key"},
		{"header not allowed", "/api/v1/tickets", widgetOrigin, "POST", "x-api-key,x-admin"},
		{"no route", "/nowhere", widgetOrigin, "GET", ""},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			r := preflightReq(h, tc.path, tc.origin, tc.method, tc.headers)
			if r.StatusCode != 204 {
				t.Errorf("status %d, want 204", r.StatusCode)
			}
			noAllowHeaders(t, r)
		})
	}
	if n := h.hitCount(); n != 0 {
		t.Fatalf("%d preflights reached the upstream", n)
	}
	if got := testutil.ToFloat64(h.metrics.CORSPreflights.WithLabelValues("POST /api/v1/tickets", "allowed")); got != 1 {
		t.Errorf("preflights{tickets,allowed} = %v", got)
	}
	if got := testutil.ToFloat64(h.metrics.CORSPreflights.WithLabelValues("POST /api/v1/tickets", "refused")); got != 3 {
		t.Errorf("preflights{tickets,refused} = %v", got)
	}
	// DELETE /api/v1/tickets and GET /api/v1/customers are the secret
	// catch-all's.
	if got := testutil.ToFloat64(h.metrics.CORSPreflights.WithLabelValues("/api/v1/", "refused")); got != 2 {
		t.Errorf("preflights{/api/v1/,refused} = %v", got)
	}
	if got := testutil.ToFloat64(h.metrics.CORSPreflights.WithLabelValues("unmatched", "refused")); got != 1 {
		t.Errorf("preflights{unmatched,refused} = %v", got)
	}
	if got := testutil.ToFloat64(h.metrics.Requests.WithLabelValues("POST /api/v1/tickets", "OPTIONS", "204")); got != 4 {
		t.Errorf("requests{tickets,OPTIONS,204} = %v", got)
	}
	if !strings.Contains(h.logs.String(), `"method":"OPTIONS"`) {
		t.Error("preflights not in the access log")
	}
}

// TestCORSActualResponses: every answer to an allowed origin on a CORS
// route carries Access-Control-Allow-Origin, -Expose-Headers and Vary:
// Origin — deskgate's own errors and normalised upstream errors included —
// and the upstream's Access-Control-* are replaced.
func TestCORSActualResponses(t *testing.T) {
	expose := "RateLimit, RateLimit-Policy, Retry-After, X-Request-Id"
	check := func(t *testing.T, r response, origin string) {
		t.Helper()
		if got := r.Header.Values("Access-Control-Allow-Origin"); len(got) != 1 || got[0] != origin {
			t.Errorf("Access-Control-Allow-Origin %q, want %q", got, origin)
		}
		if got := strings.Join(r.Header.Values("Access-Control-Expose-Headers"), ", "); !strings.EqualFold(got, expose) {
			t.Errorf("Access-Control-Expose-Headers %q, want %q", got, expose)
		}
		if got := strings.Join(r.Header.Values("Vary"), ", "); !strings.Contains(got, "Origin") {
			t.Errorf("Vary %q", got)
		}
		if got := r.Header.Get("Access-Control-Allow-Credentials"); got != "" {
			t.Errorf("upstream's Access-Control-Allow-Credentials kept: %q", got)
		}
	}
	h := newHarness(t, harnessOpt{yaml: corsConfig, upstream: upstreamWithCORS(500, "<h1>stack trace</h1>")})
	o := []string{"Origin", widgetOrigin}

	// deskgate's own errors.
	r := h.do("POST", "/api/v1/tickets", "{}", o...)
	h.wantError(r, 401, "AUTH_API_KEY_MISSING")
	check(t, r, widgetOrigin)
	r = h.do("POST", "/api/v1/tickets", "{}", append(o, "X-API-Key", "pk_live_short")...)
	h.wantError(r, 401, "AUTH_API_KEY_INVALID")
	check(t, r, widgetOrigin)
	for range 3 {
		r = h.do("POST", "/api/v1/tickets", "{}", append(o, "X-API-Key", pkLive)...)
		h.wantError(r, 500, "INTERNAL_ERROR") // normalised upstream error
		check(t, r, widgetOrigin)
	}
	r = h.do("POST", "/api/v1/tickets", "{}", append(o, "X-API-Key", pkLive)...)
	h.wantError(r, 429, "TOO_MANY_REQUESTS")
	check(t, r, widgetOrigin)
	if r.Header.Get("Retry-After") == "" {
		t.Error("429 without Retry-After")
	}
	// HEAD: the headers, no body.
	h.clock.Advance(time.Minute)
	req, _ := http.NewRequest(http.MethodHead, h.gw.URL+"/api/v1/health", nil)
	req.Header.Set("Origin", widgetOrigin)
	r = h.send(req)
	check(t, r, widgetOrigin)

	// An origin not allowed: no Access-Control-Allow-Origin at all, not
	// even the upstream's.
	r = h.do("GET", "/api/v1/health", "", "Origin", "https://evil.example")
	if got := r.Header.Values("Access-Control-Allow-Origin"); len(got) != 0 {
		t.Errorf("origin not allowed got Access-Control-Allow-Origin %q", got)
	}
	// A secret route and a cors: false route: not CORS routes; the
	// upstream's headers are its own business there.
	r = h.do("GET", "/api/v1/customers", "", append(o, "X-API-Key", skLive)...)
	if got := r.Header.Get("Access-Control-Allow-Origin"); got == widgetOrigin {
		t.Error("secret route answered with the CORS policy")
	}
	r = h.do("GET", "/api/v1/customers", "", o...)
	h.wantError(r, 401, "AUTH_API_KEY_MISSING")
	if got := r.Header.Get("Access-Control-Allow-Origin"); got != "" {
		t.Errorf("secret route's own error carries Access-Control-Allow-Origin %q", got)
	}

	t.Run("star", func(t *testing.T) {
		h := newHarness(t, harnessOpt{yaml: strings.Replace(corsConfig, `["https://widget.example"]`, `["*"]`, 1)})
		r := h.do("POST", "/api/v1/tickets", "{}", "Origin", "https://anyone.example")
		h.wantError(r, 401, "AUTH_API_KEY_MISSING")
		check(t, r, "*")
		p := preflightReq(h, "/api/v1/tickets", "https://anyone.example", "POST", "x-api-key")
		if got := p.Header.Get("Access-Control-Allow-Origin"); got != "*" {
			t.Errorf("preflight with *: %q", got)
		}
	})

	t.Run("off", func(t *testing.T) {
		// No cors block: preflights are ordinary requests (here the
		// secret catch-all's, which wants a key).
		h := newHarness(t, harnessOpt{})
		p := preflightReq(h, "/api/v1/tickets", widgetOrigin, "POST", "x-api-key")
		h.wantError(p, 401, "AUTH_API_KEY_MISSING")
		noAllowHeaders(t, p)
	})
}
