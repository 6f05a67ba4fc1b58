package auth

import (
	"context"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

// TestLookupSpan guards SPEC §11's key-store span: a lookup that goes to
// Redis, for a request whose trace is recorded, is a child span of it
// (found or not, an error when Redis cannot answer) that names neither
// the key nor its hash; a cached lookup, or one for an unrecorded
// request, makes none.
func TestLookupSpan(t *testing.T) {
	mr, c := miniClient(t)
	registerKey(t, c, testKey(1), "app", "app_1", "status", "active")
	s := newStore(t, c, nil)
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	ctx, req := tp.Tracer("test").Start(context.Background(), "request")

	for _, k := range []string{testKey(1), testKey(1), testKey(2)} {
		if _, err := s.Lookup(ctx, hashOf(k)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Lookup(context.Background(), hashOf(testKey(3))); err != nil {
		t.Fatal(err)
	}
	mr.Close()
	if _, err := s.Lookup(ctx, hashOf(testKey(4))); err == nil {
		t.Fatal("lookup with Redis gone: no error")
	}
	spans := exp.GetSpans()
	if len(spans) != 3 {
		t.Fatalf("%d spans, want 3 (key 1 once, key 2, key 4; none cached, none unrecorded): %v", len(spans), spans)
	}
	for i, want := range []struct {
		found string
		code  codes.Code
	}{{"true", codes.Unset}, {"false", codes.Unset}, {"false", codes.Error}} {
		sp := spans[i]
		if sp.Name != "key store lookup" || sp.Parent.SpanID() != req.SpanContext().SpanID() || sp.Status.Code != want.code {
			t.Errorf("span %d: %q parent %s status %v; want a lookup under %s, status %v", i, sp.Name, sp.Parent.SpanID(), sp.Status.Code, req.SpanContext().SpanID(), want.code)
		}
		attrs := map[string]string{}
		for _, a := range sp.Attributes {
			attrs[string(a.Key)] = a.Value.Emit()
			for _, k := range []string{testKey(1), testKey(2), testKey(4)} {
				if strings.Contains(a.Value.Emit(), k[8:]) || strings.Contains(a.Value.Emit(), hexOf(k)[:8]) {
					t.Errorf("span %d: %s=%q names a key or its hash", i, a.Key, a.Value.Emit())
				}
			}
		}
		if attrs["deskgate.key_store.found"] != want.found || attrs["db.system.name"] != "redis" {
			t.Errorf("span %d attrs %v, want found=%s", i, attrs, want.found)
		}
	}
}
