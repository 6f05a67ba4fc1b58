package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/innovartx/deskgate/apierror"
	"github.com/innovartx/deskgate/auth"
	"github.com/innovartx/deskgate/config"
	"github.com/innovartx/deskgate/metrics"
	"github.com/innovartx/deskgate/ratelimit"
)

// Monthly plan quotas (SPEC §9). A request that a quota's pattern matches
// reserves a slot after the rate limit — in the rate limit's own Redis call
// when the limiter can ([route.allow]: one round trip for both, made only
// if the rate limit admits the request), else in a call of its own
// ([route.reserveQuotas]) — and settles
// it once the exchange is over ([Gateway.settleQuotas], from finish): a
// commit when the upstream answered 2xx, a release on any other outcome
// (an error of the upstream or of deskgate, a timeout, a client gone, a
// panic). Routes whose pattern cannot overlap any quota's carry none and
// pay nothing.

// quotaMargin is added to the route's upstream timeout to make a
// reservation's ttl: a replica that dies holding a slot frees it then.
const quotaMargin = 10 * time.Second

// quotaRule is one compiled quota.
type quotaRule struct {
	cfg    config.Quota
	q      *ratelimit.Quota
	mux    *http.ServeMux // the quota's pattern, with the rule as handler
	shadow bool

	counts *metrics.QuotaCounters
}

// ServeHTTP lets a rule stand in its ServeMux, which is only asked
// whether a request matches.
func (*quotaRule) ServeHTTP(http.ResponseWriter, *http.Request) {}

// matches reports whether r is one of the requests the quota counts.
func (qr *quotaRule) matches(r *http.Request) bool {
	h, _ := qr.mux.Handler(r)
	return h == http.Handler(qr)
}

// routeQuota is a quota that may count a route's requests; always: it
// counts all of them (its pattern covers the route's), so that they need
// not be matched against it.
type routeQuota struct {
	rule   *quotaRule
	always bool
}

// quotaHold is a slot a request holds until it is settled.
type quotaHold struct {
	rule *quotaRule
	k    ratelimit.Key
	res  ratelimit.Reservation
}

// buildQuotas compiles cfg's quotas and gives each route the ones whose
// pattern may overlap its own.
func (g *Gateway) buildQuotas(cfg *config.Config, o Options) error {
	if len(cfg.Quotas) == 0 {
		return nil
	}
	qs, ok := o.Limiter.(ratelimit.QuotaStore)
	if !ok {
		return errors.New("quotas: the rate-limit store cannot count quotas")
	}
	g.quotaStore = qs
	g.quotaAllow, _ = o.Limiter.(quotaAllower)
	var rules []*quotaRule
	for i, qc := range cfg.Quotas {
		qr := &quotaRule{cfg: qc, q: ratelimit.NewQuota(qc.Name), mux: http.NewServeMux(), shadow: qc.Shadow()}
		if err := config.Register(qr.mux, qc.Match, qr); err != nil {
			return fmt.Errorf("quotas[%d].match: %w", i, err)
		}
		qr.counts = o.Metrics.ForQuota(qc.Name)
		rules = append(rules, qr)
	}
	for _, rt := range g.routes {
		for _, qr := range rules {
			if config.PatternsMayOverlap(rt.pattern, qr.cfg.Match) {
				rt.quotas = append(rt.quotas, routeQuota{rule: qr, always: config.PatternCovers(qr.cfg.Match, rt.pattern)})
				if qr.shadow {
					rt.metrics.ShadowSeries(string(apierror.PlanLimitReached))
				}
			}
		}
	}
	return nil
}

// quotaAllower is a limiter that reserves quotas in its rate-limit call
// (*ratelimit.Limiter).
type quotaAllower interface {
	AllowQuotas(ctx context.Context, p *ratelimit.Policy, k ratelimit.Key, asks []ratelimit.QuotaAsk) (ratelimit.Decision, error)
}

// quotaPlan is the quotas that count one request, found once: what to
// reserve, and the rule of each. It is made (one allocation) only for a
// request that a quota may count, with room for two quotas.
type quotaPlan struct {
	asks    []ratelimit.QuotaAsk
	rules   []*quotaRule
	askBuf  [2]ratelimit.QuotaAsk
	ruleBuf [2]*quotaRule
	holdBuf [2]quotaHold // the request's holds (state.holds)
	// hdr are the quota's RateLimit-Policy and RateLimit values (see
	// addQuotaHeaders).
	hdr [2]string
}

// planQuotas returns the quotas that count r, in the route's order.
func (rt *route) planQuotas(st *state, r *http.Request, id auth.Identity) *quotaPlan {
	if st.quotas != nil {
		return st.quotas
	}
	qp := &quotaPlan{}
	st.quotas = qp
	qp.asks, qp.rules = qp.askBuf[:0], qp.ruleBuf[:0]
	for _, rq := range rt.quotas {
		qr := rq.rule
		if !rq.always && !qr.matches(r) {
			continue
		}
		qp.asks = append(qp.asks, ratelimit.QuotaAsk{
			Quota: qr.q,
			Limit: qr.cfg.LimitFor(id.Plan),
			TTL:   rt.timeout + quotaMargin,
			// An enforced quota's refusal refuses the request: the
			// quotas after it need no slot.
			Stop: !qr.shadow,
		})
		qp.rules = append(qp.rules, qr)
	}
	return qp
}

// allow asks the limiter's decision on k under p. When quotas count r and
// the limiter can, their reservations go in the same call, made only if
// the rate limit admits r; reserveQuotas then uses them.
func (rt *route) allow(st *state, r *http.Request, id auth.Identity, p *ratelimit.Policy, k ratelimit.Key) (ratelimit.Decision, error) {
	g := rt.g
	// The trace context makes a Redis decision a child span of the
	// request's when the request is recorded (SPEC §11).
	ctx := st.trace.Context(r.Context())
	if rt.quotas != nil && g.quotaAllow != nil {
		if qp := rt.planQuotas(st, r, id); len(qp.asks) > 0 {
			return g.quotaAllow.AllowQuotas(ctx, p, k, qp.asks)
		}
	}
	return g.limiter.Allow(ctx, p, k)
}

// reserveQuotas reserves a slot of every quota that counts r — the ones
// the rate limit's call did not reserve (see allow): with no rate limit, a
// shadow rate limit that refused, a decision from the deny cache, GCRA or
// the in-process store — adds each to the RateLimit headers, and refuses
// with 403 PLAN_LIMIT_REACHED when one is used up (a shadow quota only
// records it). On a refusal, the slots already reserved for r are
// released by settleQuotas.
func (rt *route) reserveQuotas(st *state, r *http.Request, id auth.Identity) *apierror.Error {
	g := rt.g
	qp := rt.planQuotas(st, r, id)
	if len(qp.rules) == 0 {
		return nil
	}
	k := rt.identityKey(st, id)
	for i, qr := range qp.rules {
		a := &qp.asks[i]
		limit := a.Limit
		d := a.Decision
		if !a.Done {
			var err error
			d, err = g.quotaStore.Reserve(st.trace.Context(r.Context()), qr.q, k, limit, a.TTL)
			if err != nil {
				if r.Context().Err() != nil {
					st.canceled = true
					st.cause = err
					return errAbandoned
				}
				return apierror.New(apierror.ServiceUnavailable, fmt.Errorf("quota %s: %w", qr.cfg.Name, err))
			}
		}
		addQuotaHeaders(st.w.Header(), &qp.hdr, qr.cfg.Name, d)
		if d.Held() {
			if st.holds == nil {
				st.holds = qp.holdBuf[:0]
			}
			st.holds = append(st.holds, quotaHold{rule: qr, k: k, res: d.Reservation})
		}
		if d.Allowed {
			continue
		}
		st.quota = qr.cfg.Name
		if qr.shadow {
			st.shadow = apierror.PlanLimitReached
			st.route.Shadow(string(apierror.PlanLimitReached))
			continue
		}
		qr.counts.Refused.Inc()
		details := make([]byte, 0, 96)
		details = append(details, `{"quota":`...)
		details = strconv.AppendQuote(details, qr.cfg.Name)
		details = append(details, `,"limit":`...)
		details = strconv.AppendInt(details, limit, 10)
		details = append(details, `,"resets_at":"`...)
		details = d.ResetAt.UTC().AppendFormat(details, time.RFC3339)
		details = append(details, `"}`...)
		return &apierror.Error{Code: apierror.PlanLimitReached, Details: details}
	}
	return nil
}

// addQuotaHeaders adds the quota as one more item of RateLimit-Policy and
// RateLimit (SPEC §9): `"tickets";q=100;w=<seconds of the month>` and
// `"tickets";r=<remaining>;t=<seconds to the reset>`. Each header is then
// one string made here, held by slot (the request's: the values already
// there may be shared, and are never written in place).
func addQuotaHeaders(h http.Header, slot *[2]string, name string, d ratelimit.QuotaDecision) {
	var buf [256]byte
	b := appendItemTo(buf[:0], h, "Ratelimit-Policy")
	b = strconv.AppendQuote(b, name)
	b = append(b, ";q="...)
	b = strconv.AppendInt(b, d.Limit, 10)
	b = append(b, ";w="...)
	b = strconv.AppendInt(b, int64(d.Period/time.Second), 10)
	slot[0] = string(b)
	h["Ratelimit-Policy"] = slot[0:1:1]
	if d.Remaining < 0 {
		return // not counted (on_failure: allow)
	}
	b = appendItemTo(buf[:0], h, "Ratelimit")
	b = strconv.AppendQuote(b, name)
	b = append(b, ";r="...)
	b = strconv.AppendInt(b, d.Remaining, 10)
	b = append(b, ";t="...)
	b = strconv.AppendInt(b, ceilSeconds(d.ResetIn), 10)
	slot[1] = string(b)
	h["Ratelimit"] = slot[1:2:2]
}

// appendItemTo starts one more item of the structured-field list of
// header key in b: what the header holds, and ", " when it holds any.
func appendItemTo(b []byte, h http.Header, key string) []byte {
	if v := h[key]; len(v) > 0 && v[0] != "" {
		b = append(b, v[0]...)
		b = append(b, ", "...)
	}
	return b
}

// settleQuotas commits the request's slots when the upstream answered 2xx
// and releases them otherwise. It runs in finish, after the answer (and
// after a recovered panic); the answer is flushed first, so that the
// client does not wait on the store, whether it commits or releases.
func (g *Gateway) settleQuotas(st *state, r *http.Request, aborted bool) {
	commit := !st.ownReply && !st.proxyStart.IsZero() && st.w.status >= 200 && st.w.status < 300
	if st.w.status != 0 && !aborted && !st.canceled {
		_ = http.NewResponseController(&st.w).Flush()
	}
	// A release is written now, even when the client has gone meanwhile;
	// a commit is only queued (and the in-process store takes no
	// context), so a 2xx need not detach one.
	ctx := r.Context()
	if !commit {
		ctx = context.WithoutCancel(ctx)
	}
	for _, h := range st.holds {
		if err := g.quotaStore.Settle(ctx, h.rule.q, h.k, h.res, commit); err != nil {
			g.log.LogAttrs(ctx, slog.LevelWarn, "quota settle failed",
				slog.String("quota", h.rule.cfg.Name), slog.String("request_id", st.requestID), slog.String("error", err.Error()))
		}
		if commit {
			h.rule.counts.Committed.Inc()
		} else {
			h.rule.counts.Released.Inc()
		}
	}
	st.holds = nil
}
