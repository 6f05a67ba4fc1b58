package config

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// badLookup is the environment the bad-config fixtures are parsed with.
// DG_UNSET is deliberately absent.
func badLookup(name string) (string, bool) {
	v, ok := map[string]string{"DG_LIMIT": "7"}[name]
	return v, ok
}

// badConfigs maps each fixture testdata/bad/<name>.yaml to the exact lines
// Parse must report, in order (each is FieldError.Error(), "path: message"):
// file order, with errors about fields the file does not write last.
// A want line ending in "..." matches any line with that prefix: it is used
// where the tail of the message is net/http's own wording.
var badConfigs = map[string][]string{
	// Unknown keys, at every level (SPEC §5 "Unknown keys are errors").
	"unknown_top_level_key": {
		`watch_confg: unknown key; did you mean "watch_config"? (valid keys: server, admin, upstream, redis, auth, rate_limit, cors, routes, quotas, watch_config, messages, log, tracing)`,
	},
	"unknown_nested_key": {
		`server.lissten: unknown key; did you mean "listen"? (valid keys: listen, read_header_timeout, read_timeout, write_timeout, idle_timeout, max_header_bytes, max_body_bytes, shutdown_timeout, shutdown_delay, trusted_proxies, allow_semicolon_paths, tls, redirect_http)`,
	},
	"unknown_route_key": {
		"routes[0].methods: unknown key (valid keys: pattern, auth, rate_limit, upstream, timeout, websocket, cors)",
	},
	"unknown_route_rate_limit_key": {
		"routes[0].rate_limit.burst: unknown key (valid keys: bucket, algorithm, tiers, mode)",
	},

	// Shadow mode and the upstream's 429 (SPEC §10).
	"limit_modes": {
		`rate_limit.mode: must be enforce or shadow, got "dry_run"`,
		"rate_limit.max_upstream_retry_after: must not be negative",
		`routes[1].rate_limit.mode: bucket "x" is also defined by routes[0] with mode "shadow"`,
		`routes[2].rate_limit.mode: must be enforce or shadow, got "off"`,
		"routes[3].rate_limit.bucket: required: a route's own rate_limit block names a separate budget",
	},

	// SPEC §11.
	"tracing_bad": {
		`tracing.otlp_endpoint: want an OTLP/HTTP URL such as http://otel-collector:4318, got "otel-collector:4318"`,
		"tracing.sample_ratio: must be between 0 and 1, got 1.5",
		"tracing.service_name: must not be empty",
	},
	"tracing_types": {
		`tracing.otlp_endpoint: must have no user, query or fragment, got "http://collector:4318/v1/traces?x=1"`,
		`tracing.sample_ratio: want a number, got "often"`,
		"tracing.sampler: unknown key (valid keys: otlp_endpoint, sample_ratio, service_name)",
	},
	"tracing_nan": {
		"tracing.sample_ratio: must be between 0 and 1, got NaN",
	},

	// Values of the wrong kind.
	"type_string_for_int": {
		`server.max_header_bytes: want an integer, got "lots"`,
	},
	"type_list_for_string": {
		"server.listen: want a string, got a list",
	},
	"type_mapping_for_bool": {
		"watch_config: want true or false, got a mapping",
		"auth.forward_key: want true or false, got a mapping",
	},
	"type_scalar_for_list": {
		`auth.environments: want a list, got "live"`,
		"rate_limit.tiers: want a list, got a mapping",
	},
	"type_scalar_for_section": {
		`log: want a mapping of keys, got "info"`,
	},
	"route_rate_limit_not_bool": {
		`routes[0].rate_limit: want false, true or a block with bucket and tiers, got "no"`,
	},

	// Durations.
	"bad_duration": {
		`server.idle_timeout: invalid duration "2 minutes" (want e.g. 50ms, 10s, 1m)`,
		`redis.timeout: invalid duration "30" (want e.g. 50ms, 10s, 1m)`,
	},
	"server_timeouts_zero": {
		"server.read_timeout: must be positive",
		"server.write_timeout: must be positive",
	},
	"server_timeouts_negative": {
		"server.read_timeout: must not be negative",
		"server.write_timeout: must not be negative",
	},
	"negative_duration": {
		"upstream.timeout: must not be negative",
		"routes[0].timeout: must not be negative",
		"rate_limit.tiers[0].window: must not be negative",
	},

	// ${VAR} expansion.
	"env_unset": {
		"upstream.url: environment variable DG_UNSET is not set (use ${DG_UNSET:-default} for a default)",
	},
	"env_quoted_int": {
		`rate_limit.tiers[0].limit: want an integer, got "7"`,
	},
	"env_bad_syntax": {
		`server.listen: invalid environment variable name "1PORT"`,
		`admin.listen: unterminated ${ in "127.0.0.1:${DG_LIMIT"`,
	},

	// Routes.
	"route_pattern_conflict": {
		`routes[2].pattern: pattern "/api/v1/" conflicts with pattern "/api/v1/"...`,
		`routes[4].pattern: pattern "GET /api/v1/tickets/{id}" conflicts with pattern "GET /api/v1/{kind}/export"...`,
	},
	"route_pattern_invalid": {
		`routes[0].pattern: parsing "GET /api/v1/{id": ...`,
		`routes[1].pattern: parsing "GET /api/v1/{id}/notes/{id}": ...`,
		`routes[2].pattern: parsing "GET /api/v1/files/{path...}/raw": ...`,
	},
	"routes_missing": {
		"routes: at least one route is required",
	},
	"routes_empty": {
		"routes: at least one route is required",
	},
	"route_missing_auth": {
		"routes[0].auth: required: secret, public or none",
	},
	"route_bad_auth": {
		`routes[0].auth: must be secret, public or none, got "private"`,
		`routes[1].auth: must be secret, public or none, got "Secret"`,
	},

	// Upstream URLs.
	"upstream_url_missing": {
		"upstream.url: required",
	},
	"upstream_url_ftp": {
		`upstream.url: want an http:// or https:// URL, got "ftp://files.example.com"`,
	},
	"upstream_url_no_host": {
		`upstream.url: URL "http:///api" has no host`,
	},
	"upstream_url_query": {
		`upstream.url: URL "http://127.0.0.1:8081/?debug=1" must not have a query, fragment or user info`,
	},
	"route_upstream_bad": {
		`routes[0].upstream: URL "http://admin:secret@127.0.0.1:8082" must not have a query, fragment or user info`,
		`routes[1].upstream: invalid URL "127.0.0.1:8082"`,
	},

	// Upstream connection cap (issue 13).
	"max_conns_per_host_zero": {
		"upstream.max_conns_per_host: must be positive, got 0",
	},
	"max_conns_per_host_negative": {
		"upstream.max_conns_per_host: must be positive, got -4",
	},

	// Redis (SPEC §4 "Store").
	"redis_several_addrs": {
		"redis.addrs: several addresses need redis.cluster: true (Cluster seeds) or redis.master_name (sentinels)",
	},
	"redis_url_with_password": {
		"redis.url: carries its own user, password and TLS (rediss://); remove redis.username/password/tls",
	},
	"redis_url_and_addrs": {
		"redis.addrs: set either redis.url or redis.addrs, not both",
	},
	"redis_cluster_with_master_name": {
		"redis.master_name: cannot be used with redis.cluster: true",
	},
	"redis_bad_on_failure": {
		`redis.on_failure: must be local, allow or deny, got "retry"`,
	},

	// Rate-limit tiers (SPEC §4).
	"tier_limit_zero": {
		"rate_limit.tiers[0].limit: must be positive, got 0",
		"rate_limit.tiers[1].limit: must be positive, got -5",
	},
	"window_not_whole_seconds": {
		"rate_limit.tiers[0].window: must be a whole number of seconds, got 1500ms",
	},
	"window_missing": {
		"rate_limit.tiers[0].window: required and positive",
	},
	"window_zero": {
		"rate_limit.tiers[1].window: required and positive",
	},
	"window_too_long": {
		"rate_limit.tiers[1].window: must be at most 24h, got 25h",
	},
	"duplicate_windows": {
		"rate_limit.tiers[2].window: same window as tiers[1]",
	},
	"gcra_three_tiers": {
		"rate_limit.tiers: algorithm gcra runs each tier as a separate redis_rate limiter and cannot admit a request atomically across 3 tiers; use sliding_log or a single tier",
	},
	"route_gcra_three_tiers": {
		"routes[0].rate_limit.tiers: algorithm gcra runs each tier as a separate redis_rate limiter and cannot admit a request atomically across 3 tiers; use sliding_log or a single tier",
		"routes[1].rate_limit.tiers: algorithm gcra needs its own single tier here (the global limit has 3)",
	},
	"route_rate_limit_without_bucket": {
		"routes[0].rate_limit.bucket: required: a route's own rate_limit block names a separate budget",
	},
	"bucket_defined_twice": {
		`routes[2].rate_limit: bucket "heavy" is also defined by routes[0] with other tiers`,
	},
	"plan_name_bad": {
		`rate_limit.plans.pro plan: plan name must be visible ASCII characters (no space or control character), got "pro plan"`,
	},
	"bad_rate_limit_enums": {
		`rate_limit.key_by: must be app, key or ip, got "user"`,
		`rate_limit.algorithm: must be sliding_log or gcra, got "token_bucket"`,
	},

	// Messages, log, listeners, proxies, auth.
	"messages_unknown_code": {
		"messages.RATE_LIMITED: unknown error code",
	},
	"messages_empty": {
		"messages.NOT_FOUND: message must not be empty",
		"messages.BAD_GATEWAY: message must not be empty",
	},
	"log_bad_level_and_format": {
		`log.level: must be debug, info, warn or error, got "verbose"`,
		`log.format: must be json or text, got "xml"`,
	},
	"admin_listen_same_as_server": {
		"admin.listen: must differ from server.listen",
	},
	"bad_listen": {
		`server.listen: want host:port or :port, got "8080"`,
		`admin.listen: invalid port "99999"`,
	},
	"trusted_proxies_bad": {
		`server.trusted_proxies[1]: invalid CIDR "10.0.0.0/33"`,
		`server.trusted_proxies[2]: invalid address or CIDR "proxy.internal"`,
	},
	"auth_bad": {
		`auth.file: required with auth.store: file`,
		`auth.environments[1]: must be live or test, got "prod"`,
	},

	// Not a config at all.
	"invalid_yaml": {
		"invalid YAML: ...",
	},
	"top_level_list": {
		"want a mapping of keys, got a list",
	},

	// server.tls and server.redirect_http (SPEC §12). The files are not
	// read by Parse (Load does that: TestLoadCertificateErrors).
	"tls_bad": {
		"server.tls.key_file: required with server.tls.cert_file",
		`server.tls.min_version: must be "1.2" or "1.3", got "1.1"`,
		"server.redirect_http: must differ from server.listen",
	},
	"tls_files_and_acme": {
		"server.tls.acme: certificates come from cert_file/key_file or from acme, not both",
		`server.redirect_http: want host:port or :port, got "80"`,
	},
	"tls_acme_bad": {
		"server.tls.acme: certificates come from cert_file/key_file or from acme, not both",
		"server.tls.acme.storage: required: a directory for the account key and certificates (shared by the replicas)",
		`server.tls.acme.domains[0]: "*.example.com": a wildcard needs the DNS-01 challenge, which deskgate does not do; list each name`,
		`server.tls.acme.domains[1]: "API.example.com": write it in lower case`,
		`server.tls.acme.domains[2]: "10.0.0.1": an IP address, want a DNS name`,
		`server.tls.acme.domains[3]: "localhost": want a fully qualified name such as api.example.com`,
		`server.tls.acme.domains[5]: "api.example.com" is also domains[4]`,
		`server.tls.acme.email: want an address such as ops@example.com, got "ops at example.com"`,
		`server.tls.acme.directory_url: want the CA's directory as an https:// URL, got "ftp://ca.example.com/dir"`,
	},
	"redirect_without_tls": {
		"server.redirect_http: redirects to https: needs server.tls",
	},

	// Many errors at once: all reported, in order.
	"cors_bad": {
		`cors.allowed_origins[0]: origin "https://help.example.com/": an origin has no path, query or fragment (want scheme://host[:port])`,
		`cors.allowed_origins[1]: origin "help.example.com": want http:// or https://`,
		`cors.allowed_origins[2]: origin "https://*.example.com": wildcards are not supported; list each origin, or "*" alone`,
		`cors.allowed_origins[3]: origin "https://Help.Example.com": write it in lower case, as browsers send it`,
		`cors.allowed_origins[4]: "*" allows every origin: list it alone`,
		`cors.allowed_headers[1]: "X API Key" is not a header name`,
		`cors.exposed_headers[0]: "" is not a header name`,
		`cors.max_age: must be whole seconds, got 1.5s`,
		`routes[1].cors: CORS never applies to a secret route: a secret key must not be in a browser (use auth: public, or remove cors)`,
	},
	"cors_route_without_origins": {
		`routes[0].cors: true needs cors.allowed_origins`,
	},
	"many_decode_errors": {
		`serverr: unknown key; did you mean "server"? (valid keys: server, admin, upstream, redis, auth, rate_limit, cors, routes, quotas, watch_config, messages, log, tracing)`,
		"server.listen: want a string, got a list",
		`server.idle_timeout: invalid duration "forever" (want e.g. 50ms, 10s, 1m)`,
		`server.max_body_bytes: want an integer, got "10"`,
		"upstream.url: environment variable DG_UNSET is not set (use ${DG_UNSET:-default} for a default)",
		"upstream.timeout: must not be negative",
		`watch_config: want true or false, got "yes"`,
		"routes[0].methods: unknown key (valid keys: pattern, auth, rate_limit, upstream, timeout, websocket, cors)",
		"routes[0].rate_limit.burst: unknown key (valid keys: bucket, algorithm, tiers, mode)",
		`log: want a mapping of keys, got "info"`,
	},
	// Errors of different kinds in one file (issue 13 item 4, issue 20
	// item 3): every one named with its field path in one run, in file
	// order, none hiding another, none reported twice.
	"mixed_issue_20": {
		"server.listne_timeout: unknown key (valid keys: listen, read_header_timeout, read_timeout, write_timeout, idle_timeout, max_header_bytes, max_body_bytes, shutdown_timeout, shutdown_delay, trusted_proxies, allow_semicolon_paths, tls, redirect_http)",
		`upstream.url: want an http:// or https:// URL, got "ftp://files.example.com"`,
		"rate_limit.tiers[0].window: must be a whole number of seconds, got 1500ms",
		`routes[0].auth: must be secret, public or none, got "maybe"`,
	},
	"mixed_issue_13": {
		`upstream.timeout: invalid duration "30 seconds" (want e.g. 50ms, 10s, 1m)`,
		`routes[1].auth: must be secret, public or none, got "secrett"`,
	},
	"mixed_every_kind": {
		`server.idel_timeout: unknown key; did you mean "idle_timeout"? (valid keys: listen, read_header_timeout, read_timeout, write_timeout, idle_timeout, max_header_bytes, max_body_bytes, shutdown_timeout, shutdown_delay, trusted_proxies, allow_semicolon_paths, tls, redirect_http)`,
		`server.max_body_bytes: want an integer, got "ten"`,
		"upstream.url: environment variable DG_UNSET is not set (use ${DG_UNSET:-default} for a default)",
		"upstream.url: key given twice",
		`redis.on_failure: must be local, allow or deny, got "retry"`,
		`routes[1].pattern: pattern "GET /api/v1/{name}" conflicts with pattern "GET /api/v1/{id}"...`,
		`messages.NOT_FOUNT: unknown error code; did you mean "NOT_FOUND"?`,
	},
	"mixed_no_double_reports": {
		"upstream.url: environment variable DG_UNSET is not set (use ${DG_UNSET:-default} for a default)",
		"upstream.timeout: must not be negative",
		`rate_limit.tiers[0].window: invalid duration "1 s" (want e.g. 50ms, 10s, 1m)`,
		"rate_limit.tiers[1].limit: must be positive, got 0",
		`routes[0]: want a mapping of keys, got "/api/v1/"`,
		`routes[1].auth: must be secret, public or none, got "private"`,
		`routes[2].pattern: pattern "/api/v1/tickets" conflicts with pattern "/api/v1/tickets"...`,
		`log: want a mapping of keys, got "loud"`,
	},
	"missing_after_written": {
		`routes[0].auth: must be secret, public or none, got "maybe"`,
		`log.format: must be json or text, got "xml"`,
		"upstream.url: required",
	},
	"null_list_element": {
		"routes[0].pattern: required",
		"routes[0].auth: required: secret, public or none",
		`routes[1].auth: must be secret, public or none, got "maybe"`,
	},
	"many_validation_errors": {
		"server.max_header_bytes: must be at least 1024, got 100",
		`server.trusted_proxies[0]: invalid CIDR "10.0.0.0/33"`,
		"admin.listen: must differ from server.listen",
		`upstream.url: want an http:// or https:// URL, got "ftp://example.com"`,
		`redis.on_failure: must be local, allow or deny, got "retry"`,
		`auth.environments[0]: must be live or test, got "prod"`,
		`rate_limit.key_by: must be app, key or ip, got "user"`,
		"rate_limit.tiers[0].limit: must be positive, got 0",
		"rate_limit.tiers[0].window: must be a whole number of seconds, got 1500ms",
		"routes[0].auth: required: secret, public or none",
		`routes[1].pattern: pattern "/api/v1/" conflicts with pattern "/api/v1/"...`,
		`routes[1].auth: must be secret, public or none, got "private"`,
		"messages.NOPE: unknown error code",
		`log.level: must be debug, info, warn or error, got "verbose"`,
		`log.format: must be json or text, got "xml"`,
	},
}

// matchLine reports whether got is want, or starts with want's text before
// a trailing "...".
func matchLine(got, want string) bool {
	if prefix, ok := strings.CutSuffix(want, "..."); ok {
		return strings.HasPrefix(got, prefix)
	}
	return got == want
}

// TestParseBadConfigs guards SPEC §5: a bad config is refused with every
// error, each naming its field (`routes[2].pattern: ...`), as a
// config.Errors; unknown keys are errors; conflicting ServeMux patterns are
// an error, not a panic; plus the value rules of SPEC §3 and §4.
func TestParseBadConfigs(t *testing.T) {
	for name, want := range badConfigs {
		t.Run(name, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join("testdata", "bad", name+".yaml"))
			if err != nil {
				t.Fatal(err)
			}
			_, err = Parse(data, badLookup)
			if err == nil {
				t.Fatalf("Parse succeeded, want errors:\n%s", strings.Join(want, "\n"))
			}
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("Parse error is %T (%v), want config.Errors", err, err)
			}
			got := make([]string, len(errs))
			for i, e := range errs {
				got[i] = e.Error()
			}
			ok := len(got) == len(want)
			for i := 0; ok && i < len(got); i++ {
				ok = matchLine(got[i], want[i])
			}
			if !ok {
				t.Errorf("Parse errors:\ngot (%d):\n\t%s\nwant (%d):\n\t%s",
					len(got), strings.Join(got, "\n\t"), len(want), strings.Join(want, "\n\t"))
			}
			if e := err.Error(); e != strings.Join(got, "\n") {
				t.Errorf("Errors.Error() = %q, want the lines joined by newlines %q", e, strings.Join(got, "\n"))
			}
			for _, line := range got {
				if strings.Contains(line, "registered at") {
					t.Errorf("error %q leaks ServeMux's source location", line)
				}
			}
		})
	}
}

// TestBadConfigFixturesAllListed guards the fixture set itself: every file
// under testdata/bad has expectations and every expectation has its file,
// so no case silently stops being tested.
func TestBadConfigFixturesAllListed(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "bad", "*"))
	if err != nil {
		t.Fatal(err)
	}
	var onDisk []string
	for _, f := range files {
		name, ok := strings.CutSuffix(filepath.Base(f), ".yaml")
		if !ok {
			t.Errorf("fixture %s: want a .yaml file", f)
			continue
		}
		onDisk = append(onDisk, name)
		if _, ok := badConfigs[name]; !ok {
			t.Errorf("fixture %s has no expected errors in badConfigs", f)
		}
	}
	for name := range badConfigs {
		if !slices.Contains(onDisk, name) {
			t.Errorf("badConfigs[%q] has no file testdata/bad/%s.yaml", name, name)
		}
	}
}
