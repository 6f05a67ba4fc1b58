package e2e

// Start-up with a Redis that cannot serve (issue 13 item 10 (b)): the whole
// process, its log and its /metrics.

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/innovartx/deskgate/internal/redistest"
)

// redisStartConfig is a gateway whose rate-limit store is at url, with a
// limited route to the demo upstream.
func redisStartConfig(url string) string {
	return `
server: {listen: "{PUB}", shutdown_timeout: 5s}
admin: {listen: "{ADMIN}"}
upstream: {url: "http://{UP}"}
redis: {url: "` + url + `", timeout: 100ms, on_failure: local}
routes:
  - {pattern: "/api/v1/", auth: none}
log: {level: info}
`
}

// logLines returns the JSON log lines whose msg contains part.
func logLines(t *testing.T, logs string, part string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for line := range strings.Lines(logs) {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line is not JSON: %v: %s", err, line)
		}
		if msg, _ := m["msg"].(string); strings.Contains(msg, part) {
			out = append(out, m)
		}
	}
	return out
}

// TestStartupRedisDown: with Redis down at start-up, the fallback gauge is
// 1 from the first scrape, the log says so before any request (a warning,
// and rate_limit_fallback_active in "deskgate started"), and requests are
// decided in process without waiting on Redis. /readyz is 200: with
// on_failure: local the replica serves (SPEC §6: ready once the config is
// loaded).
func TestStartupRedisDown(t *testing.T) {
	p := startObsProc(t, redisStartConfig("redis://{DEAD}/0"), "apps: []\n")
	fams := parseObsScrape(t, p.scrape(t))
	if d := diffObsSeries(familyValues(fams, "deskgate_ratelimit_fallback_active"), map[string]float64{"": 1}); d != "" {
		t.Errorf("deskgate_ratelimit_fallback_active before any request:\n%s", d)
	}
	waitFor(t, p.logs, `"msg":"deskgate started"`)
	logs := p.logs.String()
	down := logLines(t, logs, "unavailable at start-up")
	if len(down) != 1 || down[0]["level"] != "WARN" || down[0]["reason"] != "unreachable" {
		t.Errorf("start-up warnings %v, want one WARN with reason unreachable", down)
	}
	started := logLines(t, logs, "deskgate started")
	if len(started) != 1 || started[0]["rate_limit_store"] != "local fallback" || started[0]["rate_limit_fallback_active"] != true ||
		!strings.HasPrefix(fmt.Sprint(started[0]["redis"]), "redis://127.0.0.1:") || started[0]["key_store"] != "none" {
		t.Errorf("start line %v, want rate_limit_store \"local fallback\", rate_limit_fallback_active true, the Redis address and the key store", started)
	}
	if code, body, _ := p.get("http://"+p.pub+"/api/v1/health", nil); code != 200 {
		t.Fatalf("GET /api/v1/health: %d %s", code, body)
	}
	fams = parseObsScrape(t, p.scrape(t))
	if n := familyValues(fams, "deskgate_ratelimit_decisions_total")[labelKey("result", "allowed", "store", "local_fallback")]; n != 1 {
		t.Errorf("%v local_fallback decisions, want 1", n)
	}
	if d := diffObsSeries(familyValues(fams, "deskgate_ratelimit_store_errors_total"), map[string]float64{"": 0}); d != "" {
		t.Errorf("a request asked a Redis known to be down:\n%s", d)
	}
}

// TestStartupRedisWrongPassword: a password Redis refuses is logged at
// ERROR as a configuration error from start-up, with the gauge at 1, and no
// log line holds a password.
func TestStartupRedisWrongPassword(t *testing.T) {
	const right, wrong = "R1ght-Start-pw", "Wr0ng-Start-pw"
	srv := redistest.Start(t, "--requirepass", right)
	p := startObsProc(t, redisStartConfig("redis://:"+wrong+"@"+srv.Addr()+"/0"), "apps: []\n")
	fams := parseObsScrape(t, p.scrape(t))
	if d := diffObsSeries(familyValues(fams, "deskgate_ratelimit_fallback_active"), map[string]float64{"": 1}); d != "" {
		t.Errorf("deskgate_ratelimit_fallback_active with refused credentials:\n%s", d)
	}
	waitFor(t, p.logs, `"msg":"deskgate started"`)
	logs := p.logs.String()
	errs := logLines(t, logs, "configuration error")
	if len(errs) != 1 || errs[0]["level"] != "ERROR" || errs[0]["reason"] != "credentials" {
		t.Errorf("configuration errors %v, want one ERROR with reason credentials at start-up", errs)
	} else if msg := errs[0]["msg"].(string); !strings.Contains(msg, "credentials") || !strings.Contains(msg, "redis.url") {
		t.Errorf("%q does not name the credentials and redis.url", msg)
	}
	for _, pw := range []string{right, wrong} {
		if strings.Contains(logs, pw) {
			t.Errorf("a password is in the log:\n%s", logs)
		}
	}
}
