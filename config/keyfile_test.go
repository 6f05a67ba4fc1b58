package config

import (
	"errors"
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
