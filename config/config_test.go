package config

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// noEnv is a lookup with no variable set.
func noEnv(string) (string, bool) { return "", false }

// env returns a lookup reading m.
func env(m map[string]string) func(string) (string, bool) {
	return func(name string) (string, bool) {
		v, ok := m[name]
		return v, ok
	}
}

// minimal is the smallest valid config: the two values without a default.
const minimal = `
upstream:
  url: http://127.0.0.1:8081
routes:
  - pattern: /api/v1/
    auth: secret
`

// mustParse parses data and fails the test on any error.
func mustParse(t *testing.T, data string, lookup func(string) (string, bool)) *Config {
	t.Helper()
	cfg, err := Parse([]byte(data), lookup)
	if err != nil {
		t.Fatalf("Parse: %v\nconfig:\n%s", err, data)
	}
	if cfg == nil {
		t.Fatal("Parse returned a nil config and no error")
	}
	return cfg
}

// TestParseRepoConfig guards SPEC §4/§5 on the shipped config.yaml: it is
// valid, gives the documented tiers and routes, and `${VAR:-default}` reads
// the environment or falls back to its default.
func TestParseRepoConfig(t *testing.T) {
	data, err := os.ReadFile("../config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		lookup  func(string) (string, bool)
		wantURL string
	}{
		{"no environment uses the default", noEnv, "http://127.0.0.1:8081"},
		{"DESKGATE_UPSTREAM set", env(map[string]string{"DESKGATE_UPSTREAM": "https://supportdesk.internal:8443"}), "https://supportdesk.internal:8443"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Parse(data, tt.lookup)
			if err != nil {
				t.Fatalf("Parse(config.yaml): %v", err)
			}
			if got := cfg.Upstream.URL; got != tt.wantURL {
				t.Errorf("upstream.url = %q, want %q", got, tt.wantURL)
			}
			if got, want := cfg.Server.Listen, ":8080"; got != want {
				t.Errorf("server.listen = %q, want %q", got, want)
			}
			if got, want := cfg.Admin.Listen, "127.0.0.1:9090"; got != want {
				t.Errorf("admin.listen = %q, want %q", got, want)
			}
			if got, want := cfg.Auth.Environments, []Env{"live", "test"}; !slices.Equal(got, want) {
				t.Errorf("auth.environments = %q, want %q", got, want)
			}
			if got, want := cfg.RateLimit.Algorithm, Algorithm("sliding_log"); got != want {
				t.Errorf("rate_limit.algorithm = %q, want %q", got, want)
			}
			wantTiers := []Tier{
				{Limit: 3, Window: Window{D: time.Second, Text: "1s"}},
				{Limit: 20, Window: Window{D: 10 * time.Second, Text: "10s"}},
				{Limit: 100, Window: Window{D: time.Minute, Text: "1m"}},
			}
			if got := cfg.RateLimit.Tiers; !reflect.DeepEqual(got, wantTiers) {
				t.Errorf("rate_limit.tiers = %+v, want %+v", got, wantTiers)
			}
			wantRoutes := []struct {
				pattern  string
				auth     AuthPolicy
				disabled bool
			}{
				{"GET /api/v1/health", "none", true},
				{"POST /api/v1/tickets", "public", false},
				{"/api/v1/customers", "secret", false},
				{"/api/v1/customers/", "secret", false},
				{"/api/v1/", "secret", false},
			}
			if len(cfg.Routes) != len(wantRoutes) {
				t.Fatalf("got %d routes, want %d: %+v", len(cfg.Routes), len(wantRoutes), cfg.Routes)
			}
			for i, w := range wantRoutes {
				r := cfg.Routes[i]
				if r.Pattern != w.pattern || r.Auth != w.auth || r.RateLimit.Disabled != w.disabled {
					t.Errorf("routes[%d] = {pattern %q, auth %q, rate_limit disabled %v}, want {%q, %q, %v}",
						i, r.Pattern, r.Auth, r.RateLimit.Disabled, w.pattern, w.auth, w.disabled)
				}
			}
		})
	}
}

// TestLoad guards SPEC §5 `-config`: Load reads the file and `${VAR}`
// from the process environment; a missing file is an I/O error, not a
// config.Errors.
func TestLoad(t *testing.T) {
	t.Setenv("DESKGATE_UPSTREAM", "http://10.1.2.3:8081")
	cfg, err := Load("../config.yaml")
	if err != nil {
		t.Fatalf("Load(../config.yaml): %v", err)
	}
	if got, want := cfg.Upstream.URL, "http://10.1.2.3:8081"; got != want {
		t.Errorf("upstream.url = %q, want %q", got, want)
	}

	_, err = Load("testdata/does-not-exist.yaml")
	if err == nil {
		t.Fatal("Load of a missing file succeeded")
	}
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load of a missing file: got %v, want an error wrapping os.ErrNotExist", err)
	}
	var errs Errors
	if errors.As(err, &errs) {
		t.Errorf("Load of a missing file returned config.Errors %v, want an I/O error", errs)
	}
}

// TestParseSlowClientLimits guards issue 13's keys: server.read_timeout,
// server.write_timeout and upstream.max_conns_per_host are read as written.
func TestParseSlowClientLimits(t *testing.T) {
	cfg := mustParse(t, `
server: {read_timeout: 1500ms, write_timeout: 2m}
upstream: {url: http://127.0.0.1:8081, max_conns_per_host: 64}
routes: [{pattern: /api/v1/, auth: secret}]
`, noEnv)
	if got := cfg.Server.ReadTimeout.D(); got != 1500*time.Millisecond {
		t.Errorf("server.read_timeout = %s, want 1.5s", got)
	}
	if got := cfg.Server.WriteTimeout.D(); got != 2*time.Minute {
		t.Errorf("server.write_timeout = %s, want 2m", got)
	}
	if got := cfg.Upstream.MaxConnsPerHost; got != 64 {
		t.Errorf("upstream.max_conns_per_host = %d, want 64", got)
	}
}

// TestParseMinimalGivesDefaults guards the defaults of SPEC §3, §4 and §5:
// a file with only upstream.url and one route gets every other value from
// its documented default.
func TestParseMinimalGivesDefaults(t *testing.T) {
	cfg := mustParse(t, minimal, noEnv)
	tests := []struct {
		name string
		got  any
		want any
	}{
		{"server.listen", cfg.Server.Listen, ":8080"},
		{"admin.listen", cfg.Admin.Listen, "127.0.0.1:9090"},
		{"server.read_header_timeout", cfg.Server.ReadHeaderTimeout.D(), 10 * time.Second},
		{"server.read_timeout", cfg.Server.ReadTimeout.D(), 30 * time.Second},
		{"server.write_timeout", cfg.Server.WriteTimeout.D(), 30 * time.Second},
		{"server.idle_timeout", cfg.Server.IdleTimeout.D(), 120 * time.Second},
		{"server.max_header_bytes", cfg.Server.MaxHeaderBytes, 32768},
		{"server.max_body_bytes", cfg.Server.MaxBodyBytes, int64(10485760)},
		{"server.shutdown_timeout", cfg.Server.ShutdownTimeout.D(), 25 * time.Second},
		{"server.trusted_proxies", len(cfg.Server.TrustedProxies), 0},
		{"upstream.timeout", cfg.Upstream.Timeout.D(), 30 * time.Second},
		{"upstream.max_idle_conns_per_host", cfg.Upstream.MaxIdleConnsPerHost, 256},
		{"upstream.max_conns_per_host", cfg.Upstream.MaxConnsPerHost, 1024},
		{"upstream.max_error_body_bytes", cfg.Upstream.MaxErrorBodyBytes, int64(65536)},
		{"redis.url", cfg.Redis.URL, ""},
		{"redis.enabled", cfg.Redis.Enabled(), false},
		{"redis.timeout", cfg.Redis.Timeout.D(), 50 * time.Millisecond},
		{"redis.on_failure", cfg.Redis.OnFailure, OnFailure("local")},
		{"auth.store", cfg.Auth.Store, KeyStore("none")},
		{"auth.environments", cfg.Auth.Environments, []Env{"live"}},
		{"auth.forward_key", cfg.Auth.ForwardKey, true},
		{"auth.redis_prefix", cfg.Auth.RedisPrefix, "deskgate:apikey:"},
		{"auth.cache_ttl", cfg.Auth.CacheTTL.D(), 30 * time.Second},
		{"auth.negative_cache_ttl", cfg.Auth.NegativeCacheTTL.D(), 5 * time.Second},
		{"rate_limit.key_by", cfg.RateLimit.KeyBy, KeyBy("app")},
		{"rate_limit.algorithm", cfg.RateLimit.Algorithm, Algorithm("sliding_log")},
		{"rate_limit.tiers", cfg.RateLimit.Tiers, []Tier{
			{Limit: 3, Window: Window{D: time.Second, Text: "1s"}},
			{Limit: 20, Window: Window{D: 10 * time.Second, Text: "10s"}},
			{Limit: 100, Window: Window{D: time.Minute, Text: "1m"}},
		}},
		{"watch_config", cfg.WatchConfig, false},
		{"messages", len(cfg.Messages), 0},
		{"log.level", cfg.Log.Level, LogLevel("info")},
		{"log.format", cfg.Log.Format, LogFormat("json")},
		{"routes[0].rate_limit", cfg.Routes[0].RateLimit, RouteRateLimit{}},
		{"routes[0].timeout", cfg.Routes[0].Timeout.D(), time.Duration(0)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !reflect.DeepEqual(tt.got, tt.want) {
				t.Errorf("%s = %#v, want %#v", tt.name, tt.got, tt.want)
			}
		})
	}

	// And nothing else differs from Default().
	want := Default()
	want.Upstream.URL = "http://127.0.0.1:8081"
	want.Routes = []Route{{Pattern: "/api/v1/", Auth: "secret"}}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("Parse(minimal) =\n%+v\nwant Default() plus url and route =\n%+v", cfg, want)
	}
}

// TestParseNullKeepsDefault guards SPEC §5 defaults: a key written with an
// empty value keeps its default instead of zeroing it.
func TestParseNullKeepsDefault(t *testing.T) {
	const head = "routes:\n  - {pattern: /api/v1/, auth: secret}\n"
	tests := []struct {
		name string
		yaml string
		got  func(*Config) any
		want any
	}{
		{"empty string value", minimal + "server:\n  listen:\n", func(c *Config) any { return c.Server.Listen }, ":8080"},
		{"tilde string value", minimal + "log:\n  level: ~\n", func(c *Config) any { return c.Log.Level }, LogLevel("info")},
		{"null duration", head + "upstream:\n  url: http://127.0.0.1:8081\n  timeout: null\n", func(c *Config) any { return c.Upstream.Timeout.D() }, 30 * time.Second},
		{"null int", head + "upstream:\n  url: http://127.0.0.1:8081\n  max_idle_conns_per_host:\n", func(c *Config) any { return c.Upstream.MaxIdleConnsPerHost }, 256},
		{"empty section", minimal + "redis:\n", func(c *Config) any { return c.Redis.OnFailure }, OnFailure("local")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := mustParse(t, tt.yaml, noEnv)
			if got := tt.got(cfg); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %#v, want %#v", got, tt.want)
			}
		})
	}
}

// TestParseExpandsEnv guards SPEC §5 "Values may use ${VAR} to read the
// environment": ${VAR}, ${VAR:-default}, several in one value, a plain
// scalar re-typed after expansion, and a lone `$` kept.
func TestParseExpandsEnv(t *testing.T) {
	tests := []struct {
		name   string
		yaml   string
		lookup map[string]string
		got    func(*Config) any
		want   any
	}{
		{
			name:   "${VAR} set",
			yaml:   "upstream:\n  url: ${DG_UP}\nroutes:\n  - {pattern: /, auth: none}\n",
			lookup: map[string]string{"DG_UP": "http://up:9000"},
			got:    func(c *Config) any { return c.Upstream.URL },
			want:   "http://up:9000",
		},
		{
			name: "${VAR:-default} unset takes the default",
			yaml: "upstream:\n  url: \"${DG_UP:-http://127.0.0.1:8081}\"\nroutes:\n  - {pattern: /, auth: none}\n",
			got:  func(c *Config) any { return c.Upstream.URL },
			want: "http://127.0.0.1:8081",
		},
		{
			name:   "${VAR:-default} set takes the variable",
			yaml:   "upstream:\n  url: \"${DG_UP:-http://127.0.0.1:8081}\"\nroutes:\n  - {pattern: /, auth: none}\n",
			lookup: map[string]string{"DG_UP": "https://api.example.com"},
			got:    func(c *Config) any { return c.Upstream.URL },
			want:   "https://api.example.com",
		},
		{
			name:   "several variables in one value",
			yaml:   "upstream:\n  url: http://${DG_HOST}:${DG_PORT:-8081}/base\nroutes:\n  - {pattern: /, auth: none}\n",
			lookup: map[string]string{"DG_HOST": "10.0.0.5"},
			got:    func(c *Config) any { return c.Upstream.URL },
			want:   "http://10.0.0.5:8081/base",
		},
		{
			name:   "plain ${LIMIT} becomes an int",
			yaml:   minimal + "rate_limit:\n  tiers:\n    - limit: ${DG_LIMIT}\n      window: 1s\n",
			lookup: map[string]string{"DG_LIMIT": "42"},
			got:    func(c *Config) any { return c.RateLimit.Tiers[0].Limit },
			want:   42,
		},
		{
			name:   "plain ${VAR} becomes a bool",
			yaml:   minimal + "watch_config: ${DG_WATCH}\n",
			lookup: map[string]string{"DG_WATCH": "true"},
			got:    func(c *Config) any { return c.WatchConfig },
			want:   true,
		},
		{
			name: "duration from a default",
			yaml: minimal + "redis:\n  timeout: ${DG_REDIS_TIMEOUT:-250ms}\n",
			got:  func(c *Config) any { return c.Redis.Timeout.D() },
			want: 250 * time.Millisecond,
		},
		{
			name: "window keeps the expanded text",
			yaml: minimal + "rate_limit:\n  tiers:\n    - limit: 3\n      window: ${DG_WIN:-90s}\n",
			got:  func(c *Config) any { return c.RateLimit.Tiers[0].Window },
			want: Window{D: 90 * time.Second, Text: "90s"},
		},
		{
			name:   "a $ not followed by { is kept",
			yaml:   minimal + "messages:\n  NOT_FOUND: \"Rien ici pour $HOME, ni 5$\"\n",
			lookup: map[string]string{"HOME": "/root"},
			got:    func(c *Config) any { return c.Messages["NOT_FOUND"] },
			want:   "Rien ici pour $HOME, ni 5$",
		},
		{
			name:   "variable value is not expanded again",
			yaml:   minimal + "messages:\n  NOT_FOUND: ${DG_MSG}\n",
			lookup: map[string]string{"DG_MSG": "coût ${DG_OTHER}"},
			got:    func(c *Config) any { return c.Messages["NOT_FOUND"] },
			want:   "coût ${DG_OTHER}",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := mustParse(t, tt.yaml, env(tt.lookup))
			if got := tt.got(cfg); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %#v, want %#v", got, tt.want)
			}
		})
	}
}

// TestParseEnvEmptyUsesDefault guards SPEC §5 `${VAR:-default}`: like the
// shell and Docker Compose, `:-` takes the default when the variable is
// unset OR empty (`${VAR-default}` would be "unset only").
func TestParseEnvEmptyUsesDefault(t *testing.T) {
	tests := []struct {
		name   string
		lookup map[string]string
		want   string
	}{
		{"unset", nil, "http://127.0.0.1:8081"},
		{"set but empty", map[string]string{"DG_UP": ""}, "http://127.0.0.1:8081"},
		{"set", map[string]string{"DG_UP": "http://up:1"}, "http://up:1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := mustParse(t, "upstream:\n  url: \"${DG_UP:-http://127.0.0.1:8081}\"\nroutes:\n  - {pattern: /, auth: none}\n", env(tt.lookup))
			if got := cfg.Upstream.URL; got != tt.want {
				t.Errorf("upstream.url = %q, want %q", got, tt.want)
			}
		})
	}
}

// TestParseUnsetVarReportedOnce guards SPEC §5 "every error ... each
// naming its field": an unset ${VAR} is one error, not also a bogus type
// error about the unexpanded text.
func TestParseUnsetVarReportedOnce(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []string
	}{
		{
			name: "int field",
			yaml: minimal + "rate_limit:\n  tiers:\n    - limit: ${DG_UNSET}\n      window: 1s\n",
			want: []string{"rate_limit.tiers[0].limit: environment variable DG_UNSET is not set (use ${DG_UNSET:-default} for a default)"},
		},
		{
			name: "duration field",
			yaml: minimal + "redis:\n  timeout: ${DG_UNSET}\n",
			want: []string{"redis.timeout: environment variable DG_UNSET is not set (use ${DG_UNSET:-default} for a default)"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.yaml), noEnv)
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("Parse error = %v, want config.Errors", err)
			}
			got := make([]string, len(errs))
			for i, e := range errs {
				got[i] = e.Error()
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("errors:\ngot  %q\nwant %q", got, tt.want)
			}
		})
	}
}

// TestParseErrorsNameTheirField guards SPEC §5 "-check-config ... every
// error on stderr, each naming its field": errors that only the YAML
// decoder finds must carry a field path too.
func TestParseErrorsNameTheirField(t *testing.T) {
	tests := []struct {
		name     string
		yaml     string
		wantPath string
	}{
		{"int64 overflow", minimal + "server:\n  max_body_bytes: 9223372036854775808\n", "server.max_body_bytes"},
		{"int overflow", "routes:\n  - {pattern: /, auth: none}\nupstream:\n  url: http://127.0.0.1:8081\n  max_idle_conns_per_host: 18446744073709551615\n", "upstream.max_idle_conns_per_host"},
		{"repeated top-level key", minimal + "routes:\n  - {pattern: /b, auth: none}\n", "routes"},
		{"repeated nested key", minimal + "server:\n  listen: \":1\"\n  listen: \":2\"\n", "server.listen"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.yaml), noEnv)
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("Parse error = %v, want config.Errors", err)
			}
			if len(errs) == 0 || errs[0].Path != tt.wantPath {
				t.Errorf("errors = %q, want the first to have path %q", errs.Error(), tt.wantPath)
			}
		})
	}
}

// TestParseEmptyAndInvalid guards SPEC §5 -check-config: an empty file or
// broken YAML is reported as config.Errors, never a panic.
func TestParseEmptyAndInvalid(t *testing.T) {
	required := []string{"upstream.url: required", "routes: at least one route is required"}
	tests := []struct {
		name      string
		data      string
		want      []string // exact lines; nil with wantYAML
		wantYAML  bool     // one error starting "invalid YAML: "
		wantNoCfg bool
	}{
		{name: "empty", data: "", want: required},
		{name: "only whitespace", data: "\n\n   \n", want: required},
		{name: "only comments", data: "# nothing here\n# at all\n", want: required},
		{name: "explicit null document", data: "~\n", want: required},
		{name: "unclosed flow mapping", data: "server: {listen: \":8080\"\n", wantYAML: true, wantNoCfg: true},
		{name: "tab indentation", data: "server:\n\tlisten: \":8080\"\n", wantYAML: true, wantNoCfg: true},
		{name: "unclosed quote", data: "upstream:\n  url: \"http://x\n", wantYAML: true, wantNoCfg: true},
		{name: "unknown anchor", data: "routes: *nope\n", wantYAML: true, wantNoCfg: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Parse([]byte(tt.data), noEnv)
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("Parse error = %v (%T), want config.Errors", err, err)
			}
			got := make([]string, len(errs))
			for i, e := range errs {
				got[i] = e.Error()
			}
			if tt.wantYAML {
				if len(got) != 1 || !strings.HasPrefix(got[0], "invalid YAML: ") {
					t.Errorf("errors = %q, want one error starting with \"invalid YAML: \"", got)
				}
			} else if !slices.Equal(got, tt.want) {
				t.Errorf("errors = %q, want %q", got, tt.want)
			}
			if tt.wantNoCfg && cfg != nil {
				t.Errorf("Parse returned a config with invalid YAML")
			}
		})
	}
}

// TestWindowKeepsText guards SPEC §4: RateLimit-Policy names each tier by
// its window "as written in the config", so a Window keeps its text.
func TestWindowKeepsText(t *testing.T) {
	tests := []struct {
		text  string
		wantD time.Duration
	}{
		{"1s", time.Second},
		{"60s", time.Minute},
		{"1m", time.Minute},
		{"90s", 90 * time.Second},
		{"1m30s", 90 * time.Second},
		{"3600s", time.Hour},
		{"1h", time.Hour},
		{"24h", 24 * time.Hour},
	}
	for _, tt := range tests {
		t.Run(tt.text, func(t *testing.T) {
			cfg := mustParse(t, minimal+"rate_limit:\n  tiers:\n    - {limit: 5, window: "+tt.text+"}\n", noEnv)
			want := Window{D: tt.wantD, Text: tt.text}
			if got := cfg.RateLimit.Tiers[0].Window; got != want {
				t.Errorf("window %s = %+v, want %+v", tt.text, got, want)
			}
		})
	}
}

// TestWin guards SPEC §4's default RateLimit-Policy names ("1s", "10s",
// "1m"): Win formats a duration without zero units.
func TestWin(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want string
	}{
		{time.Second, "1s"},
		{10 * time.Second, "10s"},
		{time.Minute, "1m"},
		{90 * time.Second, "1m30s"},
		{time.Hour, "1h"},
		{90 * time.Minute, "1h30m"},
		{24 * time.Hour, "24h"},
		{500 * time.Millisecond, "500ms"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			got := Win(tt.d)
			if got.Text != tt.want || got.D != tt.d {
				t.Errorf("Win(%v) = %+v, want {D: %v, Text: %q}", tt.d, got, tt.d, tt.want)
			}
		})
	}
}

// TestParseDurations guards SPEC §5 durations written as in Go ("50ms",
// "10s", "1m").
func TestParseDurations(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		got  func(*Config) time.Duration
		want time.Duration
	}{
		{"milliseconds", minimal + "redis:\n  timeout: 250ms\n", func(c *Config) time.Duration { return c.Redis.Timeout.D() }, 250 * time.Millisecond},
		{"minutes and seconds", minimal + "server:\n  shutdown_timeout: 1m30s\n", func(c *Config) time.Duration { return c.Server.ShutdownTimeout.D() }, 90 * time.Second},
		{"hours", minimal + "auth:\n  cache_ttl: 1h\n", func(c *Config) time.Duration { return c.Auth.CacheTTL.D() }, time.Hour},
		{
			"route timeout",
			"upstream:\n  url: http://127.0.0.1:8081\nroutes:\n  - {pattern: POST /api/v1/exports, auth: secret, timeout: 120s}\n",
			func(c *Config) time.Duration { return c.Routes[0].Timeout.D() }, 120 * time.Second,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.got(mustParse(t, tt.yaml, noEnv)); got != tt.want {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

// TestRouteRateLimitForms guards SPEC §4: a route's `rate_limit: false`
// disables the limit, `true` (or nothing) is the global budget, and a block
// names a separate bucket with its own tiers and algorithm.
func TestRouteRateLimitForms(t *testing.T) {
	tests := []struct {
		name  string
		value string
		want  RouteRateLimit
	}{
		{"false", "false", RouteRateLimit{Disabled: true}},
		{"true", "true", RouteRateLimit{}},
		{"empty block", "{}", RouteRateLimit{}},
		{"omitted", "", RouteRateLimit{}},
		{"bucket only", "{bucket: search}", RouteRateLimit{Bucket: "search"}},
		{
			"full block",
			"{bucket: exports, algorithm: gcra, tiers: [{limit: 10, window: 1h}]}",
			RouteRateLimit{Bucket: "exports", Algorithm: "gcra", Tiers: []Tier{{Limit: 10, Window: Window{D: time.Hour, Text: "1h"}}}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			route := "  - pattern: POST /api/v1/exports\n    auth: secret\n"
			if tt.value != "" {
				route += "    rate_limit: " + tt.value + "\n"
			}
			cfg := mustParse(t, "upstream:\n  url: http://127.0.0.1:8081\nroutes:\n"+route, noEnv)
			if got := cfg.Routes[0].RateLimit; !reflect.DeepEqual(got, tt.want) {
				t.Errorf("rate_limit: %s = %+v, want %+v", tt.value, got, tt.want)
			}
		})
	}
}

// TestRegisterPattern guards SPEC §5 "Two patterns that ServeMux would
// reject as conflicting are a config error, not a panic", with a message
// free of deskgate's source locations.
func TestRegisterPattern(t *testing.T) {
	tests := []struct {
		name     string
		existing []string
		pattern  string
		wantErr  string // substring; "" means success
	}{
		{"first pattern", nil, "/api/v1/", ""},
		{"more specific pattern", []string{"/api/v1/"}, "GET /api/v1/health", ""},
		{"same pattern twice", []string{"/api/v1/"}, "/api/v1/", "conflicts"},
		{"neither more specific", []string{"GET /api/v1/{kind}/export"}, "GET /api/v1/tickets/{id}", "conflicts"},
		{"unterminated wildcard", nil, "GET /api/v1/{id", "bad wildcard"},
		{"duplicate wildcard", nil, "GET /a/{id}/b/{id}", "duplicate wildcard"},
		{"no path", nil, "GET", "missing /"},
		{"empty", nil, "", "invalid pattern"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mux := http.NewServeMux()
			for _, p := range tt.existing {
				if err := RegisterPattern(mux, p); err != nil {
					t.Fatalf("RegisterPattern(%q): %v", p, err)
				}
			}
			var err error
			func() {
				defer func() {
					if v := recover(); v != nil {
						t.Fatalf("RegisterPattern(%q) panicked: %v", tt.pattern, v)
					}
				}()
				err = RegisterPattern(mux, tt.pattern)
			}()
			if tt.wantErr == "" {
				if err != nil {
					t.Errorf("RegisterPattern(%q) = %v, want nil", tt.pattern, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("RegisterPattern(%q) = nil, want an error containing %q", tt.pattern, tt.wantErr)
			}
			msg := err.Error()
			if !strings.Contains(msg, tt.wantErr) {
				t.Errorf("RegisterPattern(%q) = %q, want it to contain %q", tt.pattern, msg, tt.wantErr)
			}
			for _, bad := range []string{"registered at", "http: ", "\n"} {
				if strings.Contains(msg, bad) {
					t.Errorf("RegisterPattern(%q) = %q, must not contain %q", tt.pattern, msg, bad)
				}
			}
		})
	}
}

// TestRegisterServes guards SPEC §5 routes: Register installs the handler
// for its pattern, and a refused pattern leaves the earlier one in place.
func TestRegisterServes(t *testing.T) {
	mux := http.NewServeMux()
	hit := ""
	handler := func(name string) http.Handler {
		return http.HandlerFunc(func(http.ResponseWriter, *http.Request) { hit = name })
	}
	if err := Register(mux, "GET /api/v1/health", handler("health")); err != nil {
		t.Fatal(err)
	}
	if err := Register(mux, "GET /api/v1/health", handler("dup")); err == nil {
		t.Fatal("Register of a duplicate pattern succeeded")
	}
	mux.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/api/v1/health", nil))
	if hit != "health" {
		t.Errorf("GET /api/v1/health reached %q, want the first handler %q", hit, "health")
	}
}

// TestParseUpstream guards SPEC §5 upstream.url: absolute http(s) with a
// host, no query, fragment or user info.
func TestParseUpstream(t *testing.T) {
	tests := []struct {
		in     string
		wantOK bool
	}{
		{"http://127.0.0.1:8081", true},
		{"https://api.example.com/base/", true},
		{"http://[::1]:8081", true},
		{"ftp://example.com", false},
		{"127.0.0.1:8081", false},
		{"/relative", false},
		{"http://", false},
		{"http:///path", false},
		{"http://x/?q=1", false},
		{"http://x/#frag", false},
		{"http://user:pass@x", false},
		{"http://x:badport", false},
		{"", false},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			u, err := ParseUpstream(tt.in)
			if (err == nil) != tt.wantOK {
				t.Fatalf("ParseUpstream(%q) error = %v, want ok %v", tt.in, err, tt.wantOK)
			}
			if tt.wantOK && u.String() != tt.in {
				t.Errorf("ParseUpstream(%q) = %q, want it unchanged", tt.in, u)
			}
		})
	}
}

// TestParsePrefix guards SPEC §5 server.trusted_proxies: CIDRs (masked)
// or single addresses.
func TestParsePrefix(t *testing.T) {
	tests := []struct {
		in   string
		want string // "" means an error
	}{
		{"10.0.0.0/8", "10.0.0.0/8"},
		{"10.1.2.3/8", "10.0.0.0/8"},
		{"192.168.1.10", "192.168.1.10/32"},
		{"::1", "::1/128"},
		{"::ffff:10.0.0.1", "10.0.0.1/32"},
		{"fd00::/8", "fd00::/8"},
		{"10.0.0.0/33", ""},
		{"proxy.internal", ""},
		{"", ""},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			p, err := ParsePrefix(tt.in)
			if tt.want == "" {
				if err == nil {
					t.Errorf("ParsePrefix(%q) = %v, want an error", tt.in, p)
				}
				return
			}
			if err != nil || p.String() != tt.want {
				t.Errorf("ParsePrefix(%q) = %v, %v; want %s", tt.in, p, err, tt.want)
			}
		})
	}
}

// TestFieldError guards SPEC §5's error lines: "path: message", or just the
// message when there is no field.
func TestFieldError(t *testing.T) {
	tests := []struct {
		name string
		err  FieldError
		want string
	}{
		{"with path", FieldError{Path: "routes[2].pattern", Msg: "required"}, "routes[2].pattern: required"},
		{"without path", FieldError{Msg: "invalid YAML: x"}, "invalid YAML: x"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.err.Error(); got != tt.want {
				t.Errorf("Error() = %q, want %q", got, tt.want)
			}
		})
	}
	errs := Errors{{Path: "a", Msg: "x"}, {Path: "b", Msg: "y"}}
	if got, want := errs.Error(), "a: x\nb: y"; got != want {
		t.Errorf("Errors.Error() = %q, want %q", got, want)
	}
}

// TestClosest guards the "did you mean" of unknown keys (issue 20 item 3):
// a suggestion only when a known name is a plausible typo.
func TestClosest(t *testing.T) {
	names := tagNames(reflect.TypeFor[Server]())
	for _, tc := range []struct{ key, want string }{
		{"lissten", "listen"},
		{"listne", "listen"}, // transposition
		{"Listen", "listen"},
		{"idel_timeout", "idle_timeout"},
		{"max_body_byte", "max_body_bytes"},
		{"trusted_proxie", "trusted_proxies"},
		{"listne_timeout", ""}, // nothing near: no guess
		{"port", ""},
		{"", ""},
		{strings.Repeat("x", 200), ""},
	} {
		if got := closest(tc.key, names); got != tc.want {
			t.Errorf("closest(%q) = %q, want %q", tc.key, got, tc.want)
		}
	}
	if got := closest("ur", []string{"url"}); got != "url" {
		t.Errorf("closest(ur) = %q", got)
	}
	if got := closest("tls", []string{"log"}); got != "" {
		t.Errorf("closest(tls, log) = %q, want none", got)
	}
}

// TestParseTracing guards SPEC §11's tracing block: its defaults (no
// export, 1 % of new traces, service deskgate), a written block, and the
// traces URL an endpoint gives.
func TestParseTracing(t *testing.T) {
	cfg := mustParse(t, minimal, noEnv)
	if want := (Tracing{SampleRatio: 0.01, ServiceName: "deskgate"}); cfg.Tracing != want || cfg.Tracing.Enabled() {
		t.Errorf("default tracing %+v, want %+v and not enabled", cfg.Tracing, want)
	}
	cfg = mustParse(t, minimal+`
tracing:
  otlp_endpoint: ${OTLP}
  sample_ratio: 1
  service_name: edge
`, env(map[string]string{"OTLP": "https://collector.internal:4318"}))
	if want := (Tracing{OTLPEndpoint: "https://collector.internal:4318", SampleRatio: 1, ServiceName: "edge"}); cfg.Tracing != want || !cfg.Tracing.Enabled() {
		t.Errorf("tracing %+v, want %+v and enabled", cfg.Tracing, want)
	}
	cfg = mustParse(t, minimal+"tracing: {sample_ratio: 0}\n", noEnv)
	if cfg.Tracing.SampleRatio != 0 {
		t.Errorf("sample_ratio 0 read as %v", cfg.Tracing.SampleRatio)
	}
	for in, want := range map[string]string{
		"http://otel-collector:4318":         "http://otel-collector:4318/v1/traces",
		"http://otel-collector:4318/":        "http://otel-collector:4318/v1/traces",
		"https://api.vendor.example/otlp/v1": "https://api.vendor.example/otlp/v1",
	} {
		u, err := ParseOTLPEndpoint(in)
		if err != nil || u.String() != want {
			t.Errorf("ParseOTLPEndpoint(%q) = %v, %v; want %s", in, u, err, want)
		}
	}
}
