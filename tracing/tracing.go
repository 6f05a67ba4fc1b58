// Package tracing is deskgate's W3C trace context and OpenTelemetry export
// (SPEC §11).
//
// A [Provider] owns the export: an OpenTelemetry SDK tracer provider whose
// one span processor is a bounded queue ([Options]) feeding an OTLP/HTTP
// exporter, which counts every span it drops. A [Tracer] is a provider
// with a config's sample ratio; a nil *Tracer is export off. A [Request]
// is one request's trace, held by value in the proxy's per-request state.
//
// The hot path pays for what it uses. With export off, a request's trace
// is only the client's traceparent, read for the access log; the header
// itself goes upstream untouched. With export on, an unsampled request
// gets its ids from math/rand/v2 and its upstream traceparent written into
// the Request: no SDK call, no allocation. Only a sampled request goes
// through the SDK, whose spans allocate.
package tracing

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/innovartx/deskgate/config"
)

// scope is the instrumentation scope of the server and upstream spans.
const scope = "github.com/innovartx/deskgate/proxy"

// maxAttrLen bounds a span attribute's value, in characters.
const maxAttrLen = 1024

// Counter is what a Provider counts its dropped spans into
// (deskgate_trace_spans_dropped_total).
type Counter interface{ Add(float64) }

// Options are a [Provider]'s settings beyond the config. The zero value
// is the production one.
type Options struct {
	// Version is the service.version resource attribute.
	Version string
	// Dropped counts the spans recorded but never exported. Nil: not
	// counted.
	Dropped Counter
	// Logger receives export failures and drops, at most one line a
	// minute of each. Nil: discarded.
	Logger *slog.Logger

	// MaxQueue bounds the spans waiting for export (default 2048): a
	// span that ends while it is full is dropped.
	MaxQueue int
	// MaxBatch bounds the spans of one export call (default 512).
	MaxBatch int
	// Interval is how often the queue is exported (default 1s); a full
	// batch goes at once.
	Interval time.Duration
	// ExportTimeout bounds one export call, retries included (default
	// 5s). A batch that fails or times out is dropped.
	ExportTimeout time.Duration
	// Exporter replaces the OTLP/HTTP exporter (tests).
	Exporter sdktrace.SpanExporter
}

// Provider exports the spans of one tracing config (endpoint and service
// name). Gateways built from configs that share them share it; a reload
// that changes them builds another and shuts the old one down once the
// requests in flight on it are done.
type Provider struct {
	tp     *sdktrace.TracerProvider
	q      *queue
	tracer trace.Tracer
}

// NewProvider returns the provider of cfg, which must be valid and have
// an endpoint. It does not connect: a collector that is down at start-up
// only means dropped spans.
func NewProvider(cfg config.Tracing, o Options) (*Provider, error) {
	if o.MaxQueue <= 0 {
		o.MaxQueue = 2048
	}
	if o.MaxBatch <= 0 {
		o.MaxBatch = 512
	}
	if o.Interval <= 0 {
		o.Interval = time.Second
	}
	if o.ExportTimeout <= 0 {
		o.ExportTimeout = 5 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	exp := o.Exporter
	if exp == nil {
		u, err := config.ParseOTLPEndpoint(cfg.OTLPEndpoint)
		if err != nil {
			return nil, fmt.Errorf("tracing.otlp_endpoint: %w", err)
		}
		exp, err = otlptracehttp.New(context.Background(),
			otlptracehttp.WithEndpointURL(u.String()),
			otlptracehttp.WithTimeout(o.ExportTimeout),
			// Transient refusals (429, 503) are retried within the
			// export timeout, no longer: the queue must move on.
			otlptracehttp.WithRetry(otlptracehttp.RetryConfig{
				Enabled:         true,
				InitialInterval: 200 * time.Millisecond,
				MaxInterval:     time.Second,
				MaxElapsedTime:  o.ExportTimeout,
			}))
		if err != nil {
			return nil, fmt.Errorf("tracing: OTLP exporter: %w", err)
		}
	}
	res, err := resource.Merge(resource.Default(), resource.NewSchemaless(
		attribute.String("service.name", cfg.ServiceName),
		attribute.String("service.version", o.Version)))
	if err != nil {
		return nil, fmt.Errorf("tracing: resource: %w", err)
	}
	q := newQueue(exp, o)
	// A path or a request id is at most a header's size; a span value
	// need not be.
	limits := sdktrace.NewSpanLimits()
	limits.AttributeValueLengthLimit = maxAttrLen
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithSpanLimits(limits),
		// deskgate decides which traces to record before it asks the
		// SDK for a span (see Tracer.Begin): every span the SDK is
		// asked for is recorded.
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.AlwaysSample())),
		sdktrace.WithSpanProcessor(q),
		sdktrace.WithResource(res))
	return &Provider{tp: tp, q: q, tracer: tp.Tracer(scope)}, nil
}

// Tracer returns p's tracer with a sample ratio (0 to 1) for new traces;
// nil when p is nil (export off).
func (p *Provider) Tracer(ratio float64) *Tracer {
	if p == nil {
		return nil
	}
	t := &Tracer{tracer: p.tracer}
	switch {
	case ratio >= 1:
		t.bound = 1 << 63
	case ratio > 0:
		t.bound = uint64(ratio * (1 << 63))
	}
	return t
}

// ForceFlush exports every span ended so far, within ctx.
func (p *Provider) ForceFlush(ctx context.Context) error { return p.q.ForceFlush(ctx) }

// Shutdown exports what is queued, within ctx, and stops the exporter.
// Spans that end later, or that could not be exported in time, are
// counted as dropped.
//
// The SDK's own TracerProvider.Shutdown is not called: it would unhook
// the queue, and spans ending after it would vanish uncounted.
func (p *Provider) Shutdown(ctx context.Context) error { return p.q.Shutdown(ctx) }

// Dropped returns how many spans p has dropped.
func (p *Provider) Dropped() int64 { return p.q.dropped.Load() }

// Tracer starts the spans of one gateway. A nil *Tracer is export off:
// its methods then only read the client's traceparent.
type Tracer struct {
	tracer trace.Tracer
	// bound: a new trace is sampled when a uniform 63-bit draw is below
	// it (as the SDK's TraceIDRatioBased compares the trace id).
	bound uint64
}

// Request is the trace of one request. Its zero value is no trace. It
// lives inside the proxy's per-request state, so that a request costs
// no allocation for it (except a sampled one, in the SDK).
type Request struct {
	// traceID is the trace id in hex: a slice of the client's header
	// (export off) or of tp (export on); "" when there is no trace.
	traceID string
	// ctx carries the server span, for the child spans of the key
	// store and the rate limit; nil unless recording.
	ctx      context.Context
	server   trace.Span
	upstream trace.Span
	// tp is the traceparent sent upstream (export on): the trace id
	// is written by Begin, the rest by Upstream, never again after.
	tp     [traceparentLen]byte
	tpHdr  [1]string
	parent parent
}

// Begin starts the trace of a request whose headers are h, received at
// start. With export off it only takes the trace id of a valid client
// traceparent, for the log. With export on it continues the client's
// trace (recorded if the client's is sampled) or, when the client sent
// no valid traceparent, starts one, recorded at the tracer's ratio; the
// client's tracestate then belongs to no trace and is removed.
func (t *Tracer) Begin(q *Request, ctx context.Context, h http.Header, start time.Time) {
	v := h["Traceparent"]
	ok := len(v) == 1 && parseTraceparent(v[0], &q.parent)
	if t == nil {
		if ok {
			q.traceID = v[0][3:35]
		}
		return
	}
	var tid trace.TraceID
	switch {
	case ok && q.parent.flags.IsSampled():
		ts, _ := trace.ParseTraceState(strings.Join(h["Tracestate"], ","))
		ctx = trace.ContextWithRemoteSpanContext(ctx, trace.NewSpanContext(trace.SpanContextConfig{
			TraceID:    q.parent.traceID,
			SpanID:     q.parent.spanID,
			TraceFlags: q.parent.flags,
			TraceState: ts,
			Remote:     true,
		}))
		tid = t.start(q, ctx, start)
	case ok:
		tid = q.parent.traceID
	default:
		delete(h, "Tracestate")
		q.parent = parent{}
		if rand.Uint64()>>1 < t.bound {
			tid = t.start(q, ctx, start)
		} else {
			putUint64(tid[:8], rand.Uint64())
			putUint64(tid[8:], rand.Uint64()|1) // never all zeros
		}
	}
	copy(q.tp[:3], "00-")
	encodeHex(q.tp[3:35], tid[:])
	q.tp[35] = '-'
	q.traceID = unsafe.String(&q.tp[3], 32)
}

// start starts the recorded server span.
func (t *Tracer) start(q *Request, ctx context.Context, start time.Time) trace.TraceID {
	q.ctx, q.server = t.tracer.Start(ctx, "HTTP",
		trace.WithSpanKind(trace.SpanKindServer), trace.WithTimestamp(start))
	return q.server.SpanContext().TraceID()
}

// Upstream starts the upstream round trip at start and sets the
// traceparent of h, the headers that go upstream (export on; with export
// off the client's own goes). A recorded request's is the context of its
// upstream span; any other's names a span id drawn here, a child of the
// client's, with the client's sampled flag (unset).
func (t *Tracer) Upstream(q *Request, h http.Header, method, host string, port int, start time.Time) {
	if t == nil || q.traceID == "" {
		return
	}
	var sid trace.SpanID
	flags := q.parent.flags & trace.FlagsRandom
	if q.server != nil {
		_, q.upstream = t.tracer.Start(q.ctx, methodName(method),
			trace.WithSpanKind(trace.SpanKindClient),
			trace.WithTimestamp(start),
			trace.WithAttributes(
				attribute.String("http.request.method", methodAttr(method)),
				attribute.String("server.address", host),
				attribute.Int("server.port", port)))
		sid = q.upstream.SpanContext().SpanID()
		flags |= trace.FlagsSampled
	} else {
		putUint64(sid[:], rand.Uint64()|1)
	}
	encodeHex(q.tp[36:52], sid[:])
	q.tp[52] = '-'
	encodeHex(q.tp[53:55], []byte{byte(flags)}) // on the stack
	q.tpHdr[0] = unsafe.String(&q.tp[0], traceparentLen)
	h["Traceparent"] = q.tpHdr[:]
}

func putUint64(b []byte, v uint64) {
	for i := range 8 {
		b[i] = byte(v >> (56 - 8*i))
	}
}

// TraceID returns the trace id in hex, "" when there is none.
func (q *Request) TraceID() string { return q.traceID }

// Recording reports whether the request's spans are recorded (export on,
// trace sampled).
func (q *Request) Recording() bool { return q.server != nil }

// Context returns the context that carries the request's server span, or
// ctx when it has none: the one to give the key store and the rate limit,
// whose Redis calls become child spans of a recorded request.
func (q *Request) Context(ctx context.Context) context.Context {
	if q.ctx != nil {
		return q.ctx
	}
	return ctx
}

// Outcome is what ends a recorded request's spans.
type Outcome struct {
	Method string
	// Route is the route pattern; "" when no route matched.
	Route     string
	Path      string
	RequestID string
	Status    int
	// Code is the business code of an error answer (SPEC §1).
	Code      string
	KeyPrefix string
	AppID     string
	// Cause is why deskgate answered an error itself, if it did.
	Cause error
	End   time.Time
	// UpstreamEnd is when the upstream's response headers arrived; zero
	// when the exchange got none. UpstreamError is then its kind
	// (connect, timeout, protocol), "" if it never started or the client
	// left.
	UpstreamEnd   time.Time
	UpstreamError string
}

// End ends the request's spans, if recorded. The server span is named
// after the route ("GET /api/v1/tickets/{id}"), carries the status, the
// business code and the key's display prefix — never the key — and is an
// error for a 5xx.
func (q *Request) End(o *Outcome) {
	if q.server == nil {
		return
	}
	if q.upstream != nil {
		end := o.UpstreamEnd
		if end.IsZero() {
			end = o.End
			if o.UpstreamError != "" {
				q.upstream.SetAttributes(attribute.String("error.type", o.UpstreamError))
				q.upstream.SetStatus(codes.Error, o.Code)
				if o.Cause != nil {
					q.upstream.RecordError(o.Cause)
				}
			}
		} else if o.Status > 0 {
			q.upstream.SetAttributes(attribute.Int("http.response.status_code", o.Status))
			if o.Status >= 400 {
				q.upstream.SetAttributes(attribute.String("error.type", strconv.Itoa(o.Status)))
				q.upstream.SetStatus(codes.Error, "")
			}
		}
		q.upstream.End(trace.WithTimestamp(end))
	}
	s := q.server
	name := methodName(o.Method)
	attrs := make([]attribute.KeyValue, 0, 10)
	attrs = append(attrs, attribute.String("http.request.method", methodAttr(o.Method)))
	if methodAttr(o.Method) == otherMethod {
		attrs = append(attrs, attribute.String("http.request.method_original", o.Method))
	}
	if o.Route != "" {
		route := o.Route
		if i := strings.IndexByte(route, ' '); i >= 0 {
			route = route[i+1:]
		}
		name += " " + route
		attrs = append(attrs, attribute.String("http.route", route))
	}
	s.SetName(name)
	attrs = append(attrs,
		attribute.String("url.path", o.Path),
		attribute.String("deskgate.request_id", o.RequestID))
	if o.Status > 0 {
		attrs = append(attrs, attribute.Int("http.response.status_code", o.Status))
	}
	if o.Code != "" {
		attrs = append(attrs, attribute.String("deskgate.code", o.Code))
	}
	if o.KeyPrefix != "" {
		attrs = append(attrs, attribute.String("deskgate.key_prefix", o.KeyPrefix))
	}
	if o.AppID != "" {
		attrs = append(attrs, attribute.String("deskgate.app_id", o.AppID))
	}
	s.SetAttributes(attrs...)
	if o.Status >= 500 {
		desc := o.Code
		if desc == "" {
			desc = http.StatusText(o.Status)
		}
		s.SetAttributes(attribute.String("error.type", strconv.Itoa(o.Status)))
		s.SetStatus(codes.Error, desc)
		if o.Cause != nil {
			s.RecordError(o.Cause, trace.WithAttributes(attribute.String("deskgate.code", o.Code)))
		}
	}
	s.End(trace.WithTimestamp(o.End))
}

// otherMethod is http.request.method for a method outside RFC 9110's and
// PATCH (OpenTelemetry's semantic conventions): a client cannot make up
// attribute values or span names.
const otherMethod = "_OTHER"

func methodAttr(m string) string {
	switch m {
	case "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE":
		return m
	}
	return otherMethod
}

// methodName is the method part of a span name: "HTTP" for an unknown
// method.
func methodName(m string) string {
	if m = methodAttr(m); m == otherMethod {
		return "HTTP"
	}
	return m
}

// SetLogger sends the OpenTelemetry SDK's own errors (which it reports
// through a process-wide handler, not to the caller) to log. Call it once,
// from main.
func SetLogger(log *slog.Logger) {
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
		log.Warn("opentelemetry", "error", err.Error())
	}))
}
