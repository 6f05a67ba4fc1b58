package config

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const quotaRoutes = `
upstream: {url: "http://127.0.0.1:9"}
rate_limit:
  plans:
    free: {tiers: [{limit: 1, window: 1s}]}
    pro: {tiers: [{limit: 9, window: 1s}]}
routes:
  - {pattern: "POST /api/v1/tickets", auth: public}
  - {pattern: "/api/v1/customers/", auth: secret}
  - {pattern: "GET /api/v1/reports/{id}", auth: secret}
`

func TestQuotasValid(t *testing.T) {
	cfg, err := Parse([]byte(quotaRoutes+`
quotas:
  - {name: tickets, match: "POST /api/v1/tickets", limit: 1000, plans: {free: 100, pro: 0}}
  - {name: all_api, match: "/api/v1/", limit: 5000, mode: shadow}
  - {name: reports, match: "GET /api/v1/reports/{id}", limit: 10}
`), noEnv)
	if err != nil {
		t.Fatal(err)
	}
	q := cfg.Quotas[0]
	if q.LimitFor("free") != 100 || q.LimitFor("pro") != 0 || q.LimitFor("") != 1000 || q.LimitFor("other") != 1000 {
		t.Errorf("limits: %+v", q)
	}
	if q.Shadow() || !cfg.Quotas[1].Shadow() {
		t.Error("modes")
	}
}

func TestQuotasInvalid(t *testing.T) {
	_, err := Parse([]byte(quotaRoutes+`
quotas:
  - {name: Tickets, match: "POST /api/v1/tickets", limit: 10}
  - {name: t, match: "GET /api/v2/other", limit: 10}
  - {name: t, match: "POST /api/v1/tickets", limit: 0, mode: dry, plans: {gold: 5, free: -1}}
  - {name: x, match: "BAD PATTERN here", limit: 1}
  - {name: y, limit: 1, extra: 2}
`), noEnv)
	if err == nil {
		t.Fatal("no error")
	}
	got := err.Error()
	for _, want := range []string{
		`quotas[0].name: must be lower-case letters, digits and _ ([a-z0-9_]+), got "Tickets"`,
		`quotas[1].match: "GET /api/v2/other" matches no request that a configured route serves`,
		`quotas[2].name: "t" is also quotas[1]`,
		`quotas[2].limit: must be positive, got 0`,
		`quotas[2].mode: must be enforce or shadow, got "dry"`,
		`quotas[2].plans.gold: unknown plan "gold" (rate_limit.plans)`,
		`quotas[2].plans.free: must not be negative, got -1`,
		`quotas[3].match:`,
		`quotas[4].match: required`,
		`quotas[4].extra`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("missing %q in:\n%s", want, got)
		}
	}
}

// TestQuotaPlansWithKeyFile: with auth.store file, a quota's plan is known
// when rate_limit.plans or an app of the key file has it, and an app may
// name a plan that only a quota knows.
func TestQuotaPlansWithKeyFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write("keys.yaml", `
apps:
  - {id: app_a, plan: starter, keys: [{key: sk_live_AbCdEfGhIjKlMnOpQrStUvWx}]}
`)
	base := `
upstream: {url: "http://127.0.0.1:9"}
auth: {store: file, file: keys.yaml}
routes:
  - {pattern: "POST /api/v1/tickets", auth: public}
`
	if _, err := Load(write("ok.yaml", base+`
quotas:
  - {name: tickets, match: "POST /api/v1/tickets", limit: 10, plans: {starter: 2}}
`)); err != nil {
		t.Fatalf("starter only in quotas and the key file: %v", err)
	}
	_, err := Load(write("bad.yaml", base+`
quotas:
  - {name: tickets, match: "POST /api/v1/tickets", limit: 10, plans: {starter: 2, startr: 1}}
`))
	if err == nil || !strings.Contains(err.Error(), `quotas[0].plans.startr: unknown plan "startr"`) {
		t.Fatalf("err %v, want startr unknown", err)
	}
}

func TestPatternsMayOverlap(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want bool
	}{
		{"POST /api/v1/tickets", "POST /api/v1/tickets", true},
		{"POST /api/v1/tickets", "/api/v1/", true},
		{"POST /api/v1/tickets", "GET /api/v1/", false},
		{"GET /api/v1/health", "POST /api/v1/tickets", false},
		{"/api/v1/customers", "POST /api/v1/tickets", false},
		{"/api/v1/tickets/{id}/comments", "POST /api/v1/tickets/", true},
		{"a.example/x", "b.example/x", false},
		{"HEAD /x", "GET /x", true},
	} {
		if got := PatternsMayOverlap(tc.a, tc.b); got != tc.want {
			t.Errorf("PatternsMayOverlap(%q, %q) = %v", tc.a, tc.b, got)
		}
	}
}

// TestPatternCovers: true only where every request of inner matches
// outer, checked against ServeMux itself on sample requests.
func TestPatternCovers(t *testing.T) {
	cases := []struct {
		outer, inner string
		want         bool
	}{
		{"/api/v1/", "/api/v1/", true},
		{"POST /api/v1/tickets", "POST /api/v1/tickets", true},
		{"/api/v1/", "POST /api/v1/tickets", true},
		{"/api/", "GET /api/v1/{id}", true},
		{"GET /api/", "HEAD /api/v1/x", true},
		{"api.example/api/", "api.example/api/v1/", true},
		{"/api/v1/tickets/{id}", "/api/v1/tickets/{id}", true},
		{"POST /api/v1/", "/api/v1/tickets", false},    // a GET of the route is not counted
		{"HEAD /api/", "GET /api/x", false},            // GET is not HEAD
		{"/api/v1/", "/api/v1", false},                 // /api/v1 itself is not under /api/v1/
		{"/api/{v}/", "/api/v1/tickets", false},        // wildcards: matched per request
		{"api.example/api/", "/api/v1/", false},        // another host's requests
		{"/api/v1/tickets", "/api/v1/tickets/", false}, // an exact path does not cover a subtree
		{"/api/v1/x", "/api/v1/{id}", false},
	}
	for _, c := range cases {
		if got := PatternCovers(c.outer, c.inner); got != c.want {
			t.Errorf("PatternCovers(%q, %q) = %v, want %v", c.outer, c.inner, got, c.want)
		}
		if !c.want {
			continue
		}
		// Every sample request of inner matches outer in a ServeMux.
		outer := http.NewServeMux()
		if err := RegisterPattern(outer, c.outer); err != nil {
			t.Fatal(err)
		}
		for _, r := range ProbeRequests(c.inner) {
			if _, p := outer.Handler(r); p == "" {
				t.Errorf("%s %s%s matches %q but not %q", r.Method, r.Host, r.URL.Path, c.inner, c.outer)
			}
		}
	}
}
