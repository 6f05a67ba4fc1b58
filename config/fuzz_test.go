package config

import (
	"errors"
	"os"
	"testing"
)

// FuzzParse guards the config loader against hostile files (issue 8):
// whatever the bytes, Parse never panics, and it either returns a config
// that validates or an error list whose every entry says something.
func FuzzParse(f *testing.F) {
	if b, err := os.ReadFile("../config.yaml"); err == nil {
		f.Add(b)
	}
	f.Add([]byte("upstream: {url: http://127.0.0.1:1}\nroutes: [{pattern: /, auth: none}]\n"))
	f.Add([]byte("routes: [{pattern: 'GET /{x}', auth: secret, rate_limit: {bucket: b, tiers: [{limit: 1, window: 1s}]}}]\n"))
	f.Add([]byte("server: {listen: ${X:-:1}}\nmessages: {NOT_FOUND: x}\n"))
	f.Add([]byte("a: &x [*x]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse(data, func(string) (string, bool) { return "", false })
		if err != nil {
			var errs Errors
			if !errors.As(err, &errs) || len(errs) == 0 {
				t.Fatalf("error %v is not a non-empty Errors", err)
			}
			for _, e := range errs {
				if e.Msg == "" {
					t.Fatalf("empty message in %v", errs)
				}
			}
			return
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("Parse accepted a config that does not validate: %v", err)
		}
	})
}
