package ratelimit

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// tracerName is the instrumentation scope of the rate limit's spans.
const tracerName = "github.com/innovartx/deskgate/ratelimit"

// spanName is the span of a decision that goes to Redis (SPEC §11).
const spanName = "rate-limit decision"

// startCallSpan starts the span of one Redis call deciding items, when the
// trace of at least one of them is recorded: a child of the first such
// request's server span, linked to the others'. A call serves up to
// maxBatch requests of as many traces; one span per call, not per
// request, keeps the cost of tracing a batch constant. Unrecorded
// requests (all of them with export off) cost a context lookup each.
// The span names no key.
func startCallSpan(ctx context.Context, items []*pending) (context.Context, trace.Span) {
	var parent trace.Span
	var links []trace.Link
	for _, it := range items {
		sp := trace.SpanFromContext(it.ctx)
		if !sp.IsRecording() {
			continue
		}
		if parent == nil {
			parent = sp
			continue
		}
		links = append(links, trace.Link{SpanContext: sp.SpanContext()})
	}
	if parent == nil {
		return ctx, nil
	}
	return parent.TracerProvider().Tracer(tracerName).Start(trace.ContextWithSpan(ctx, parent), spanName,
		trace.WithSpanKind(trace.SpanKindClient),
		trace.WithLinks(links...),
		trace.WithAttributes(
			attribute.String("db.system.name", "redis"),
			attribute.String("db.operation.name", "EVALSHA"),
			attribute.Int("deskgate.ratelimit.batch_size", len(items)),
			attribute.Int("deskgate.ratelimit.traced", len(links)+1)))
}

// endCallSpan ends the span of a call with its outcome.
func endCallSpan(span trace.Span, items []*pending) {
	denied, failed := 0, 0
	var err error
	for _, it := range items {
		switch {
		case it.err != nil:
			failed++
			err = it.err
		case !it.d.Allowed:
			denied++
		}
	}
	span.SetAttributes(attribute.Int("deskgate.ratelimit.denied", denied))
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, "rate-limit store cannot decide")
	}
	span.End()
}

// startSpan starts the span of one GCRA decision (redis_rate: one call
// per request), when its request's trace is recorded.
func startSpan(ctx context.Context) (context.Context, trace.Span) {
	parent := trace.SpanFromContext(ctx)
	if !parent.IsRecording() {
		return ctx, nil
	}
	return parent.TracerProvider().Tracer(tracerName).Start(ctx, spanName,
		trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(
			attribute.String("db.system.name", "redis"),
			attribute.String("db.operation.name", "EVALSHA")))
}
