package proxy

import (
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/innovartx/deskgate/metrics"
)

// gatherRoute returns every series of the request-path metrics of h as
// "name{label=value,...}" -> value (a histogram's sample count).
func gatherRoute(t *testing.T, h *harness) map[string]float64 {
	m, _ := gatherLabels(t, h)
	return m
}

// seriesLabel is one label of one series.
type seriesLabel struct{ series, name, value string }

// gatherLabels is gatherRoute with every label of every series.
func gatherLabels(t *testing.T, h *harness) (map[string]float64, []seriesLabel) {
	t.Helper()
	// A collector may be registered with several registries: this one
	// sees the same series as the harness' own.
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(h.metrics.Requests, h.metrics.Rejections, h.metrics.RequestDuration,
		h.metrics.UpstreamDuration, h.metrics.UpstreamErrors, h.metrics.Normalized)
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	var labels []seriesLabel
	for _, f := range fams {
		for _, m := range f.GetMetric() {
			var b strings.Builder
			b.WriteString(f.GetName())
			b.WriteByte('{')
			for i, l := range m.GetLabel() {
				if i > 0 {
					b.WriteByte(',')
				}
				b.WriteString(l.GetName() + "=" + l.GetValue())
			}
			b.WriteByte('}')
			for _, l := range m.GetLabel() {
				labels = append(labels, seriesLabel{b.String(), l.GetName(), l.GetValue()})
			}
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				out[b.String()] = m.GetCounter().GetValue()
			case dto.MetricType_HISTOGRAM:
				out[b.String()] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return out, labels
}

// TestMetricLabelsBounded guards SPEC §6: `route` is the configured pattern
// or "unmatched", never a raw path, and `method` is a standard method or
// OTHER, so that no client can grow the number of series.
func TestMetricLabelsBounded(t *testing.T) {
	h := newHarness(t, harnessOpt{yaml: `
upstream: {url: "${UPSTREAM}"}
routes:
  - {pattern: "GET /api/v1/customers/{id}", auth: secret}
  - {pattern: "/api/v1/", auth: secret, rate_limit: false}
`})
	for _, id := range []string{"cus_1", "cus_2", "cus_3"} {
		if r := h.do("GET", "/api/v1/customers/"+id, "", "X-API-Key", skLive); r.StatusCode != 200 {
			t.Fatalf("GET %s: %d", id, r.StatusCode)
		}
	}
	for _, m := range []string{"PROPFIND", "BREW", "get"} {
		if r := h.do(m, "/api/v1/things/thing_42", "", "X-API-Key", skLive); r.StatusCode != 200 {
			t.Fatalf("%s: %d %s", m, r.StatusCode, r.body)
		}
	}
	for _, p := range []string{"/other/cus_9", "/" + skLive, "/x/app_secret"} {
		h.wantError(h.do("GET", p, "", "X-API-Key", skLive), 404, "NOT_FOUND")
	}

	got, labels := gatherLabels(t, h)
	for k, want := range map[string]float64{
		"deskgate_requests_total{method=GET,route=GET /api/v1/customers/{id},status=200}": 3,
		"deskgate_requests_total{method=OTHER,route=/api/v1/,status=200}":                 3,
		"deskgate_requests_total{method=GET,route=unmatched,status=404}":                  3,
		"deskgate_rejections_total{code=NOT_FOUND,route=unmatched}":                       3,
		"deskgate_request_duration_seconds{method=OTHER,route=/api/v1/}":                  3,
	} {
		if got[k] != want {
			t.Errorf("%s = %v, want %v", k, got[k], want)
		}
	}
	routes := map[string]bool{"GET /api/v1/customers/{id}": true, "/api/v1/": true, "unmatched": true}
	methods := map[string]bool{}
	for _, m := range metrics.Methods {
		methods[m] = true
	}
	for _, l := range labels {
		for _, bad := range []string{"cus_", "thing_42", "/other", "app_secret", "PROPFIND", "BREW", skLive[8:16]} {
			if strings.Contains(l.value, bad) {
				t.Errorf("series %s: %s=%q holds %q", l.series, l.name, l.value, bad)
			}
		}
		switch {
		case l.name == "route" && !routes[l.value]:
			t.Errorf("series %s: route %q is not a configured pattern", l.series, l.value)
		case l.name == "method" && !methods[l.value]:
			t.Errorf("series %s: method %q is not a standard method nor OTHER", l.series, l.value)
		}
	}
}

// TestUpstreamErrorKindsCounted guards SPEC §6's deskgate_upstream_errors_total
// kinds with the rejection each failure answers: a connection reset is
// `protocol` and a 502 BAD_GATEWAY, a missed header deadline is `timeout`
// and a 504 GATEWAY_TIMEOUT; neither is counted as a normalised response.
func TestUpstreamErrorKindsCounted(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	h := newHarness(t, harnessOpt{yaml: `
upstream: {url: "${UPSTREAM}", timeout: 10s}
routes:
  - {pattern: "/reset", auth: secret, rate_limit: false}
  - {pattern: "/slow", auth: secret, rate_limit: false, timeout: 100ms}
`, upstream: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/reset":
			if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
				conn.(*net.TCPConn).SetLinger(0)
				conn.Close()
			}
		case "/slow":
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}
	})})
	h.wantError(h.do("GET", "/reset", "", "X-API-Key", skLive), 502, "BAD_GATEWAY")
	h.wantError(h.do("GET", "/slow", "", "X-API-Key", skLive), 504, "GATEWAY_TIMEOUT")

	got := gatherRoute(t, h)
	for k, want := range map[string]float64{
		"deskgate_upstream_errors_total{kind=protocol,route=/reset}":   1,
		"deskgate_upstream_errors_total{kind=timeout,route=/slow}":     1,
		"deskgate_rejections_total{code=BAD_GATEWAY,route=/reset}":     1,
		"deskgate_rejections_total{code=GATEWAY_TIMEOUT,route=/slow}":  1,
		"deskgate_requests_total{method=GET,route=/reset,status=502}":  1,
		"deskgate_requests_total{method=GET,route=/slow,status=504}":   1,
		"deskgate_upstream_errors_total{kind=connect,route=/reset}":    0,
		"deskgate_normalized_responses_total{route=/reset,status=502}": 0,
	} {
		if got[k] != want {
			t.Errorf("%s = %v, want %v", k, got[k], want)
		}
	}
	for k, v := range got {
		if strings.HasPrefix(k, "deskgate_normalized_responses_total") && v != 0 {
			t.Errorf("%s = %v: deskgate's own 502/504 are not normalised upstream answers", k, v)
		}
	}
}

// TestUpstreamDurationObserved guards SPEC §6's
// deskgate_upstream_duration_seconds: one sample per exchange that got the
// upstream's response headers, on the route's pattern, and none for a
// request rejected before the upstream.
func TestUpstreamDurationObserved(t *testing.T) {
	h := newHarness(t, harnessOpt{upstream: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(5 * time.Millisecond)
		w.WriteHeader(http.StatusOK)
	})})
	for range 2 {
		if r := h.do("GET", "/api/v1/tickets", "", "X-API-Key", skLive); r.StatusCode != 200 {
			t.Fatalf("%d", r.StatusCode)
		}
	}
	h.wantError(h.do("GET", "/api/v1/tickets", ""), 401, "AUTH_API_KEY_MISSING")
	got := gatherRoute(t, h)
	if n := got["deskgate_upstream_duration_seconds{route=/api/v1/}"]; n != 2 {
		t.Errorf("deskgate_upstream_duration_seconds{route=/api/v1/} has %v samples, want 2", n)
	}
	for k, v := range got {
		if strings.HasPrefix(k, "deskgate_upstream_duration_seconds") && k != "deskgate_upstream_duration_seconds{route=/api/v1/}" && v != 0 {
			t.Errorf("%s has %v samples, want 0", k, v)
		}
	}
}
