package metrics

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestExemplars guards SPEC §11: the durations of a sampled request carry
// its trace id as an exemplar in the OpenMetrics exposition, and are
// counted like any other.
func TestExemplars(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg, "test")
	r := m.ForRoute("GET /api/v1/tickets/{id}", nil)
	const id = "4bf92f3577b34da6a3ce929d0e0e4736"
	r.ObserveTraced("GET", 200, 0.012, id)
	r.UpstreamTraced(0.010, id)
	r.Observe("GET", 200, 0.003)

	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{EnableOpenMetrics: true}))
	defer srv.Close()
	req, _ := http.NewRequest("GET", srv.URL, nil)
	req.Header.Set("Accept", "application/openmetrics-text; version=1.0.0")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	for _, name := range []string{"deskgate_request_duration_seconds_bucket", "deskgate_upstream_duration_seconds_bucket"} {
		found := false
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, name) && strings.Contains(line, `# {trace_id="`+id+`"}`) {
				found = true
			}
		}
		if !found {
			t.Errorf("no %s line with the exemplar trace_id %s in:\n%s", name, id, b)
		}
	}
	if n := testutil.ToFloat64(m.Requests.WithLabelValues("GET /api/v1/tickets/{id}", "GET", "200")); n != 2 {
		t.Errorf("requests_total %v, want 2", n)
	}
	if n := testutil.ToFloat64(m.TraceSpansDropped); n != 0 {
		t.Errorf("trace_spans_dropped_total %v at start, want 0", n)
	}
}
