package e2e

// Tracing end to end (SPEC §11): the whole process in demo mode, exporting
// to the in-process OTLP receiver, through a reload and a shutdown.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/innovartx/deskgate/internal/otlptest"
)

const traceE2EConfig = `
server: {listen: "%s", shutdown_timeout: 5s}
admin: {listen: "%s"}
upstream: {url: "http://%s"}
routes:
  - {pattern: "GET /api/v1/debug/", auth: none, rate_limit: false}
tracing: {otlp_endpoint: "%s", sample_ratio: 0, service_name: %s}
log: {level: info, format: %s}
`

// TestTracingEndToEnd guards SPEC §11 through the process: sampled
// client traces are continued and exported; the upstream gets the
// upstream span's context; the access log and an OpenMetrics scrape carry
// the trace id; a reload that changes the exporter loses no span of a
// request in flight across it (the old exporter keeps it); shutdown
// flushes what is queued, well before the batch interval.
func TestTracingEndToEnd(t *testing.T) {
	c := otlptest.New(t)
	pub, adm, up := freeAddr(t), freeAddr(t), freeAddr(t)
	path := filepath.Join(t.TempDir(), "config.yaml")
	write := func(service, format string) {
		if err := os.WriteFile(path, fmt.Appendf(nil, traceE2EConfig, pub, adm, up, c.URL, service, format), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("e2e-one", "json")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	hup := make(chan os.Signal, 1)
	logs := &lockedBuffer{}
	done := make(chan int, 1)
	bin := deskgateBinary(t)
	go func() { done <- serveForTest(ctx, bin, path, hup, logs) }()
	waitFor(t, logs, `"msg":"deskgate started"`)

	client := &http.Client{Timeout: 5 * time.Second}
	get := func(url string, header ...string) (int, string) {
		req, _ := http.NewRequest("GET", url, nil)
		for i := 0; i+1 < len(header); i += 2 {
			req.Header.Set(header[i], header[i+1])
		}
		res, err := client.Do(req)
		if err != nil {
			return 0, err.Error()
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b)
	}
	const (
		traceA = "0af7651916cd43dd8448eb211c80319c"
		traceB = "4bf92f3577b34da6a3ce929d0e0e4736"
		traceC = "5cf92f3577b34da6a3ce929d0e0e4737"
		parent = "b7ad6b7169203331"
	)

	// A: in flight across the reload.
	slow := make(chan int, 1)
	go func() {
		code, _ := get("http://"+pub+"/api/v1/debug/slow?ms=600", "Traceparent", "00-"+traceA+"-"+parent+"-01", "X-Request-Id", "req-a")
		slow <- code
	}()
	time.Sleep(150 * time.Millisecond)
	write("e2e-two", "text")
	hup <- syscall.SIGHUP
	waitFor(t, logs, "tracing export changed")

	// B: on the new exporter; the upstream echoes what it received.
	code, body := get("http://"+pub+"/api/v1/debug/headers", "Traceparent", "00-"+traceB+"-"+parent+"-01", "Tracestate", "v=1", "X-Request-Id", "req-b")
	if code != 200 {
		t.Fatalf("B: %d %s", code, body)
	}
	var echoed map[string]any
	if err := json.Unmarshal([]byte(body), &echoed); err != nil {
		t.Fatal(err)
	}
	tp := fmt.Sprint(echoed["Traceparent"])
	if !strings.HasPrefix(tp, "[00-"+traceB+"-") || !strings.HasSuffix(tp, "-01]") || strings.Contains(tp, parent) {
		t.Errorf("upstream got traceparent %s, want a sampled child of the client's", tp)
	}
	if fmt.Sprint(echoed["Tracestate"]) != "[v=1]" {
		t.Errorf("upstream got tracestate %v", echoed["Tracestate"])
	}
	if code := <-slow; code != 200 {
		t.Fatalf("A: %d", code)
	}
	waitFor(t, logs, `"request_id":"req-a"`)
	waitFor(t, logs, "request_id=req-b")
	if !strings.Contains(logs.String(), `"request_id":"req-a","trace_id":"`+traceA+`"`) {
		t.Errorf("A's JSON access log line has no trace_id:\n%s", logs.String())
	}
	if !strings.Contains(logs.String(), "request_id=req-b trace_id="+traceB) {
		t.Errorf("B's text access log line has no trace_id:\n%s", logs.String())
	}

	// OpenMetrics: both histograms carry an exemplar of a sampled trace.
	req, _ := http.NewRequest("GET", "http://"+adm+"/metrics", nil)
	req.Header.Set("Accept", "application/openmetrics-text; version=1.0.0; charset=utf-8")
	res, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	scrape, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if ct := res.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/openmetrics-text") {
		t.Errorf("/metrics answered %q to an OpenMetrics scrape", ct)
	}
	for _, h := range []string{"deskgate_request_duration_seconds_bucket", "deskgate_upstream_duration_seconds_bucket"} {
		found := false
		for _, line := range strings.Split(string(scrape), "\n") {
			if strings.HasPrefix(line, h) && (strings.Contains(line, `# {trace_id="`+traceA+`"}`) || strings.Contains(line, `# {trace_id="`+traceB+`"}`)) {
				found = true
			}
		}
		if !found {
			t.Errorf("no %s line with an exemplar of trace %s or %s", h, traceA, traceB)
		}
	}
	if !strings.Contains(string(scrape), "deskgate_trace_spans_dropped_total 0") {
		t.Errorf("spans dropped:\n%s", grepLines(string(scrape), "deskgate_trace_spans_dropped"))
	}

	// C: just before shutdown, which must export it at once (the batch
	// interval is a second).
	if code, _ := get("http://"+pub+"/api/v1/debug/headers", "Traceparent", "00-"+traceC+"-"+parent+"-01"); code != 200 {
		t.Fatalf("C: %d", code)
	}
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("exit %d; log:\n%s", code, logs.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no exit 10s after shutdown")
	}
	spans := c.Spans()
	for _, want := range []struct{ trace, service, name string }{
		{traceA, "e2e-one", "GET /api/v1/debug/"},
		{traceB, "e2e-two", "GET /api/v1/debug/"},
		{traceC, "e2e-two", "GET /api/v1/debug/"},
	} {
		tr := otlptest.Trace(spans, want.trace)
		srv := otlptest.Named(tr, want.name)
		if len(srv) != 1 || srv[0].Service != want.service || srv[0].ParentSpanID != parent || len(otlptest.Named(tr, "GET")) != 1 {
			t.Errorf("trace %s: want a server span of %s under the client's span, and its upstream span:\n%s", want.trace, want.service, otlptest.Dump(tr))
		}
	}
}
