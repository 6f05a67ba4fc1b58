package config

import (
	"testing"
	"time"
)

// TestLimitModesParse: mode and max_upstream_retry_after parse, default
// to enforce and 60s, and a route bucket's mode is its own.
func TestLimitModesParse(t *testing.T) {
	none := func(string) (string, bool) { return "", false }
	cfg, err := Parse([]byte(`
upstream: {url: "http://127.0.0.1:8081"}
routes:
  - {pattern: "GET /a", auth: secret}
`), none)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.RateLimit.Mode != "enforce" || cfg.RateLimit.MaxUpstreamRetryAfter.D() != time.Minute {
		t.Errorf("defaults: mode %q, max_upstream_retry_after %s", cfg.RateLimit.Mode, cfg.RateLimit.MaxUpstreamRetryAfter.D())
	}
	cfg, err = Parse([]byte(`
upstream: {url: "http://127.0.0.1:8081"}
rate_limit: {mode: shadow, max_upstream_retry_after: 0s}
routes:
  - {pattern: "GET /a", auth: secret, rate_limit: {bucket: b, mode: shadow}}
  - {pattern: "GET /c", auth: secret, rate_limit: {bucket: c}}
`), none)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.RateLimit.Mode != "shadow" || cfg.RateLimit.MaxUpstreamRetryAfter != 0 {
		t.Errorf("mode %q, max_upstream_retry_after %s", cfg.RateLimit.Mode, cfg.RateLimit.MaxUpstreamRetryAfter.D())
	}
	if cfg.Routes[0].RateLimit.Mode != "shadow" || cfg.Routes[1].RateLimit.Mode != "" {
		t.Errorf("route modes %q, %q", cfg.Routes[0].RateLimit.Mode, cfg.Routes[1].RateLimit.Mode)
	}
}
