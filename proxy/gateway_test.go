package proxy

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestOwnErrors guards SPEC §1: every error deskgate answers itself has
// its status, code, French message, Content-Type and Content-Length, and a
// rejected request never reaches the upstream.
func TestOwnErrors(t *testing.T) {
	cases := []struct {
		name    string
		method  string
		path    string
		body    string
		header  []string
		status  int
		code    string
		message string
	}{
		{"no key", "GET", "/api/v1/customers", "", nil, 401, "AUTH_API_KEY_MISSING", "Clé API manquante"},
		{"empty key", "GET", "/api/v1/customers", "", []string{"X-API-Key", ""}, 401, "AUTH_API_KEY_MISSING", "Clé API manquante"},
		{"malformed key", "GET", "/api/v1/customers", "", []string{"X-API-Key", "sk_live_short"}, 401, "AUTH_API_KEY_INVALID", "Clé API invalide"},
		{"wrong environment", "GET", "/api/v1/customers", "", []string{"X-API-Key", skTest}, 401, "AUTH_API_KEY_INVALID", "Clé API invalide"},
		{"two keys", "GET", "/api/v1/customers", "", []string{"X-API-Key", skLive, "X-API-Key", skLive2}, 401, "AUTH_API_KEY_INVALID", "Clé API invalide"},
		{"public key on secret route", "GET", "/api/v1/customers", "", []string{"X-API-Key", pkLive}, 403, "AUTH_API_KEY_FORBIDDEN", "Clé publique non autorisée sur cette route"},
		{"no route", "GET", "/other", "", []string{"X-API-Key", skLive}, 404, "NOT_FOUND", "Ressource introuvable"},
		{"trailing-slash redirect", "GET", "/api/v1", "", []string{"X-API-Key", skLive}, 404, "NOT_FOUND", "Ressource introuvable"},
		{"body over max_body_bytes", "POST", "/api/v1/customers", strings.Repeat("x", 1025), []string{"X-API-Key", skLive}, 413, "PAYLOAD_TOO_LARGE", "Requête trop volumineuse"},
		{"head without key", "HEAD", "/api/v1/customers", "", nil, 401, "AUTH_API_KEY_MISSING", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, harnessOpt{})
			r := h.do(tc.method, tc.path, tc.body, tc.header...)
			e := h.wantError(r, tc.status, tc.code)
			if tc.message != "" && e.Message != tc.message {
				t.Errorf("message %q, want %q", e.Message, tc.message)
			}
			if e.Details != nil {
				t.Errorf("unexpected details %s", e.Details)
			}
			if n := h.hitCount(); n != 0 {
				t.Errorf("the upstream received %d requests, want 0", n)
			}
			if got := testutil.ToFloat64(h.metrics.Rejections.WithLabelValues(routeOf(tc.path, tc.method), tc.code)); got != 1 {
				t.Errorf("deskgate_rejections_total{code=%q} = %v, want 1", tc.code, got)
			}
		})
	}
}

func routeOf(path, method string) string {
	switch {
	case path == "/api/v1/customers":
		return "/api/v1/customers"
	case strings.HasPrefix(path, "/api/v1/"):
		return "/api/v1/"
	}
	return "unmatched"
}

// TestMethodNotAllowed guards SPEC §1's 405 with an Allow header.
func TestMethodNotAllowed(t *testing.T) {
	h := newHarness(t, harnessOpt{yaml: `
upstream: {url: "${UPSTREAM}"}
routes:
  - {pattern: "GET /api/v1/health", auth: none}
  - {pattern: "POST /api/v1/tickets", auth: public}
`})
	r := h.do("DELETE", "/api/v1/health", "")
	h.wantError(r, 405, "METHOD_NOT_ALLOWED")
	if allow := r.Header.Get("Allow"); allow != "GET, HEAD" {
		t.Errorf("Allow %q, want %q", allow, "GET, HEAD")
	}
	if h.hitCount() != 0 {
		t.Error("a 405 reached the upstream")
	}
}

// TestChunkedBodyTooLarge guards the 413 of a body without Content-Length
// that grows past server.max_body_bytes while it streams.
func TestChunkedBodyTooLarge(t *testing.T) {
	h := newHarness(t, harnessOpt{})
	pr, pw := io.Pipe()
	go func() {
		for range 20 {
			pw.Write(bytes.Repeat([]byte("x"), 100))
		}
		pw.Close()
	}()
	req, _ := http.NewRequest("POST", h.gw.URL+"/api/v1/customers", pr)
	req.Header.Set("X-API-Key", skLive)
	r := h.send(req)
	h.wantError(r, 413, "PAYLOAD_TOO_LARGE")
}

// TestUpstreamFailures guards the 502 and 504 of SPEC §1.
func TestUpstreamFailures(t *testing.T) {
	t.Run("upstream down", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		dead := "http://" + ln.Addr().String()
		ln.Close()
		h := newHarness(t, harnessOpt{yaml: `
upstream: {url: "${DEAD}"}
routes: [{pattern: "/", auth: secret}]
`, env: map[string]string{"DEAD": dead}})
		h.wantError(h.do("GET", "/x", "", "X-API-Key", skLive), 502, "BAD_GATEWAY")
		if got := testutil.ToFloat64(h.metrics.UpstreamErrors.WithLabelValues("/", "connect")); got != 1 {
			t.Errorf("upstream_errors_total{kind=connect} = %v", got)
		}
	})
	t.Run("upstream slow", func(t *testing.T) {
		release := make(chan struct{})
		defer close(release)
		h := newHarness(t, harnessOpt{yaml: `
upstream: {url: "${UPSTREAM}", timeout: 100ms}
routes: [{pattern: "/", auth: secret}]
`, upstream: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-release:
			case <-r.Context().Done():
			}
		})})
		start := time.Now()
		h.wantError(h.do("GET", "/x", "", "X-API-Key", skLive), 504, "GATEWAY_TIMEOUT")
		if el := time.Since(start); el > 5*time.Second {
			t.Errorf("504 after %s", el)
		}
		if got := testutil.ToFloat64(h.metrics.UpstreamErrors.WithLabelValues("/", "timeout")); got != 1 {
			t.Errorf("upstream_errors_total{kind=timeout} = %v", got)
		}
	})
	t.Run("per-route timeout", func(t *testing.T) {
		release := make(chan struct{})
		defer close(release)
		h := newHarness(t, harnessOpt{yaml: `
upstream: {url: "${UPSTREAM}", timeout: 10s}
routes:
  - {pattern: "/slow", auth: secret, timeout: 100ms}
  - {pattern: "/", auth: secret}
`, upstream: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/slow" {
				select {
				case <-release:
				case <-r.Context().Done():
				}
			}
		})})
		h.wantError(h.do("GET", "/slow", "", "X-API-Key", skLive), 504, "GATEWAY_TIMEOUT")
		if r := h.do("GET", "/fast", "", "X-API-Key", skLive); r.StatusCode != 200 {
			t.Errorf("fast route: %d", r.StatusCode)
		}
	})
	t.Run("connection reset", func(t *testing.T) {
		h := newHarness(t, harnessOpt{upstream: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			conn, _, err := http.NewResponseController(w).Hijack()
			if err == nil {
				conn.(*net.TCPConn).SetLinger(0)
				conn.Close()
			}
		})})
		h.wantError(h.do("GET", "/api/v1/tickets", "", "X-API-Key", skLive), 502, "BAD_GATEWAY")
	})
}

// panicTransport stands for a bug deep in the chain.
type panicTransport struct{}

func (panicTransport) RoundTrip(*http.Request) (*http.Response, error) { panic("boom") }

// TestPanicRecovered guards SPEC §1's 500: a panic answers INTERNAL_ERROR
// in the standard shape, the stack goes to the log and not to the client.
func TestPanicRecovered(t *testing.T) {
	h := newHarness(t, harnessOpt{transport: panicTransport{}})
	r := h.do("GET", "/api/v1/tickets", "", "X-API-Key", skLive)
	h.wantError(r, 500, "INTERNAL_ERROR")
	if bytes.Contains(r.body, []byte("boom")) || bytes.Contains(r.body, []byte("goroutine")) {
		t.Errorf("panic leaked to the client: %s", r.body)
	}
	if !strings.Contains(h.logs.String(), "panic serving request") {
		t.Error("panic not logged")
	}
	// The gateway still serves.
	h2 := h.do("GET", "/api/v1/health", "")
	h.wantError(h2, 500, "INTERNAL_ERROR")
}

// TestCheckOrder guards SPEC §1's order: route, key presence, key format,
// key type, rate limit; and that a request refused by auth consumes no
// quota.
func TestCheckOrder(t *testing.T) {
	h := newHarness(t, harnessOpt{})
	// Route before key: an unknown path without a key is 404.
	h.wantError(h.do("GET", "/nowhere", ""), 404, "NOT_FOUND")
	// Format before type: a malformed public key on a secret route.
	h.wantError(h.do("GET", "/api/v1/customers", "", "X-API-Key", "pk_live_tooshort"), 401, "AUTH_API_KEY_INVALID")
	// Forbidden requests consume nothing: after 10 of them the public key
	// still has its 3 requests of this second on a public route.
	for range 10 {
		h.wantError(h.do("GET", "/api/v1/customers", "", "X-API-Key", pkLive), 403, "AUTH_API_KEY_FORBIDDEN")
	}
	for i := range 3 {
		if r := h.do("POST", "/api/v1/tickets", "{}", "X-API-Key", pkLive); r.StatusCode != 200 {
			t.Fatalf("request %d: %d %s", i+1, r.StatusCode, r.body)
		}
	}
	// Auth before rate limit: once limited, a forbidden request is still
	// 403, not 429.
	h.wantError(h.do("POST", "/api/v1/tickets", "{}", "X-API-Key", pkLive), 429, "TOO_MANY_REQUESTS")
	h.wantError(h.do("GET", "/api/v1/customers", "", "X-API-Key", pkLive), 403, "AUTH_API_KEY_FORBIDDEN")
	if n := h.hitCount(); n != 3 {
		t.Errorf("the upstream received %d requests, want 3", n)
	}
}

// TestRateLimitTiers guards SPEC §4 end to end: 3 in a second pass and the
// 4th is refused with Retry-After, the details of the blocking tier and the
// RateLimit headers; the 21st within 10 s is refused by the 10s tier.
func TestRateLimitTiers(t *testing.T) {
	h := newHarness(t, harnessOpt{})
	get := func() response { return h.do("GET", "/api/v1/tickets", "", "X-API-Key", skLive) }
	policy := `"1s";q=3;w=1, "10s";q=20;w=10, "1m";q=100;w=60`
	for i, want := range []string{`"1s";r=2;t=1`, `"1s";r=1;t=1`, `"1s";r=0;t=1`} {
		r := get()
		if r.StatusCode != 200 {
			t.Fatalf("request %d: %d %s", i+1, r.StatusCode, r.body)
		}
		if got := r.Header.Get("RateLimit"); got != want {
			t.Errorf("request %d: RateLimit %q, want %q", i+1, got, want)
		}
		if got := r.Header.Get("RateLimit-Policy"); got != policy {
			t.Errorf("RateLimit-Policy %q, want %q", got, policy)
		}
		h.clock.Advance(100 * time.Millisecond)
	}
	r := get()
	e := h.wantError(r, 429, "TOO_MANY_REQUESTS")
	if e.Message != "Trop de requêtes, veuillez réessayer plus tard" {
		t.Errorf("message %q", e.Message)
	}
	if string(e.Details) != `{"limit":3,"window_seconds":1,"retry_after_seconds":1}` {
		t.Errorf("details %s", e.Details)
	}
	if got := r.Header.Get("Retry-After"); got != "1" {
		t.Errorf("Retry-After %q, want 1", got)
	}
	if got := r.Header.Get("RateLimit"); got != `"1s";r=0;t=1` {
		t.Errorf("RateLimit on 429: %q", got)
	}
	if got := r.Header.Get("RateLimit-Policy"); got != policy {
		t.Errorf("RateLimit-Policy on 429: %q", got)
	}
	if n := h.hitCount(); n != 3 {
		t.Fatalf("the upstream received %d requests, want 3", n)
	}

	// Three a second up to 20: the 21st within 10 s is refused by the 10s
	// tier, which frees its first slot at 10 s.
	h.clock.Advance(700 * time.Millisecond) // t = 1s
	for sec := 1; sec <= 6; sec++ {
		for j := range 3 {
			if sec == 6 && j == 2 {
				break
			}
			if r := get(); r.StatusCode != 200 {
				t.Fatalf("at %ds request %d: %d %s", sec, j+1, r.StatusCode, r.body)
			}
			h.clock.Advance(100 * time.Millisecond)
		}
		h.clock.Advance(time.Second - 300*time.Millisecond)
		if sec == 6 {
			h.clock.Advance(100 * time.Millisecond)
		}
	}
	// 20 admitted (3 + 5×3 + 2); now t = 7s, the 1s tier is empty.
	r = get()
	e = h.wantError(r, 429, "TOO_MANY_REQUESTS")
	if string(e.Details) != `{"limit":20,"window_seconds":10,"retry_after_seconds":3}` {
		t.Errorf("details %s", e.Details)
	}
	if got := r.Header.Get("Retry-After"); got != "3" {
		t.Errorf("Retry-After %q, want 3", got)
	}
	if got := r.Header.Get("RateLimit"); got != `"10s";r=0;t=3` {
		t.Errorf("RateLimit %q", got)
	}
	if n := h.hitCount(); n != 20 {
		t.Fatalf("the upstream received %d requests, want 20", n)
	}
	// Another key has its own budget.
	if r := h.do("GET", "/api/v1/tickets", "", "X-API-Key", skLive2); r.StatusCode != 200 {
		t.Errorf("second key: %d", r.StatusCode)
	}
	if got := testutil.ToFloat64(h.metrics.Rejections.WithLabelValues("/api/v1/", "TOO_MANY_REQUESTS")); got != 2 {
		t.Errorf("rejections_total{TOO_MANY_REQUESTS} = %v, want 2", got)
	}
}

// TestRateLimitRoutes guards SPEC §4's route options: `rate_limit: false`
// is not limited and has no headers; a bucket is a separate budget;
// `auth: none` routes are limited per client IP.
func TestRateLimitRoutes(t *testing.T) {
	h := newHarness(t, harnessOpt{trustedLoopback: true, yaml: `
upstream: {url: "${UPSTREAM}"}
routes:
  - {pattern: "GET /api/v1/health", auth: none, rate_limit: false}
  - {pattern: "GET /api/v1/status", auth: none}
  - {pattern: "POST /api/v1/exports", auth: secret, rate_limit: {bucket: exports, tiers: [{limit: 1, window: 1h}]}}
  - {pattern: "/api/v1/", auth: secret}
`})
	for range 10 {
		r := h.do("GET", "/api/v1/health", "")
		if r.StatusCode != 200 {
			t.Fatalf("unlimited route: %d", r.StatusCode)
		}
		if r.Header.Get("RateLimit") != "" || r.Header.Get("RateLimit-Policy") != "" {
			t.Fatal("RateLimit headers on a rate_limit: false route")
		}
	}
	// Per IP: the trusted test client speaks for two clients.
	for range 3 {
		if r := h.do("GET", "/api/v1/status", "", "X-Forwarded-For", "203.0.113.7"); r.StatusCode != 200 {
			t.Fatalf("client A: %d", r.StatusCode)
		}
	}
	h.wantError(h.do("GET", "/api/v1/status", "", "X-Forwarded-For", "203.0.113.7"), 429, "TOO_MANY_REQUESTS")
	if r := h.do("GET", "/api/v1/status", "", "X-Forwarded-For", "203.0.113.8"); r.StatusCode != 200 {
		t.Fatalf("client B limited by client A's budget: %d", r.StatusCode)
	}
	// A key on the auth: none route is ignored: the IP's budget applies.
	h.wantError(h.do("GET", "/api/v1/status", "", "X-Forwarded-For", "203.0.113.7", "X-API-Key", skLive), 429, "TOO_MANY_REQUESTS")

	// The exports bucket: 1 per hour, apart from the global budget.
	r := h.do("POST", "/api/v1/exports", "", "X-API-Key", skLive)
	if r.StatusCode != 200 || r.Header.Get("RateLimit-Policy") != `"1h";q=1;w=3600` {
		t.Fatalf("export: %d %q", r.StatusCode, r.Header.Get("RateLimit-Policy"))
	}
	e := h.wantError(h.do("POST", "/api/v1/exports", "", "X-API-Key", skLive), 429, "TOO_MANY_REQUESTS")
	if string(e.Details) != `{"limit":1,"window_seconds":3600,"retry_after_seconds":3600}` {
		t.Errorf("details %s", e.Details)
	}
	for range 3 {
		if r := h.do("GET", "/api/v1/tickets", "", "X-API-Key", skLive); r.StatusCode != 200 {
			t.Fatalf("global budget consumed by the exports bucket: %d", r.StatusCode)
		}
	}
}

// TestUpstreamHeaders guards SPEC §3's headers to the upstream.
func TestUpstreamHeaders(t *testing.T) {
	t.Run("defaults", func(t *testing.T) {
		h := newHarness(t, harnessOpt{})
		r := h.do("GET", "/api/v1/tickets?x=1", "", "X-API-Key", skLive,
			"X-App-Id", "app_spoofed", "X-Api-Key-Type", "secret-ish",
			"X-Forwarded-For", "198.51.100.1", "X-Forwarded-Host", "evil.example",
			"X-Request-Id", "client-req-1")
		if r.StatusCode != 200 {
			t.Fatalf("%d %s", r.StatusCode, r.body)
		}
		got := h.lastHit()
		if got.Path != "/api/v1/tickets?x=1" {
			t.Errorf("path %q", got.Path)
		}
		if v := got.Header.Values("X-App-Id"); len(v) != 0 {
			t.Errorf("spoofed X-App-Id reached the upstream: %q", v)
		}
		if v := got.Header.Values("X-Api-Key-Type"); len(v) != 1 || v[0] != "secret" {
			t.Errorf("X-Api-Key-Type %q, want [secret]", v)
		}
		if v := got.Header.Get("X-Api-Key"); v != skLive {
			t.Errorf("X-API-Key not forwarded: %q", v)
		}
		if v := got.Header.Get("X-Forwarded-For"); v != "127.0.0.1" {
			t.Errorf("X-Forwarded-For %q from an untrusted client, want the peer only", v)
		}
		if v := got.Header.Get("X-Forwarded-Host"); v == "evil.example" {
			t.Error("an untrusted X-Forwarded-Host reached the upstream")
		}
		if v := got.Header.Get("X-Forwarded-Proto"); v != "http" {
			t.Errorf("X-Forwarded-Proto %q", v)
		}
		if v := got.Header.Get("X-Request-Id"); v != "client-req-1" {
			t.Errorf("X-Request-Id to upstream %q", v)
		}
		if v := r.Header.Values("X-Request-Id"); len(v) != 1 || v[0] != "client-req-1" {
			t.Errorf("X-Request-Id to client %q", v)
		}
	})
	t.Run("public key type", func(t *testing.T) {
		h := newHarness(t, harnessOpt{})
		h.do("POST", "/api/v1/tickets", "{}", "X-API-Key", pkLive)
		if v := h.lastHit().Header.Get("X-Api-Key-Type"); v != "public" {
			t.Errorf("X-Api-Key-Type %q", v)
		}
	})
	t.Run("forward_key false", func(t *testing.T) {
		h := newHarness(t, harnessOpt{yaml: baseConfig + "auth: {forward_key: false}\n"})
		h.do("GET", "/api/v1/tickets", "", "X-API-Key", skLive)
		if v := h.lastHit().Header.Values("X-Api-Key"); len(v) != 0 {
			t.Errorf("X-API-Key forwarded with forward_key: false: %q", v)
		}
	})
	t.Run("trusted proxy", func(t *testing.T) {
		h := newHarness(t, harnessOpt{trustedLoopback: true})
		h.do("GET", "/api/v1/tickets", "", "X-API-Key", skLive,
			"X-Forwarded-For", "198.51.100.1, 127.0.0.5", "X-Forwarded-Proto", "https", "X-Forwarded-Host", "api.example")
		got := h.lastHit().Header
		if v := got.Get("X-Forwarded-For"); v != "198.51.100.1, 127.0.0.5, 127.0.0.1" {
			t.Errorf("X-Forwarded-For %q", v)
		}
		if v := got.Get("X-Forwarded-Proto"); v != "https" {
			t.Errorf("X-Forwarded-Proto %q", v)
		}
		if v := got.Get("X-Forwarded-Host"); v != "api.example" {
			t.Errorf("X-Forwarded-Host %q", v)
		}
		if !strings.Contains(h.logs.String(), `"client_ip":"198.51.100.1"`) {
			t.Error("access log does not name the client behind the trusted proxies")
		}
	})
	t.Run("auth none", func(t *testing.T) {
		h := newHarness(t, harnessOpt{})
		h.do("GET", "/api/v1/health", "", "X-API-Key", "garbage", "X-Api-Key-Type", "secret")
		got := h.lastHit().Header
		if v := got.Values("X-Api-Key-Type"); len(v) != 0 {
			t.Errorf("X-Api-Key-Type %q on an auth: none route", v)
		}
	})
}

var hexID = regexp.MustCompile(`^[0-9a-f]{32}$`)

// TestRequestID guards SPEC §6: a client id of 1–128 visible ASCII
// characters is kept, anything else is replaced by a generated one.
func TestRequestID(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		keep     bool
	}{
		{"visible ascii", "abc-123_XYZ:~!", true},
		{"128 chars", strings.Repeat("a", 128), true},
		{"129 chars", strings.Repeat("a", 129), false},
		{"space", "a b", false},
		{"non-ascii", "réq", false},
		{"absent", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, harnessOpt{})
			var hdr []string
			if tc.in != "" {
				hdr = []string{"X-Request-Id", tc.in}
			}
			r := h.do("GET", "/api/v1/health", "", hdr...)
			got := r.Header.Get("X-Request-Id")
			up := h.lastHit().Header.Get("X-Request-Id")
			if got != up {
				t.Errorf("client got %q, upstream got %q", got, up)
			}
			if tc.keep && got != tc.in {
				t.Errorf("id %q replaced by %q", tc.in, got)
			}
			if !tc.keep && !hexID.MatchString(got) {
				t.Errorf("generated id %q", got)
			}
		})
	}
}

// TestNormalization guards SPEC §2 on the main cases (issue 5 deepens it):
// a conforming error passes byte for byte, anything else becomes the
// standard shape with the status kept, and a 5xx body never leaks.
func TestNormalization(t *testing.T) {
	gz := func(s string) []byte {
		var b bytes.Buffer
		w := gzip.NewWriter(&b)
		w.Write([]byte(s))
		w.Close()
		return b.Bytes()
	}
	conforming := `{"code":"CUSTOMER_NOT_FOUND","message":"Client non trouvé","details":{"id":["x"]}}`
	cases := []struct {
		name        string
		status      int
		ctype       string
		encoding    string
		body        []byte
		header      []string
		wantCode    string // "" for passthrough
		wantHeaders map[string]string
	}{
		{"html 500", 500, "text/html", "", []byte("<html><pre>panic: at main.go:12</pre></html>"), nil, "INTERNAL_ERROR", nil},
		{"empty 502", 502, "", "", nil, nil, "INTERNAL_ERROR", nil},
		{"text 404", 404, "text/plain", "", []byte("not found"), nil, "NOT_FOUND", nil},
		{"json without code", 400, "application/json", "", []byte(`{"error":"bad"}`), nil, "VALIDATION_ERROR", nil},
		{"numeric code", 409, "application/json", "", []byte(`{"code":1,"message":"x"}`), nil, "CONFLICT", nil},
		{"truncated json", 422, "application/json", "", []byte(`{"code":"X","message":"`), nil, "VALIDATION_ERROR", nil},
		{"conforming", 404, "application/json", "", []byte(conforming), nil, "", nil},
		{"conforming without details", 409, "application/json", "", []byte(`{"code":"CUSTOMER_EMAIL_EXISTS","message":"Déjà"}`), nil, "", nil},
		{"gzip conforming", 404, "application/json", "gzip", gz(conforming), nil, "", map[string]string{"Content-Encoding": "gzip"}},
		{"gzip html", 403, "text/html", "gzip", gz("<h1>no</h1>"), nil, "FORBIDDEN", map[string]string{"Content-Encoding": ""}},
		{"unknown encoding", 404, "application/json", "br", []byte(conforming), nil, "NOT_FOUND", nil},
		{"too large", 400, "application/json", "", []byte(`{"code":"X","message":"` + strings.Repeat("a", 70000) + `"}`), nil, "VALIDATION_ERROR", nil},
		{"429 keeps Retry-After", 429, "text/plain", "", []byte("slow down"), []string{"Retry-After", "7"}, "TOO_MANY_REQUESTS", map[string]string{"Retry-After": "7"}},
		{"conforming 500 still hidden", 500, "application/json", "", []byte(`{"code":"INTERNAL_ERROR","message":"x","details":{"stack":"secret"}}`), nil, "INTERNAL_ERROR", nil},
		{"418", 418, "text/plain", "", []byte("teapot"), nil, "BAD_REQUEST", nil},
		{"401", 401, "text/plain", "", []byte("who"), nil, "AUTH_API_KEY_INVALID", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, harnessOpt{upstream: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if tc.ctype != "" {
					w.Header().Set("Content-Type", tc.ctype)
				}
				if tc.encoding != "" {
					w.Header().Set("Content-Encoding", tc.encoding)
				}
				for i := 0; i+1 < len(tc.header); i += 2 {
					w.Header().Set(tc.header[i], tc.header[i+1])
				}
				w.Header().Set("Access-Control-Allow-Origin", "*")
				w.WriteHeader(tc.status)
				w.Write(tc.body)
			})})
			req, _ := http.NewRequest("GET", h.gw.URL+"/api/v1/tickets", nil)
			req.Header.Set("X-API-Key", skLive)
			req.Header.Set("Accept-Encoding", "gzip") // take the raw bytes
			r := h.send(req)
			if r.StatusCode != tc.status {
				t.Fatalf("status %d, want %d (kept)", r.StatusCode, tc.status)
			}
			if tc.wantCode == "" {
				if !bytes.Equal(r.body, tc.body) {
					t.Errorf("conforming body changed:\n got %q\nwant %q", r.body, tc.body)
				}
			} else {
				e := h.wantError(r, tc.status, tc.wantCode)
				if e.Details != nil {
					t.Errorf("details %s", e.Details)
				}
				if tc.status >= 500 && len(tc.body) > 0 && (bytes.Contains(r.body, []byte("panic")) || bytes.Contains(r.body, []byte("secret"))) {
					t.Errorf("5xx body leaked: %s", r.body)
				}
				if got := testutil.ToFloat64(h.metrics.Normalized.WithLabelValues("/api/v1/", strconv.Itoa(tc.status))); got != 1 {
					t.Errorf("normalized_responses_total = %v, want 1", got)
				}
			}
			if r.Header.Get("Access-Control-Allow-Origin") != "*" {
				t.Error("CORS header dropped")
			}
			for k, v := range tc.wantHeaders {
				if got := r.Header.Get(k); got != v {
					t.Errorf("%s %q, want %q", k, got, v)
				}
			}
		})
	}
}

// TestStreamingUntouched guards SPEC §2: a 2xx stream is not buffered, the
// first chunk reaches the client before the upstream sends the last.
func TestStreamingUntouched(t *testing.T) {
	next := make(chan struct{})
	h := newHarness(t, harnessOpt{upstream: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: first\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-next:
		case <-time.After(10 * time.Second):
		}
		io.WriteString(w, "data: last\n\n")
	})})
	req, _ := http.NewRequest("GET", h.gw.URL+"/api/v1/events", nil)
	req.Header.Set("X-API-Key", skLive)
	res, err := h.gw.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	buf := make([]byte, 64)
	n, err := res.Body.Read(buf)
	if err != nil || string(buf[:n]) != "data: first\n\n" {
		t.Fatalf("first chunk: %q %v", buf[:n], err)
	}
	close(next)
	rest, _ := io.ReadAll(res.Body)
	if string(rest) != "data: last\n\n" {
		t.Fatalf("rest %q", rest)
	}
}

// TestClientGone guards the 499 rule: a client that goes away is logged
// and counted with status 499, neither as a rejection nor as an upstream
// error.
func TestClientGone(t *testing.T) {
	started := make(chan struct{})
	h := newHarness(t, harnessOpt{upstream: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-r.Context().Done()
	})})
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", h.gw.URL+"/api/v1/slow", nil)
	req.Header.Set("X-API-Key", skLive)
	errc := make(chan error, 1)
	go func() {
		res, err := h.gw.Client().Do(req)
		if err == nil {
			res.Body.Close()
		}
		errc <- err
	}()
	<-started
	cancel()
	if err := <-errc; err == nil {
		t.Fatal("request completed")
	}
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(h.logs.String(), `"status":499`) {
		if time.Now().After(deadline) {
			t.Fatalf("no 499 access log line; logs:\n%s", h.logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	// In the metrics: counted with status 499, neither as a rejection
	// nor as an upstream error.
	if got := testutil.ToFloat64(h.metrics.Requests.WithLabelValues("/api/v1/", "GET", "499")); got != 1 {
		t.Errorf("deskgate_requests_total{status=499} = %v, want 1", got)
	}
	for k, v := range gatherRoute(t, h) {
		if v != 0 && (strings.HasPrefix(k, "deskgate_rejections_total") || strings.HasPrefix(k, "deskgate_upstream_errors_total")) {
			t.Errorf("%s = %v after a client went away", k, v)
		}
	}
}

// TestCleanPathJudged checks that the policy is judged on the path the
// upstream receives: a dot-dot path to a secret route is refused to a
// public key, and a clean request path is forwarded cleaned.
func TestCleanPathJudged(t *testing.T) {
	h := newHarness(t, harnessOpt{})
	req, _ := http.NewRequest("POST", h.gw.URL+"/api/v1/tickets/../customers", strings.NewReader("{}"))
	req.URL.Opaque = "/api/v1/tickets/../customers" // keep the dots on the wire
	req.Header.Set("X-API-Key", pkLive)
	h.wantError(h.send(req), 403, "AUTH_API_KEY_FORBIDDEN")

	req, _ = http.NewRequest("GET", h.gw.URL, nil)
	req.URL.Opaque = "/api/v1//customers/./cus_1"
	req.Header.Set("X-API-Key", skLive)
	if r := h.send(req); r.StatusCode != 200 {
		t.Fatalf("%d %s", r.StatusCode, r.body)
	}
	if got := h.lastHit().Path; got != "/api/v1/customers/cus_1" {
		t.Errorf("upstream got %q", got)
	}
}

// TestAccessLog guards SPEC §6's access log line and that it never holds a
// full key.
func TestAccessLog(t *testing.T) {
	h := newHarness(t, harnessOpt{})
	h.do("GET", "/api/v1/tickets", "", "X-API-Key", skLive, "X-Request-Id", "log-test-1")
	var line map[string]any
	for _, l := range strings.Split(strings.TrimSpace(h.logs.String()), "\n") {
		if strings.Contains(l, "log-test-1") {
			if err := json.Unmarshal([]byte(l), &line); err != nil {
				t.Fatal(err)
			}
		}
	}
	if line == nil {
		t.Fatalf("no access log line:\n%s", h.logs.String())
	}
	for _, k := range []string{"time", "request_id", "method", "route", "path", "status", "duration_ms", "upstream_ms", "key_prefix", "client_ip", "bytes_out"} {
		if _, ok := line[k]; !ok {
			t.Errorf("access log lacks %q: %v", k, line)
		}
	}
	if line["key_prefix"] != "sk_live_AbCd" || line["route"] != "/api/v1/" || line["status"] != float64(200) {
		t.Errorf("line %v", line)
	}
	h.do("GET", "/api/v1/customers", "", "X-API-Key", "pk_live_AbCdEfGhIjKlMnOpQrStUvWx")
	h.do("GET", "/api/v1/customers", "", "X-API-Key", skLive+"!")
	if strings.Contains(h.logs.String(), skLive[12:]) {
		t.Error("a full key reached the log")
	}
}
