package metrics

import "github.com/prometheus/client_golang/prometheus"

// QuotaCounters are the deskgate_quota_reservations_total children of
// one quota.
type QuotaCounters struct {
	Committed, Released, Refused prometheus.Counter
}

// ForQuota returns the counters of quota name, created (at 0) now so that
// they are scraped before the first request.
func (m *Metrics) ForQuota(name string) *QuotaCounters {
	v := m.QuotaReservations
	return &QuotaCounters{
		Committed: v.WithLabelValues(name, "committed"),
		Released:  v.WithLabelValues(name, "released"),
		Refused:   v.WithLabelValues(name, "refused"),
	}
}

// ShadowSeries creates (at 0) the deskgate_shadow_rejections_total child
// of this route and code, so that it is scraped before the first shadow
// refusal; [Route.Shadow] counts.
func (r *Route) ShadowSeries(code string) {
	r.m.ShadowRejections.WithLabelValues(r.name, code)
}
