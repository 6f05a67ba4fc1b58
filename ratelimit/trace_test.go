package ratelimit

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

func spanAttrs(s sdktrace.ReadOnlySpan) map[string]string {
	m := map[string]string{}
	for _, a := range s.Attributes() {
		m[string(a.Key)] = a.Value.Emit()
	}
	return m
}

// TestCallSpan guards SPEC §11's rate-limit span: one span per Redis
// call, a child of the first recorded request it decides, linked to the
// other recorded ones, with the batch's size and outcome; no span when no
// request of the call is recorded.
func TestCallSpan(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	ctxA, a := tp.Tracer("test").Start(context.Background(), "a")
	ctxB, b := tp.Tracer("test").Start(context.Background(), "b")
	items := []*pending{
		{ctx: context.Background(), d: Decision{Allowed: true}},
		{ctx: ctxA, d: Decision{}},
		{ctx: ctxB, err: errors.New("rate-limit script: OOM")},
	}
	if _, span := startCallSpan(context.Background(), items[:1]); span != nil {
		t.Fatal("a span for a call with no recorded request")
	}
	ctx, span := startCallSpan(context.Background(), items)
	if trace.SpanFromContext(ctx) != span {
		t.Error("the call's context does not carry its span")
	}
	endCallSpan(span, items)
	spans := exp.GetSpans().Snapshots()
	if len(spans) != 1 {
		t.Fatalf("%d spans, want 1", len(spans))
	}
	s := spans[0]
	if s.Name() != "rate-limit decision" || s.Parent().SpanID() != a.SpanContext().SpanID() || s.SpanKind() != trace.SpanKindClient {
		t.Errorf("span %q parent %s kind %v; want a CLIENT child of %s", s.Name(), s.Parent().SpanID(), s.SpanKind(), a.SpanContext().SpanID())
	}
	if l := s.Links(); len(l) != 1 || l[0].SpanContext.SpanID() != b.SpanContext().SpanID() {
		t.Errorf("links %v, want one to %s", l, b.SpanContext().SpanID())
	}
	at := spanAttrs(s)
	if at["deskgate.ratelimit.batch_size"] != "3" || at["deskgate.ratelimit.traced"] != "2" || at["deskgate.ratelimit.denied"] != "1" || s.Status().Code != codes.Error {
		t.Errorf("attrs %v status %v", at, s.Status())
	}
}

// TestRedisDecisionSpans: a decision made by Redis, sliding log (batched
// script) or GCRA (redis_rate), is a span of the recorded request that
// asked for it.
func TestRedisDecisionSpans(t *testing.T) {
	mr := miniredis.RunT(t)
	client := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { client.Close() })
	r := NewRedis(client)
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	ctx, req := tp.Tracer("test").Start(context.Background(), "request")
	sl, err := NewPolicy("t", SlidingLog, []Tier{{Limit: 3, Window: time.Second, Name: "1s"}})
	if err != nil {
		t.Fatal(err)
	}
	gcra, err := NewPolicy("g", GCRA, []Tier{{Limit: 3, Window: time.Second, Name: "1s"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []*Policy{sl, gcra} {
		if _, err := r.Allow(ctx, p, KeyFromApp("app_1")); err != nil {
			t.Fatal(err)
		}
		if _, err := r.Allow(context.Background(), p, KeyFromApp("app_1")); err != nil {
			t.Fatal(err)
		}
	}
	spans := exp.GetSpans()
	if len(spans) != 2 {
		t.Fatalf("%d spans, want 2 (one per recorded decision)", len(spans))
	}
	for _, s := range spans {
		if s.Name != "rate-limit decision" || s.Parent.SpanID() != req.SpanContext().SpanID() || s.Status.Code != codes.Unset {
			t.Errorf("span %q parent %s status %v", s.Name, s.Parent.SpanID(), s.Status)
		}
	}
}
