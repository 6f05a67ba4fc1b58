package proxy

// Budget inspection (SPEC §10): the admin listener's GET /budget.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/innovartx/deskgate/apierror"
	"github.com/innovartx/deskgate/auth"
	"github.com/innovartx/deskgate/config"
	"github.com/innovartx/deskgate/ratelimit"
)

// BudgetReport is the answer of GET /budget: one identity's standing in
// every budget its key can reach. It never holds the full key.
type BudgetReport struct {
	// AppID is the app owning the key (key stores file and redis);
	// KeyPrefix is at most `sk_live_` plus 4 characters, when the
	// identity is the key itself (store none, or key_by: key).
	AppID     string         `json:"app_id,omitempty"`
	KeyPrefix string         `json:"key_prefix"`
	KeyBy     string         `json:"key_by"`
	Plan      string         `json:"plan"`
	Buckets   []BucketBudget `json:"buckets"`
	// Quotas are the monthly quotas of SPEC §9 that count requests of
	// the identity: one entry per quota whose pattern may match a route
	// limited by key or app (not per client IP).
	Quotas []QuotaBudget `json:"quotas"`
	// Note says why a budget is missing (routes limited per client IP).
	Note string `json:"note,omitempty"`
}

// BucketBudget is one budget: the global one (with the plan's tiers) or a
// route bucket.
type BucketBudget struct {
	Bucket string `json:"bucket"`
	// Policy is the tiers in force: "global", "plan:<name>",
	// "bucket:<name>".
	Policy string       `json:"policy"`
	Mode   string       `json:"mode"`
	Store  string       `json:"store"`
	Routes []string     `json:"routes"`
	Tiers  []TierBudget `json:"tiers"`
	// UpstreamRetryAfter is the wait left from the upstream's own 429
	// for this identity and bucket, on this replica (0: none).
	UpstreamRetryAfter int64 `json:"upstream_retry_after_seconds,omitempty"`
}

// TierBudget is one tier's figures.
type TierBudget struct {
	Name          string `json:"name"`
	Limit         int64  `json:"limit"`
	WindowSeconds int64  `json:"window_seconds"`
	Used          int64  `json:"used"`
	Remaining     int64  `json:"remaining"`
	// ResetAt is when none of the requests counted now counts any more;
	// absent when nothing counts.
	ResetAt        string `json:"reset_at,omitempty"`
	ResetInSeconds int64  `json:"reset_in_seconds"`
	// NextSlotAt is, when nothing fits, when one request fits again.
	NextSlotAt        string `json:"next_slot_at,omitempty"`
	NextSlotInSeconds int64  `json:"next_slot_in_seconds,omitempty"`
}

// QuotaBudget is one monthly quota's figures for the identity.
type QuotaBudget struct {
	Name  string `json:"name"`
	Match string `json:"match"`
	Mode  string `json:"mode"`
	// Limit is the identity's plan's.
	Limit int64 `json:"limit"`
	// Used is what was committed this month; Reserved the slots held by
	// requests in progress, which count until settled.
	Used      int64  `json:"used"`
	Reserved  int64  `json:"reserved"`
	Remaining int64  `json:"remaining"`
	ResetsAt  string `json:"resets_at"`
	// ResetInSeconds is the time until ResetsAt, rounded up.
	ResetInSeconds int64  `json:"reset_in_seconds"`
	Store          string `json:"store"`
}

// quotaReader is a store that reads quotas without consuming
// (*ratelimit.Limiter, *ratelimit.Memory, *ratelimit.Redis).
type quotaReader interface {
	QuotaUsage(ctx context.Context, q *ratelimit.Quota, k ratelimit.Key) (ratelimit.QuotaUsage, error)
}

// errNoPeek is the error of a limiter that cannot read budgets.
var errNoPeek = errors.New("the rate-limit store cannot read budgets")

// peek reads k's usage of p from the gateway's limiter, never consuming.
func (g *Gateway) peek(ctx context.Context, p *ratelimit.Policy, k ratelimit.Key) (ratelimit.Usage, error) {
	switch l := g.limiter.(type) {
	case interface {
		Peek(context.Context, *ratelimit.Policy, ratelimit.Key) (ratelimit.Usage, error)
	}:
		return l.Peek(ctx, p, k)
	case interface {
		Peek(*ratelimit.Policy, ratelimit.Key) ratelimit.Usage
	}:
		return l.Peek(p, k), nil
	}
	return ratelimit.Usage{}, errNoPeek
}

// ServeBudget answers GET /budget on the admin listener: the key in
// X-API-Key (never in the URL: any query string is refused, so that no
// access log or proxy keeps a key), checked as the gateway checks it (a
// missing or invalid key gets the same 401), then the figures of every
// budget the key's identity can reach. Reading consumes nothing and
// creates no state.
func (g *Gateway) ServeBudget(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	if r.URL.RawQuery != "" {
		g.catalog.Write(w, r, &apierror.Error{Code: apierror.BadRequest,
			Details: []byte(`{"reason":"the key goes in the X-API-Key header, never in the URL"}`)})
		return
	}
	rep, e := g.Budget(r.Context(), r.Header["X-Api-Key"])
	if e != nil {
		g.catalog.Write(w, r, e)
		return
	}
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		g.catalog.Write(w, r, apierror.ErrInternal)
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	_, _ = w.Write(append(b, '\n'))
}

// Budget returns the report of the key in values (the X-API-Key header
// values), or the error the gateway would answer for it.
func (g *Gateway) Budget(ctx context.Context, values []string) (*BudgetReport, *apierror.Error) {
	id, e := g.auth.Authenticate(ctx, values, auth.PublicOK)
	if e != nil {
		return nil, e
	}
	rep := &BudgetReport{
		AppID:     id.AppID,
		KeyPrefix: id.Key.Prefix,
		Plan:      id.Plan,
		Quotas:    []QuotaBudget{},
		Buckets:   []BucketBudget{},
	}
	now := time.Now()
	seen := map[*bucket]int{}
	for _, rt := range g.routes {
		if rt.limit == nil {
			continue
		}
		rep.KeyBy = string(rt.keyBy)
		if rt.keyByIP {
			// Counted per client address, not per key: not this key's.
			rep.Note = "routes limited per client IP (auth: none, key_by: ip) are not listed"
			continue
		}
		if i, ok := seen[rt.limit]; ok {
			rep.Buckets[i].Routes = append(rep.Buckets[i].Routes, rt.pattern)
			continue
		}
		lp := rt.limit.forPlan(id.Plan)
		k := rt.identityKey(nil, id)
		u, err := g.peek(ctx, lp.p, k)
		if err != nil {
			return nil, apierror.New(apierror.ServiceUnavailable, fmt.Errorf("budget: %s: %w", lp.p.ID, err))
		}
		bb := BucketBudget{
			Bucket: lp.bucketID,
			Policy: lp.p.ID,
			Mode:   string(config.Enforce),
			Store:  u.Store,
			Routes: []string{rt.pattern},
		}
		if rt.limit.shadow {
			bb.Mode = string(config.Shadow)
		}
		if wait, ok := g.upstream.get(lp.bucketID, k); ok {
			bb.UpstreamRetryAfter = retrySeconds(wait)
		}
		for _, tu := range u.Tiers {
			tb := TierBudget{
				Name:          tu.Tier.Name,
				Limit:         tu.Tier.Limit,
				WindowSeconds: int64(tu.Tier.Window / time.Second),
				Used:          tu.Used,
				Remaining:     tu.Remaining,
			}
			if tu.Reset > 0 {
				tb.ResetInSeconds = ceilSeconds(tu.Reset)
				tb.ResetAt = now.Add(tu.Reset).UTC().Format(time.RFC3339Nano)
			}
			if tu.NextSlot > 0 {
				tb.NextSlotInSeconds = ceilSeconds(tu.NextSlot)
				tb.NextSlotAt = now.Add(tu.NextSlot).UTC().Format(time.RFC3339Nano)
			}
			bb.Tiers = append(bb.Tiers, tb)
		}
		seen[rt.limit] = len(rep.Buckets)
		rep.Buckets = append(rep.Buckets, bb)
	}
	if err := g.budgetQuotas(ctx, rep, id); err != nil {
		return nil, apierror.New(apierror.ServiceUnavailable, err)
	}
	if rep.KeyBy == "app" && rep.AppID == "" {
		rep.KeyBy = "key" // store none: the key is the identity
	}
	return rep, nil
}

// budgetQuotas adds to rep the quotas that count the identity's requests,
// once each, read without consuming and without creating state.
func (g *Gateway) budgetQuotas(ctx context.Context, rep *BudgetReport, id auth.Identity) error {
	if g.quotaStore == nil {
		return nil
	}
	qr, ok := g.quotaStore.(quotaReader)
	if !ok {
		return errors.New("budget: the quota store cannot read quotas")
	}
	seen := map[*quotaRule]bool{}
	for _, rt := range g.routes {
		if rt.keyByIP {
			continue // counted per client address, not this key's
		}
		for _, rq := range rt.quotas {
			rule := rq.rule
			if seen[rule] {
				continue
			}
			seen[rule] = true
			u, err := qr.QuotaUsage(ctx, rule.q, rt.identityKey(nil, id))
			if err != nil {
				return fmt.Errorf("budget: quota %s: %w", rule.cfg.Name, err)
			}
			qb := QuotaBudget{
				Name:           rule.cfg.Name,
				Match:          rule.cfg.Match,
				Mode:           string(config.Enforce),
				Limit:          rule.cfg.LimitFor(id.Plan),
				Used:           u.Used,
				Reserved:       u.Reserved,
				ResetsAt:       u.ResetAt.UTC().Format(time.RFC3339),
				ResetInSeconds: ceilSeconds(u.ResetIn),
				Store:          u.Store,
			}
			qb.Remaining = max(0, qb.Limit-qb.Used-qb.Reserved)
			if rule.shadow {
				qb.Mode = string(config.Shadow)
			}
			rep.Quotas = append(rep.Quotas, qb)
		}
	}
	return nil
}
