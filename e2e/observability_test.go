package e2e

// Observability tests (SPEC §6, issue 6): the built binary is started in
// demo mode (serveForTest), driven with a scripted mix of traffic, and its /metrics
// scrape, its access log and the deploy/ files (Grafana dashboard,
// Prometheus rules and scrape config) are checked against each other.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.yaml.in/yaml/v3"

	"github.com/innovartx/deskgate/apierror"
	"github.com/innovartx/deskgate/metrics"
)

// Paths of the deploy files, relative to the repository's root (TestMain).
const (
	dashboardPath  = "deploy/grafana/deskgate.json"
	alertsPath     = "deploy/prometheus/alerts.yml"
	promConfigPath = "deploy/prometheus/prometheus.yml"
)

// obsProc is one deskgate process started by startObsProc.
type obsProc struct {
	pub, admin string
	logs       *lockedBuffer
	client     *http.Client
}

// startObsProc writes cfg (with {PUB}, {ADMIN}, {UP} and {DEAD} replaced by
// free loopback addresses) and, next to it, keys as keys.yaml, then runs the
// whole process in demo mode until the test ends. It returns once /readyz
// answers 200.
func startObsProc(t *testing.T, cfg, keys string) *obsProc {
	t.Helper()
	p := &obsProc{pub: freeAddr(t), admin: freeAddr(t), logs: &lockedBuffer{}}
	dead := obsDeadAddr(t)
	cfg = strings.NewReplacer("{PUB}", p.pub, "{ADMIN}", p.admin, "{UP}", freeAddr(t), "{DEAD}", dead).Replace(cfg)
	dir := t.TempDir()
	path := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	// auth.file is relative to the config.
	if err := os.WriteFile(filepath.Join(dir, "keys.yaml"), []byte(keys), 0o600); err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{}
	p.client = &http.Client{Timeout: 5 * time.Second, Transport: tr}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	bin := deskgateBinary(t)
	go func() { done <- serveForTest(ctx, bin, path, nil, p.logs) }()
	t.Cleanup(func() {
		cancel()
		tr.CloseIdleConnections()
		select {
		case code := <-done:
			if code != 0 {
				t.Errorf("deskgate exited %d; log:\n%s", code, p.logs.String())
			}
		case <-time.After(10 * time.Second):
			t.Errorf("deskgate did not stop 10s after shutdown")
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case code := <-done:
			done <- code
			t.Fatalf("deskgate exited %d at start-up; log:\n%s", code, p.logs.String())
		default:
		}
		if code, _, _ := p.get("http://"+p.admin+"/readyz", nil); code == 200 {
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready after 10s; log:\n%s", p.logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// obsDeadAddr returns the address of a closed listener: connecting to it is
// refused.
func obsDeadAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// get sends a GET with header (a header may hold several values) and
// returns the status, the body and the response headers; status 0 on a
// transport error.
func (p *obsProc) get(url string, header http.Header) (int, string, http.Header) {
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		return 0, err.Error(), nil
	}
	for k, vs := range header {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	res, err := p.client.Do(req)
	if err != nil {
		return 0, err.Error(), nil
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b), res.Header
}

// scrape returns the raw text exposition of the admin /metrics.
func (p *obsProc) scrape(t *testing.T) []byte {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+p.admin+"/metrics", nil)
	req.Header.Set("Accept", "text/plain; version=0.0.4")
	res, err := p.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("/metrics: %d %v", res.StatusCode, err)
	}
	if ct := res.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Fatalf("/metrics Content-Type %q, want the text format", ct)
	}
	return b
}

func parseObsScrape(t *testing.T, raw []byte) map[string]*dto.MetricFamily {
	t.Helper()
	parser := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := parser.TextToMetricFamilies(bytes.NewReader(raw))
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	return fams
}

// seriesKey names a label set canonically: `a="x",b="y"`, sorted by name.
func seriesKey(m *dto.Metric) string {
	pairs := make([]string, 0, len(m.GetLabel()))
	for _, l := range m.GetLabel() {
		pairs = append(pairs, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
	}
	sort.Strings(pairs)
	return strings.Join(pairs, ",")
}

// labelKey builds a canonical label set from name, value pairs.
func labelKey(kv ...string) string {
	pairs := make([]string, 0, len(kv)/2)
	for i := 0; i+1 < len(kv); i += 2 {
		pairs = append(pairs, fmt.Sprintf("%s=%q", kv[i], kv[i+1]))
	}
	sort.Strings(pairs)
	return strings.Join(pairs, ",")
}

// familyValues returns every series of family name with its value: the counter
// or gauge value, or the sample count of a histogram.
func familyValues(fams map[string]*dto.MetricFamily, name string) map[string]float64 {
	out := map[string]float64{}
	f := fams[name]
	if f == nil {
		return out
	}
	for _, m := range f.GetMetric() {
		switch {
		case m.Counter != nil:
			out[seriesKey(m)] = m.GetCounter().GetValue()
		case m.Gauge != nil:
			out[seriesKey(m)] = m.GetGauge().GetValue()
		case m.Histogram != nil:
			out[seriesKey(m)] = float64(m.GetHistogram().GetSampleCount())
		case m.Untyped != nil:
			out[seriesKey(m)] = m.GetUntyped().GetValue()
		}
	}
	return out
}

func nonZeroSeries(m map[string]float64) map[string]float64 {
	out := map[string]float64{}
	for k, v := range m {
		if v != 0 {
			out[k] = v
		}
	}
	return out
}

// diffObsSeries reports the difference between got and want, or "".
func diffObsSeries(got, want map[string]float64) string {
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(want)) {
		if g, ok := got[k]; !ok {
			fmt.Fprintf(&b, "  missing {%s} (want %v)\n", k, want[k])
		} else if g != want[k] {
			fmt.Fprintf(&b, "  {%s} = %v, want %v\n", k, g, want[k])
		}
	}
	for _, k := range slices.Sorted(maps.Keys(got)) {
		if _, ok := want[k]; !ok {
			fmt.Fprintf(&b, "  unexpected {%s} = %v\n", k, got[k])
		}
	}
	return b.String()
}

// Routes of mixConfig. The customers route is a wildcard pattern: its
// label must be the pattern, never the id in the path.
const (
	mixRouteHealth    = "GET /api/v1/health"
	mixRouteCustomer  = "GET /api/v1/customers/{externalId}"
	mixRouteReports   = "GET /api/v1/reports/"
	mixRouteAPI       = "/api/v1/"
	mixRouteUnmatched = metrics.Unmatched
)

// mixConfig has one route whose upstream is a closed listener. The 1m tier
// with the same limit as the 1s one makes the 4th request of a key denied
// even on a machine slow enough to spread four requests over a second.
const mixConfig = `
server: {listen: "{PUB}", shutdown_timeout: 5s}
admin: {listen: "{ADMIN}"}
upstream: {url: "http://{UP}", timeout: 5s}
auth: {store: file, file: keys.yaml, environments: [live]}
rate_limit:
  tiers: [{limit: 3, window: 1s}, {limit: 3, window: 1m}]
routes:
  - {pattern: "GET /api/v1/health", auth: none, rate_limit: false}
  - {pattern: "GET /api/v1/customers/{externalId}", auth: secret}
  - {pattern: "GET /api/v1/reports/", auth: secret, upstream: "http://{DEAD}"}
  - {pattern: "/api/v1/", auth: secret}
quotas:
  - {name: mix_reports, match: "GET /api/v1/reports/", limit: 1000000}
  - {name: mix_reports_shadow, match: "GET /api/v1/reports/", limit: 1000000, mode: shadow}
log: {level: info}
`

// Keys of the traffic mix, one app per scenario so that the budgets of
// the scenarios (per app, SPEC §4) do not mix.
const (
	mixKeyGood    = "sk_live_GoodGoodGoodGoodGoodGood"
	mixKeyLimited = "sk_live_LimitedLimitedLimitedLimit"
	mixKeyCrash   = "sk_live_CrashCrashCrashCrashCrash"
	mixKeyDead    = "sk_live_DeadDeadDeadDeadDeadDead"
	mixKeyPublic  = "pk_live_PublicPublicPublicPublic"
	spoofedAppID  = "app_spoofed_by_client"
)

// mixApps are the app ids of mixKeys: none may become a label value.
var mixApps = []string{"app_good", "app_limited", "app_crash", "app_dead", "app_public"}

// mixKeys is the key file of mixConfig (SPEC §3 `auth.store: file`).
const mixKeys = `
apps:
  - {id: app_good, keys: [{key: sk_live_GoodGoodGoodGoodGoodGood}]}
  - {id: app_limited, keys: [{key: sk_live_LimitedLimitedLimitedLimit}]}
  - {id: app_crash, keys: [{key: sk_live_CrashCrashCrashCrashCrash}]}
  - {id: app_dead, keys: [{key: sk_live_DeadDeadDeadDeadDeadDead}]}
  - {id: app_public, keys: [{key: pk_live_PublicPublicPublicPublic}]}
`

// expectedMix is what the scripted traffic must count.
type expectedMix struct {
	requests, rejections, upstreamErrors, normalized, decisions map[string]float64
	// duration is the request_duration_seconds sample count per route
	// and method; upstream the upstream_duration_seconds count per route.
	duration, upstream map[string]float64
}

// runMix sends the scripted traffic and checks each answer.
func runMix(t *testing.T, p *obsProc) expectedMix {
	t.Helper()
	key := func(k string) http.Header {
		return http.Header{"X-Api-Key": {k}, "X-App-Id": {spoofedAppID}}
	}
	want := func(path string, h http.Header, status int, code string) {
		t.Helper()
		got, body, _ := p.get("http://"+p.pub+path, h)
		if got != status || (code != "" && !strings.Contains(body, `"code":"`+code+`"`)) {
			t.Fatalf("GET %s: %d %s, want %d %s", path, got, body, status, code)
		}
	}
	// good: 200 through the wildcard route and the open health route.
	want("/api/v1/customers/cus_acme", key(mixKeyGood), 200, "")
	want("/api/v1/customers/cus_acme", key(mixKeyGood), 200, "")
	want("/api/v1/health", nil, 200, "")
	want("/api/v1/health", key("sk_live_"+strings.Repeat("h", 30)), 200, "")
	// missing key: 401, forbidden: a pk_ key on a secret route, 403.
	want("/api/v1/customers/cus_acme", nil, 401, "AUTH_API_KEY_MISSING")
	want("/api/v1/customers/cus_acme", key(mixKeyPublic), 403, "AUTH_API_KEY_FORBIDDEN")
	// limited: the 4th request of a key within a second.
	for range 3 {
		want("/api/v1/customers/cus_acme", key(mixKeyLimited), 200, "")
	}
	want("/api/v1/customers/cus_acme", key(mixKeyLimited), 429, "TOO_MANY_REQUESTS")
	// upstream 500 (an HTML stack trace), normalised.
	want("/api/v1/debug/crash", key(mixKeyCrash), 500, "INTERNAL_ERROR")
	// upstream down: 502, twice.
	want("/api/v1/reports/cus_acme", key(mixKeyDead), 502, "BAD_GATEWAY")
	want("/api/v1/reports/monthly", key(mixKeyDead), 502, "BAD_GATEWAY")
	// no route, with an id and a key in the raw path.
	want("/v2/cus_acme/"+mixKeyGood, key(mixKeyGood), 404, "NOT_FOUND")

	return expectedMix{
		requests: map[string]float64{
			labelKey("route", mixRouteCustomer, "method", "GET", "status", "200"):  5,
			labelKey("route", mixRouteCustomer, "method", "GET", "status", "401"):  1,
			labelKey("route", mixRouteCustomer, "method", "GET", "status", "403"):  1,
			labelKey("route", mixRouteCustomer, "method", "GET", "status", "429"):  1,
			labelKey("route", mixRouteHealth, "method", "GET", "status", "200"):    2,
			labelKey("route", mixRouteAPI, "method", "GET", "status", "500"):       1,
			labelKey("route", mixRouteReports, "method", "GET", "status", "502"):   2,
			labelKey("route", mixRouteUnmatched, "method", "GET", "status", "404"): 1,
		},
		rejections: map[string]float64{
			labelKey("route", mixRouteCustomer, "code", "AUTH_API_KEY_MISSING"):   1,
			labelKey("route", mixRouteCustomer, "code", "AUTH_API_KEY_FORBIDDEN"): 1,
			labelKey("route", mixRouteCustomer, "code", "TOO_MANY_REQUESTS"):      1,
			labelKey("route", mixRouteReports, "code", "BAD_GATEWAY"):             2,
			labelKey("route", mixRouteUnmatched, "code", "NOT_FOUND"):             1,
		},
		upstreamErrors: map[string]float64{
			labelKey("route", mixRouteReports, "kind", "connect"): 2,
		},
		normalized: map[string]float64{
			labelKey("route", mixRouteAPI, "status", "500"): 1,
		},
		// Admitted: good 2, limited 3, crash 1, dead 2. Denied: the 4th
		// limited request. The health route is not limited; rejected
		// keys never reach the limiter (SPEC §1 order of checks).
		decisions: map[string]float64{
			labelKey("store", "memory", "result", "allowed"):           8,
			labelKey("store", "memory", "result", "denied"):            1,
			labelKey("store", "redis", "result", "allowed"):            0,
			labelKey("store", "redis", "result", "denied"):             0,
			labelKey("store", "local_fallback", "result", "allowed"):   0,
			labelKey("store", "local_fallback", "result", "denied"):    0,
			labelKey("store", "local_deny_cache", "result", "allowed"): 0,
			labelKey("store", "local_deny_cache", "result", "denied"):  0,
		},
		duration: map[string]float64{
			labelKey("route", mixRouteCustomer, "method", "GET"):  8,
			labelKey("route", mixRouteHealth, "method", "GET"):    2,
			labelKey("route", mixRouteAPI, "method", "GET"):       1,
			labelKey("route", mixRouteReports, "method", "GET"):   2,
			labelKey("route", mixRouteUnmatched, "method", "GET"): 1,
		},
		// Exchanges that got response headers from an upstream.
		upstream: map[string]float64{
			labelKey("route", mixRouteCustomer): 5,
			labelKey("route", mixRouteHealth):   2,
			labelKey("route", mixRouteAPI):      1,
		},
	}
}

// specMetrics is SPEC §6's table: name, type and label names.
var specMetrics = map[string]struct {
	typ    dto.MetricType
	labels []string
}{
	"deskgate_requests_total":                {dto.MetricType_COUNTER, []string{"method", "route", "status"}},
	"deskgate_rejections_total":              {dto.MetricType_COUNTER, []string{"code", "route"}},
	"deskgate_request_duration_seconds":      {dto.MetricType_HISTOGRAM, []string{"method", "route"}},
	"deskgate_upstream_duration_seconds":     {dto.MetricType_HISTOGRAM, []string{"route"}},
	"deskgate_upstream_errors_total":         {dto.MetricType_COUNTER, []string{"kind", "route"}},
	"deskgate_normalized_responses_total":    {dto.MetricType_COUNTER, []string{"route", "status"}},
	"deskgate_ratelimit_decisions_total":     {dto.MetricType_COUNTER, []string{"result", "store"}},
	"deskgate_ratelimit_store_errors_total":  {dto.MetricType_COUNTER, nil},
	"deskgate_ratelimit_fallback_active":     {dto.MetricType_GAUGE, nil},
	"deskgate_ratelimit_store_evicting":      {dto.MetricType_GAUGE, nil}, // beyond SPEC §6's table: docs/rate-limits.md
	"deskgate_config_reloads_total":          {dto.MetricType_COUNTER, []string{"result"}},
	"deskgate_config_last_reload_successful": {dto.MetricType_GAUGE, nil},
	"deskgate_build_info":                    {dto.MetricType_GAUGE, []string{"goversion", "version"}},
	"deskgate_quota_reservations_total":      {dto.MetricType_COUNTER, []string{"quota", "result"}}, // SPEC §9
	"deskgate_shadow_rejections_total":       {dto.MetricType_COUNTER, []string{"code", "route"}},   // SPEC §10
	"deskgate_upstream_ratelimited_total":    {dto.MetricType_COUNTER, nil},                         // beyond the SPEC: docs/operating.md
	// SPEC §12. The expiry gauge has series only with TLS on.
	"deskgate_tls_handshake_errors_total":               {dto.MetricType_COUNTER, nil},
	"deskgate_tls_certificate_expiry_timestamp_seconds": {dto.MetricType_GAUGE, []string{"name"}},
	"deskgate_trace_spans_dropped_total":                {dto.MetricType_COUNTER, nil}, // SPEC §11
}

// tlsOnlySeries are metrics with series only when server.tls is on; the
// mix runs plain HTTP, and TestHTTP2Contract checks them over HTTPS.
var tlsOnlySeries = map[string]bool{"deskgate_tls_certificate_expiry_timestamp_seconds": true}

// TestMetricsAfterTrafficMix guards SPEC §6's metrics end to end: after a
// scripted mix of traffic through the whole process (good, missing key,
// forbidden, limited, upstream 500, upstream down, no route), the admin
// /metrics scrape, parsed with expfmt, holds exactly the expected value per
// label set; every metric has SPEC §6's name, type and labels; no label
// value is a raw path, a key or an app id; the scrape passes `promtool check
// metrics`; and every metric the Grafana dashboard and the Prometheus rules
// name exists in it.
func TestMetricsAfterTrafficMix(t *testing.T) {
	p := startObsProc(t, mixConfig, mixKeys)
	want := runMix(t, p)
	raw := p.scrape(t)
	fams := parseObsScrape(t, raw)

	// SPEC §6: the metric names, types and labels of the table.
	t.Run("names_types_labels", func(t *testing.T) {
		for name, spec := range specMetrics {
			f := fams[name]
			if f == nil && tlsOnlySeries[name] {
				continue
			}
			if f == nil {
				t.Errorf("%s missing from /metrics", name)
				continue
			}
			if f.GetType() != spec.typ {
				t.Errorf("%s is a %s, SPEC §6 says %s", name, f.GetType(), spec.typ)
			}
			for _, m := range f.GetMetric() {
				var names []string
				for _, l := range m.GetLabel() {
					names = append(names, l.GetName())
				}
				sort.Strings(names)
				if !slices.Equal(names, spec.labels) {
					t.Errorf("%s{%s}: labels %v, SPEC §6 says %v", name, seriesKey(m), names, spec.labels)
				}
			}
		}
		for name := range fams {
			if strings.HasPrefix(name, "deskgate_") {
				if _, ok := specMetrics[name]; !ok {
					t.Errorf("%s is not a metric of SPEC §6", name)
				}
			}
		}
		for _, std := range []string{"go_goroutines", "go_memstats_alloc_bytes", "process_resident_memory_bytes", "process_start_time_seconds"} {
			if fams[std] == nil {
				t.Errorf("%s missing: SPEC §6 wants the Go and process collectors", std)
			}
		}
	})

	// SPEC §6: the counters count each answer once, with its route
	// pattern, method and status.
	t.Run("requests_total", func(t *testing.T) {
		if d := diffObsSeries(familyValues(fams, "deskgate_requests_total"), want.requests); d != "" {
			t.Errorf("deskgate_requests_total:\n%s", d)
		}
	})
	// SPEC §6: every error deskgate emits itself counts once, by its code;
	// a normalised upstream error (the 500) is not a rejection.
	t.Run("rejections_total", func(t *testing.T) {
		got := familyValues(fams, "deskgate_rejections_total")
		if d := diffObsSeries(nonZeroSeries(got), want.rejections); d != "" {
			t.Errorf("deskgate_rejections_total (non-zero series):\n%s", d)
		}
		own := map[string]bool{}
		for _, c := range apierror.Own {
			own[string(c)] = true
		}
		for _, m := range fams["deskgate_rejections_total"].GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "code" && !own[l.GetValue()] {
					t.Errorf("rejection code %q is not one deskgate emits itself (SPEC §1)", l.GetValue())
				}
			}
		}
	})
	// SPEC §6: upstream failures by kind; a refused connection is connect.
	t.Run("upstream_errors_total", func(t *testing.T) {
		if d := diffObsSeries(familyValues(fams, "deskgate_upstream_errors_total"), want.upstreamErrors); d != "" {
			t.Errorf("deskgate_upstream_errors_total:\n%s", d)
		}
	})
	// SPEC §2, §6: the HTML 500 was rewritten, nothing else.
	t.Run("normalized_responses_total", func(t *testing.T) {
		if d := diffObsSeries(familyValues(fams, "deskgate_normalized_responses_total"), want.normalized); d != "" {
			t.Errorf("deskgate_normalized_responses_total:\n%s", d)
		}
	})
	// SPEC §4, §6: one decision per limited request, by store and result;
	// every store's series exist from the start.
	t.Run("ratelimit_decisions_total", func(t *testing.T) {
		if d := diffObsSeries(familyValues(fams, "deskgate_ratelimit_decisions_total"), want.decisions); d != "" {
			t.Errorf("deskgate_ratelimit_decisions_total:\n%s", d)
		}
		for name, v := range map[string]float64{
			"deskgate_ratelimit_store_errors_total":  0,
			"deskgate_ratelimit_fallback_active":     0,
			"deskgate_ratelimit_store_evicting":      0,
			"deskgate_config_last_reload_successful": 1,
		} {
			if d := diffObsSeries(familyValues(fams, name), map[string]float64{"": v}); d != "" {
				t.Errorf("%s:\n%s", name, d)
			}
		}
		if d := diffObsSeries(familyValues(fams, "deskgate_config_reloads_total"), map[string]float64{
			labelKey("result", "success"): 0, labelKey("result", "failure"): 0,
		}); d != "" {
			t.Errorf("deskgate_config_reloads_total:\n%s", d)
		}
	})
	// SPEC §6: one duration sample per answered request, by route and
	// method; buckets from sub-millisecond to tens of seconds.
	t.Run("request_duration_seconds", func(t *testing.T) {
		got := familyValues(fams, "deskgate_request_duration_seconds")
		if d := diffObsSeries(nonZeroSeries(got), want.duration); d != "" {
			t.Errorf("deskgate_request_duration_seconds sample counts:\n%s", d)
		}
		checkObsBuckets(t, fams["deskgate_request_duration_seconds"])
	})
	// SPEC §6: one upstream duration sample per exchange that reached an
	// upstream and got its response headers.
	t.Run("upstream_duration_seconds", func(t *testing.T) {
		got := familyValues(fams, "deskgate_upstream_duration_seconds")
		// A failed connect got no response headers: not an upstream
		// response time (the access log's upstream_ms still shows the
		// wait).
		if n := got[labelKey("route", mixRouteReports)]; n != 0 {
			t.Errorf("deskgate_upstream_duration_seconds{route=%q} has %v samples, want 0", mixRouteReports, n)
		}
		delete(got, labelKey("route", mixRouteReports))
		if d := diffObsSeries(nonZeroSeries(got), want.upstream); d != "" {
			t.Errorf("deskgate_upstream_duration_seconds sample counts:\n%s", d)
		}
		checkObsBuckets(t, fams["deskgate_upstream_duration_seconds"])
	})
	// SPEC §6: deskgate_build_info is 1 with the version and Go version.
	t.Run("build_info", func(t *testing.T) {
		if d := diffObsSeries(familyValues(fams, "deskgate_build_info"), map[string]float64{
			labelKey("version", testVersion, "goversion", runtime.Version()): 1,
		}); d != "" {
			t.Errorf("deskgate_build_info:\n%s", d)
		}
	})
	// SPEC §6: `route` is the configured pattern (or unmatched), never a
	// raw path; no key or app id is ever a label.
	t.Run("no_raw_paths_keys_or_app_ids", func(t *testing.T) {
		routes := map[string]bool{mixRouteHealth: true, mixRouteCustomer: true, mixRouteReports: true, mixRouteAPI: true, mixRouteUnmatched: true}
		methods := map[string]bool{}
		for _, m := range metrics.Methods {
			methods[m] = true
		}
		forbidden := append([]string{"cus_acme", "monthly", "/v2/", spoofedAppID, "app_", "sk_", "pk_"}, mixApps...)
		for _, k := range []string{mixKeyGood, mixKeyLimited, mixKeyCrash, mixKeyDead, mixKeyPublic} {
			forbidden = append(forbidden, k[8:16])
		}
		for name, f := range fams {
			for _, m := range f.GetMetric() {
				for _, l := range m.GetLabel() {
					v := l.GetValue()
					for _, bad := range forbidden {
						if strings.Contains(v, bad) {
							t.Errorf("%s{%s}: label %s=%q holds %q", name, seriesKey(m), l.GetName(), v, bad)
						}
					}
					if !strings.HasPrefix(name, "deskgate_") {
						continue
					}
					switch l.GetName() {
					case "route":
						if !routes[v] {
							t.Errorf("%s{%s}: route %q is not a configured pattern nor %q", name, seriesKey(m), v, mixRouteUnmatched)
						}
					case "method":
						if !methods[v] {
							t.Errorf("%s{%s}: method %q", name, seriesKey(m), v)
						}
					case "status":
						if !regexp.MustCompile(`^[1-5][0-9][0-9]$`).MatchString(v) {
							t.Errorf("%s{%s}: status %q", name, seriesKey(m), v)
						}
					}
				}
			}
		}
	})
	// The scrape is clean for Prometheus' own linter.
	t.Run("promtool_check_metrics", func(t *testing.T) {
		promtool := needPromtool(t)
		cmd := exec.Command(promtool, "check", "metrics")
		cmd.Stdin = bytes.NewReader(raw)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("promtool check metrics: %v\n%s", err, out)
		} else {
			t.Logf("promtool check metrics < /metrics (%d bytes): clean%s", len(raw), out)
		}
	})
	// Every metric the dashboard and the rules name is in this scrape (or
	// is a recording rule of alerts.yml, or Prometheus' own `up`).
	t.Run("deploy_expressions_name_existing_metrics", func(t *testing.T) {
		exprs := dashboardExprs(t)
		rules := loadPromRules(t)
		recorded := map[string]bool{}
		for _, r := range rules {
			exprs = append(exprs, obsExpr{"alerts.yml " + r.Record + r.Alert, r.Expr})
			if r.Record != "" {
				recorded[r.Record] = true
			}
		}
		used := map[string]bool{}
		for _, e := range exprs {
			names := promMetricNames(e.expr)
			if len(names) == 0 {
				t.Errorf("%s: no metric name found in %q", e.where, e.expr)
			}
			for _, n := range names {
				switch {
				case strings.Contains(n, ":"):
					if !recorded[n] {
						t.Errorf("%s: %q is not a recording rule of %s", e.where, n, alertsPath)
					}
				case n == "up":
				default:
					base := obsHistogramBase(fams, n)
					if fams[base] == nil && !tlsOnlySeries[base] {
						t.Errorf("%s: metric %q is not in deskgate's /metrics (expr %s)", e.where, n, e.expr)
					}
					used[base] = true
				}
			}
		}
		// The dashboard and the rules cover every metric of SPEC §6.
		for name := range specMetrics {
			if !used[name] {
				t.Errorf("no dashboard panel nor rule uses %s", name)
			}
		}
	})
}

// checkObsBuckets asserts the classic buckets of a histogram span a gateway's
// latencies: from under a millisecond to tens of seconds (issue 6).
func checkObsBuckets(t *testing.T, f *dto.MetricFamily) {
	t.Helper()
	if f == nil || len(f.GetMetric()) == 0 {
		t.Fatal("histogram missing")
	}
	for _, m := range f.GetMetric() {
		b := m.GetHistogram().GetBucket()
		if len(b) < 10 {
			t.Fatalf("{%s}: %d buckets", seriesKey(m), len(b))
		}
		if lo, hi := b[0].GetUpperBound(), b[len(b)-1].GetUpperBound(); lo > 0.0005 || hi < 10 {
			t.Errorf("{%s}: buckets from %vs to %vs, want sub-millisecond to at least 10s", seriesKey(m), lo, hi)
		}
		if c := m.GetHistogram().GetSampleCount(); c > 0 && m.GetHistogram().GetSampleSum() <= 0 {
			t.Errorf("{%s}: %d samples with sum %v", seriesKey(m), c, m.GetHistogram().GetSampleSum())
		}
	}
}

// obsHistogramBase maps a `_bucket`, `_sum` or `_count` series name to its
// histogram or summary family when the scrape has one.
func obsHistogramBase(fams map[string]*dto.MetricFamily, name string) string {
	for _, suf := range []string{"_bucket", "_sum", "_count"} {
		base, ok := strings.CutSuffix(name, suf)
		if !ok {
			continue
		}
		if f := fams[base]; f != nil && (f.GetType() == dto.MetricType_HISTOGRAM || f.GetType() == dto.MetricType_SUMMARY) {
			return base
		}
	}
	return name
}

// needPromtool returns promtool's path, or skips loudly; in CI (CI=true)
// a missing promtool fails instead.
func needPromtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("promtool not found in CI (Debian package `prometheus`, installed by .ci/run): %v", err)
		}
		t.Skipf("SKIPPED: promtool not found (apt-get install prometheus); CI=true makes this a failure: %v", err)
	}
	return p
}

// obsExpr is one PromQL expression of the deploy files.
type obsExpr struct{ where, expr string }

// grafanaVars are the dashboard's variables, replaced by values that make
// each expression plain PromQL.
var grafanaVars = strings.NewReplacer(
	"$__rate_interval", "5m", "$__interval", "1m", "$__range", "1h",
	"${datasource}", "x", "$job", ".*", "$route", ".*",
)

func loadObsDashboard(t *testing.T) map[string]any {
	t.Helper()
	b, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	var d map[string]any
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("%s is not valid JSON: %v", dashboardPath, err)
	}
	if dec.More() {
		t.Fatalf("%s: trailing data after the dashboard object", dashboardPath)
	}
	return d
}

// dashboardPanels returns every panel of the dashboard, rows' nested panels
// included.
func dashboardPanels(d map[string]any) []map[string]any {
	var out []map[string]any
	var walk func(v any)
	walk = func(v any) {
		list, _ := v.([]any)
		for _, x := range list {
			if p, ok := x.(map[string]any); ok {
				out = append(out, p)
				walk(p["panels"])
			}
		}
	}
	walk(d["panels"])
	return out
}

// dashboardExprs returns every targets[].expr of every panel and every
// query of a query variable, with Grafana's variables substituted.
func dashboardExprs(t *testing.T) []obsExpr {
	t.Helper()
	d := loadObsDashboard(t)
	var out []obsExpr
	for _, p := range dashboardPanels(d) {
		targets, _ := p["targets"].([]any)
		for i, x := range targets {
			tg, _ := x.(map[string]any)
			expr, _ := tg["expr"].(string)
			if expr == "" {
				t.Errorf("panel %q: targets[%d] has no expr", p["title"], i)
				continue
			}
			out = append(out, obsExpr{fmt.Sprintf("dashboard panel %q target %v", p["title"], tg["refId"]), grafanaVars.Replace(expr)})
		}
	}
	tmpl, _ := d["templating"].(map[string]any)
	vars, _ := tmpl["list"].([]any)
	for _, x := range vars {
		v, _ := x.(map[string]any)
		if v["type"] != "query" {
			continue
		}
		q, _ := v["query"].(string)
		if m, ok := v["query"].(map[string]any); ok {
			q, _ = m["query"].(string)
		}
		// label_values(<series selector>, label) names a metric too.
		if m := regexp.MustCompile(`^label_values\((.*),\s*\w+\)$`).FindStringSubmatch(q); m != nil {
			q = m[1]
		}
		out = append(out, obsExpr{fmt.Sprintf("dashboard variable %q", v["name"]), grafanaVars.Replace(q)})
	}
	if len(out) < 10 {
		t.Fatalf("only %d expressions found in %s", len(out), dashboardPath)
	}
	return out
}

// promRule is one rule of alerts.yml.
type promRule struct {
	Record      string            `yaml:"record"`
	Alert       string            `yaml:"alert"`
	Expr        string            `yaml:"expr"`
	For         string            `yaml:"for"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

func loadPromRules(t *testing.T) []promRule {
	t.Helper()
	b, err := os.ReadFile(alertsPath)
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Groups []struct {
			Name  string     `yaml:"name"`
			Rules []promRule `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(b, &f); err != nil {
		t.Fatalf("%s: %v", alertsPath, err)
	}
	var out []promRule
	for _, g := range f.Groups {
		out = append(out, g.Rules...)
	}
	if len(out) == 0 {
		t.Fatalf("%s has no rules", alertsPath)
	}
	return out
}

var (
	promString = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|` + "`[^`]*`")
	promIdent  = regexp.MustCompile(`[A-Za-z_:][A-Za-z0-9_:]*`)
)

// promMetricNames returns the metric names of a PromQL expression: outside
// string literals, identifiers with a colon (recording rules) or starting
// with deskgate_, go_ or process_, and `up`.
func promMetricNames(expr string) []string {
	expr = promString.ReplaceAllString(expr, `""`)
	var out []string
	for _, loc := range promIdent.FindAllStringIndex(expr, -1) {
		if loc[0] > 0 && (expr[loc[0]-1] == '$' || expr[loc[0]-1] >= '0' && expr[loc[0]-1] <= '9') {
			continue // a Grafana variable or a duration's unit
		}
		id := expr[loc[0]:loc[1]]
		switch {
		case strings.Contains(id, ":"), id == "up",
			strings.HasPrefix(id, "deskgate_"), strings.HasPrefix(id, "go_"), strings.HasPrefix(id, "process_"):
			if !slices.Contains(out, id) {
				out = append(out, id)
			}
		}
	}
	return out
}

// TestMetricNameExtraction guards the extractor the deploy tests rely on:
// strings, label names, functions, durations and Grafana variables are
// not metric names.
func TestMetricNameExtraction(t *testing.T) {
	got := promMetricNames(`sum by (route, le) (rate(deskgate_request_duration_seconds_bucket{route=~"deskgate_fake|x",code="up"}[5m] offset 1h)) / on (job) job:deskgate_x:rate5m and up == 0 or go_goroutines > process_open_fds`)
	want := []string{"deskgate_request_duration_seconds_bucket", "job:deskgate_x:rate5m", "up", "go_goroutines", "process_open_fds"}
	if !slices.Equal(got, want) {
		t.Errorf("promMetricNames = %q, want %q", got, want)
	}
}

// TestGrafanaDashboard guards deploy/grafana/deskgate.json (issue 6): valid
// Grafana JSON without __inputs, a `datasource` variable of type datasource
// for Prometheus used by every panel and every query, and a multi-value
// `route` variable over deskgate_requests_total's route label.
func TestGrafanaDashboard(t *testing.T) {
	d := loadObsDashboard(t)
	if _, ok := d["__inputs"]; ok {
		t.Error("the dashboard has __inputs: it must import without a datasource mapping step")
	}
	if v, err := d["schemaVersion"].(json.Number).Int64(); err != nil || v < 36 {
		t.Errorf("schemaVersion %v, want 36 or later", d["schemaVersion"])
	}
	for _, k := range []string{"title", "uid"} {
		if s, _ := d[k].(string); s == "" {
			t.Errorf("no %s", k)
		}
	}
	tmpl, _ := d["templating"].(map[string]any)
	list, _ := tmpl["list"].([]any)
	vars := map[string]map[string]any{}
	for _, x := range list {
		v, _ := x.(map[string]any)
		name, _ := v["name"].(string)
		vars[name] = v
	}
	ds := vars["datasource"]
	if ds == nil || ds["type"] != "datasource" || ds["query"] != "prometheus" {
		t.Fatalf("no datasource variable of type datasource, query prometheus: %v", ds)
	}
	wantDS := map[string]any{"type": "prometheus", "uid": "${datasource}"}
	route := vars["route"]
	if route == nil || route["type"] != "query" || route["multi"] != true || route["includeAll"] != true {
		t.Errorf("route variable: want a multi-value query variable with All: %v", route)
	} else {
		q, _ := json.Marshal(route["query"])
		if !regexp.MustCompile(`label_values\(deskgate_requests_total(\{[^}]*\})?, ?route\)`).Match(q) {
			t.Errorf("route variable query %s, want label_values(deskgate_requests_total, route)", q)
		}
	}
	for name, v := range vars {
		if v["type"] == "query" && !sameJSON(v["datasource"], wantDS) {
			t.Errorf("variable %q: datasource %v, want %v", name, v["datasource"], wantDS)
		}
	}

	ids := map[string]bool{}
	queries := 0
	for _, p := range dashboardPanels(d) {
		title, _ := p["title"].(string)
		id := fmt.Sprint(p["id"])
		if ids[id] {
			t.Errorf("panel %q: duplicate id %s", title, id)
		}
		ids[id] = true
		if gp, ok := p["gridPos"].(map[string]any); !ok || gp["w"] == nil || gp["h"] == nil {
			t.Errorf("panel %q: no gridPos", title)
		}
		if p["type"] == "row" {
			if p["targets"] != nil {
				t.Errorf("row %q has targets", title)
			}
			continue
		}
		if title == "" {
			t.Errorf("panel %s has no title", id)
		}
		if !sameJSON(p["datasource"], wantDS) {
			t.Errorf("panel %q: datasource %v, want %v", title, p["datasource"], wantDS)
		}
		targets, _ := p["targets"].([]any)
		if len(targets) == 0 {
			t.Errorf("panel %q has no query", title)
		}
		for _, x := range targets {
			tg, _ := x.(map[string]any)
			queries++
			if !sameJSON(tg["datasource"], wantDS) {
				t.Errorf("panel %q target %v: datasource %v, want %v", title, tg["refId"], tg["datasource"], wantDS)
			}
			if expr, _ := tg["expr"].(string); strings.Contains(expr, "deskgate_requests_total") && !strings.Contains(expr, `route=~"$route"`) {
				t.Errorf("panel %q: %s ignores the route variable", title, expr)
			}
		}
	}
	if queries < 15 {
		t.Errorf("only %d queries", queries)
	}
}

func sameJSON(a, b any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return bytes.Equal(x, y)
}

// TestAlertRules guards deploy/prometheus/alerts.yml (issue 6): the alerts
// operators need exist, each with a severity, a summary, a description and
// a runbook that says what it means, what to check and what to do.
func TestAlertRules(t *testing.T) {
	alerts := map[string]promRule{}
	for _, r := range loadPromRules(t) {
		if r.Alert != "" {
			if _, dup := alerts[r.Alert]; dup {
				t.Errorf("alert %s defined twice", r.Alert)
			}
			alerts[r.Alert] = r
		}
	}
	for _, name := range []string{
		"DeskgateRateLimitFallback", "DeskgateRateLimitStoreErrors", "DeskgateUpstreamErrorRatio",
		"DeskgateHigh5xxRatio", "DeskgateConfigReloadFailed", "DeskgateAuthRejectionSpike", "DeskgateDown",
		"DeskgateRedisEvictionPolicy", "DeskgateShadowLimitWouldRefuse",
		"DeskgateTLSCertificateExpiringSoon",
	} {
		r, ok := alerts[name]
		if !ok {
			t.Errorf("no alert %s", name)
			continue
		}
		if r.Labels["severity"] == "" {
			t.Errorf("%s: no severity label", name)
		}
		for _, a := range []string{"summary", "description", "runbook"} {
			if strings.TrimSpace(r.Annotations[a]) == "" {
				t.Errorf("%s: no %s annotation", name, a)
			}
		}
		rb := r.Annotations["runbook"]
		for _, part := range []string{"Meaning:", "Check", "Act:"} {
			if !strings.Contains(rb, part) {
				t.Errorf("%s: the runbook does not say %q", name, part)
			}
		}
		if len(rb) < 300 {
			t.Errorf("%s: a %d-character runbook is not a runbook", name, len(rb))
		}
	}
}

// TestPromtoolDeployFiles runs Prometheus' own checks on the deploy files:
// `promtool check rules` on alerts.yml, `promtool check config` on
// prometheus.yml (which loads alerts.yml relative to itself), the
// dashboard's PromQL through `promtool check rules`, and `promtool test
// rules` scenarios in which each alert fires when it should and only then.
func TestPromtoolDeployFiles(t *testing.T) {
	promtool := needPromtool(t)
	run := func(t *testing.T, args ...string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, promtool, args...).CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		} else {
			t.Logf("promtool %s:\n%s", strings.Join(args, " "), out)
		}
	}
	t.Run("check_rules", func(t *testing.T) { run(t, "check", "rules", alertsPath) })
	t.Run("check_config", func(t *testing.T) { run(t, "check", "config", promConfigPath) })
	t.Run("dashboard_promql", func(t *testing.T) {
		// Each dashboard expression as a recording rule: promtool parses
		// every one of them.
		type rec struct {
			Record string `yaml:"record"`
			Expr   string `yaml:"expr"`
		}
		var rules []rec
		for i, e := range dashboardExprs(t) {
			if strings.HasPrefix(e.where, "dashboard variable") {
				continue
			}
			rules = append(rules, rec{fmt.Sprintf("dashboard:expr%d", i), e.expr})
		}
		b, err := yaml.Marshal(map[string]any{"groups": []any{map[string]any{"name": "dashboard", "rules": rules}}})
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(t.TempDir(), "dashboard_rules.yml")
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		run(t, "check", "rules", path)
	})
	t.Run("alert_scenarios", func(t *testing.T) {
		run(t, "test", "rules", alertScenarios(t, t.TempDir()))
	})
}

// alertScenarios writes alerts.yml without its annotations (the scenarios
// check when alerts fire and with which labels, not their prose) and a
// promtool unit-test file that loads it; it returns the test file's path.
func alertScenarios(t *testing.T, dir string) string {
	t.Helper()
	b, err := os.ReadFile(alertsPath)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	groups, _ := doc["groups"].([]any)
	for _, g := range groups {
		rs, _ := g.(map[string]any)["rules"].([]any)
		for _, r := range rs {
			delete(r.(map[string]any), "annotations")
		}
	}
	if b, err = yaml.Marshal(doc); err != nil {
		t.Fatal(err)
	}
	rules := filepath.Join(dir, "rules.yml")
	if err := os.WriteFile(rules, b, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := filepath.Join(dir, "tests.yml")
	body := strings.ReplaceAll(alertScenarioTests, "{RULES}", rules)
	if err := os.WriteFile(tests, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return tests
}

// alertScenarioTests are promtool unit tests of the alerts: in each group
// one series is in trouble and one is healthy; only the first may fire,
// and only after its `for`.
const alertScenarioTests = `
rule_files: ["{RULES}"]
evaluation_interval: 30s
tests:
  # DeskgateDown: a target down for 2m.
  - interval: 1m
    input_series:
      - series: 'up{job="deskgate",instance="a:9090"}'
        values: '1 1 0x20'
      - series: 'up{job="deskgate",instance="b:9090"}'
        values: '1x22'
    alert_rule_test:
      - {eval_time: 3m, alertname: DeskgateDown, exp_alerts: []}
      - eval_time: 6m
        alertname: DeskgateDown
        exp_alerts:
          - exp_labels: {severity: critical, job: deskgate, instance: "a:9090"}

  # DeskgateRateLimitFallback: the fallback gauge at 1 for 5m.
  - interval: 1m
    input_series:
      - series: 'deskgate_ratelimit_fallback_active{job="deskgate",instance="a:9090"}'
        values: '0 0 1x20'
      - series: 'deskgate_ratelimit_fallback_active{job="deskgate",instance="b:9090"}'
        values: '0 1 0 1 0 1 0 1 0 1 0 1 0 1 0 1 0 1 0 1 0 1'
    alert_rule_test:
      - {eval_time: 5m, alertname: DeskgateRateLimitFallback, exp_alerts: []}
      - eval_time: 10m
        alertname: DeskgateRateLimitFallback
        exp_alerts:
          - exp_labels: {severity: warning, job: deskgate, instance: "a:9090"}

  # DeskgateRateLimitStoreErrors: 10 errors a minute against 1.
  - interval: 1m
    input_series:
      - series: 'deskgate_ratelimit_store_errors_total{job="deskgate",instance="a:9090"}'
        values: '0+10x30'
      - series: 'deskgate_ratelimit_store_errors_total{job="deskgate",instance="b:9090"}'
        values: '0+1x30'
    alert_rule_test:
      - eval_time: 15m
        alertname: DeskgateRateLimitStoreErrors
        exp_alerts:
          - exp_labels: {severity: warning, job: deskgate, instance: "a:9090"}

  # DeskgateRedisEvictionPolicy: instance a reads an allkeys-* policy from
  # 2m on; instance b a safe one.
  - interval: 1m
    input_series:
      - series: 'deskgate_ratelimit_store_evicting{job="deskgate",instance="a:9090"}'
        values: '0 0 1x30'
      - series: 'deskgate_ratelimit_store_evicting{job="deskgate",instance="b:9090"}'
        values: '0x32'
    alert_rule_test:
      - {eval_time: 8m, alertname: DeskgateRedisEvictionPolicy, exp_alerts: []}
      - eval_time: 15m
        alertname: DeskgateRedisEvictionPolicy
        exp_alerts:
          - exp_labels: {severity: warning, job: deskgate, instance: "a:9090"}

  # DeskgateConfigReloadFailed: the last reload refused.
  - interval: 1m
    input_series:
      - series: 'deskgate_config_last_reload_successful{job="deskgate",instance="a:9090"}'
        values: '1 1 0x10'
      - series: 'deskgate_config_last_reload_successful{job="deskgate",instance="b:9090"}'
        values: '1x12'
    alert_rule_test:
      - eval_time: 5m
        alertname: DeskgateConfigReloadFailed
        exp_alerts:
          - exp_labels: {severity: warning, job: deskgate, instance: "a:9090"}

  # DeskgateUpstreamErrorRatio: route /a fails 1 request in 11 (9%),
  # route /b 1 in 101 (1%), route /c fails everything but has 1 request
  # a minute (below the traffic floor).
  - interval: 1m
    input_series:
      - series: 'deskgate_requests_total{job="deskgate",instance="a:9090",route="/a",method="GET",status="200"}'
        values: '0+600x40'
      - series: 'deskgate_requests_total{job="deskgate",instance="a:9090",route="/a",method="GET",status="502"}'
        values: '0+60x40'
      - series: 'deskgate_upstream_errors_total{job="deskgate",instance="a:9090",route="/a",kind="connect"}'
        values: '0+60x40'
      - series: 'deskgate_requests_total{job="deskgate",instance="a:9090",route="/b",method="GET",status="200"}'
        values: '0+600x40'
      - series: 'deskgate_requests_total{job="deskgate",instance="a:9090",route="/b",method="GET",status="504"}'
        values: '0+6x40'
      - series: 'deskgate_upstream_errors_total{job="deskgate",instance="a:9090",route="/b",kind="timeout"}'
        values: '0+6x40'
      - series: 'deskgate_requests_total{job="deskgate",instance="a:9090",route="/c",method="GET",status="502"}'
        values: '0+1x40'
      - series: 'deskgate_upstream_errors_total{job="deskgate",instance="a:9090",route="/c",kind="connect"}'
        values: '0+1x40'
    alert_rule_test:
      - {eval_time: 8m, alertname: DeskgateUpstreamErrorRatio, exp_alerts: []}
      - eval_time: 25m
        alertname: DeskgateUpstreamErrorRatio
        exp_alerts:
          - exp_labels: {severity: warning, job: deskgate, route: /a}

  # DeskgateHigh5xxRatio: job a answers 9% 5xx, job b 1%.
  - interval: 1m
    input_series:
      - series: 'deskgate_requests_total{job="a",instance="a:9090",route="/r",method="GET",status="200"}'
        values: '0+600x40'
      - series: 'deskgate_requests_total{job="a",instance="a:9090",route="/r",method="GET",status="503"}'
        values: '0+60x40'
      - series: 'deskgate_requests_total{job="b",instance="b:9090",route="/r",method="GET",status="200"}'
        values: '0+600x40'
      - series: 'deskgate_requests_total{job="b",instance="b:9090",route="/r",method="GET",status="500"}'
        values: '0+6x40'
      - series: 'deskgate_requests_total{job="b",instance="b:9090",route="/r",method="GET",status="429"}'
        values: '0+300x40'
    alert_rule_test:
      - {eval_time: 8m, alertname: DeskgateHigh5xxRatio, exp_alerts: []}
      - eval_time: 25m
        alertname: DeskgateHigh5xxRatio
        exp_alerts:
          - exp_labels: {severity: critical, job: a}

  # DeskgateShadowLimitWouldRefuse: route /a would refuse 5% of its
  # requests under enforce, route /b 0.2%; only /a fires, after 30m of
  # its 1h ratio above 1%.
  - interval: 1m
    input_series:
      - series: 'deskgate_requests_total{job="deskgate",instance="a:9090",route="/a",method="GET",status="200"}'
        values: '0+1000x120'
      - series: 'deskgate_shadow_rejections_total{job="deskgate",instance="a:9090",route="/a",code="TOO_MANY_REQUESTS"}'
        values: '0+50x120'
      - series: 'deskgate_requests_total{job="deskgate",instance="a:9090",route="/b",method="GET",status="200"}'
        values: '0+1000x120'
      - series: 'deskgate_shadow_rejections_total{job="deskgate",instance="a:9090",route="/b",code="TOO_MANY_REQUESTS"}'
        values: '0+2x120'
    alert_rule_test:
      - {eval_time: 20m, alertname: DeskgateShadowLimitWouldRefuse, exp_alerts: []}
      - eval_time: 60m
        alertname: DeskgateShadowLimitWouldRefuse
        exp_alerts:
          - exp_labels: {severity: info, job: deskgate, route: /a}
  # DeskgateTLSCertificateExpiringSoon (SPEC §12: 14 days before
  # expiry): instance a's certificate expires at 14 days and 30 minutes
  # after the start, so it has less than 14 days left from 30m on and
  # fires after the 5m "for"; then it is renewed (expiry + 60 days) at
  # 50m and the alert clears. Instance b's has 30 days left.
  - interval: 1m
    input_series:
      - series: 'deskgate_tls_certificate_expiry_timestamp_seconds{job="deskgate",instance="a:9090",name="api.example.com"}'
        values: '1211400x49 6395400x20'
      - series: 'deskgate_tls_certificate_expiry_timestamp_seconds{job="deskgate",instance="b:9090",name="api.example.com"}'
        values: '2592000x70'
    alert_rule_test:
      - {eval_time: 28m, alertname: DeskgateTLSCertificateExpiringSoon, exp_alerts: []}
      - {eval_time: 33m, alertname: DeskgateTLSCertificateExpiringSoon, exp_alerts: []}
      - eval_time: 40m
        alertname: DeskgateTLSCertificateExpiringSoon
        exp_alerts:
          - exp_labels: {severity: warning, job: deskgate, instance: "a:9090", name: api.example.com}
      - {eval_time: 55m, alertname: DeskgateTLSCertificateExpiringSoon, exp_alerts: []}

  # DeskgateAuthRejectionSpike: job a goes from 0.1/s to 10/s of invalid
  # keys at 70m; job b has rejected 10/s all along.
  - interval: 1m
    input_series:
      - series: 'deskgate_rejections_total{job="a",instance="a:9090",route="/r",code="AUTH_API_KEY_INVALID"}'
        values: '0+6x70 1020+600x40'
      - series: 'deskgate_rejections_total{job="a",instance="a:9090",route="/r",code="TOO_MANY_REQUESTS"}'
        values: '0+600x110'
      - series: 'deskgate_rejections_total{job="b",instance="b:9090",route="/r",code="AUTH_API_KEY_MISSING"}'
        values: '0+600x110'
    alert_rule_test:
      - {eval_time: 60m, alertname: DeskgateAuthRejectionSpike, exp_alerts: []}
      - {eval_time: 73m, alertname: DeskgateAuthRejectionSpike, exp_alerts: []}
      - eval_time: 78m
        alertname: DeskgateAuthRejectionSpike
        exp_alerts:
          - exp_labels: {severity: warning, job: a}
      - eval_time: 92m
        alertname: DeskgateAuthRejectionSpike
        exp_alerts:
          - exp_labels: {severity: warning, job: a}
`

// TestAccessLogNeverHoldsAFullKey guards SPEC §3 and §6: the full key never
// appears in a log line; the access log shows at most `sk_live_` plus 4
// characters (key_prefix). Valid and malformed keys, in the header, twice,
// and in the query string, go through every kind of answer at debug level.
func TestAccessLogNeverHoldsAFullKey(t *testing.T) {
	rnd := func(n int) string {
		const alnum = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
		b := make([]byte, n)
		for i := range b {
			x, err := rand.Int(rand.Reader, big.NewInt(int64(len(alnum))))
			if err != nil {
				t.Fatal(err)
			}
			b[i] = alnum[x.Int64()]
		}
		return string(b)
	}
	type tc struct {
		name   string
		path   string
		keys   []string // X-API-Key values, in order
		query  string   // a key in the query string
		status int
		prefix string // the expected key_prefix, "" for none
	}
	var (
		sk24   = "sk_live_" + rnd(24)
		sk128  = "sk_live_" + rnd(128)
		pk     = "pk_live_" + rnd(30)
		bang   = "sk_live_" + rnd(24) + "!"
		long   = "sk_live_" + rnd(129)
		dupA   = "sk_live_" + rnd(32)
		dupB   = "sk_live_" + rnd(32)
		inQ    = "sk_live_" + rnd(40)
		none   = "sk_live_" + rnd(26)
		crash  = "sk_live_" + rnd(28)
		dead   = "sk_live_" + rnd(28)
		prod   = "sk_prod_" + rnd(28)
		bearer = "Bearer sk_live_" + rnd(28)
		test   = "sk_test_" + rnd(28)
		stray  = "sk_live_" + rnd(28) // well-formed, in no app
	)
	// One app per known key: their budgets (SPEC §4, per app) stay apart.
	apps := map[string]string{sk24: "app_k24", sk128: "app_k128", pk: "app_pk", dupA: "app_dupa", dupB: "app_dupb", crash: "app_crash", dead: "app_dead"}
	var keys strings.Builder
	keys.WriteString("apps:\n")
	for _, k := range slices.Sorted(maps.Keys(apps)) {
		fmt.Fprintf(&keys, "  - {id: %s, keys: [{key: %s}]}\n", apps[k], k)
	}
	p := startObsProc(t, strings.Replace(mixConfig, "level: info", "level: debug", 1), keys.String())
	cases := []tc{
		{"valid 24", "/api/v1/customers/cus_acme", []string{sk24}, "", 200, sk24[:12]},
		{"valid 128", "/api/v1/tickets", []string{sk128}, "", 200, sk128[:12]},
		{"pk on secret route", "/api/v1/customers/cus_acme", []string{pk}, "", 403, pk[:12]},
		{"trailing bang", "/api/v1/customers/cus_acme", []string{bang}, "", 401, "sk_live_"},
		{"129 random chars", "/api/v1/customers/cus_acme", []string{long}, "", 401, "sk_live_"},
		{"two keys", "/api/v1/customers/cus_acme", []string{dupA, dupB}, "", 401, dupA[:12]},
		{"key in the query", "/api/v1/customers/cus_acme", []string{sk24}, inQ, 200, sk24[:12]},
		{"auth none route", "/api/v1/health", []string{none}, "", 200, none[:12]},
		{"upstream 500", "/api/v1/debug/crash", []string{crash}, "", 500, crash[:12]},
		{"upstream down", "/api/v1/reports/x", []string{dead}, "", 502, dead[:12]},
		{"unknown environment", "/api/v1/customers/cus_acme", []string{prod}, "", 401, ""},
		{"bearer", "/api/v1/customers/cus_acme", []string{bearer}, "", 401, ""},
		{"test env not accepted", "/api/v1/customers/cus_acme", []string{test}, "", 401, test[:12]},
		{"unknown key", "/api/v1/customers/cus_acme", []string{stray}, "", 401, stray[:12]},
	}
	for i, c := range cases {
		h := http.Header{"X-Request-Id": {fmt.Sprintf("keylog-%02d", i)}}
		for _, k := range c.keys {
			h.Add("X-Api-Key", k)
		}
		url := "http://" + p.pub + c.path
		if c.query != "" {
			url += "?api_key=" + c.query
		}
		if code, body, _ := p.get(url, h); code != c.status {
			t.Fatalf("%s: %d %s, want %d", c.name, code, body, c.status)
		}
	}
	// The access log line of the last request may be written just after
	// its answer.
	last := fmt.Sprintf(`"request_id":"keylog-%02d"`, len(cases)-1)
	waitFor(t, p.logs, last)
	logs := p.logs.String()

	byID := map[string]map[string]any{}
	for _, line := range strings.Split(strings.TrimSpace(logs), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Errorf("log line is not JSON: %v: %s", err, line)
			continue
		}
		if id, _ := m["request_id"].(string); m["msg"] == "request" {
			byID[id] = m
		}
		if kp, ok := m["key_prefix"].(string); ok && len(kp) > len("sk_live_")+4 {
			t.Errorf("key_prefix %q is longer than sk_live_ plus 4 characters", kp)
		}
	}
	for i, c := range cases {
		line := byID[fmt.Sprintf("keylog-%02d", i)]
		if line == nil {
			t.Errorf("%s: no access log line", c.name)
			continue
		}
		kp, has := line["key_prefix"].(string)
		switch {
		case c.prefix == "" && has:
			t.Errorf("%s: key_prefix %q, want none", c.name, kp)
		case c.prefix != "" && kp != c.prefix:
			t.Errorf("%s: key_prefix %q, want %q", c.name, kp, c.prefix)
		}
		// The app id is logged once the key store knows the app.
		if wantApp := apps[c.keys[0]]; c.status != 401 && c.status != 403 && line["app_id"] != wantApp && wantApp != "" {
			t.Errorf("%s: app_id %v, want %q", c.name, line["app_id"], wantApp)
		}
	}
	// No key's random part beyond its first 4 characters: no 6-character
	// piece of it anywhere in the log.
	for _, c := range cases {
		for _, k := range append(slices.Clone(c.keys), c.query) {
			if k == "" {
				continue
			}
			if strings.Contains(logs, k) {
				t.Errorf("%s: the full key %q is in the log", c.name, k)
				continue
			}
			cut := strings.LastIndexByte(k, '_') + 1
			if len(k) >= cut+5 && strings.Contains(logs, k[:cut+5]) {
				t.Errorf("%s: %q, the key's prefix and 5 random characters, is in the log", c.name, k[:cut+5])
			}
			secret := k[cut:]
			if len(secret) > 4 {
				secret = secret[4:]
			}
			for j := 0; j+6 <= len(secret); j++ {
				if strings.Contains(logs, secret[j:j+6]) {
					t.Errorf("%s: %q, a piece of the key beyond its first 4 random characters, is in the log", c.name, secret[j:j+6])
					break
				}
			}
		}
	}
	if t.Failed() {
		t.Logf("log:\n%s", logs)
	}
}

// TestAdminPprof guards `admin.pprof` (issue 6): /debug/pprof/ is served on
// the admin listener only when enabled (404 by default), and never on the
// public listener.
func TestAdminPprof(t *testing.T) {
	base := `
server: {listen: "{PUB}", shutdown_timeout: 5s}
admin: {listen: "{ADMIN}"%s}
upstream: {url: "http://{UP}"}
routes:
  - {pattern: "/api/v1/", auth: secret}
  - {pattern: "/", auth: none, rate_limit: false}
log: {level: warn}
`
	for _, tc := range []struct {
		name  string
		admin string
		want  int
	}{
		{"default", "", 404},
		{"false", ", pprof: false", 404},
		{"true", ", pprof: true", 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := startObsProc(t, fmt.Sprintf(base, tc.admin), "apps: []\n")
			for _, path := range []string{"/debug/pprof/", "/debug/pprof/cmdline", "/debug/pprof/goroutine?debug=1"} {
				code, body, _ := p.get("http://"+p.admin+path, nil)
				if code != tc.want {
					t.Errorf("admin %s: %d, want %d", path, code, tc.want)
				}
				if tc.want == 200 && path == "/debug/pprof/" && !strings.Contains(body, "goroutine") {
					t.Errorf("admin %s: not the pprof index: %.200s", path, body)
				}
				// The public listener proxies `/` to the upstream: whatever
				// it answers, it is not deskgate's pprof.
				code, body, _ = p.get("http://"+p.pub+path, nil)
				if code == 200 || strings.Contains(body, "goroutine") || strings.Contains(body, "Types of profiles") {
					t.Errorf("public %s: %d %.200s: pprof must never be on the public listener", path, code, body)
				}
			}
			if code, _, _ := p.get("http://"+p.admin+"/metrics", nil); code != 200 {
				t.Errorf("admin /metrics: %d", code)
			}
		})
	}
}
