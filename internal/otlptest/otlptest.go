// Package otlptest is an in-process OTLP/HTTP trace receiver for tests: an
// httptest server on loopback that decodes each ExportTraceServiceRequest
// protobuf (gzip or not) and keeps its spans, plus the two collectors a
// gateway must survive: a closed port and a blackhole that accepts
// connections and never answers.
package otlptest

import (
	"compress/gzip"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"
)

// Span is one received span, its ids in hex and its attribute values as
// text.
type Span struct {
	Service      string
	Scope        string
	TraceID      string
	SpanID       string
	ParentSpanID string
	TraceState   string
	Name         string
	Kind         tracepb.Span_SpanKind
	Start, End   time.Time
	Attrs        map[string]string
	Status       tracepb.Status_StatusCode
	StatusMsg    string
	Events       []Event
	Links        []Link
}

// Event is a span event (an exception recorded by RecordError, say).
type Event struct {
	Name  string
	Attrs map[string]string
}

// Link is a span link.
type Link struct{ TraceID, SpanID string }

// Collector is the receiver. Its URL is the base an exporter is given
// (tracing.otlp_endpoint); it serves POST /v1/traces.
type Collector struct {
	*httptest.Server
	t testing.TB

	mu       sync.Mutex
	spans    []Span
	requests int
	// status, when not 0 or 200, is answered to every export.
	status int
}

// New starts a collector, closed when the test ends.
func New(t testing.TB) *Collector {
	c := &Collector{t: t}
	c.Server = httptest.NewServer(http.HandlerFunc(c.serve))
	t.Cleanup(c.Close)
	return c
}

// Fail makes every later export get status (0: accept again).
func (c *Collector) Fail(status int) {
	c.mu.Lock()
	c.status = status
	c.mu.Unlock()
}

func (c *Collector) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/v1/traces" {
		http.Error(w, "want POST /v1/traces", http.StatusNotFound)
		return
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/x-protobuf" {
		http.Error(w, "want application/x-protobuf, got "+ct, http.StatusUnsupportedMediaType)
		return
	}
	var body io.Reader = r.Body
	if r.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		body = zr
	}
	b, err := io.ReadAll(body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var req coltracepb.ExportTraceServiceRequest
	if err := proto.Unmarshal(b, &req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	c.mu.Lock()
	c.requests++
	status := c.status
	if status == 0 || status == http.StatusOK {
		c.spans = append(c.spans, decode(&req)...)
	}
	c.mu.Unlock()
	if status != 0 && status != http.StatusOK {
		w.WriteHeader(status)
		return
	}
	out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
	w.Header().Set("Content-Type", "application/x-protobuf")
	_, _ = w.Write(out)
}

func decode(req *coltracepb.ExportTraceServiceRequest) []Span {
	var out []Span
	for _, rs := range req.GetResourceSpans() {
		service := attrs(rs.GetResource().GetAttributes())["service.name"]
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				sp := Span{
					Service:      service,
					Scope:        ss.GetScope().GetName(),
					TraceID:      hex.EncodeToString(s.GetTraceId()),
					SpanID:       hex.EncodeToString(s.GetSpanId()),
					ParentSpanID: hex.EncodeToString(s.GetParentSpanId()),
					TraceState:   s.GetTraceState(),
					Name:         s.GetName(),
					Kind:         s.GetKind(),
					Start:        time.Unix(0, int64(s.GetStartTimeUnixNano())),
					End:          time.Unix(0, int64(s.GetEndTimeUnixNano())),
					Attrs:        attrs(s.GetAttributes()),
					Status:       s.GetStatus().GetCode(),
					StatusMsg:    s.GetStatus().GetMessage(),
				}
				for _, e := range s.GetEvents() {
					sp.Events = append(sp.Events, Event{Name: e.GetName(), Attrs: attrs(e.GetAttributes())})
				}
				for _, l := range s.GetLinks() {
					sp.Links = append(sp.Links, Link{TraceID: hex.EncodeToString(l.GetTraceId()), SpanID: hex.EncodeToString(l.GetSpanId())})
				}
				out = append(out, sp)
			}
		}
	}
	return out
}

func attrs(kvs []*commonpb.KeyValue) map[string]string {
	m := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		v := kv.GetValue()
		switch v.GetValue().(type) {
		case *commonpb.AnyValue_IntValue:
			m[kv.GetKey()] = fmt.Sprint(v.GetIntValue())
		case *commonpb.AnyValue_BoolValue:
			m[kv.GetKey()] = fmt.Sprint(v.GetBoolValue())
		case *commonpb.AnyValue_DoubleValue:
			m[kv.GetKey()] = fmt.Sprint(v.GetDoubleValue())
		default:
			m[kv.GetKey()] = v.GetStringValue()
		}
	}
	return m
}

// Spans returns the spans received so far, in arrival order.
func (c *Collector) Spans() []Span {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Span(nil), c.spans...)
}

// Requests returns how many export requests arrived.
func (c *Collector) Requests() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.requests
}

// Wait returns the spans once at least n arrived, or fails the test
// after timeout.
func (c *Collector) Wait(n int, timeout time.Duration) []Span {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		s := c.Spans()
		if len(s) >= n {
			return s
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("otlptest: %d spans after %s, want %d:\n%s", len(s), timeout, n, Dump(s))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Trace returns the spans of one trace.
func Trace(spans []Span, traceID string) []Span {
	var out []Span
	for _, s := range spans {
		if s.TraceID == traceID {
			out = append(out, s)
		}
	}
	return out
}

// Named returns the spans called name.
func Named(spans []Span, name string) []Span {
	var out []Span
	for _, s := range spans {
		if s.Name == name {
			out = append(out, s)
		}
	}
	return out
}

// Dump formats spans for a failure message.
func Dump(spans []Span) string {
	var b strings.Builder
	for _, s := range spans {
		keys := make([]string, 0, len(s.Attrs))
		for k := range s.Attrs {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		fmt.Fprintf(&b, "  %s %q kind=%v trace=%s span=%s parent=%s status=%v %q links=%v\n", s.Scope, s.Name, s.Kind, s.TraceID, s.SpanID, s.ParentSpanID, s.Status, s.StatusMsg, s.Links)
		for _, k := range keys {
			fmt.Fprintf(&b, "      %s=%q\n", k, s.Attrs[k])
		}
		for _, e := range s.Events {
			fmt.Fprintf(&b, "      event %s %v\n", e.Name, e.Attrs)
		}
	}
	return b.String()
}

// DeadURL returns the URL of a closed loopback port: every connection is
// refused.
func DeadURL(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return "http://" + addr
}

// BlackholeURL returns the URL of a loopback listener that accepts
// connections and never reads or answers: an export waits for its
// timeout. It closes when the test ends.
func BlackholeURL(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return "http://" + ln.Addr().String()
}
