package config

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/innovartx/deskgate/apierror"
)

// Validate checks every value and returns an [Errors] listing each problem
// with its field path, or nil. It is pure and cheap: it builds nothing that
// outlives the call.
func (c *Config) Validate() error {
	var errs Errors
	c.validateServer(&errs)
	c.validateUpstream(&errs)
	c.validateRedis(&errs)
	c.validateAuth(&errs)
	c.validateRateLimit(&errs)
	c.validateCORS(&errs)
	c.validateRoutes(&errs)
	c.validateQuotas(&errs)
	c.validateTracing(&errs)
	for _, k := range sortedKeys(c.Messages) {
		p := "messages." + k
		if !apierror.Known(apierror.Code(k)) {
			var codes []string
			for _, c := range apierror.Codes() {
				codes = append(codes, string(c))
			}
			if s := closest(k, codes); s != "" {
				errs.add(p, "unknown error code; did you mean %q?", s)
			} else {
				errs.add(p, "unknown error code")
			}
		} else if strings.TrimSpace(c.Messages[k]) == "" {
			errs.add(p, "message must not be empty")
		}
	}
	if !c.Log.Level.valid() {
		errs.add("log.level", "must be debug, info, warn or error, got %q", c.Log.Level)
	}
	if !c.Log.Format.valid() {
		errs.add("log.format", "must be json or text, got %q", c.Log.Format)
	}
	if len(errs) == 0 {
		return nil
	}
	return errs
}

func (c *Config) validateServer(errs *Errors) {
	s := c.Server
	checkListen(errs, "server.listen", s.Listen)
	checkListen(errs, "admin.listen", c.Admin.Listen)
	if s.Listen != "" && s.Listen == c.Admin.Listen {
		errs.add("admin.listen", "must differ from server.listen")
	}
	positive(errs, "server.read_header_timeout", s.ReadHeaderTimeout.D())
	positive(errs, "server.read_timeout", s.ReadTimeout.D())
	positive(errs, "server.write_timeout", s.WriteTimeout.D())
	positive(errs, "server.idle_timeout", s.IdleTimeout.D())
	positive(errs, "server.shutdown_timeout", s.ShutdownTimeout.D())
	if s.ShutdownDelay.D() >= s.ShutdownTimeout.D() && s.ShutdownTimeout > 0 {
		errs.add("server.shutdown_delay", "must be shorter than server.shutdown_timeout (%s)", s.ShutdownTimeout.D())
	}
	if s.MaxHeaderBytes < 1024 {
		errs.add("server.max_header_bytes", "must be at least 1024, got %d", s.MaxHeaderBytes)
	}
	if s.MaxBodyBytes <= 0 {
		errs.add("server.max_body_bytes", "must be positive, got %d", s.MaxBodyBytes)
	}
	for i, p := range s.TrustedProxies {
		if _, err := ParsePrefix(p); err != nil {
			errs.add(fmt.Sprintf("server.trusted_proxies[%d]", i), "%v", err)
		}
	}
	c.validateTLS(errs)
}

// validateTLS checks server.tls and server.redirect_http (SPEC §12). The
// certificate files themselves are read by [Load], not here: Validate
// touches no file.
func (c *Config) validateTLS(errs *Errors) {
	s, t, a := c.Server, c.Server.TLS, c.Server.TLS.ACME
	if !t.MinVersion.valid() {
		errs.add("server.tls.min_version", `must be "1.2" or "1.3", got %q`, t.MinVersion)
	}
	files := t.CertFile != "" || t.KeyFile != ""
	switch {
	case files && a.Enabled():
		errs.add("server.tls.acme", "certificates come from cert_file/key_file or from acme, not both")
	case t.CertFile != "" && t.KeyFile == "":
		errs.add("server.tls.key_file", "required with server.tls.cert_file")
	case t.KeyFile != "" && t.CertFile == "":
		errs.add("server.tls.cert_file", "required with server.tls.key_file")
	}
	if a.Enabled() {
		if len(a.Domains) == 0 {
			errs.add("server.tls.acme.domains", "required: the names to obtain certificates for")
		}
		seen := map[string]int{}
		for i, d := range a.Domains {
			p := fmt.Sprintf("server.tls.acme.domains[%d]", i)
			if err := checkDomain(d); err != nil {
				errs.add(p, "%v", err)
			} else if j, dup := seen[d]; dup {
				errs.add(p, "%q is also domains[%d]", d, j)
			}
			seen[d] = i
		}
		if a.Email != "" && (!strings.Contains(a.Email, "@") || strings.ContainsAny(a.Email, " \t\r\n<>")) {
			errs.add("server.tls.acme.email", "want an address such as ops@example.com, got %q", a.Email)
		}
		if a.DirectoryURL != "" {
			if u, err := url.Parse(a.DirectoryURL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
				errs.add("server.tls.acme.directory_url", "want the CA's directory as an https:// URL, got %q", a.DirectoryURL)
			}
		}
		if a.Storage == "" {
			errs.add("server.tls.acme.storage", "required: a directory for the account key and certificates (shared by the replicas)")
		}
	}
	if s.RedirectHTTP != "" {
		checkListen(errs, "server.redirect_http", s.RedirectHTTP)
		switch {
		case !t.Enabled():
			errs.add("server.redirect_http", "redirects to https: needs server.tls")
		case s.RedirectHTTP == s.Listen:
			errs.add("server.redirect_http", "must differ from server.listen")
		case s.RedirectHTTP == c.Admin.Listen:
			errs.add("server.redirect_http", "must differ from admin.listen")
		}
	}
}

// checkDomain accepts a DNS name that an ACME CA can validate by HTTP-01
// or TLS-ALPN-01: letters, digits and hyphens in dot-separated labels, no
// wildcard, no IP address, lower case.
func checkDomain(d string) error {
	switch {
	case d == "":
		return errors.New("empty domain")
	case strings.HasPrefix(d, "*."):
		return fmt.Errorf("%q: a wildcard needs the DNS-01 challenge, which deskgate does not do; list each name", d)
	case net.ParseIP(d) != nil:
		return fmt.Errorf("%q: an IP address, want a DNS name", d)
	case d != strings.ToLower(d):
		return fmt.Errorf("%q: write it in lower case", d)
	case len(d) > 253 || !strings.Contains(d, "."):
		return fmt.Errorf("%q: want a fully qualified name such as api.example.com", d)
	}
	for _, label := range strings.Split(d, ".") {
		if !domainLabel.MatchString(label) {
			return fmt.Errorf("%q: label %q is not a DNS label", d, label)
		}
	}
	return nil
}

var domainLabel = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

func checkListen(errs *Errors, path, addr string) {
	if addr == "" {
		errs.add(path, "required")
		return
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		errs.add(path, "want host:port or :port, got %q", addr)
		return
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		errs.add(path, "invalid port %q", port)
	}
}

func positive(errs *Errors, path string, d time.Duration) {
	if d <= 0 {
		errs.add(path, "must be positive")
	}
}

// ParsePrefix parses a trusted-proxy entry: a CIDR or a single address.
func ParsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("invalid CIDR %q", s)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("invalid address or CIDR %q", s)
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// ParseUpstream parses an upstream URL: absolute http or https with a host,
// and no query or fragment.
func ParseUpstream(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("invalid URL %q", s)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("want an http:// or https:// URL, got %q", s)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("URL %q has no host", s)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return nil, fmt.Errorf("URL %q must not have a query, fragment or user info", s)
	}
	return u, nil
}

func (c *Config) validateTracing(errs *Errors) {
	t := c.Tracing
	if t.OTLPEndpoint != "" {
		if _, err := ParseOTLPEndpoint(t.OTLPEndpoint); err != nil {
			errs.add("tracing.otlp_endpoint", "%v", err)
		}
	}
	// NaN fails both comparisons.
	if !(t.SampleRatio >= 0 && t.SampleRatio <= 1) {
		errs.add("tracing.sample_ratio", "must be between 0 and 1, got %v", t.SampleRatio)
	}
	if strings.TrimSpace(t.ServiceName) == "" {
		errs.add("tracing.service_name", "must not be empty")
	}
}

// ParseOTLPEndpoint parses tracing.otlp_endpoint and returns the URL of
// its traces endpoint: an http:// or https:// URL with a host and no
// query, user or fragment; one without a path gets OTLP/HTTP's
// /v1/traces.
func ParseOTLPEndpoint(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("want an OTLP/HTTP URL such as http://otel-collector:4318, got %q", redactURL(s))
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("must have no user, query or fragment, got %q", redactURL(s))
	}
	if u.Path == "" || u.Path == "/" {
		u.Path = "/v1/traces"
	}
	return u, nil
}

func (c *Config) validateUpstream(errs *Errors) {
	u := c.Upstream
	if u.URL == "" {
		errs.add("upstream.url", "required")
	} else if _, err := ParseUpstream(u.URL); err != nil {
		errs.add("upstream.url", "%v", err)
	}
	positive(errs, "upstream.timeout", u.Timeout.D())
	if u.MaxIdleConnsPerHost <= 0 {
		errs.add("upstream.max_idle_conns_per_host", "must be positive, got %d", u.MaxIdleConnsPerHost)
	}
	if u.MaxConnsPerHost <= 0 {
		errs.add("upstream.max_conns_per_host", "must be positive, got %d", u.MaxConnsPerHost)
	}
	if u.MaxErrorBodyBytes <= 0 {
		errs.add("upstream.max_error_body_bytes", "must be positive, got %d", u.MaxErrorBodyBytes)
	}
}

func (c *Config) validateRedis(errs *Errors) {
	r := c.Redis
	if r.URL != "" && len(r.Addrs) > 0 {
		errs.add("redis.addrs", "set either redis.url or redis.addrs, not both")
	}
	if r.URL != "" {
		if u, err := url.Parse(r.URL); err != nil || (u.Scheme != "redis" && u.Scheme != "rediss") || u.Host == "" {
			errs.add("redis.url", "want redis://[user:password@]host:port[/db] or rediss://..., got %q", redactURL(r.URL))
		}
	}
	if r.Cluster && r.MasterName != "" {
		errs.add("redis.master_name", "cannot be used with redis.cluster: true")
	}
	if (r.Cluster || r.MasterName != "") && len(r.Addrs) == 0 {
		errs.add("redis.addrs", "required with redis.cluster or redis.master_name")
	}
	for i, a := range r.Addrs {
		if _, _, err := net.SplitHostPort(a); err != nil {
			errs.add(fmt.Sprintf("redis.addrs[%d]", i), "want host:port, got %q", a)
		}
	}
	positive(errs, "redis.timeout", r.Timeout.D())
	if !r.OnFailure.valid() {
		errs.add("redis.on_failure", "must be local, allow or deny, got %q", r.OnFailure)
	}
	if len(r.Addrs) > 1 && !r.Cluster && r.MasterName == "" {
		errs.add("redis.addrs", "several addresses need redis.cluster: true (Cluster seeds) or redis.master_name (sentinels)")
	}
	if r.URL != "" && (r.Username != "" || r.Password != "" || r.TLS) {
		errs.add("redis.url", "carries its own user, password and TLS (rediss://); remove redis.username/password/tls")
	}
}

// redactURL hides the password of a Redis URL in error messages.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "<unparsable URL>"
	}
	return u.Redacted()
}

func (c *Config) validateAuth(errs *Errors) {
	a := c.Auth
	switch a.Store {
	case StoreNone:
	case StoreFile:
		if a.File == "" {
			errs.add("auth.file", "required with auth.store: file")
		}
	case StoreRedis:
		if !c.Redis.Enabled() {
			errs.add("auth.store", "redis needs redis.url or redis.addrs")
		}
		if a.RedisPrefix == "" {
			errs.add("auth.redis_prefix", "must not be empty")
		}
	default:
		errs.add("auth.store", "must be none, file or redis, got %q", a.Store)
	}
	if a.CacheSize <= 0 {
		errs.add("auth.cache_size", "must be positive, got %d", a.CacheSize)
	}
	if len(a.Environments) == 0 {
		errs.add("auth.environments", "must list at least one of live, test")
	}
	for i, e := range a.Environments {
		if !e.valid() {
			errs.add(fmt.Sprintf("auth.environments[%d]", i), "must be live or test, got %q", e)
		}
	}
	positive(errs, "auth.cache_ttl", a.CacheTTL.D())
	positive(errs, "auth.negative_cache_ttl", a.NegativeCacheTTL.D())
}

func (c *Config) validateRateLimit(errs *Errors) {
	rl := c.RateLimit
	if !rl.KeyBy.valid() {
		errs.add("rate_limit.key_by", "must be app, key or ip, got %q", rl.KeyBy)
	}
	checkAlgorithm(errs, "rate_limit.algorithm", rl.Algorithm, false)
	checkMode(errs, "rate_limit.mode", rl.Mode)
	if rl.MaxUpstreamRetryAfter < 0 {
		errs.add("rate_limit.max_upstream_retry_after", "must not be negative (0 turns it off)")
	}
	checkTiers(errs, "rate_limit", rl.Algorithm, rl.Tiers, true)
	for _, name := range sortedKeys(rl.Plans) {
		p := "rate_limit.plans." + name
		if name == "" {
			errs.add(p, "plan name must not be empty")
		} else if !ValidIdent(name) {
			// The key stores' plans must be the same identifiers.
			errs.add(p, "plan name %s", identProblem(name))
		}
		checkTiers(errs, p, rl.Algorithm, rl.Plans[name].Tiers, true)
	}
}

// checkMode validates a bucket's mode (SPEC §10); "" is enforce.
func checkMode(errs *Errors, path string, mode Mode) {
	if !mode.valid() {
		errs.add(path, "must be enforce or shadow, got %q", mode)
	}
}

func checkAlgorithm(errs *Errors, path string, alg Algorithm, optional bool) {
	if optional && alg == "" {
		return
	}
	if !alg.valid() {
		errs.add(path, "must be sliding_log or gcra, got %q", alg)
	}
}

// checkTiers validates the tiers of one bucket. Windows are whole seconds
// (the RateLimit headers count in seconds) and distinct (the header names a
// tier by its window).
func checkTiers(errs *Errors, path string, alg Algorithm, tiers []Tier, required bool) {
	if len(tiers) == 0 {
		if required {
			errs.add(path+".tiers", "at least one tier is required")
		}
		return
	}
	if alg == GCRA && len(tiers) > 1 {
		errs.add(path+".tiers", "algorithm gcra runs each tier as a separate redis_rate limiter and cannot admit a request atomically across %d tiers; use sliding_log or a single tier", len(tiers))
	}
	seen := map[time.Duration]int{}
	for i, t := range tiers {
		p := fmt.Sprintf("%s.tiers[%d]", path, i)
		if t.Limit <= 0 {
			errs.add(p+".limit", "must be positive, got %d", t.Limit)
		}
		switch {
		case t.Window.D <= 0:
			errs.add(p+".window", "required and positive")
		case t.Window.D%time.Second != 0:
			errs.add(p+".window", "must be a whole number of seconds, got %s", t.Window.Text)
		case t.Window.D > 24*time.Hour:
			errs.add(p+".window", "must be at most 24h, got %s", t.Window.Text)
		}
		if j, dup := seen[t.Window.D]; dup {
			errs.add(p+".window", "same window as tiers[%d]", j)
		}
		seen[t.Window.D] = i
	}
}

func (c *Config) validateRoutes(errs *Errors) {
	if len(c.Routes) == 0 {
		errs.add("routes", "at least one route is required")
		return
	}
	mux := http.NewServeMux()
	buckets := map[string]int{}
	for i, r := range c.Routes {
		p := fmt.Sprintf("routes[%d]", i)
		if r.Pattern == "" {
			errs.add(p+".pattern", "required")
		} else if err := RegisterPattern(mux, r.Pattern); err != nil {
			errs.add(p+".pattern", "%v", err)
		}
		switch {
		case r.Auth == "":
			errs.add(p+".auth", "required: secret, public or none")
		case !r.Auth.valid():
			errs.add(p+".auth", "must be secret, public or none, got %q", r.Auth)
		}
		if r.Upstream != "" {
			if _, err := ParseUpstream(r.Upstream); err != nil {
				errs.add(p+".upstream", "%v", err)
			}
		}
		if r.Timeout < 0 {
			errs.add(p+".timeout", "must not be negative")
		}
		if r.CORS != nil && *r.CORS {
			switch {
			case r.Auth == AuthSecret:
				errs.add(p+".cors", "CORS never applies to a secret route: a secret key must not be in a browser (use auth: public, or remove cors)")
			case !c.CORS.Enabled():
				errs.add(p+".cors", "true needs cors.allowed_origins")
			}
		}
		rl := r.RateLimit
		if rl.Disabled || (rl.Bucket == "" && rl.Algorithm == "" && len(rl.Tiers) == 0 && rl.Mode == "") {
			continue
		}
		if rl.Bucket == "" {
			errs.add(p+".rate_limit.bucket", "required: a route's own rate_limit block names a separate budget")
			continue
		}
		if j, dup := buckets[rl.Bucket]; dup {
			prev := c.Routes[j].RateLimit
			if rl.Algorithm != prev.Algorithm || !slices.Equal(rl.Tiers, prev.Tiers) {
				errs.add(p+".rate_limit", "bucket %q is also defined by routes[%d] with other tiers", rl.Bucket, j)
			}
			if rl.Mode != prev.Mode {
				errs.add(p+".rate_limit.mode", "bucket %q is also defined by routes[%d] with mode %q", rl.Bucket, j, prev.Mode)
			}
		} else {
			buckets[rl.Bucket] = i
		}
		checkAlgorithm(errs, p+".rate_limit.algorithm", rl.Algorithm, true)
		checkMode(errs, p+".rate_limit.mode", rl.Mode)
		alg := rl.Algorithm.Or(c.RateLimit.Algorithm)
		checkTiers(errs, p+".rate_limit", alg, rl.Tiers, false)
		if len(rl.Tiers) == 0 && alg == GCRA && len(c.RateLimit.Tiers) > 1 {
			errs.add(p+".rate_limit.tiers", "algorithm gcra needs its own single tier here (the global limit has %d)", len(c.RateLimit.Tiers))
		}
	}
}

// validateCORS checks the cors block (SPEC §8).
func (c *Config) validateCORS(errs *Errors) {
	cc := c.CORS
	for i, o := range cc.AllowedOrigins {
		p := fmt.Sprintf("cors.allowed_origins[%d]", i)
		if o == "*" {
			if len(cc.AllowedOrigins) > 1 {
				errs.add(p, `"*" allows every origin: list it alone`)
			}
			continue
		}
		if err := checkOrigin(o); err != nil {
			errs.add(p, "%v", err)
		}
	}
	for _, l := range []struct {
		name string
		v    []string
	}{{"allowed_headers", cc.AllowedHeaders}, {"exposed_headers", cc.ExposedHeaders}} {
		for i, h := range l.v {
			if !validHeaderName(h) {
				errs.add(fmt.Sprintf("cors.%s[%d]", l.name, i), "%q is not a header name", h)
			}
		}
	}
	if d := cc.MaxAge.D(); d%time.Second != 0 {
		errs.add("cors.max_age", "must be whole seconds, got %s", d)
	}
}

// validHeaderName reports whether h is an HTTP field name: a non-empty
// token (RFC 9110 §5.1).
func validHeaderName(h string) bool {
	if h == "" {
		return false
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0 {
			continue
		}
		return false
	}
	return true
}

// checkOrigin accepts a serialised origin: scheme, host and optional
// port, as a browser sends it in Origin ("https://app.example.com").
func checkOrigin(o string) error {
	u, err := url.Parse(o)
	switch {
	case err != nil:
		return fmt.Errorf("invalid origin %q: %v", o, err)
	case u.Scheme != "http" && u.Scheme != "https":
		return fmt.Errorf("origin %q: want http:// or https://", o)
	case u.Host == "" || u.User != nil || u.Opaque != "":
		return fmt.Errorf("origin %q: want scheme://host[:port]", o)
	case u.Path != "" || u.RawQuery != "" || u.Fragment != "" || strings.HasSuffix(o, "?") || strings.HasSuffix(o, "#"):
		return fmt.Errorf("origin %q: an origin has no path, query or fragment (want scheme://host[:port])", o)
	case o != strings.ToLower(o):
		return fmt.Errorf("origin %q: write it in lower case, as browsers send it", o)
	case strings.Contains(o, "*"):
		return fmt.Errorf("origin %q: wildcards are not supported; list each origin, or \"*\" alone", o)
	}
	return nil
}

// RegisterPattern adds pattern to mux with a do-nothing handler and turns
// ServeMux's panic on an invalid or conflicting pattern into an error.
func RegisterPattern(mux *http.ServeMux, pattern string) (err error) {
	return Register(mux, pattern, http.NotFoundHandler())
}

// Register is mux.Handle that returns ServeMux's panic (an invalid
// pattern, or one that conflicts with a registered one) as an error.
func Register(mux *http.ServeMux, pattern string, h http.Handler) (err error) {
	defer func() {
		if v := recover(); v != nil {
			msg := strings.TrimPrefix(fmt.Sprint(v), "http: ")
			// ServeMux names where each pattern was registered: our own
			// source lines, noise to the user.
			msg = registeredAt.ReplaceAllString(msg, "")
			msg = strings.Join(strings.Fields(msg), " ")
			err = errors.New(msg)
		}
	}()
	mux.Handle(pattern, h)
	return nil
}

var registeredAt = regexp.MustCompile(` \(registered at [^)]*\)`)

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
