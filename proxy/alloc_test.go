package proxy

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"
	"time"
)

// bareProxy is the floor of any Go gateway: httputil.ReverseProxy with
// the same static transport and nothing else.
func bareProxy() http.Handler {
	target, _ := url.Parse("http://upstream.invalid")
	return &httputil.ReverseProxy{
		Rewrite:    func(pr *httputil.ProxyRequest) { pr.SetURL(target); pr.SetXForwarded() },
		Transport:  staticTransport{200, []byte(`{"ok":true}`)},
		BufferPool: bufferPool,
	}
}

// keyedRequests returns 2,000 proxied requests, each with its own key (so
// that the default tiers admit them all).
func keyedRequests() []*http.Request {
	reqs := make([]*http.Request, 2000)
	for i := range reqs {
		reqs[i] = httptest.NewRequest("GET", "/api/v1/tickets", nil)
		reqs[i].RemoteAddr = "192.0.2.1:1234"
		reqs[i].Header.Set("X-API-Key", fmt.Sprintf("sk_live_%024d", i))
	}
	return reqs
}

// chainAllocs measures the allocations of one request through h, over
// requests with distinct keys (so that the default tiers admit them all).
func chainAllocs(t testing.TB, h http.Handler, warm func()) float64 {
	return servedAllocs(t, h, keyedRequests(), warm)
}

// servedAllocs measures the allocations of one request through h over
// reqs, in rotation; each must be answered 200.
func servedAllocs(t testing.TB, h http.Handler, reqs []*http.Request, warm func()) float64 {
	w := httptest.NewRecorder()
	// A first pass creates every identity's rate-limit state (a cost per
	// new identity, not per request); then the clock moves past every
	// window.
	for _, r := range reqs {
		h.ServeHTTP(w, r)
	}
	warm()
	i := 0
	return testing.AllocsPerRun(1000, func() {
		w.Body.Reset()
		clear(w.Header())
		h.ServeHTTP(w, reqs[i%len(reqs)])
		i++
		if w.Code != 200 {
			t.Fatalf("status %d", w.Code)
		}
	})
}

// TestAllocsVsBareProxy pins issue 7's allocation rule: auth, the rate
// limit and the metrics add nothing per request to what
// httputil.ReverseProxy itself allocates. Both serve the same requests
// (each with its X-API-Key). The chain's one allocation of its own, the
// per-request state, is paid for by setting the three X-Forwarded-*
// values with one allocation where ProxyRequest.SetXForwarded makes three.
func TestAllocsVsBareProxy(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are not meaningful under -race")
	}
	bare := chainAllocs(t, bareProxy(), func() {})
	h := allocHarness(t)
	full := chainAllocs(t, h.gateway, func() { h.clock.Advance(2 * time.Minute) })
	t.Logf("bare ReverseProxy: %v allocs/request; deskgate chain (auth, rate limit, metrics; access log off): %v", bare, full)
	if full > bare {
		t.Fatalf("the chain allocates %v per request, the bare ReverseProxy %v", full, bare)
	}
}

// TestAllocsCORSRoute: a CORS route answering an allowed origin costs at
// most one allocation more than the same chain without CORS (issue 14).
func TestAllocsCORSRoute(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are not meaningful under -race")
	}
	// The same requests, Origin included, through the chain without
	// CORS: one more request header can by itself cost the header maps a
	// growth, which is not CORS's doing.
	withOrigin := func(reqs []*http.Request) []*http.Request {
		for _, r := range reqs {
			r.Header.Set("Origin", "https://widget.example")
		}
		return reqs
	}
	measure := func(h *harness) float64 {
		return servedAllocs(t, h.gateway, withOrigin(keyedRequests()), func() { h.clock.Advance(2 * time.Minute) })
	}
	base := measure(allocHarness(t))
	h := allocHarnessYAML(t, `
upstream: {url: "${UPSTREAM}"}
auth: {store: file, file: keys.yaml}
rate_limit: {key_by: app}
cors: {allowed_origins: ["https://widget.example"]}
routes: [{pattern: "/api/v1/", auth: public}]
`)
	w := httptest.NewRecorder()
	r := withOrigin(keyedRequests()[:1])[0]
	h.gateway.ServeHTTP(w, r)
	if got := w.Header().Get("Access-Control-Allow-Origin"); got != "https://widget.example" {
		t.Fatalf("Access-Control-Allow-Origin %q", got)
	}
	withCORS := measure(h)
	t.Logf("same requests (with Origin) without CORS: %v allocs/request; CORS route, allowed origin: %v", base, withCORS)
	if withCORS > base+1 {
		t.Fatalf("a CORS route allocates %v per request, %v without CORS", withCORS, base)
	}
}

// TestAllocsQuotaRoute: a monthly quota counting every request of a route
// (in-process store) costs at most three allocations more than the same
// chain without it: its plan and its two RateLimit header values (issue
// 15; it was 14 more).
func TestAllocsQuotaRoute(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are not meaningful under -race")
	}
	const base = `
upstream: {url: "${UPSTREAM}"}
auth: {store: file, file: keys.yaml}
rate_limit: {key_by: app}
routes: [{pattern: "/api/v1/", auth: secret}]
`
	measure := func(h *harness) float64 {
		return servedAllocs(t, h.gateway, keyedRequests(), func() { h.clock.Advance(2 * time.Minute) })
	}
	without := measure(allocHarnessYAML(t, base))
	h := allocHarnessYAML(t, base+"quotas: [{name: calls, match: \"/api/v1/\", limit: 1000000}]\n")
	w := httptest.NewRecorder()
	h.gateway.ServeHTTP(w, keyedRequests()[0])
	if got := w.Header().Get("RateLimit"); !strings.Contains(got, `"calls";r=`) {
		t.Fatalf("RateLimit %q: the quota is not counted", got)
	}
	with := measure(h)
	t.Logf("without a quota: %v allocs/request; with one: %v", without, with)
	if with > without+3 {
		t.Fatalf("a quota costs %v allocations per request, want at most 3", with-without)
	}
}

var discardLogger = slog.New(slog.DiscardHandler)

// allocHarness is the chain as bench/run runs it, in process: a file key
// store where each of keyedRequests' keys is its own app (so X-App-Id goes
// upstream), limits by app, metrics; no access log, a static upstream.
func allocHarness(t testing.TB) *harness {
	return allocHarnessYAML(t, `
upstream: {url: "${UPSTREAM}"}
auth: {store: file, file: keys.yaml}
rate_limit: {key_by: app}
routes: [{pattern: "/api/v1/", auth: secret}]
`)
}

func allocHarnessYAML(t testing.TB, yml string) *harness {
	var keys strings.Builder
	keys.WriteString("apps:\n")
	for i := range len(keyedRequests()) {
		fmt.Fprintf(&keys, "  - {id: app_%d, keys: [{key: sk_live_%024d}]}\n", i, i)
	}
	h := newHarness(t, harnessOpt{transport: staticTransport{200, []byte(`{"ok":true}`)}, keyFile: keys.String(), yaml: yml})
	h.gateway.log = discardLogger
	h.gateway.access = nil
	return h
}

// benchGateway serves proxied requests of 2,000 keys in turn through the
// chain, with the access log going to log: the benchmarks of
// TestAllocsVsBareProxy's chain, for profiles.
func benchGateway(b *testing.B, access io.Writer) {
	h := allocHarness(b)
	if access != nil {
		h.gateway.access = &accessWriter{w: access, level: slog.LevelInfo}
	}
	benchServe(b, h, keyedRequests(), nil)
}

// benchCORS runs the chain of benchGateway with an Origin on every
// request, on a public route with (cors) or without a cors: block: the
// cost of CORS on a route that answers an allowed origin.
func benchCORS(b *testing.B, cors bool) {
	yml := `
upstream: {url: "${UPSTREAM}"}
auth: {store: file, file: keys.yaml}
rate_limit: {key_by: app}
routes: [{pattern: "/api/v1/", auth: public}]
`
	if cors {
		yml += `cors: {allowed_origins: ["https://widget.example"]}` + "\n"
	}
	h := allocHarnessYAML(b, yml)
	reqs := keyedRequests()
	for _, r := range reqs {
		r.Header.Set("Origin", "https://widget.example")
	}
	benchServe(b, h, reqs, nil)
}

// benchServe serves reqs in rotation through h's gateway for b, moving
// the clock past every window at each round so that every request is
// admitted; prep, when set, runs on a request before it is served. It
// returns how many requests were served.
func benchServe(b *testing.B, h *harness, reqs []*http.Request, prep func(*http.Request)) int {
	w := httptest.NewRecorder()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if i%len(reqs) == 0 {
			h.clock.Advance(2 * time.Minute)
		}
		w.Body.Reset()
		clear(w.Header())
		r := reqs[i%len(reqs)]
		if prep != nil {
			prep(r)
		}
		h.gateway.ServeHTTP(w, r)
		i++
	}
	return i
}

// BenchmarkGatewayCORS: a public route answering an allowed origin, with
// and without CORS on (issue 14).
func BenchmarkGatewayCORS(b *testing.B) {
	b.Run("off", func(b *testing.B) { benchCORS(b, false) })
	b.Run("on", func(b *testing.B) { benchCORS(b, true) })
}

// benchYAML runs the chain of benchGateway on the config yml.
func benchYAML(b *testing.B, yml string) {
	h := allocHarnessYAML(b, yml)
	benchServe(b, h, keyedRequests(), nil)
}

// BenchmarkGatewayFeatures: the chain of BenchmarkGatewayNoLog with one
// feature of round two at a time, on and off in the same run (issue 19
// item 4): the global limit in shadow mode, and a monthly quota counting
// every request (in-process store; its Redis cost is in BENCHMARKS.md).
func BenchmarkGatewayFeatures(b *testing.B) {
	base := `
upstream: {url: "${UPSTREAM}"}
auth: {store: file, file: keys.yaml}
routes: [{pattern: "/api/v1/", auth: secret}]
`
	b.Run("baseline", func(b *testing.B) { benchYAML(b, base+"rate_limit: {key_by: app}\n") })
	b.Run("shadow", func(b *testing.B) { benchYAML(b, base+"rate_limit: {key_by: app, mode: shadow}\n") })
	b.Run("quota", func(b *testing.B) {
		benchYAML(b, base+"rate_limit: {key_by: app}\nquotas: [{name: calls, match: \"/api/v1/\", limit: 1000000}]\n")
	})
}

// BenchmarkGatewayNoLog: auth, rate limit, metrics; no access log.
func BenchmarkGatewayNoLog(b *testing.B) { benchGateway(b, nil) }

// BenchmarkGatewayAccessLog: the same with the JSON access log on (to
// io.Discard): the log's own cost per request.
func BenchmarkGatewayAccessLog(b *testing.B) {
	benchGateway(b, io.Discard)
}

// BenchmarkBareProxy is the floor: httputil.ReverseProxy with the same
// static transport and requests, nothing else.
func BenchmarkBareProxy(b *testing.B) {
	h := bareProxy()
	reqs := keyedRequests()
	w := httptest.NewRecorder()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		w.Body.Reset()
		clear(w.Header())
		h.ServeHTTP(w, reqs[i%len(reqs)])
		i++
	}
}
