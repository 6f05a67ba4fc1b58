package tracing

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/innovartx/deskgate/config"
	"github.com/innovartx/deskgate/internal/otlptest"
)

const (
	clientTrace = "4bf92f3577b34da6a3ce929d0e0e4736"
	clientSpan  = "00f067aa0ba902b7"
)

// TestParseTraceparent guards W3C Trace Context §3.2 as deskgate reads
// it: what is valid is continued, anything else is no traceparent.
func TestParseTraceparent(t *testing.T) {
	tests := []struct {
		name  string
		in    string
		ok    bool
		flags trace.TraceFlags
	}{
		{"sampled", "00-" + clientTrace + "-" + clientSpan + "-01", true, 1},
		{"not sampled", "00-" + clientTrace + "-" + clientSpan + "-00", true, 0},
		{"random flag kept", "00-" + clientTrace + "-" + clientSpan + "-03", true, 3},
		{"later version, more fields", "01-" + clientTrace + "-" + clientSpan + "-01-what-comes", true, 1},
		{"later version, exact length", "cc-" + clientTrace + "-" + clientSpan + "-01", true, 1},
		{"later version, no dash after flags", "01-" + clientTrace + "-" + clientSpan + "-01x", false, 0},
		{"version 00 too long", "00-" + clientTrace + "-" + clientSpan + "-01-", false, 0},
		{"version ff", "ff-" + clientTrace + "-" + clientSpan + "-01", false, 0},
		{"upper-case hex", "00-" + strings.ToUpper(clientTrace) + "-" + clientSpan + "-01", false, 0},
		{"zero trace id", "00-" + strings.Repeat("0", 32) + "-" + clientSpan + "-01", false, 0},
		{"zero span id", "00-" + clientTrace + "-" + strings.Repeat("0", 16) + "-01", false, 0},
		{"short", "00-" + clientTrace + "-" + clientSpan + "-1", false, 0},
		{"bad separator", "00_" + clientTrace + "-" + clientSpan + "-01", false, 0},
		{"non-hex flags", "00-" + clientTrace + "-" + clientSpan + "-0g", false, 0},
		{"empty", "", false, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var p parent
			ok := parseTraceparent(tt.in, &p)
			if ok != tt.ok {
				t.Fatalf("parseTraceparent(%q) = %v, want %v", tt.in, ok, tt.ok)
			}
			if ok && (p.traceID.String() != clientTrace || p.spanID.String() != clientSpan || p.flags != tt.flags) {
				t.Errorf("parsed %s %s %02x, want %s %s %02x", p.traceID, p.spanID, p.flags, clientTrace, clientSpan, tt.flags)
			}
		})
	}
}

// FuzzTraceparent: a value parses iff it round-trips through the SDK's
// own parser of the same fields, and deskgate's header is always a valid
// version 00 traceparent.
func FuzzTraceparent(f *testing.F) {
	f.Add("00-" + clientTrace + "-" + clientSpan + "-01")
	f.Add("01-" + clientTrace + "-" + clientSpan + "-01-x")
	f.Add("00-" + strings.ToUpper(clientTrace) + "-" + clientSpan + "-01")
	p, err := NewProvider(config.Tracing{ServiceName: "fuzz"}, Options{Exporter: discardExporter{}})
	if err != nil {
		f.Fatal(err)
	}
	tr := p.Tracer(0)
	f.Fuzz(func(t *testing.T, v string) {
		var p parent
		if !parseTraceparent(v, &p) {
			return
		}
		tid, err1 := trace.TraceIDFromHex(v[3:35])
		sid, err2 := trace.SpanIDFromHex(v[36:52])
		if err1 != nil || err2 != nil || tid != p.traceID || sid != p.spanID {
			t.Fatalf("%q parsed as %s %s; the SDK reads %v %v", v, p.traceID, p.spanID, err1, err2)
		}
		var q Request
		h := http.Header{"Traceparent": {v}}
		tr.Begin(&q, context.Background(), h, time.Now())
		tr.Upstream(&q, h, "GET", "x", 80, time.Now())
		q.End(&Outcome{Method: "GET", End: time.Now()})
		var out parent
		if got := h["Traceparent"]; len(got) != 1 || len(got[0]) != traceparentLen || got[0][:2] != "00" || !parseTraceparent(got[0], &out) || out.traceID != p.traceID {
			t.Fatalf("client %q: deskgate sent %q", v, got)
		}
	})
}

// newTestProvider is a provider exporting to c with quick batches.
func newTestProvider(t *testing.T, c *otlptest.Collector, o Options) *Provider {
	t.Helper()
	if o.Interval == 0 {
		o.Interval = 20 * time.Millisecond
	}
	p, err := NewProvider(config.Tracing{OTLPEndpoint: c.URL, ServiceName: "deskgate-test"}, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = p.Shutdown(ctx)
	})
	return p
}

// TestUpstreamTraceparent guards SPEC §11's first rule: the upstream
// always gets a traceparent — the client's own with export off; with
// export on a child of the client's, or of a trace deskgate starts
// (flags 00 when it is not sampled).
func TestUpstreamTraceparent(t *testing.T) {
	c := otlptest.New(t)
	p := newTestProvider(t, c, Options{})
	const sampled = "00-" + clientTrace + "-" + clientSpan + "-01"
	const unsampled = "00-" + clientTrace + "-" + clientSpan + "-00"
	tests := []struct {
		name        string
		tracer      *Tracer
		header      http.Header
		wantSame    bool   // the client's header goes as is
		wantTrace   string // "" any new trace id
		wantFlags   string
		wantState   bool // tracestate still there
		wantRecord  bool
		wantTraceID string // the log's; "-" none
	}{
		{"off, client's sampled", nil, http.Header{"Traceparent": {sampled}, "Tracestate": {"v=1"}}, true, clientTrace, "01", true, false, clientTrace},
		{"off, none", nil, http.Header{}, true, "", "", false, false, "-"},
		{"off, invalid passes untouched", nil, http.Header{"Traceparent": {"junk"}, "Tracestate": {"v=1"}}, true, "", "", true, false, "-"},
		{"on, client's sampled", p.Tracer(0), http.Header{"Traceparent": {sampled}, "Tracestate": {"v=1"}}, false, clientTrace, "01", true, true, clientTrace},
		{"on, client's unsampled", p.Tracer(1), http.Header{"Traceparent": {unsampled}, "Tracestate": {"v=1"}}, false, clientTrace, "00", true, false, clientTrace},
		{"on, none, ratio 0", p.Tracer(0), http.Header{}, false, "", "00", false, false, ""},
		{"on, none, ratio 1", p.Tracer(1), http.Header{}, false, "", "01", false, true, ""},
		{"on, invalid: new trace, tracestate gone", p.Tracer(0), http.Header{"Traceparent": {"junk"}, "Tracestate": {"v=1"}}, false, "", "00", false, false, ""},
		{"on, two traceparents: new trace", p.Tracer(0), http.Header{"Traceparent": {sampled, sampled}}, false, "", "00", false, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := strings.Join(tt.header["Traceparent"], ",")
			var q Request
			tt.tracer.Begin(&q, context.Background(), tt.header, time.Now())
			tt.tracer.Upstream(&q, tt.header, "GET", "upstream.test", 8081, time.Now())
			got := tt.header["Traceparent"]
			if tt.wantSame {
				if strings.Join(got, ",") != before {
					t.Fatalf("traceparent %q, want the client's %q", got, before)
				}
			} else {
				var out parent
				if len(got) != 1 || len(got[0]) != traceparentLen || !parseTraceparent(got[0], &out) {
					t.Fatalf("traceparent %q: want one valid version 00 value", got)
				}
				if tt.wantTrace != "" && out.traceID.String() != tt.wantTrace {
					t.Errorf("trace id %s, want the client's %s", out.traceID, tt.wantTrace)
				}
				if out.spanID.String() == clientSpan {
					t.Errorf("parent id is the client's own span: want a child of it")
				}
				if f := got[0][53:]; f != tt.wantFlags {
					t.Errorf("flags %s, want %s", f, tt.wantFlags)
				}
				if q.TraceID() != out.traceID.String() {
					t.Errorf("TraceID() %q, the header's %s", q.TraceID(), out.traceID)
				}
			}
			if _, ok := tt.header["Tracestate"]; ok != tt.wantState {
				t.Errorf("tracestate present %v, want %v", ok, tt.wantState)
			}
			if q.Recording() != tt.wantRecord {
				t.Errorf("Recording() %v, want %v", q.Recording(), tt.wantRecord)
			}
			switch tt.wantTraceID {
			case "-":
				if q.TraceID() != "" {
					t.Errorf("TraceID() %q, want none", q.TraceID())
				}
			case "":
				if len(q.TraceID()) != 32 {
					t.Errorf("TraceID() %q, want a new one", q.TraceID())
				}
			default:
				if q.TraceID() != tt.wantTraceID {
					t.Errorf("TraceID() %q, want %q", q.TraceID(), tt.wantTraceID)
				}
			}
			q.End(&Outcome{Method: "GET", Status: 200, End: time.Now()})
		})
	}
}

// TestSpans guards SPEC §11's spans: a server span named after the route
// whose parent is the client's span, an upstream client span whose
// context is the traceparent sent upstream, the attributes (key prefix,
// never the key), and an error status with the business code for a 5xx.
func TestSpans(t *testing.T) {
	c := otlptest.New(t)
	p := newTestProvider(t, c, Options{Version: "v-test"})
	tr := p.Tracer(0)
	h := http.Header{"Traceparent": {"00-" + clientTrace + "-" + clientSpan + "-01"}, "Tracestate": {"vendor=x"}}
	var q Request
	start := time.Now()
	tr.Begin(&q, context.Background(), h, start)
	tr.Upstream(&q, h, "GET", "upstream.test", 8081, start.Add(time.Millisecond))
	sent := h["Traceparent"][0]
	q.End(&Outcome{
		Method: "GET", Route: "GET /api/v1/tickets/{id}", Path: "/api/v1/tickets/7",
		RequestID: "req-1", Status: 502, Code: "BAD_GATEWAY", KeyPrefix: "sk_live_AbCd",
		AppID: "app_1", Cause: errors.New("dial tcp: connection refused"),
		End: start.Add(3 * time.Millisecond), UpstreamError: "connect",
	})
	if err := p.ForceFlush(context.Background()); err != nil {
		t.Fatal(err)
	}
	spans := c.Wait(2, 5*time.Second)
	srv := otlptest.Named(spans, "GET /api/v1/tickets/{id}")
	up := otlptest.Named(spans, "GET")
	if len(srv) != 1 || len(up) != 1 {
		t.Fatalf("want one server span and one upstream span:\n%s", otlptest.Dump(spans))
	}
	s, u := srv[0], up[0]
	if s.TraceID != clientTrace || s.ParentSpanID != clientSpan || s.Kind != tracepb.Span_SPAN_KIND_SERVER || s.TraceState != "vendor=x" {
		t.Errorf("server span: trace %s parent %s kind %v state %q; want the client's trace and span, SERVER, its tracestate", s.TraceID, s.ParentSpanID, s.Kind, s.TraceState)
	}
	if u.TraceID != clientTrace || u.ParentSpanID != s.SpanID || u.Kind != tracepb.Span_SPAN_KIND_CLIENT {
		t.Errorf("upstream span: trace %s parent %s kind %v; want a CLIENT child of the server span %s", u.TraceID, u.ParentSpanID, u.Kind, s.SpanID)
	}
	if want := "00-" + clientTrace + "-" + u.SpanID + "-01"; sent != want {
		t.Errorf("upstream got traceparent %s, want the upstream span's context %s", sent, want)
	}
	for k, v := range map[string]string{
		"http.request.method": "GET", "http.route": "/api/v1/tickets/{id}", "http.response.status_code": "502",
		"deskgate.code": "BAD_GATEWAY", "deskgate.key_prefix": "sk_live_AbCd", "deskgate.app_id": "app_1",
		"url.path": "/api/v1/tickets/7", "deskgate.request_id": "req-1",
	} {
		if s.Attrs[k] != v {
			t.Errorf("server span %s=%q, want %q", k, s.Attrs[k], v)
		}
	}
	if s.Status != tracepb.Status_STATUS_CODE_ERROR || s.StatusMsg != "BAD_GATEWAY" || len(s.Events) != 1 || s.Events[0].Attrs["deskgate.code"] != "BAD_GATEWAY" {
		t.Errorf("server span status %v %q events %v: want an error with the business code", s.Status, s.StatusMsg, s.Events)
	}
	if u.Attrs["error.type"] != "connect" || u.Status != tracepb.Status_STATUS_CODE_ERROR || u.Attrs["server.address"] != "upstream.test" || u.Attrs["server.port"] != "8081" {
		t.Errorf("upstream span attrs %v status %v", u.Attrs, u.Status)
	}
	if s.Service != "deskgate-test" {
		t.Errorf("service.name %q", s.Service)
	}
	if !u.End.After(u.Start) || u.Start.Before(s.Start) || s.End.Sub(s.Start) != 3*time.Millisecond {
		t.Errorf("times: server %v–%v, upstream %v–%v", s.Start, s.End, u.Start, u.End)
	}
}

// TestLongPathCut: a span attribute is cut at maxAttrLen characters, so
// a 32 KB path costs the collector 1 KB.
func TestLongPathCut(t *testing.T) {
	c := otlptest.New(t)
	p := newTestProvider(t, c, Options{})
	var q Request
	p.Tracer(1).Begin(&q, context.Background(), http.Header{}, time.Now())
	q.End(&Outcome{Method: "GET", Path: "/" + strings.Repeat("a", 32<<10), Status: 404, End: time.Now()})
	_ = p.ForceFlush(context.Background())
	if got := len(c.Wait(1, 5*time.Second)[0].Attrs["url.path"]); got != maxAttrLen {
		t.Errorf("url.path of %d characters exported, want %d", got, maxAttrLen)
	}
}

// TestUnknownMethodName: a made-up method is neither a span name nor an
// attribute value (a client cannot grow a backend's operation list).
func TestUnknownMethodName(t *testing.T) {
	c := otlptest.New(t)
	p := newTestProvider(t, c, Options{})
	var q Request
	p.Tracer(1).Begin(&q, context.Background(), http.Header{}, time.Now())
	q.End(&Outcome{Method: "BREW", Status: 404, Code: "NOT_FOUND", End: time.Now()})
	_ = p.ForceFlush(context.Background())
	s := c.Wait(1, 5*time.Second)[0]
	if s.Name != "HTTP" || s.Attrs["http.request.method"] != "_OTHER" || s.Attrs["http.request.method_original"] != "BREW" || s.Status == tracepb.Status_STATUS_CODE_ERROR {
		t.Errorf("span %q attrs %v status %v", s.Name, s.Attrs, s.Status)
	}
}

// TestHotPathAllocs pins the cost of the hooks: nothing with export off,
// nothing for an unsampled request with export on.
func TestHotPathAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are not meaningful under -race")
	}
	c := otlptest.New(t)
	p := newTestProvider(t, c, Options{})
	ctx := context.Background()
	for _, tt := range []struct {
		name string
		tr   *Tracer
		h    http.Header
	}{
		{"off", nil, http.Header{"Traceparent": {"00-" + clientTrace + "-" + clientSpan + "-01"}}},
		{"on, unsampled new trace", p.Tracer(0), http.Header{}},
		{"on, unsampled client trace", p.Tracer(0), http.Header{"Traceparent": {"00-" + clientTrace + "-" + clientSpan + "-00"}}},
	} {
		q := new(Request)
		n := testing.AllocsPerRun(1000, func() {
			*q = Request{}
			tt.tr.Begin(q, ctx, tt.h, time.Time{})
			_ = q.Context(ctx)
			tt.tr.Upstream(q, tt.h, "GET", "x", 80, time.Time{})
			q.End(&Outcome{})
		})
		if n != 0 {
			t.Errorf("%s: %v allocations per request, want 0", tt.name, n)
		}
	}
}

// blockingExporter holds every export until release closes.
type blockingExporter struct {
	release  chan struct{}
	exported atomic.Int64
	err      error
}

func (e *blockingExporter) ExportSpans(ctx context.Context, s []sdktrace.ReadOnlySpan) error {
	select {
	case <-e.release:
	case <-ctx.Done():
		return ctx.Err()
	}
	if e.err != nil {
		return e.err
	}
	e.exported.Add(int64(len(s)))
	return nil
}

func (e *blockingExporter) Shutdown(context.Context) error { return nil }

type discardExporter struct{}

func (discardExporter) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (discardExporter) Shutdown(context.Context) error                             { return nil }

type countAdder struct {
	mu sync.Mutex
	n  float64
}

func (c *countAdder) Add(v float64) { c.mu.Lock(); c.n += v; c.mu.Unlock() }
func (c *countAdder) get() float64  { c.mu.Lock(); defer c.mu.Unlock(); return c.n }

// TestQueueDropsCounted guards SPEC §11's bound: with the exporter stuck,
// ending spans never waits, the queue keeps at most MaxQueue, and every
// span it cannot keep is counted; a failed export counts its batch.
func TestQueueDropsCounted(t *testing.T) {
	exp := &blockingExporter{release: make(chan struct{})}
	dropped := &countAdder{}
	p, err := NewProvider(config.Tracing{ServiceName: "t"}, Options{
		Exporter: exp, Dropped: dropped, MaxQueue: 8, MaxBatch: 4, Interval: time.Hour, ExportTimeout: time.Hour,
	})
	if err != nil {
		t.Fatal(err)
	}
	tr := p.Tracer(1)
	start := time.Now()
	for range 100 {
		var q Request
		tr.Begin(&q, context.Background(), http.Header{}, time.Now())
		q.End(&Outcome{Method: "GET", End: time.Now()})
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("100 spans took %s to end with the exporter stuck", d)
	}
	// The queue keeps 8; the exporter holds one batch of 4, taken
	// whenever its goroutine got to it.
	if got := dropped.get(); got < 100-8-4 || got > 100-8 || p.Dropped() != int64(got) {
		t.Errorf("dropped %v (Dropped() %d), want 100 - 8 queued - 0 to 4 exporting", got, p.Dropped())
	}
	exp.err = errors.New("collector said no")
	close(exp.release)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := p.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if got := dropped.get(); got != 100 {
		t.Errorf("after failed exports dropped %v, want all 100", got)
	}
	// A span ending after shutdown is counted too.
	var q Request
	tr.Begin(&q, context.Background(), http.Header{}, time.Now())
	q.End(&Outcome{Method: "GET", End: time.Now()})
	if got := dropped.get(); got != 101 {
		t.Errorf("a span ended after shutdown: dropped %v, want 101", got)
	}
}

// TestShutdownFlushes: what is queued at shutdown reaches the collector
// within the shutdown context, batch interval or not.
func TestShutdownFlushes(t *testing.T) {
	c := otlptest.New(t)
	p, err := NewProvider(config.Tracing{OTLPEndpoint: c.URL, ServiceName: "t"}, Options{Interval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	tr := p.Tracer(1)
	for range 3 {
		var q Request
		tr.Begin(&q, context.Background(), http.Header{}, time.Now())
		q.End(&Outcome{Method: "GET", End: time.Now()})
	}
	if n := len(c.Spans()); n != 0 {
		t.Fatalf("%d spans exported before the interval", n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := p.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if n := len(c.Spans()); n != 3 || p.Dropped() != 0 {
		t.Errorf("after shutdown the collector has %d spans, %d dropped; want 3, 0", n, p.Dropped())
	}
}

// TestDeadCollector: a collector that refuses connections, or accepts and
// never answers, costs a request nothing: spans end at once and are
// counted as dropped when their export fails or times out; shutdown
// returns within its context.
func TestDeadCollector(t *testing.T) {
	for name, url := range map[string]string{"closed port": otlptest.DeadURL(t), "blackhole": otlptest.BlackholeURL(t)} {
		t.Run(name, func(t *testing.T) {
			dropped := &countAdder{}
			p, err := NewProvider(config.Tracing{OTLPEndpoint: url, ServiceName: "t"}, Options{
				Dropped: dropped, Interval: 10 * time.Millisecond, ExportTimeout: 300 * time.Millisecond,
			})
			if err != nil {
				t.Fatal(err)
			}
			tr := p.Tracer(1)
			start := time.Now()
			for range 200 {
				var q Request
				h := http.Header{}
				tr.Begin(&q, context.Background(), h, time.Now())
				tr.Upstream(&q, h, "GET", "x", 80, time.Now())
				q.End(&Outcome{Method: "GET", Status: 200, End: time.Now(), UpstreamEnd: time.Now()})
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("200 traced requests took %s against a %s collector", d, name)
			}
			deadline := time.Now().Add(10 * time.Second)
			for dropped.get() < 400 && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			if got := dropped.get(); got != 400 {
				t.Errorf("dropped %v, want all 400 spans", got)
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			start = time.Now()
			_ = p.Shutdown(ctx)
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("shutdown took %s with a 1s context", d)
			}
		})
	}
}
