package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestParseKeyFileAppIDs guards issue 13 item 9 for the file store: an
// app id is 1 to 128 visible ASCII characters, the rule the Redis store
// applies to its records, because the id travels in the X-App-Id header
// and into log lines.
func TestParseKeyFileAppIDs(t *testing.T) {
	plans := map[string]Plan{"pro": {}}
	for _, tc := range []struct {
		name, id string
		want     string // "" for accepted
	}{
		{"plain", "app_demo", ""},
		{"128 characters", strings.Repeat("a", 128), ""},
		{"punctuation", "app-1.2:x/y", ""},
		{"129 characters", strings.Repeat("a", 129), `auth.file: apps[0].id: must be at most 128 characters, got 129`},
		{"CR LF", "app_x\r\nX-Evil: 1", `auth.file: apps[0].id: must be visible ASCII characters (no space or control character), got "app_x\r\nX-Evil: 1"`},
		{"space", "app x", `auth.file: apps[0].id: must be visible ASCII characters (no space or control character), got "app x"`},
		{"non-ASCII", "appé", `auth.file: apps[0].id: must be visible ASCII characters (no space or control character), got "appé"`},
		{"tab", "app\tx", `auth.file: apps[0].id: must be visible ASCII characters (no space or control character), got "app\tx"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := "apps:\n  - id: " + quoteYAML(tc.id) + "\n    plan: pro\n    keys: [{key: sk_live_0123456789abcdefABCDEF01}]\n"
			kf, err := ParseKeyFile([]byte(data), plans)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if kf.Apps[0].ID != tc.id {
					t.Errorf("id %q", kf.Apps[0].ID)
				}
				return
			}
			var errs Errors
			if !errors.As(err, &errs) || err.Error() != tc.want {
				t.Fatalf("error:\n%v\nwant:\n%s", err, tc.want)
			}
		})
	}
}

// quoteYAML writes s as a YAML double-quoted scalar.
func quoteYAML(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\r", `\r`, "\n", `\n`, "\t", `\t`)
	return `"` + r.Replace(s) + `"`
}

// TestParseKeyFileEveryError guards issue 13 item 4 for the key file: an
// unknown key, a value of the wrong kind and the validation rules are all
// reported in one run, in file order, each with its entry's path.
func TestParseKeyFileEveryError(t *testing.T) {
	data := `
apps:
  - id: a
    disabld: true
    keys:
      - sha256: abc
  - just-a-string
  - id: a
    plan: gold
    keys: {key: sk_live_0123456789abcdefABCDEF01}
  - id: b
    keys:
      - key: sk_live_0123456789abcdefABCDEF01
      - {}
`
	_, err := ParseKeyFile([]byte(data), map[string]Plan{"pro": {}})
	want := []string{
		`auth.file: apps[0].disabld: unknown key; did you mean "disabled"? (valid keys: id, plan, keys, disabled)`,
		`auth.file: apps[0].keys[0].sha256: want 64 hex digits (the SHA-256 of the whole key), got 3 characters`,
		`auth.file: apps[1]: want a mapping of keys, got "just-a-string"`,
		`auth.file: apps[2].id: "a" is also apps[0]`,
		`auth.file: apps[2].plan: unknown plan "gold" (rate_limit.plans)`,
		`auth.file: apps[2].keys: want a list, got a mapping`,
		`auth.file: apps[3].keys[1]: sha256 or key is required`,
	}
	var errs Errors
	if !errors.As(err, &errs) {
		t.Fatalf("error %v (%T), want Errors", err, err)
	}
	if got := err.Error(); got != strings.Join(want, "\n") {
		t.Errorf("errors:\n%s\nwant:\n%s", got, strings.Join(want, "\n"))
	}
}

// TestLoadReportsKeyFileWithConfig guards issue 13 item 4 across the two
// files: Load names the config's errors and the key file's in one run
// (the config's first), and leaves out a key file's "unknown plan" when
// the config's plans were themselves in error.
func TestLoadReportsKeyFileWithConfig(t *testing.T) {
	dir := t.TempDir()
	write := func(name, data string) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write("keys.yaml", "apps:\n  - id: \"app x\"\n    plan: pro\n    keys: [{sha256: zz}]\n")
	for _, tc := range []struct {
		name, config string
		want         []string
	}{
		{
			name: "config and key file errors",
			config: `
upstream: {url: "http://127.0.0.1:8081", timeout: soon}
auth: {store: file, file: keys.yaml}
rate_limit: {plans: {pro: {tiers: [{limit: 5, window: 1s}]}}}
routes: [{pattern: /, auth: secret}]
log: {level: loud}
`,
			want: []string{
				`upstream.timeout: invalid duration "soon" (want e.g. 50ms, 10s, 1m)`,
				`log.level: must be debug, info, warn or error, got "loud"`,
				`auth.file: apps[0].id: must be visible ASCII characters (no space or control character), got "app x"`,
				`auth.file: apps[0].keys[0].sha256: want 64 hex digits (the SHA-256 of the whole key), got 2 characters`,
			},
		},
		{
			name: "plans in error: no unknown plan",
			config: `
upstream: {url: "http://127.0.0.1:8081"}
auth: {store: file, file: keys.yaml}
rate_limit: {plans: {pro: {tierz: []}}}
routes: [{pattern: /, auth: secret}]
`,
			want: []string{
				// A missing field is placed where its parent is written.
				`rate_limit.plans.pro.tiers: at least one tier is required`,
				`rate_limit.plans.pro.tierz: unknown key; did you mean "tiers"? (valid keys: tiers)`,
				`auth.file: apps[0].id: must be visible ASCII characters (no space or control character), got "app x"`,
				`auth.file: apps[0].keys[0].sha256: want 64 hex digits (the SHA-256 of the whole key), got 2 characters`,
			},
		},
		{
			name: "missing key file",
			config: `
upstream: {url: "http://127.0.0.1:8081"}
auth: {store: file, file: nope.yaml}
routes: [{pattern: /, auth: maybe}]
`,
			want: []string{
				`routes[0].auth: must be secret, public or none, got "maybe"`,
				`auth.file: open ` + filepath.Join(dir, "nope.yaml") + `: no such file or directory`,
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(write("config.yaml", tc.config))
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("Load error %v (%T), want Errors", err, err)
			}
			if got := err.Error(); got != strings.Join(tc.want, "\n") {
				t.Errorf("errors:\n%s\nwant:\n%s", got, strings.Join(tc.want, "\n"))
			}
		})
	}
}
