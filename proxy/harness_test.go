package proxy

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/innovartx/deskgate/auth"
	"github.com/innovartx/deskgate/config"
	"github.com/innovartx/deskgate/metrics"
	"github.com/innovartx/deskgate/ratelimit"
	"github.com/innovartx/deskgate/tracing"
)

// Test keys of SPEC §3's format.
const (
	skLive  = "sk_live_AbCdEfGhIjKlMnOpQrStUvWx"
	skLive2 = "sk_live_ZyXwVuTsRqPoNmLkJiHgFeDc"
	pkLive  = "pk_live_AbCdEfGhIjKlMnOpQrStUvWx"
	skTest  = "sk_test_AbCdEfGhIjKlMnOpQrStUvWx"
)

// baseConfig is the policy of the repo's config.yaml, with the upstream
// filled in by the harness.
const baseConfig = `
upstream: {url: "${UPSTREAM}"}
server: {max_body_bytes: 1024}
routes:
  - {pattern: "GET /api/v1/health", auth: none, rate_limit: false}
  - {pattern: "POST /api/v1/tickets", auth: public}
  - {pattern: "/api/v1/customers", auth: secret}
  - {pattern: "/api/v1/customers/", auth: secret}
  - {pattern: "/api/v1/", auth: secret}
`

// fakeClock drives the in-process store across tier boundaries.
type fakeClock struct{ now atomic.Int64 }

func (c *fakeClock) Now() time.Duration      { return time.Duration(c.now.Load()) }
func (c *fakeClock) Advance(d time.Duration) { c.now.Add(int64(d)) }

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// seen is what the upstream received.
type seen struct {
	Method string
	Path   string
	Header http.Header
	Body   []byte
}

// harness is an httptest upstream behind a gateway served by an httptest
// server: real listeners, the real chain, the real in-process store.
type harness struct {
	t        testing.TB
	upstream *httptest.Server
	gw       *httptest.Server
	gateway  *Gateway
	metrics  *metrics.Metrics
	store    *ratelimit.Memory
	clock    *fakeClock
	logs     *syncBuffer

	mu   sync.Mutex
	hits []seen
}

type harnessOpt struct {
	yaml      string
	env       map[string]string
	upstream  http.Handler
	transport http.RoundTripper
	// keyFile is the content of auth.file for auth.store: file.
	keyFile string
	// keyStore is the key store of auth.store: redis.
	keyStore auth.KeyStore
	// limiter replaces the in-process store (e.g. a Redis limiter).
	limiter Limiter
	// trustedLoopback makes the test client a trusted proxy.
	trustedLoopback bool
	// tracer turns span export on (SPEC §11).
	tracer *tracing.Tracer
}

func newHarness(t testing.TB, o harnessOpt) *harness {
	t.Helper()
	h := &harness{t: t, clock: &fakeClock{}, logs: &syncBuffer{}}
	h.clock.Advance(time.Hour)
	up := o.upstream
	if up == nil {
		up = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"ok":true}`)
		})
	}
	h.upstream = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		h.mu.Lock()
		h.hits = append(h.hits, seen{Method: r.Method, Path: r.URL.RequestURI(), Header: r.Header.Clone(), Body: body})
		h.mu.Unlock()
		r.Body = io.NopCloser(bytes.NewReader(body))
		up.ServeHTTP(w, r)
	}))
	t.Cleanup(h.upstream.Close)

	yml := o.yaml
	if yml == "" {
		yml = baseConfig
	}
	env := map[string]string{"UPSTREAM": h.upstream.URL}
	for k, v := range o.env {
		env[k] = v
	}
	cfg, err := config.Parse([]byte(yml), func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	if o.trustedLoopback {
		cfg.Server.TrustedProxies = []string{"127.0.0.0/8", "::1"}
	}
	if o.keyFile != "" {
		if cfg.KeyFile, err = config.ParseKeyFile([]byte(o.keyFile), cfg.RateLimit.Plans); err != nil {
			t.Fatalf("key file: %v", err)
		}
	}
	h.store = ratelimit.NewMemory(time.Hour, ratelimit.WithClock(h.clock.Now))
	t.Cleanup(func() { h.store.Close() })
	var store auth.KeyStore
	switch {
	case o.keyStore != nil:
		store = o.keyStore
	case cfg.Auth.Store == "file":
		store = auth.NewFileStore(cfg.KeyFile)
	}
	authn, err := auth.New(cfg.Auth, store)
	if err != nil {
		t.Fatal(err)
	}
	h.metrics = metrics.New(prometheus.NewRegistry(), "test")
	var lim Limiter = h.store
	if o.limiter != nil {
		lim = o.limiter
	}
	h.gateway, err = New(Options{
		Config:    cfg,
		Auth:      authn,
		Limiter:   lim,
		Metrics:   h.metrics,
		Logger:    slog.New(slog.NewJSONHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		AccessLog: h.logs,
		LogLevel:  slog.LevelDebug,
		Transport: o.transport,
		Tracer:    o.tracer,
	})
	if err != nil {
		t.Fatalf("gateway: %v", err)
	}
	// Served as main serves it: the shaping listener and the server
	// limits from the config.
	h.gw = httptest.NewUnstartedServer(h.gateway)
	h.gw.Listener = WrapListener(h.gw.Listener, func() *Gateway { return h.gateway })
	h.gw.Config.ReadHeaderTimeout = cfg.Server.ReadHeaderTimeout.D()
	h.gw.Config.MaxHeaderBytes = cfg.Server.MaxHeaderBytes
	h.gw.Start()
	t.Cleanup(h.gw.Close)
	t.Cleanup(h.gateway.Close)
	return h
}

// hitCount returns how many requests reached the upstream.
func (h *harness) hitCount() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.hits)
}

func (h *harness) lastHit() seen {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.hits) == 0 {
		h.t.Fatal("the upstream received nothing")
	}
	return h.hits[len(h.hits)-1]
}

// response is a read response.
type response struct {
	*http.Response
	body []byte
}

// do sends a request; header pairs are name, value, name, value...
func (h *harness) do(method, path, body string, header ...string) response {
	h.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, h.gw.URL+path, rd)
	if err != nil {
		h.t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Add(header[i], header[i+1])
	}
	return h.send(req)
}

func (h *harness) send(req *http.Request) response {
	h.t.Helper()
	res, err := h.gw.Client().Do(req)
	if err != nil {
		h.t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		h.t.Fatalf("%s %s: reading body: %v", req.Method, req.URL, err)
	}
	return response{res, b}
}

// errorBody is the standard shape.
type errorBody struct {
	Code    string          `json:"code"`
	Message string          `json:"message"`
	Details json.RawMessage `json:"details,omitempty"`
}

// wantError asserts r is the standard error shape with status and code.
func (h *harness) wantError(r response, status int, code string) errorBody {
	h.t.Helper()
	if r.StatusCode != status {
		h.t.Fatalf("status %d, want %d; body %s", r.StatusCode, status, r.body)
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/json; charset=utf-8" {
		h.t.Errorf("Content-Type %q", ct)
	}
	if r.Request.Method != http.MethodHead {
		if cl := r.Header.Get("Content-Length"); cl != strconv.Itoa(len(r.body)) {
			h.t.Errorf("Content-Length %q for a body of %d bytes", cl, len(r.body))
		}
	}
	if r.Header.Get("X-Request-Id") == "" {
		h.t.Error("no X-Request-Id on the response")
	}
	if r.Request.Method == http.MethodHead {
		if len(r.body) != 0 {
			h.t.Errorf("HEAD got a body: %s", r.body)
		}
		return errorBody{}
	}
	var e errorBody
	dec := json.NewDecoder(bytes.NewReader(r.body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&e); err != nil {
		h.t.Fatalf("body is not the standard shape: %v: %s", err, r.body)
	}
	if e.Code != code {
		h.t.Fatalf("code %q, want %q; body %s", e.Code, code, r.body)
	}
	if e.Message == "" {
		h.t.Error("empty message")
	}
	return e
}
