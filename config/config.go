// Package config owns deskgate's configuration (SPEC §5): the schema and
// its defaults, strict YAML decoding where an unknown key is an error,
// `${VAR}` expansion from the environment, and [Config.Validate], which
// reports every error with the path of its field (`routes[2].pattern: ...`).
//
// Loading is pure: nothing here touches global state, so a reload can load
// and validate a candidate config while the old one keeps serving.
package config

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Config is the whole deskgate configuration.
type Config struct {
	Server      Server            `yaml:"server"`
	Admin       Admin             `yaml:"admin"`
	Upstream    Upstream          `yaml:"upstream"`
	Redis       Redis             `yaml:"redis"`
	Auth        Auth              `yaml:"auth"`
	RateLimit   RateLimit         `yaml:"rate_limit"`
	CORS        CORS              `yaml:"cors"`
	Routes      []Route           `yaml:"routes"`
	Quotas      []Quota           `yaml:"quotas"`
	WatchConfig bool              `yaml:"watch_config"`
	Messages    map[string]string `yaml:"messages"`
	Log         Log               `yaml:"log"`
	Tracing     Tracing           `yaml:"tracing"`

	// KeyFile is auth.file's content, loaded by [Load] when auth.store is
	// file.
	KeyFile *KeyFile `yaml:"-"`
	// KeyFilePath is auth.file resolved against the config's directory.
	KeyFilePath string `yaml:"-"`
}

// Server is the public listener.
type Server struct {
	Listen            string   `yaml:"listen"`
	ReadHeaderTimeout Duration `yaml:"read_header_timeout"`
	// ReadTimeout bounds the reading of a request body, from the moment
	// deskgate starts forwarding it (or, for a request refused before,
	// from its answer): a body that has not fully arrived by then gets
	// 408 REQUEST_TIMEOUT and its connection is closed.
	ReadTimeout Duration `yaml:"read_timeout"`
	// WriteTimeout bounds each write to the client: a write that makes
	// no progress for this long closes the connection. It is not a limit
	// on the whole response, so a long download read steadily is never
	// cut.
	WriteTimeout    Duration `yaml:"write_timeout"`
	IdleTimeout     Duration `yaml:"idle_timeout"`
	MaxHeaderBytes  int      `yaml:"max_header_bytes"`
	MaxBodyBytes    int64    `yaml:"max_body_bytes"`
	ShutdownTimeout Duration `yaml:"shutdown_timeout"`
	// ShutdownDelay is how long the listener keeps accepting after
	// /readyz starts failing on SIGTERM, for load balancers that need
	// time to stop sending (0: stop at once).
	ShutdownDelay Duration `yaml:"shutdown_delay"`
	// TrustedProxies lists the CIDRs (or single addresses) whose
	// X-Forwarded-For is believed. Empty means nobody's.
	TrustedProxies []string `yaml:"trusted_proxies"`
	// AllowSemicolonPaths lets paths with a `;` through (SPEC §7). Unsafe
	// in front of servlet or Spring upstreams, which drop `;params` and
	// so serve another path than the one the route was judged on.
	AllowSemicolonPaths bool `yaml:"allow_semicolon_paths"`
	// TLS turns server.listen into HTTPS with HTTP/2 (SPEC §12).
	TLS TLS `yaml:"tls"`
	// RedirectHTTP is the address of an optional plain listener that
	// answers 308 to the https URL and serves ACME HTTP-01 challenges.
	// "" is none.
	RedirectHTTP string `yaml:"redirect_http"`
}

// TLS is HTTPS on server.listen (SPEC §12): a certificate from files, or
// from an ACME CA. Neither set: plain HTTP.
type TLS struct {
	// CertFile is a PEM chain, leaf first; KeyFile its PEM private key.
	// Both are relative to the config file's directory, read at start-up
	// and again whenever they change.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// MinVersion is "1.2" (the default) or "1.3".
	MinVersion TLSVersion `yaml:"min_version"`
	ACME       ACME       `yaml:"acme"`

	// CertPath and KeyPath are CertFile and KeyFile resolved against the
	// config's directory; StoragePath is ACME.Storage likewise. Set by
	// [Load].
	CertPath    string `yaml:"-"`
	KeyPath     string `yaml:"-"`
	StoragePath string `yaml:"-"`
}

// Enabled reports whether server.listen serves HTTPS.
func (t TLS) Enabled() bool { return t.CertFile != "" || t.KeyFile != "" || t.ACME.Enabled() }

// ACME obtains and renews certificates from an ACME CA (SPEC §12).
type ACME struct {
	// Domains are the names certificates are obtained for; a client
	// that asks for another name (SNI) is refused.
	Domains []string `yaml:"domains"`
	// Email is the account's contact, for the CA's expiry notices.
	Email string `yaml:"email"`
	// DirectoryURL is the CA's directory; "" is Let's Encrypt's.
	DirectoryURL string `yaml:"directory_url"`
	// Storage is the directory that keeps the account key, the
	// certificates and pending challenges; replicas that share it share
	// their certificates. Relative to the config file's directory.
	Storage string `yaml:"storage"`
}

// Enabled reports whether any acme key is set.
func (a ACME) Enabled() bool {
	return len(a.Domains) > 0 || a.Email != "" || a.DirectoryURL != "" || a.Storage != ""
}

// LetsEncryptDirectory is the default server.tls.acme.directory_url.
const LetsEncryptDirectory = "https://acme-v02.api.letsencrypt.org/directory"

// CORS is the cross-origin policy of browser clients (SPEC §8). It
// applies to the routes whose auth is public or none, unless a route says
// `cors: false`; never to a secret route.
type CORS struct {
	// AllowedOrigins are exact origins ("https://app.example.com") or
	// "*". Empty: CORS is off.
	AllowedOrigins []string `yaml:"allowed_origins"`
	// AllowedHeaders are the request headers a preflight may ask for.
	AllowedHeaders []string `yaml:"allowed_headers"`
	// ExposedHeaders are the response headers browser code may read.
	ExposedHeaders []string `yaml:"exposed_headers"`
	// MaxAge is how long a browser may cache a preflight's answer.
	MaxAge Duration `yaml:"max_age"`
}

// Enabled reports whether any origin is allowed.
func (c CORS) Enabled() bool { return len(c.AllowedOrigins) > 0 }

// Admin is the admin listener (/metrics, /healthz, /readyz).
type Admin struct {
	Listen string `yaml:"listen"`
	// Pprof serves /debug/pprof/ on the admin listener.
	Pprof bool `yaml:"pprof"`
}

// Upstream is the default upstream of every route.
type Upstream struct {
	URL string `yaml:"url"`
	// Timeout bounds the wait for the response headers.
	Timeout             Duration `yaml:"timeout"`
	MaxIdleConnsPerHost int      `yaml:"max_idle_conns_per_host"`
	// MaxConnsPerHost caps the exchanges in flight to one upstream host
	// (with HTTP/1.1, the connections in use). A request past the cap
	// waits up to its route's timeout for a free one, then gets 503.
	MaxConnsPerHost   int   `yaml:"max_conns_per_host"`
	MaxErrorBodyBytes int64 `yaml:"max_error_body_bytes"`
}

// Redis is the shared rate-limit store. With neither URL nor Addrs the store
// is in process.
type Redis struct {
	// URL is redis://[user:password@]host:port[/db] or rediss:// (TLS).
	URL string `yaml:"url"`
	// Addrs are the servers: one, the Cluster seeds (Cluster), or the
	// sentinels (MasterName).
	Addrs      []string `yaml:"addrs"`
	Cluster    bool     `yaml:"cluster"`
	MasterName string   `yaml:"master_name"`
	// Username, Password and TLS apply to Addrs; a URL carries its own.
	Username  string    `yaml:"username"`
	Password  string    `yaml:"password"`
	TLS       bool      `yaml:"tls"`
	Timeout   Duration  `yaml:"timeout"`
	OnFailure OnFailure `yaml:"on_failure"`
}

// Enabled reports whether a Redis store is configured.
func (r Redis) Enabled() bool { return r.URL != "" || len(r.Addrs) > 0 }

// Auth configures key checking and the key store.
type Auth struct {
	Store            KeyStore `yaml:"store"`
	File             string   `yaml:"file"`
	RedisPrefix      string   `yaml:"redis_prefix"`
	CacheTTL         Duration `yaml:"cache_ttl"`
	NegativeCacheTTL Duration `yaml:"negative_cache_ttl"`
	// StaleIfError is how long past its TTL a cached lookup may still be
	// used while Redis cannot answer; past it, 503.
	StaleIfError Duration `yaml:"stale_if_error"`
	// CacheSize bounds the lookup cache's entries.
	CacheSize    int   `yaml:"cache_size"`
	Environments []Env `yaml:"environments"`
	ForwardKey   bool  `yaml:"forward_key"`
}

// AuthStoreSettings are the settings of a Redis key store: a reload that
// keeps them keeps the store and its cache.
type AuthStoreSettings struct {
	Prefix                  string
	TTL, NegativeTTL, Stale Duration
	CacheSize               int
}

// StoreSettings returns a's Redis key store settings.
func (a Auth) StoreSettings() AuthStoreSettings {
	return AuthStoreSettings{a.RedisPrefix, a.CacheTTL, a.NegativeCacheTTL, a.StaleIfError, a.CacheSize}
}

// RateLimit is the global limit (SPEC §4).
type RateLimit struct {
	KeyBy     KeyBy           `yaml:"key_by"`
	Algorithm Algorithm       `yaml:"algorithm"`
	Tiers     []Tier          `yaml:"tiers"`
	Plans     map[string]Plan `yaml:"plans"`
	// Mode is the global bucket's (and its plans'): enforce (default) or
	// shadow (SPEC §10, docs/operating.md).
	Mode Mode `yaml:"mode"`
	// MaxUpstreamRetryAfter caps how long an upstream 429's Retry-After
	// makes deskgate refuse an identity itself; 0 turns that off.
	MaxUpstreamRetryAfter Duration `yaml:"max_upstream_retry_after"`
}

// Plan holds the tiers of one plan, chosen by the app's plan.
type Plan struct {
	Tiers []Tier `yaml:"tiers"`
}

// Tier is one limit: at most Limit requests in any Window.
type Tier struct {
	Limit  int    `yaml:"limit"`
	Window Window `yaml:"window"`
}

// Route is one route policy.
type Route struct {
	Pattern   string         `yaml:"pattern"`
	Auth      AuthPolicy     `yaml:"auth"`
	RateLimit RouteRateLimit `yaml:"rate_limit"`
	// Upstream overrides upstream.url when set.
	Upstream string `yaml:"upstream"`
	// Timeout overrides upstream.timeout when non-zero.
	Timeout Duration `yaml:"timeout"`
	// WebSocket lets `Upgrade: websocket` requests through to the
	// upstream. Off by default: every other upgrade, and a websocket one
	// on a route without it, is stripped and proxied as a plain request.
	WebSocket bool `yaml:"websocket"`
	// CORS is `cors: false` (the route takes no part in cors:) or `true`
	// (the default on public and none routes; an error on secret ones).
	CORS *bool `yaml:"cors"`
}

// RouteRateLimit is a route's `rate_limit:`, which is either a boolean
// (`false`: not limited; `true`: the global limit, the default) or a block
// naming a separate budget.
type RouteRateLimit struct {
	// Disabled is set by `rate_limit: false`.
	Disabled bool
	// Bucket is the name of a separate budget; "" is the global one.
	Bucket string `yaml:"bucket"`
	// Algorithm overrides rate_limit.algorithm for this bucket.
	Algorithm Algorithm `yaml:"algorithm"`
	// Tiers overrides rate_limit.tiers for this bucket.
	Tiers []Tier `yaml:"tiers"`
	// Mode is this bucket's: enforce (default) or shadow. It is not
	// inherited from rate_limit.mode.
	Mode Mode `yaml:"mode"`
}

// routeRateLimitBlock is the mapping form of [RouteRateLimit]; the key
// checker and the decoder use it.
type routeRateLimitBlock struct {
	Bucket    string    `yaml:"bucket"`
	Algorithm Algorithm `yaml:"algorithm"`
	Tiers     []Tier    `yaml:"tiers"`
	Mode      Mode      `yaml:"mode"`
}

// UnmarshalYAML accepts a boolean or a block.
func (r *RouteRateLimit) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		var b bool
		if err := n.Decode(&b); err != nil {
			return err
		}
		*r = RouteRateLimit{Disabled: !b}
		return nil
	}
	var blk routeRateLimitBlock
	if err := n.Decode(&blk); err != nil {
		return err
	}
	*r = RouteRateLimit{Bucket: blk.Bucket, Algorithm: blk.Algorithm, Tiers: blk.Tiers, Mode: blk.Mode}
	return nil
}

// Log configures the process log and the access log.
type Log struct {
	Level  LogLevel  `yaml:"level"`
	Format LogFormat `yaml:"format"`
}

// Tracing is W3C trace context and OpenTelemetry export (SPEC §11). The
// client's traceparent and tracestate reach the upstream whatever it
// says; with an endpoint, deskgate records spans and exports them.
type Tracing struct {
	// OTLPEndpoint is the OTLP/HTTP collector: a base URL such as
	// http://otel-collector:4318 (/v1/traces is appended when it has no
	// path) or the full URL of the traces endpoint. Empty: no export.
	OTLPEndpoint string `yaml:"otlp_endpoint"`
	// SampleRatio is the share of the traces deskgate starts itself
	// (the client sent no valid traceparent) that are recorded and
	// exported, from 0 to 1. A sampled incoming traceparent is always
	// kept, an unsampled one never (parent-based).
	SampleRatio float64 `yaml:"sample_ratio"`
	// ServiceName is the service.name resource attribute of the spans.
	ServiceName string `yaml:"service_name"`
}

// Enabled reports whether spans are exported.
func (t Tracing) Enabled() bool { return t.OTLPEndpoint != "" }

// Duration is a time.Duration written as in Go: "50ms", "10s", "1m".
type Duration time.Duration

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// UnmarshalYAML parses a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := parseDuration(n.Value)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// parseDuration parses a duration as the config writes it, in Go's syntax:
// the one parser of [Duration], [Window] and the checker, whose error is
// the message a user sees.
func parseDuration(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("invalid duration %q (want e.g. 50ms, 10s, 1m)", s)
	}
	return d, nil
}

// MarshalYAML writes d back as a string.
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// Window is a rate-limit window. It keeps the text it was written as,
// because the RateLimit-Policy header names each tier by it (SPEC §4).
type Window struct {
	D    time.Duration
	Text string
}

// UnmarshalYAML parses a Go duration string and keeps its text.
func (w *Window) UnmarshalYAML(n *yaml.Node) error {
	v, err := parseDuration(n.Value)
	if err != nil {
		return err
	}
	*w = Window{D: v, Text: n.Value}
	return nil
}

// MarshalYAML writes w back as its text.
func (w Window) MarshalYAML() (any, error) { return w.Text, nil }

// Win returns a Window of d, named as Go formats it without zero units
// ("1s", "1m", "1h"). It is for defaults and tests.
func Win(d time.Duration) Window {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return Window{D: d, Text: s}
}

// Default returns the configuration that an empty file gives: every value
// of SPEC §5 that has a default. Routes and upstream.url have none.
func Default() *Config {
	return &Config{
		Server: Server{
			Listen:            ":8080",
			ReadHeaderTimeout: Duration(10 * time.Second),
			ReadTimeout:       Duration(30 * time.Second),
			WriteTimeout:      Duration(30 * time.Second),
			IdleTimeout:       Duration(120 * time.Second),
			MaxHeaderBytes:    32768,
			MaxBodyBytes:      10 << 20,
			ShutdownTimeout:   Duration(25 * time.Second),
			TLS:               TLS{MinVersion: TLS12},
		},
		Admin: Admin{Listen: "127.0.0.1:9090"},
		Upstream: Upstream{
			Timeout:             Duration(30 * time.Second),
			MaxIdleConnsPerHost: 256,
			MaxConnsPerHost:     1024,
			MaxErrorBodyBytes:   64 << 10,
		},
		Redis: Redis{Timeout: Duration(50 * time.Millisecond), OnFailure: OnFailureLocal},
		Auth: Auth{
			Store:            "none",
			RedisPrefix:      "deskgate:apikey:",
			CacheTTL:         Duration(30 * time.Second),
			NegativeCacheTTL: Duration(5 * time.Second),
			StaleIfError:     Duration(5 * time.Minute),
			CacheSize:        100_000,
			Environments:     []Env{EnvLive},
			ForwardKey:       true,
		},
		RateLimit: RateLimit{
			KeyBy:                 KeyByApp,
			Algorithm:             SlidingLog,
			Mode:                  Enforce,
			MaxUpstreamRetryAfter: Duration(time.Minute),
			Tiers: []Tier{
				{Limit: 3, Window: Win(time.Second)},
				{Limit: 20, Window: Win(10 * time.Second)},
				{Limit: 100, Window: Win(time.Minute)},
			},
		},
		CORS: CORS{
			AllowedHeaders: []string{"X-API-Key", "Content-Type", "X-Request-Id"},
			ExposedHeaders: []string{"RateLimit", "RateLimit-Policy", "Retry-After", "X-Request-Id"},
			MaxAge:         Duration(10 * time.Minute),
		},
		Messages: map[string]string{},
		Log:      Log{Level: LevelInfo, Format: FormatJSON},
		Tracing:  Tracing{SampleRatio: 0.01, ServiceName: "deskgate"},
	}
}

// FieldError is one configuration error and the path of its field.
type FieldError struct {
	Path string
	Msg  string
}

func (e FieldError) Error() string {
	if e.Path == "" {
		return e.Msg
	}
	return e.Path + ": " + e.Msg
}

// Errors is every error found in one configuration, in file order.
type Errors []FieldError

func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

func (es *Errors) add(path, format string, args ...any) {
	*es = append(*es, FieldError{Path: path, Msg: fmt.Sprintf(format, args...)})
}

// Load reads, decodes and validates the file at path and, with
// `auth.store: file`, the key file. The error, when not nil, is an
// [Errors] naming every problem of both files in one list (the config's
// in file order, then the key file's), or an I/O error reading the config.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	cfg, errs := parse(data, os.LookupEnv)
	// The key file is checked even when the config has errors, so that
	// one run names them all; it needs a store and a file name that
	// survived the config's own checks.
	if cfg != nil && cfg.Auth.Store == StoreFile && cfg.Auth.File != "" {
		cfg.KeyFilePath = KeyFilePath(path, cfg.Auth.File)
		// An unknown plan is only worth reporting when the plans
		// themselves were read without error.
		checkPlans := !errs.touch("rate_limit.plans")
		kf, kerr := loadKeyFile(cfg.KeyFilePath, cfg.keyFilePlans(), checkPlans)
		errs = append(errs, kerr...)
		cfg.KeyFile = kf
		if kerr == nil && !errs.touch("quotas") {
			errs = append(errs, cfg.checkQuotaPlans(kf)...)
		}
	}
	if cfg != nil {
		t := &cfg.Server.TLS
		t.CertPath = KeyFilePath(path, t.CertFile)
		t.KeyPath = KeyFilePath(path, t.KeyFile)
		t.StoragePath = KeyFilePath(path, t.ACME.Storage)
		// The pair is read only when its two fields passed validation:
		// "key_file: required" says enough on its own.
		if t.CertFile != "" && t.KeyFile != "" && !errs.touch("server.tls") {
			if _, ferr := LoadCertificate(t.CertPath, t.KeyPath); ferr != nil {
				errs = append(errs, *ferr)
			}
		}
	}
	if len(errs) > 0 {
		return nil, errs
	}
	return cfg, nil
}

// Parse decodes and validates data, reading `${VAR}` through lookup. The
// error, when not nil, is an [Errors] with every problem of the file, in
// file order: unknown keys, values of the wrong type, bad durations and
// `${VAR}`s, and every rule of [Config.Validate] on the rest.
func Parse(data []byte, lookup func(string) (string, bool)) (*Config, error) {
	cfg, errs := parse(data, lookup)
	if len(errs) > 0 {
		return nil, errs
	}
	return cfg, nil
}

// parse is Parse that also returns the config it could decode when there
// are errors (nil if the file is not a YAML mapping): each value reported
// holds its default there.
func parse(data []byte, lookup func(string) (string, bool)) (*Config, Errors) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, Errors{{Msg: "invalid YAML: " + strings.TrimPrefix(err.Error(), "yaml: ")}}
	}
	cfg := Default()
	if doc.Kind == 0 { // empty file
		return cfg, validationErrors(cfg.Validate())
	}
	c := newChecker(lookup)
	if c.check(&doc, typeOfConfig, "", pos{1, 1}) {
		return nil, c.errs // not a mapping: nothing else to say
	}
	var decodeErrs Errors
	if err := doc.Decode(cfg); err != nil {
		// check takes out every value that yaml would refuse; this is
		// for what it does not foresee (an explicit tag, say).
		var te *yaml.TypeError
		if !errors.As(err, &te) {
			return nil, append(c.errs, FieldError{Msg: err.Error()})
		}
		for _, m := range te.Errors {
			decodeErrs.add("", "%s", m)
		}
	}
	return cfg, append(c.merge(validationErrors(cfg.Validate())), decodeErrs...)
}

// validationErrors is err, from [Config.Validate], as Errors.
func validationErrors(err error) Errors {
	var errs Errors
	if err != nil && !errors.As(err, &errs) {
		errs = Errors{{Msg: err.Error()}}
	}
	return errs
}

// touch reports whether an error is about path, something inside it, or
// a field that holds it.
func (es Errors) touch(path string) bool {
	for _, e := range es {
		if within(path, e.Path) || within(e.Path, path) {
			return true
		}
	}
	return false
}
