package config

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
)

// Quota is one monthly plan quota (SPEC §9): the requests that Match
// describes count, per identity (rate_limit.key_by) and calendar month
// (UTC), up to Limit, or the limit of the identity's plan.
type Quota struct {
	Name string `yaml:"name"`
	// Match is a ServeMux pattern ("POST /api/v1/tickets").
	Match string `yaml:"match"`
	Limit int64  `yaml:"limit"`
	// Plans are per-plan limits, by the app's plan.
	Plans map[string]int64 `yaml:"plans"`
	// Mode is enforce (default) or shadow (SPEC §10).
	Mode Mode `yaml:"mode"`
}

// Shadow reports whether q only observes.
func (q Quota) Shadow() bool { return q.Mode.Shadow() }

// LimitFor returns q's limit for plan.
func (q Quota) LimitFor(plan string) int64 {
	if l, ok := q.Plans[plan]; ok && plan != "" {
		return l
	}
	return q.Limit
}

var quotaName = regexp.MustCompile(`^[a-z0-9_]+$`)

// validateQuotas checks quotas: names, patterns that some route serves,
// limits, modes, and plan names against rate_limit.plans when it lists
// any (the key file's plans are checked by [Load]).
func (c *Config) validateQuotas(errs *Errors) {
	names := map[string]int{}
	routes := http.NewServeMux()
	var patterns []string
	for _, r := range c.Routes {
		if r.Pattern != "" && RegisterPattern(routes, r.Pattern) == nil {
			patterns = append(patterns, r.Pattern)
		}
	}
	for i, q := range c.Quotas {
		p := fmt.Sprintf("quotas[%d]", i)
		switch {
		case q.Name == "":
			errs.add(p+".name", "required")
		case !quotaName.MatchString(q.Name):
			errs.add(p+".name", "must be lower-case letters, digits and _ ([a-z0-9_]+), got %q", q.Name)
		default:
			if j, dup := names[q.Name]; dup {
				errs.add(p+".name", "%q is also quotas[%d]", q.Name, j)
			}
			names[q.Name] = i
		}
		if q.Match == "" {
			errs.add(p+".match", "required: a ServeMux pattern of the requests that count")
		} else if err := RegisterPattern(http.NewServeMux(), q.Match); err != nil {
			errs.add(p+".match", "%v", err)
		} else if len(patterns) > 0 && !servedBy(q.Match, routes, patterns) {
			errs.add(p+".match", "%q matches no request that a configured route serves", q.Match)
		}
		if q.Limit <= 0 {
			errs.add(p+".limit", "must be positive, got %d", q.Limit)
		}
		checkMode(errs, p+".mode", q.Mode)
		for _, plan := range sortedKeys(q.Plans) {
			pp := p + ".plans." + plan
			if q.Plans[plan] < 0 {
				errs.add(pp, "must not be negative, got %d", q.Plans[plan])
			}
			if len(c.RateLimit.Plans) > 0 && c.Auth.Store != StoreFile {
				if _, ok := c.RateLimit.Plans[plan]; !ok {
					errs.add(pp, "unknown plan %q (rate_limit.plans)", plan)
				}
			}
		}
	}
}

// checkQuotaPlans checks the quotas' plan names against the plans known
// with a key file: rate_limit.plans and the apps' plans.
func (c *Config) checkQuotaPlans(kf *KeyFile) Errors {
	known := map[string]bool{}
	for name := range c.RateLimit.Plans {
		known[name] = true
	}
	if kf != nil {
		for _, app := range kf.Apps {
			known[app.Plan] = true
		}
	}
	var errs Errors
	for i, q := range c.Quotas {
		for _, plan := range sortedKeys(q.Plans) {
			if !known[plan] {
				errs.add(fmt.Sprintf("quotas[%d].plans.%s", i, plan), "unknown plan %q (neither in rate_limit.plans nor an app's plan in auth.file)", plan)
			}
		}
	}
	return errs
}

// keyFilePlans are the plans a key file's app may name: those of
// rate_limit.plans and those the quotas set limits for (a plan may only
// have a quota; its rate limit is then the default tiers).
func (c *Config) keyFilePlans() map[string]Plan {
	if len(c.Quotas) == 0 {
		return c.RateLimit.Plans
	}
	m := map[string]Plan{}
	for _, q := range c.Quotas {
		for p := range q.Plans {
			m[p] = Plan{}
		}
	}
	for p, v := range c.RateLimit.Plans {
		m[p] = v
	}
	return m
}

// servedBy reports whether a request that pattern matches is served by a
// route: a request built from pattern is, or a request built from a route
// pattern is matched by pattern.
func servedBy(pattern string, routes *http.ServeMux, routePatterns []string) bool {
	for _, r := range ProbeRequests(pattern) {
		if _, p := routes.Handler(r); p != "" {
			return true
		}
	}
	q := http.NewServeMux()
	if RegisterPattern(q, pattern) != nil {
		return false
	}
	for _, rp := range routePatterns {
		for _, r := range ProbeRequests(rp) {
			if _, p := q.Handler(r); p != "" {
				return true
			}
		}
	}
	return false
}

// probeMethods are tried for a pattern that names no method.
var probeMethods = []string{"GET", "POST", "PUT", "PATCH", "DELETE"}

// ProbeRequests returns requests that pattern matches: its wildcards
// filled in, one per method (the pattern's, or the common ones).
func ProbeRequests(pattern string) []*http.Request {
	method, host, path := SplitPattern(pattern)
	var segs []string
	for _, s := range strings.Split(path, "/") {
		switch {
		case s == "{$}":
			s = ""
		case strings.HasPrefix(s, "{"):
			s = "x"
		}
		segs = append(segs, s)
	}
	path = strings.Join(segs, "/")
	methods := probeMethods
	if method != "" {
		methods = []string{method}
	}
	if host == "" {
		host = "example.com"
	}
	var out []*http.Request
	for _, m := range methods {
		r := httptest.NewRequest(m, "http://"+host+path, nil)
		out = append(out, r)
	}
	return out
}

// SplitPattern splits a ServeMux pattern into method, host and path.
func SplitPattern(pattern string) (method, host, path string) {
	rest := pattern
	if i := strings.IndexAny(rest, " \t"); i >= 0 {
		method, rest = rest[:i], strings.TrimLeft(rest[i:], " \t")
	}
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		host, path = rest[:i], rest[i:]
	} else {
		host, path = rest, "/"
	}
	return method, host, path
}

// PatternsMayOverlap reports whether some request could match both
// patterns. False is certain (their methods, hosts or literal path
// prefixes exclude each other); true may be wrong, and the request is
// then matched against the pattern itself.
func PatternsMayOverlap(a, b string) bool {
	ma, ha, pa := SplitPattern(a)
	mb, hb, pb := SplitPattern(b)
	if ma != "" && mb != "" && ma != mb && !(ma == "GET" && mb == "HEAD" || ma == "HEAD" && mb == "GET") {
		return false
	}
	if ha != "" && hb != "" && ha != hb {
		return false
	}
	la, lb := literalPrefix(pa), literalPrefix(pb)
	return strings.HasPrefix(la, lb) || strings.HasPrefix(lb, la)
}

// PatternCovers reports whether every request that matches inner also
// matches outer. True is certain; false may be wrong (the request is then
// matched against outer itself). It knows the cases a quota's pattern
// usually has with its route's: the same method (or none, or GET for a
// HEAD route), the same host (or none), and the same path or a path
// ending in "/" with no wildcard of which inner's literal part is an
// extension.
func PatternCovers(outer, inner string) bool {
	mo, ho, po := SplitPattern(outer)
	mi, hi, pi := SplitPattern(inner)
	if mo != "" && mo != mi && !(mo == "GET" && mi == "HEAD") {
		return false
	}
	if ho != "" && ho != hi {
		return false
	}
	if po == pi {
		return true
	}
	return strings.HasSuffix(po, "/") && !strings.Contains(po, "{") && strings.HasPrefix(literalPrefix(pi), po)
}

// literalPrefix is the part of a pattern's path before its first
// wildcard: every path it matches starts with it.
func literalPrefix(path string) string {
	if i := strings.IndexByte(path, '{'); i >= 0 {
		return path[:i]
	}
	return path
}
