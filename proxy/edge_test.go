package proxy

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// Issue 13's openings, each tried on a real listener (raw TCP where the
// bytes matter) as an attacker would.

// TestPathRefusals guards SPEC §7: a path with a control byte, or with a
// `;` unless server.allow_semicolon_paths, is refused with 400 and never
// reaches the upstream. A servlet upstream would serve
// /api/v1/customers;x=1/1 as /api/v1/customers/1, a secret route, after
// the gateway judged it by another.
func TestPathRefusals(t *testing.T) {
	semicolons := []string{
		"/api/v1/customers;x=1/1",
		"/api/v1/tickets/..;/customers/1",
		"/api/v1/tickets;jsessionid=1",
		"/api/v1/customers%3Bx=1/1",
		"/api/v1/customers%3bx=1/1",
		"/api/v1/tickets;",
	}
	controls := []string{
		"/api/v1/customers%00",
		"/api/v1/customers%00/../tickets",
		"/api/v1/tickets%0a",
		"/api/v1/tickets%0D%0AX-Evil:%201",
		"/api/v1/tickets%1f",
		"/api/v1/tickets%7F",
		"/api/v1/tickets%09",
	}
	send := func(t *testing.T, h *harness, target, key string) (int, string) {
		t.Helper()
		raw := "POST " + target + " HTTP/1.1\r\nHost: x\r\nX-API-Key: " + key +
			"\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
		res, bodies, _ := rawExchange(t, gwAddr(h), raw, 5*time.Second)
		if len(res) != 1 {
			t.Fatalf("%s: %d responses", target, len(res))
		}
		return res[0].StatusCode, codeOf(bodies[0])
	}

	t.Run("default", func(t *testing.T) {
		h := newHarness(t, harnessOpt{})
		for _, target := range append(semicolons, controls...) {
			for _, key := range []string{pkLive, skLive} {
				if status, code := send(t, h, target, key); status != 400 || code != "BAD_REQUEST" {
					t.Errorf("%s with %.3s key: %d %s, want 400 BAD_REQUEST", target, key, status, code)
				}
			}
		}
		if n := h.hitCount(); n != 0 {
			t.Fatalf("%d refused paths reached the upstream", n)
		}
		if got := testutil.ToFloat64(h.metrics.Rejections.WithLabelValues("unmatched", "BAD_REQUEST")); got != float64(2*(len(semicolons)+len(controls))) {
			t.Errorf("rejections{unmatched,BAD_REQUEST} = %v", got)
		}
		if !strings.Contains(h.logs.String(), `"code":"BAD_REQUEST"`) {
			t.Error("no access log line with the code")
		}
		// A plain path still works, and a `;` in the query is no path.
		if status, _ := send(t, h, "/api/v1/tickets?a=1;b=2", pkLive); status != 200 {
			t.Errorf("query with ';': %d", status)
		}
	})

	t.Run("allow_semicolon_paths", func(t *testing.T) {
		h := newHarness(t, harnessOpt{yaml: strings.Replace(baseConfig, "server: {max_body_bytes: 1024}", "server: {max_body_bytes: 1024, allow_semicolon_paths: true}", 1)})
		// Let through, and judged like any path: a public key still
		// cannot reach a secret route.
		if status, code := send(t, h, "/api/v1/customers;x=1/1", pkLive); status != 403 || code != "AUTH_API_KEY_FORBIDDEN" {
			t.Errorf("pk_ on ;-path: %d %s", status, code)
		}
		if status, _ := send(t, h, "/api/v1/customers;x=1/1", skLive); status != 200 {
			t.Errorf("sk_ on ;-path: %d", status)
		} else if got := h.lastHit().Path; got != "/api/v1/customers;x=1/1" {
			t.Errorf("upstream saw %q", got)
		}
		for _, target := range controls {
			if status, code := send(t, h, target, skLive); status != 400 || code != "BAD_REQUEST" {
				t.Errorf("%s: %d %s, want 400 whatever allow_semicolon_paths says", target, status, code)
			}
		}
	})
}

// TestConnectionCannotStripOwnHeaders: a client that names deskgate's
// headers in Connection (hop-by-hop) must not make them vanish before the
// upstream (SPEC §7).
func TestConnectionCannotStripOwnHeaders(t *testing.T) {
	h := newHarness(t, harnessOpt{
		keyFile: "apps:\n  - {id: app_demo, keys: [{key: " + skLive + "}]}\n",
		yaml:    baseConfig + "\nauth: {store: file, file: keys.yaml}\n",
	})
	raw := "GET /api/v1/customers HTTP/1.1\r\nHost: x\r\nX-API-Key: " + skLive +
		"\r\nX-Request-Id: req-123\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" +
		"\r\nConnection: close, X-Api-Key-Type, X-Request-Id, X-App-Id, X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host, traceparent, X-API-Key\r\n\r\n"
	res, _, _ := rawExchange(t, gwAddr(h), raw, 5*time.Second)
	if len(res) != 1 || res[0].StatusCode != 200 {
		t.Fatalf("responses %v", res)
	}
	got := h.lastHit().Header
	for k, want := range map[string]string{
		"X-Api-Key-Type":    "secret",
		"X-App-Id":          "app_demo",
		"X-Request-Id":      "req-123",
		"X-Forwarded-For":   "127.0.0.1",
		"X-Forwarded-Proto": "http",
		"X-Forwarded-Host":  "x",
		"Traceparent":       "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
		"X-Api-Key":         skLive,
	} {
		if g := got.Get(k); g != want {
			t.Errorf("upstream %s = %q, want %q", k, g, want)
		}
	}
}

// tunnelUpstream answers 101 to anything, then serves HTTP/1.1 requests on
// the hijacked connection with 200 "tunnel": what an h2c-capable upstream
// does, and what would make the connection a blind tunnel past the
// gateway.
func tunnelUpstream() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		up := r.Header.Get("Upgrade")
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + up + "\r\n\r\n")
		brw.Flush()
		for range 4 {
			req, err := http.ReadRequest(brw.Reader)
			if err != nil {
				return
			}
			io.Copy(io.Discard, req.Body)
			brw.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\ntunnel")
			brw.Flush()
		}
	})
}

// TestUpgradeTunnel: only Upgrade: websocket, only on a route with
// websocket: true, becomes a tunnel. An h2c upgrade with a public key
// must not open a connection on which later requests skip auth.
func TestUpgradeTunnel(t *testing.T) {
	h := newHarness(t, harnessOpt{upstream: tunnelUpstream(), yaml: `
upstream: {url: "${UPSTREAM}"}
routes:
  - {pattern: "POST /api/v1/tickets", auth: public}
  - {pattern: "GET /api/v1/events", auth: public, websocket: true}
  - {pattern: "/api/v1/", auth: secret}
`})
	exchange := func(t *testing.T, first string) (*http.Response, *bufio.Reader, net.Conn) {
		t.Helper()
		h.clock.Advance(time.Minute) // a fresh budget for each exchange
		conn, err := net.Dial("tcp", gwAddr(h))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(conn, first)
		br := bufio.NewReader(conn)
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		return res, br, conn
	}

	for _, tc := range []struct{ name, req string }{
		{"h2c on a public route", "POST /api/v1/tickets HTTP/1.1\r\nHost: x\r\nX-API-Key: " + pkLive + "\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\nContent-Length: 0\r\n\r\n"},
		{"websocket on a route without websocket: true", "POST /api/v1/tickets HTTP/1.1\r\nHost: x\r\nX-API-Key: " + pkLive + "\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 0\r\n\r\n"},
		{"websocket plus another token", "GET /api/v1/events HTTP/1.1\r\nHost: x\r\nX-API-Key: " + pkLive + "\r\nConnection: Upgrade\r\nUpgrade: websocket, h2c\r\n\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := h.hitCount()
			res, br, conn := exchange(t, tc.req)
			if res.StatusCode == 101 {
				t.Fatal("the gateway switched protocols")
			}
			io.Copy(io.Discard, res.Body)
			if h.hitCount() != before+1 {
				t.Fatal("the request did not reach the upstream")
			}
			if up := h.lastHit().Header.Get("Upgrade"); up != "" {
				t.Errorf("upstream saw Upgrade: %q", up)
			}
			// The connection, if still open, is still the gateway's: a
			// request without a key to a secret route is refused.
			io.WriteString(conn, "GET /api/v1/customers HTTP/1.1\r\nHost: x\r\n\r\n")
			if res2, err := http.ReadResponse(br, nil); err == nil {
				b, _ := io.ReadAll(res2.Body)
				if res2.StatusCode != 401 || codeOf(b) != "AUTH_API_KEY_MISSING" {
					t.Fatalf("second request on the connection: %d %s", res2.StatusCode, b)
				}
			}
		})
	}

	t.Run("websocket on an opted-in route", func(t *testing.T) {
		res, br, conn := exchange(t, "GET /api/v1/events HTTP/1.1\r\nHost: x\r\nX-API-Key: "+pkLive+"\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
		if res.StatusCode != 101 {
			t.Fatalf("status %d, want 101", res.StatusCode)
		}
		io.WriteString(conn, "GET /inside HTTP/1.1\r\nHost: x\r\n\r\n")
		res2, err := http.ReadResponse(br, nil)
		if err != nil || res2.StatusCode != 200 {
			t.Fatalf("through the tunnel: %v %v", res2, err)
		}
		conn.Close()
		// Logged and counted as 101 once the handler returns.
		deadline := time.Now().Add(5 * time.Second)
		for testutil.ToFloat64(h.metrics.Requests.WithLabelValues("GET /api/v1/events", "GET", "101")) != 1 {
			if time.Now().After(deadline) {
				t.Fatalf("deskgate_requests_total{status=101} = %v", testutil.ToFloat64(h.metrics.Requests.WithLabelValues("GET /api/v1/events", "GET", "101")))
			}
			time.Sleep(10 * time.Millisecond)
		}
		if !strings.Contains(h.logs.String(), `"status":101`) {
			t.Error("no access log line with status 101")
		}
		if strings.Contains(h.logs.String(), `"status":0`) {
			t.Error("an access log line with status 0")
		}
	})
}

// TestSpoofableHeaders: client-address and method/URL override headers
// from a peer that is not a trusted proxy never reach the upstream; a
// trusted proxy's do.
func TestSpoofableHeaders(t *testing.T) {
	spoof := []string{
		"X-Real-IP", "203.0.113.9",
		"True-Client-IP", "203.0.113.9",
		"X-Client-IP", "203.0.113.9",
		"X-HTTP-Method-Override", "DELETE",
		"X-HTTP-Method", "DELETE",
		"X-Method-Override", "DELETE",
		"X-Original-URL", "/api/v1/customers/1",
		"X-Rewrite-URL", "/api/v1/customers/1",
	}
	for _, trusted := range []bool{false, true} {
		h := newHarness(t, harnessOpt{trustedLoopback: trusted})
		if r := h.do("POST", "/api/v1/tickets", "{}", append([]string{"X-API-Key", pkLive}, spoof...)...); r.StatusCode != 200 {
			t.Fatalf("status %d", r.StatusCode)
		}
		got := h.lastHit().Header
		for i := 0; i < len(spoof); i += 2 {
			v := got.Get(spoof[i])
			if !trusted && v != "" {
				t.Errorf("untrusted peer: upstream got %s: %q", spoof[i], v)
			}
			if trusted && v != spoof[i+1] {
				t.Errorf("trusted proxy: upstream got %s: %q, want it kept", spoof[i], v)
			}
		}
	}
}

// TestForwardKeyFalseEverywhere: with auth.forward_key: false the key
// never leaves, on auth: none routes too (SPEC §3).
func TestForwardKeyFalseEverywhere(t *testing.T) {
	h := newHarness(t, harnessOpt{yaml: baseConfig + "\nauth: {forward_key: false}\n"})
	for _, path := range []string{"/api/v1/health", "/api/v1/customers"} {
		method := "GET"
		if r := h.do(method, path, "", "X-API-Key", skLive); r.StatusCode != 200 {
			t.Fatalf("%s: status %d", path, r.StatusCode)
		}
		if v := h.lastHit().Header.Values("X-Api-Key"); len(v) != 0 {
			t.Errorf("%s: upstream got X-API-Key %q", path, v)
		}
	}
	// Named in Connection, it is not brought back either.
	raw := "GET /api/v1/health HTTP/1.1\r\nHost: x\r\nX-API-Key: " + skLive + "\r\nConnection: close, X-API-Key\r\n\r\n"
	if res, _, _ := rawExchange(t, gwAddr(h), raw, 5*time.Second); len(res) != 1 || res[0].StatusCode != 200 {
		t.Fatal("raw request failed")
	}
	if v := h.lastHit().Header.Values("X-Api-Key"); len(v) != 0 {
		t.Errorf("upstream got X-API-Key %q", v)
	}
}

// TestUserAgentPassedAsIs: the upstream gets the client's User-Agent, and
// none when the client sent none, never Go's default in its name.
func TestUserAgentPassedAsIs(t *testing.T) {
	h := newHarness(t, harnessOpt{})
	for _, ua := range []string{"", "supportdesk-client/2.3"} {
		// An empty value makes the test client send no User-Agent.
		if r := h.do("GET", "/api/v1/tickets/1", "", "X-API-Key", skLive, "User-Agent", ua); r.StatusCode != 200 {
			t.Fatalf("status %d", r.StatusCode)
		}
		got, ok := h.lastHit().Header["User-Agent"]
		if ua == "" && ok || ua != "" && (len(got) != 1 || got[0] != ua) {
			t.Errorf("client's User-Agent %q: the upstream got %q (present %v)", ua, got, ok)
		}
	}
}
