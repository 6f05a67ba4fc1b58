package proxy

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestLargeDownload guards SPEC §2's "responses below 400 are streamed
// untouched": a 2 MB body arrives byte for byte.
func TestLargeDownload(t *testing.T) {
	payload := make([]byte, 2<<20)
	rand.Read(payload)
	h := newHarness(t, harnessOpt{upstream: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Write(payload)
	})})
	r := h.do("GET", "/api/v1/exports/1", "", "X-API-Key", skLive)
	if r.StatusCode != 200 {
		t.Fatalf("%d", r.StatusCode)
	}
	if sha256.Sum256(r.body) != sha256.Sum256(payload) {
		t.Fatalf("body of %d bytes differs from the upstream's %d", len(r.body), len(payload))
	}
}

// TestChunkedStream guards unbuffered streaming of a chunked 2xx: the
// first chunk reaches the client before the upstream sends the last.
func TestChunkedStream(t *testing.T) {
	release := make(chan struct{})
	h := newHarness(t, harnessOpt{upstream: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "first,")
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-time.After(10 * time.Second):
		}
		io.WriteString(w, "last")
	})})
	req, _ := http.NewRequest("GET", h.gw.URL+"/api/v1/stream", nil)
	req.Header.Set("X-API-Key", skLive)
	res, err := h.gw.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if len(res.TransferEncoding) == 0 || res.TransferEncoding[0] != "chunked" {
		t.Errorf("Transfer-Encoding %v, want chunked", res.TransferEncoding)
	}
	buf := make([]byte, 6)
	if _, err := io.ReadFull(res.Body, buf); err != nil || string(buf) != "first," {
		t.Fatalf("first chunk %q %v", buf, err)
	}
	close(release)
	rest, _ := io.ReadAll(res.Body)
	if string(rest) != "last" {
		t.Fatalf("rest %q", rest)
	}
}

// TestHeadAndNoBody guards HEAD and bodiless statuses: a HEAD error gets
// the standard headers and no body; 204 and 304 pass untouched.
func TestHeadAndNoBody(t *testing.T) {
	h := newHarness(t, harnessOpt{upstream: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/api/v1/missing":
			w.Header().Set("Content-Type", "text/html")
			w.WriteHeader(404)
		case "/api/v1/empty":
			w.WriteHeader(204)
		case "/api/v1/cached":
			w.Header().Set("Etag", `"v1"`)
			w.WriteHeader(304)
		}
	})})
	r := h.do("HEAD", "/api/v1/missing", "", "X-API-Key", skLive)
	h.wantError(r, 404, "NOT_FOUND")
	if cl := r.Header.Get("Content-Length"); cl != "54" {
		t.Errorf("HEAD Content-Length %q, want the body's length 54", cl)
	}
	if r := h.do("GET", "/api/v1/empty", "", "X-API-Key", skLive); r.StatusCode != 204 || len(r.body) != 0 {
		t.Errorf("204: %d %q", r.StatusCode, r.body)
	}
	if r := h.do("GET", "/api/v1/cached", "", "X-API-Key", skLive); r.StatusCode != 304 || r.Header.Get("Etag") != `"v1"` {
		t.Errorf("304: %d %v", r.StatusCode, r.Header)
	}
}

// TestWebSocketUpgrade guards `101 Switching Protocols` through the
// gateway: the upgrade is answered and bytes flow both ways afterwards.
func TestWebSocketUpgrade(t *testing.T) {
	h := newHarness(t, harnessOpt{upstream: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "websocket" {
			http.Error(w, "no upgrade", 400)
			return
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		brw.Flush()
		line, _ := brw.ReadString('\n')
		brw.WriteString("echo:" + line)
		brw.Flush()
	}), yaml: baseConfig + "  - {pattern: \"GET /api/v1/ws\", auth: secret, websocket: true}\n"})
	conn, err := net.Dial("tcp", strings.TrimPrefix(h.gw.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(conn, "GET /api/v1/ws HTTP/1.1\r\nHost: x\r\nX-API-Key: "+skLive+"\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
	br := bufio.NewReader(conn)
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != 101 {
		t.Fatalf("status %d", res.StatusCode)
	}
	io.WriteString(conn, "hello\n")
	got, err := br.ReadString('\n')
	if err != nil || got != "echo:hello\n" {
		t.Fatalf("after upgrade: %q %v", got, err)
	}
}

// TestUpstreamPanicMidBody: an upstream that dies after the headers of a
// 200 cuts the client's response (before or after its headers); nothing
// is invented in its place.
func TestUpstreamPanicMidBody(t *testing.T) {
	h := newHarness(t, harnessOpt{upstream: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "100")
		w.WriteHeader(200)
		io.WriteString(w, "partial")
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	})})
	req, _ := http.NewRequest("GET", h.gw.URL+"/api/v1/x", nil)
	req.Header.Set("X-API-Key", skLive)
	res, err := h.gw.Client().Do(req)
	if err != nil {
		return // cut before the headers: nothing looked complete
	}
	body, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err == nil {
		t.Fatalf("read %q without error: a truncated body must not look complete", body)
	}
	if bytes.Contains(body, []byte("INTERNAL_ERROR")) {
		t.Error("an error body was appended to a started 200")
	}
}

// staticTransport answers every request with the same response, so that
// benchmarks measure the chain, not a network upstream.
type staticTransport struct {
	status int
	body   []byte
}

func (s staticTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Body != nil {
		r.Body.Close()
	}
	return &http.Response{
		StatusCode:    s.status,
		Header:        http.Header{"Content-Type": {"application/json"}},
		Body:          io.NopCloser(bytes.NewReader(s.body)),
		ContentLength: int64(len(s.body)),
		Request:       r,
		ProtoMajor:    1,
		ProtoMinor:    1,
	}, nil
}

// benchChain serves n requests through the full chain with a static
// transport; normalize false removes the normaliser for comparison.
func benchChain(b *testing.B, normalize bool) {
	h := newHarness(b, harnessOpt{transport: staticTransport{200, []byte(`{"ok":true}`)}, yaml: `
upstream: {url: "${UPSTREAM}"}
routes: [{pattern: "/api/v1/", auth: secret, rate_limit: false}]
`})
	if !normalize {
		for _, rt := range h.gateway.routes {
			rt.proxy.ModifyResponse = nil
		}
	}
	req := httptest.NewRequest("GET", "/api/v1/tickets", nil)
	req.Header.Set("X-API-Key", skLive)
	req.RemoteAddr = "127.0.0.1:1234"
	b.ReportAllocs()
	for b.Loop() {
		w := httptest.NewRecorder()
		h.gateway.ServeHTTP(w, req)
		if w.Code != 200 {
			b.Fatal(w.Code)
		}
	}
}

// BenchmarkChain compares the 2xx path with and without the normaliser
// (issue 5: the 2xx path must not pay for normalisation).
func BenchmarkChain(b *testing.B) {
	b.Run("with_normalizer", func(b *testing.B) { benchChain(b, true) })
	b.Run("without_normalizer", func(b *testing.B) { benchChain(b, false) })
}

// TestNormalizerNoAllocOn2xx pins issue 5's rule: a 2xx through the full
// chain allocates no more with the normaliser than without it.
func TestNormalizerNoAllocOn2xx(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are not meaningful under -race")
	}
	allocs := func(normalize bool) float64 {
		h := newHarness(t, harnessOpt{transport: staticTransport{200, []byte(`{"ok":true}`)}, yaml: `
upstream: {url: "${UPSTREAM}"}
routes: [{pattern: "/api/v1/", auth: secret, rate_limit: false}]
log: {level: warn}
`})
		if !normalize {
			for _, rt := range h.gateway.routes {
				rt.proxy.ModifyResponse = nil
			}
		}
		req := httptest.NewRequest("GET", "/api/v1/tickets", nil)
		req.Header.Set("X-API-Key", skLive)
		// 1,000 runs: AllocsPerRun counts every goroutine's allocations,
		// and a background one (a server goroutine of the harness) must
		// not tip the average.
		return testing.AllocsPerRun(1000, func() {
			h.gateway.ServeHTTP(httptest.NewRecorder(), req)
		})
	}
	with, without := allocs(true), allocs(false)
	if with > without {
		t.Fatalf("%v allocations per 2xx with the normaliser, %v without", with, without)
	}
	t.Logf("%v allocations per 2xx request through the chain (httptest recorder included)", with)
}
