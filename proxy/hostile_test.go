package proxy

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// rawExchange writes raw bytes on a fresh connection and reads every
// response until the server closes it or deadline passes. It reports
// whether the server closed the connection.
func rawExchange(t *testing.T, addr, raw string, deadline time.Duration) (responses []*http.Response, bodies [][]byte, closed bool) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(deadline))
	if _, err := io.WriteString(conn, raw); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	for {
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			var ne net.Error
			closed = !(errorAs(err, &ne) && ne.Timeout())
			return
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		responses = append(responses, res)
		bodies = append(bodies, b)
	}
}

func errorAs(err error, ne *net.Error) bool {
	v, ok := err.(net.Error)
	if ok {
		*ne = v
	}
	return ok
}

func gwAddr(h *harness) string { return strings.TrimPrefix(h.gw.URL, "http://") }

// codeOf returns the code of a standard-shape body, or "".
func codeOf(b []byte) string {
	var e errorBody
	if json.Unmarshal(b, &e) != nil {
		return ""
	}
	return e.Code
}

// TestRouteBypass guards issue 8's bypass rule: however a request spells
// its path, its policy is judged on the path the upstream receives. The
// only public route is POST /api/v1/tickets; a public key must never
// reach any other upstream path.
func TestRouteBypass(t *testing.T) {
	h := newHarness(t, harnessOpt{})
	attempts := []struct{ name, target, host string }{
		{"dot-dot", "/api/v1/tickets/../customers", "x"},
		{"encoded dots", "/api/v1/tickets/%2e%2e/customers", "x"},
		{"upper-case encoded dots", "/api/v1/tickets/%2E%2E/customers", "x"},
		{"encoded slashes", "/api/v1/tickets%2F..%2Fcustomers", "x"},
		{"encoded slash into a record", "/api/v1/tickets%2Fcus_acme", "x"},
		{"encoded backslash", "/api/v1/tickets%5C..%5Ccustomers", "x"},
		{"double slash", "//api/v1/customers", "x"},
		{"double slash inside", "/api/v1//customers", "x"},
		{"dot segment", "/api/v1/./customers", "x"},
		{"trailing dot", "/api/v1/customers.", "x"},
		{"trailing dot segment", "/api/v1/tickets/.", "x"},
		{"semicolon dot-dot", "/api/v1/tickets;/../customers", "x"},
		{"dot-dot semicolon", "/api/v1/tickets/..;/customers", "x"},
		{"mixed case", "/API/V1/customers", "x"},
		{"mixed case tickets", "/api/v1/Tickets", "x"},
		{"redirecting path", "/api/v1", "x"},
		{"full URL in the request line", "http://evil.example/api/v1/tickets/../customers", "x"},
		{"full URL with another host", "http://api.example/api/v1/customers", "api.example"},
		{"host header trick", "/api/v1/customers", "localhost/api/v1/tickets"},
		{"query trick", "/api/v1/tickets?/../customers", "x"},
		{"encoded query mark", "/api/v1/customers%3F/../tickets", "x"},
		{"null byte", "/api/v1/tickets%00/../customers", "x"},
		{"overlong dot", "/api/v1/tickets/%c0%ae%c0%ae/customers", "x"},
		{"double-encoded dots", "/api/v1/tickets/%252e%252e/customers", "x"},
	}
	for _, a := range attempts {
		t.Run(a.name, func(t *testing.T) {
			raw := "POST " + a.target + " HTTP/1.1\r\nHost: " + a.host + "\r\nX-API-Key: " + pkLive +
				"\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
			res, bodies, _ := rawExchange(t, gwAddr(h), raw, 5*time.Second)
			if len(res) == 0 {
				return // refused at the connection: not forwarded
			}
			if res[0].StatusCode < 300 {
				// Admitted: it must be the public route itself.
				if got := h.lastHit().Path; !strings.HasPrefix(got, "/api/v1/tickets") || strings.Contains(strings.SplitN(got, "?", 2)[0], "customers") {
					t.Fatalf("a public key reached upstream path %q via %q", got, a.target)
				}
				return
			}
			if c := codeOf(bodies[0]); c == "" {
				t.Errorf("refusal %d not in the standard shape: %s", res[0].StatusCode, bodies[0])
			}
		})
	}
	// The invariant over every exchange: each upstream request made with a
	// public key is POST /api/v1/tickets.
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, s := range h.hits {
		path := strings.SplitN(s.Path, "?", 2)[0]
		if s.Header.Get("X-Api-Key-Type") == "public" && (s.Method != "POST" || path != "/api/v1/tickets") {
			t.Errorf("public key forwarded to %s %s", s.Method, s.Path)
		}
	}
}

// TestSmuggling guards issue 8's smuggling rules on raw connections:
// Content-Length with Transfer-Encoding is never followed by a smuggled
// request on the same connection (RFC 9112 §6.1: close), duplicate
// Content-Lengths are refused in the standard shape, an unknown transfer
// coding is refused, and an obsolete line folding is unfolded (RFC 9112
// §5.2), never forwarded as two lines.
func TestSmuggling(t *testing.T) {
	h := newHarness(t, harnessOpt{})
	key := "X-API-Key: " + skLive + "\r\n"

	t.Run("content-length and transfer-encoding", func(t *testing.T) {
		raw := "POST /api/v1/tickets HTTP/1.1\r\nHost: x\r\n" + key +
			"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n" +
			"GET /api/v1/smuggled HTTP/1.1\r\nHost: x\r\n" + key + "\r\n"
		res, _, closed := rawExchange(t, gwAddr(h), raw, 5*time.Second)
		if len(res) != 1 || !closed {
			t.Fatalf("%d responses, closed %v; want 1 and the connection closed", len(res), closed)
		}
		for _, s := range h.hits {
			if strings.Contains(s.Path, "smuggled") {
				t.Fatal("the smuggled request reached the upstream")
			}
		}
	})
	t.Run("duplicate content-length", func(t *testing.T) {
		before := h.hitCount()
		raw := "POST /api/v1/tickets HTTP/1.1\r\nHost: x\r\n" + key + "Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"
		res, bodies, closed := rawExchange(t, gwAddr(h), raw, 5*time.Second)
		if len(res) != 1 || res[0].StatusCode != 400 || !closed {
			t.Fatalf("got %d responses (closed %v), want one 400 and a close", len(res), closed)
		}
		if codeOf(bodies[0]) != "BAD_REQUEST" || res[0].Header.Get("Content-Type") != "application/json; charset=utf-8" {
			t.Errorf("400 not in the standard shape: %v %s", res[0].Header, bodies[0])
		}
		if h.hitCount() != before {
			t.Error("forwarded")
		}
	})
	t.Run("unknown transfer coding", func(t *testing.T) {
		raw := "POST /api/v1/tickets HTTP/1.1\r\nHost: x\r\n" + key + "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
		res, bodies, _ := rawExchange(t, gwAddr(h), raw, 5*time.Second)
		if len(res) != 1 || res[0].StatusCode != 501 || codeOf(bodies[0]) != "BAD_REQUEST" {
			t.Fatalf("got %v %q, want 501 in the standard shape", res, bodies)
		}
	})
	t.Run("obsolete line folding", func(t *testing.T) {
		raw := "GET /api/v1/tickets HTTP/1.1\r\nHost: x\r\n" + key + "X-Note: first\r\n second\r\nConnection: close\r\n\r\n"
		res, _, _ := rawExchange(t, gwAddr(h), raw, 5*time.Second)
		if len(res) != 1 || res[0].StatusCode != 200 {
			t.Fatalf("got %v", res)
		}
		if v := h.lastHit().Header.Values("X-Note"); len(v) != 1 || v[0] != "first second" {
			t.Errorf("upstream got X-Note %q, want one unfolded value", v)
		}
	})
}

// TestHostileHeaders guards issue 8's header rules: oversized headers get
// 431 in the standard shape, slow headers are cut by read_header_timeout,
// many keys and keys with NUL or look-alike characters are refused.
func TestHostileHeaders(t *testing.T) {
	h := newHarness(t, harnessOpt{yaml: `
upstream: {url: "${UPSTREAM}"}
server: {max_header_bytes: 4096, read_header_timeout: 300ms}
routes: [{pattern: "/api/v1/", auth: secret}]
`})
	t.Run("oversized headers", func(t *testing.T) {
		raw := "GET /api/v1/tickets HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 16<<10) + "\r\n\r\n"
		res, bodies, _ := rawExchange(t, gwAddr(h), raw, 5*time.Second)
		if len(res) != 1 || res[0].StatusCode != 431 || codeOf(bodies[0]) != "REQUEST_HEADERS_TOO_LARGE" {
			t.Fatalf("got %v %q", res, bodies)
		}
	})
	t.Run("slowloris", func(t *testing.T) {
		conn, err := net.Dial("tcp", gwAddr(h))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		start := time.Now()
		io.WriteString(conn, "GET /api/v1/tickets HTTP/1.1\r\nHost: x\r\n")
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 1)
		for {
			if _, err := conn.Read(buf); err != nil {
				break
			}
		}
		if el := time.Since(start); el > 3*time.Second {
			t.Fatalf("a connection that never finished its headers stayed open %s", el)
		}
	})
	for _, tc := range []struct {
		name, header, status, code string
	}{
		{"many keys", strings.Repeat("X-API-Key: "+skLive+"\r\n", 50), "401", "AUTH_API_KEY_INVALID"},
		// Issue 13 item 11: two headers are ambiguous whatever they
		// hold; only a single empty one is a missing key.
		{"two keys, the first empty", "X-API-Key: \r\nX-API-Key: " + skLive + "\r\n", "401", "AUTH_API_KEY_INVALID"},
		{"two keys, the second empty", "X-API-Key: " + skLive + "\r\nX-API-Key:\r\n", "401", "AUTH_API_KEY_INVALID"},
		{"two empty keys", "X-API-Key:\r\nX-API-Key: \r\n", "401", "AUTH_API_KEY_INVALID"},
		{"one empty key", "X-API-Key: \r\n", "401", "AUTH_API_KEY_MISSING"},
		{"NUL in the key", "X-API-Key: sk_live_AbCdEfGh\x00IjKlMnOpQrStUvWx\r\n", "400", "BAD_REQUEST"},
		{"look-alike letters", "X-API-Key: \u0455k_live_AbCdEfGhIjKlMnOpQrStUvWx\r\n", "401", "AUTH_API_KEY_INVALID"},
		{"fullwidth underscore", "X-API-Key: sk\uff3flive\uff3fAbCdEfGhIjKlMnOpQrStUvWx\r\n", "401", "AUTH_API_KEY_INVALID"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := h.hitCount()
			raw := "GET /api/v1/tickets HTTP/1.1\r\nHost: x\r\n" + tc.header + "Connection: close\r\n\r\n"
			res, bodies, _ := rawExchange(t, gwAddr(h), raw, 5*time.Second)
			if len(res) != 1 || res[0].Status[:3] != tc.status || codeOf(bodies[0]) != tc.code {
				t.Fatalf("got %v %q, want %s %s", res, bodies, tc.status, tc.code)
			}
			if h.hitCount() != before {
				t.Error("forwarded")
			}
		})
	}
}

// TestSpoofedForwardedFor guards issue 8's per-IP rule: an untrusted peer
// cannot pick its client address with X-Forwarded-For, so it cannot escape
// its per-IP budget.
func TestSpoofedForwardedFor(t *testing.T) {
	h := newHarness(t, harnessOpt{yaml: `
upstream: {url: "${UPSTREAM}"}
routes: [{pattern: "GET /api/v1/status", auth: none}]
`})
	for i := range 5 {
		r := h.do("GET", "/api/v1/status", "", "X-Forwarded-For", "198.51.100."+string(rune('1'+i)))
		if want := 200; i >= 3 {
			if r.StatusCode != 429 {
				t.Fatalf("request %d with a spoofed X-Forwarded-For: %d, want 429", i, r.StatusCode)
			}
		} else if r.StatusCode != want {
			t.Fatalf("request %d: %d", i, r.StatusCode)
		}
	}
}
