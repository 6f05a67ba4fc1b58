// Package metrics defines every Prometheus collector of SPEC §6 with its
// exact name, type and labels, registered on a caller's Registerer so that
// tests can use a fresh registry each.
//
// Labels never hold a raw path, an API key or an app id: `route` is the
// configured pattern or "unmatched", and `method` is one of the standard
// methods or "OTHER", so a client cannot grow the series count.
package metrics

import (
	"runtime"
	"strconv"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Unmatched is the route label of a request that matched no route.
const Unmatched = "unmatched"

// Metrics holds every collector of SPEC §6.
type Metrics struct {
	Requests             *prometheus.CounterVec
	Rejections           *prometheus.CounterVec
	RequestDuration      *prometheus.HistogramVec
	UpstreamDuration     *prometheus.HistogramVec
	UpstreamErrors       *prometheus.CounterVec
	Normalized           *prometheus.CounterVec
	RateLimitDecisions   *prometheus.CounterVec
	RateLimitStoreErrors prometheus.Counter
	RateLimitFallback    prometheus.Gauge
	// RateLimitEvicting is beyond SPEC §6's table: docs/rate-limits.md
	// documents it.
	RateLimitEvicting  prometheus.Gauge
	ConfigReloads      *prometheus.CounterVec
	ConfigLastReloadOK prometheus.Gauge
	BuildInfo          *prometheus.GaugeVec
	CORSPreflights     *prometheus.CounterVec
	// QuotaReservations counts monthly quota reservations by quota and
	// result (committed, released, refused) (SPEC §9).
	QuotaReservations *prometheus.CounterVec
	// ShadowRejections counts the refusals a shadow-mode limit or quota
	// would have made, by route pattern and code (SPEC §10).
	ShadowRejections *prometheus.CounterVec
	// UpstreamRateLimited counts the requests deskgate refused itself
	// because the upstream's 429 Retry-After for that identity and
	// bucket had not run out (SPEC §10).
	UpstreamRateLimited prometheus.Counter
	// TLSCertExpiry is each served certificate's NotAfter (SPEC §12),
	// named by its first DNS name (files) or its domain (ACME).
	TLSCertExpiry *prometheus.GaugeVec
	// TLSHandshakeErrors counts failed TLS handshakes on server.listen.
	TLSHandshakeErrors prometheus.Counter
	// TraceSpansDropped counts the spans recorded but never exported
	// (SPEC §11): queue full, export failed, or left at shutdown.
	TraceSpansDropped prometheus.Counter
}

// Buckets are the classic histogram buckets, in seconds: from a tenth of a
// millisecond (a rejected request) to 30 s (the default upstream timeout).
var Buckets = []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}

func histogramOpts(name, help string) prometheus.HistogramOpts {
	return prometheus.HistogramOpts{
		Name:    name,
		Help:    help,
		Buckets: Buckets,
		// Native histograms alongside the classic buckets, for servers
		// that scrape them.
		NativeHistogramBucketFactor:    1.1,
		NativeHistogramMaxBucketNumber: 160,
	}
}

// New creates the collectors and registers them, with the Go and process
// collectors, on reg. It panics if a name is already registered: that is a
// wiring bug, found at start-up.
func New(reg prometheus.Registerer, version string) *Metrics {
	m := &Metrics{
		Requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "deskgate_requests_total",
			Help: "Requests answered, by route pattern, method and status.",
		}, []string{"route", "method", "status"}),
		Rejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "deskgate_rejections_total",
			Help: "Errors deskgate answered itself, by route pattern and business code.",
		}, []string{"route", "code"}),
		RequestDuration: prometheus.NewHistogramVec(histogramOpts(
			"deskgate_request_duration_seconds",
			"Time from request received to response written, by route pattern and method.",
		), []string{"route", "method"}),
		UpstreamDuration: prometheus.NewHistogramVec(histogramOpts(
			"deskgate_upstream_duration_seconds",
			"Time from request sent upstream to response headers received, by route pattern.",
		), []string{"route"}),
		UpstreamErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "deskgate_upstream_errors_total",
			Help: "Upstream failures, by route pattern and kind (connect, timeout, protocol).",
		}, []string{"route", "kind"}),
		Normalized: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "deskgate_normalized_responses_total",
			Help: "Upstream error responses rewritten into the standard shape, by route pattern and status.",
		}, []string{"route", "status"}),
		RateLimitDecisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "deskgate_ratelimit_decisions_total",
			Help: "Rate-limit decisions, by store (redis, memory, local_fallback, local_deny_cache) and result (allowed, denied).",
		}, []string{"store", "result"}),
		RateLimitStoreErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "deskgate_ratelimit_store_errors_total",
			Help: "Rate-limit store calls that failed or timed out.",
		}),
		RateLimitFallback: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "deskgate_ratelimit_fallback_active",
			Help: "1 while rate limits are decided in process because the shared store is unreachable.",
		}),
		RateLimitEvicting: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "deskgate_ratelimit_store_evicting",
			Help: "1 while the rate-limit store's maxmemory-policy is allkeys-* (on any Cluster master): Redis may evict any key, budgets and key-store records included. SPEC §4 wants noeviction or volatile-*.",
		}),
		ConfigReloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "deskgate_config_reloads_total",
			Help: "Configuration reloads, by result (success, failure).",
		}, []string{"result"}),
		ConfigLastReloadOK: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "deskgate_config_last_reload_successful",
			Help: "1 if the last configuration reload succeeded, 0 if it was refused.",
		}),
		BuildInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "deskgate_build_info",
			Help: "Always 1; the labels name the build.",
		}, []string{"version", "goversion"}),
		CORSPreflights: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "deskgate_cors_preflights_total",
			Help: "CORS preflights answered by deskgate, by route pattern and result (allowed, refused).",
		}, []string{"route", "result"}),
		QuotaReservations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "deskgate_quota_reservations_total",
			Help: "Monthly quota reservations, by quota and result (committed: the upstream answered 2xx; released: any other outcome; refused: PLAN_LIMIT_REACHED).",
		}, []string{"quota", "result"}),
		ShadowRejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "deskgate_shadow_rejections_total",
			Help: "Requests a budget or quota in shadow mode would have refused and forwarded instead, by route pattern and business code.",
		}, []string{"route", "code"}),
		UpstreamRateLimited: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "deskgate_upstream_ratelimited_total",
			Help: "Requests refused with 429 by deskgate itself because the upstream's own 429 Retry-After for the identity and bucket had not run out.",
		}),
		TLSCertExpiry: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "deskgate_tls_certificate_expiry_timestamp_seconds",
			Help: "When each certificate served on server.listen expires (Unix seconds), by name.",
		}, []string{"name"}),
		TLSHandshakeErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "deskgate_tls_handshake_errors_total",
			Help: "TLS handshakes on server.listen that failed (a connection closed before its first byte is not counted).",
		}),
		TraceSpansDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "deskgate_trace_spans_dropped_total",
			Help: "Trace spans recorded but not exported: the export queue was full, the collector refused or did not answer in time, or shutdown came first.",
		}),
	}
	reg.MustRegister(
		m.Requests, m.Rejections, m.RequestDuration, m.UpstreamDuration,
		m.UpstreamErrors, m.Normalized, m.RateLimitDecisions,
		m.RateLimitStoreErrors, m.RateLimitFallback, m.RateLimitEvicting, m.ConfigReloads,
		m.ConfigLastReloadOK, m.BuildInfo, m.CORSPreflights,
		m.QuotaReservations, m.ShadowRejections, m.UpstreamRateLimited,
		m.TLSCertExpiry, m.TLSHandshakeErrors, m.TraceSpansDropped,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	m.BuildInfo.WithLabelValues(version, runtime.Version()).Set(1)
	m.ConfigLastReloadOK.Set(1)
	for _, r := range []string{"success", "failure"} {
		m.ConfigReloads.WithLabelValues(r)
	}
	return m
}

// Methods are the method label values; any other method counts as "OTHER".
var Methods = [...]string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE", MethodOther}

// MethodOther is the method label of a request whose method is not one
// of [Methods]' standard ones, and of an answer net/http gave before any
// method was known.
const MethodOther = "OTHER"

// MethodIndex returns the index in [Methods] of method.
func MethodIndex(method string) int {
	for i, m := range Methods[:len(Methods)-1] {
		if m == method {
			return i
		}
	}
	return len(Methods) - 1
}

// statusText memoizes the status label values.
var statusText = func() (s [600]string) {
	for i := range s {
		s[i] = strconv.Itoa(i)
	}
	return s
}()

// StatusText returns the label value of an HTTP status.
func StatusText(code int) string {
	if code >= 0 && code < len(statusText) {
		return statusText[code]
	}
	return strconv.Itoa(code)
}

// Route holds the children of one route's series, built when the config
// loads so that the request path does no label hashing in the common case.
type Route struct {
	m        *Metrics
	name     string
	duration [len(Methods)]prometheus.Observer
	upstream prometheus.Observer
	rejects  map[string]prometheus.Counter
	// shadow429 is the shadow-rejection child of TOO_MANY_REQUESTS.
	shadow429 prometheus.Counter
	// requests caches the requests_total child per method and status.
	requests [len(Methods)][600]atomic.Pointer[prometheus.Counter]
}

// ForRoute returns the children of route (a pattern or [Unmatched]). The
// rejection series of codes are created at zero, so that dashboards can
// rate() them from the first scrape.
func (m *Metrics) ForRoute(route string, codes []string) *Route {
	r := &Route{
		m:        m,
		name:     route,
		upstream: m.UpstreamDuration.WithLabelValues(route),
		rejects:  make(map[string]prometheus.Counter, len(codes)),
	}
	for _, c := range codes {
		r.rejects[c] = m.Rejections.WithLabelValues(route, c)
	}
	r.shadow429 = m.ShadowRejections.WithLabelValues(route, shadowCode)
	for i, meth := range Methods {
		r.duration[i] = m.RequestDuration.WithLabelValues(route, meth)
	}
	return r
}

// Preflight counts one CORS preflight answered on this route, allowed or
// refused.
func (r *Route) Preflight(allowed bool) {
	result := "refused"
	if allowed {
		result = "allowed"
	}
	r.m.CORSPreflights.WithLabelValues(r.name, result).Inc()
}

// Name returns the route label.
func (r *Route) Name() string { return r.name }

// Observe counts one answered request and its duration in seconds.
func (r *Route) Observe(method string, status int, seconds float64) {
	mi := MethodIndex(method)
	r.duration[mi].Observe(seconds)
	r.count(mi, status)
}

// count counts one answer of the method of index mi.
func (r *Route) count(mi, status int) {
	if status < 0 || status >= 600 {
		r.m.Requests.WithLabelValues(r.name, Methods[mi], StatusText(status)).Inc()
		return
	}
	slot := &r.requests[mi][status]
	c := slot.Load()
	if c == nil {
		cc := r.m.Requests.WithLabelValues(r.name, Methods[mi], StatusText(status))
		c = &cc
		slot.Store(c)
	}
	(*c).Inc()
}

// ObserveTraced is [Route.Observe] for a request whose trace is sampled:
// its duration carries the trace id as an exemplar (served in the
// OpenMetrics format), so that a dashboard can link a slow bucket to a
// trace. It allocates the exemplar's labels: call it for sampled requests
// only.
func (r *Route) ObserveTraced(method string, status int, seconds float64, traceID string) {
	mi := MethodIndex(method)
	observeTraced(r.duration[mi], seconds, traceID)
	r.count(mi, status)
}

// observeTraced observes v with the exemplar {trace_id="<id>"}.
func observeTraced(o prometheus.Observer, v float64, traceID string) {
	if eo, ok := o.(prometheus.ExemplarObserver); ok && traceID != "" {
		eo.ObserveWithExemplar(v, prometheus.Labels{"trace_id": traceID})
		return
	}
	o.Observe(v)
}

// Reject counts one error deskgate answered itself.
func (r *Route) Reject(code string) {
	if c, ok := r.rejects[code]; ok {
		c.Inc()
		return
	}
	r.m.Rejections.WithLabelValues(r.name, code).Inc()
}

// shadowCode is the code of the shadow series created at zero.
const shadowCode = "TOO_MANY_REQUESTS"

// Shadow counts one request a budget in shadow mode would have refused
// with code.
func (r *Route) Shadow(code string) {
	if code == shadowCode {
		r.shadow429.Inc()
		return
	}
	r.m.ShadowRejections.WithLabelValues(r.name, code).Inc()
}

// UpstreamLimited counts one request refused on an upstream's 429.
func (r *Route) UpstreamLimited() { r.m.UpstreamRateLimited.Inc() }

// Upstream observes the time to the upstream's response headers.
func (r *Route) Upstream(seconds float64) { r.upstream.Observe(seconds) }

// UpstreamTraced is [Route.Upstream] with the trace id as an exemplar
// (see [Route.ObserveTraced]).
func (r *Route) UpstreamTraced(seconds float64, traceID string) {
	observeTraced(r.upstream, seconds, traceID)
}

// UpstreamError counts one upstream failure of kind connect, timeout or
// protocol.
func (r *Route) UpstreamError(kind string) { r.m.UpstreamErrors.WithLabelValues(r.name, kind).Inc() }

// Normalized counts one rewritten upstream error.
func (r *Route) Normalized(status int) {
	r.m.Normalized.WithLabelValues(r.name, StatusText(status)).Inc()
}
