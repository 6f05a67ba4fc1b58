package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCheckConfig guards SPEC §5's -check-config: exit 0 for a valid file,
// 1 with every error on stderr, each naming its field.
func TestCheckConfig(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte(`
server: {listen: ":8080", max_body_bytes: -1}
upstream: {url: "ftp://x"}
routes:
  - {pattern: "/a", auth: secret}
  - {pattern: "/a", auth: maybe}
colour: blue
`), 0o600)
	for _, tc := range []struct {
		name       string
		args       []string
		code       int
		stdout     string
		stderrHas  []string
		stderrNone bool
	}{
		{"repo config.yaml", []string{"-check-config"}, 0, "config.yaml: configuration is valid (5 routes)\n", nil, true},
		{"unknown key", []string{"-check-config", "-config", bad}, 1, "", []string{"colour: unknown key"}, false},
		{"missing file", []string{"-check-config", "-config", filepath.Join(dir, "nope.yaml")}, 1, "", []string{"no such file"}, false},
		{"bad flag", []string{"-nope"}, 2, "", []string{"flag provided but not defined"}, false},
		{"version", []string{"-version"}, 0, "deskgate dev go", nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			code := run(tc.args, &out, &errb)
			if code != tc.code {
				t.Fatalf("exit %d, want %d; stderr:\n%s", code, tc.code, errb.String())
			}
			if !strings.HasPrefix(out.String(), tc.stdout) {
				t.Errorf("stdout %q, want prefix %q", out.String(), tc.stdout)
			}
			for _, s := range tc.stderrHas {
				if !strings.Contains(errb.String(), s) {
					t.Errorf("stderr lacks %q:\n%s", s, errb.String())
				}
			}
			if tc.stderrNone && errb.Len() != 0 {
				t.Errorf("stderr %q", errb.String())
			}
		})
	}

	// Every error of the bad file is reported at once, each with its
	// field path, in file order: the unknown key hides nothing.
	var out, errb bytes.Buffer
	if code := run([]string{"-check-config", "-config", bad}, &out, &errb); code != 1 {
		t.Fatalf("exit %d", code)
	}
	want := []string{
		bad + `: server.max_body_bytes: must be positive, got -1`,
		bad + `: upstream.url: want an http:// or https:// URL, got "ftp://x"`,
		bad + `: routes[1].pattern: pattern "/a" conflicts with pattern "/a": /a matches the same requests as /a`,
		bad + `: routes[1].auth: must be secret, public or none, got "maybe"`,
		bad + `: colour: unknown key (valid keys: server, admin, upstream, redis, auth, rate_limit, cors, routes, quotas, watch_config, messages, log, tracing)`,
	}
	got := strings.Split(strings.TrimSpace(errb.String()), "\n")
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("stderr:\n%s\nwant:\n%s", errb.String(), strings.Join(want, "\n"))
	}
	if out.Len() != 0 {
		t.Errorf("stdout %q", out.String())
	}
}

// checkConfigAllErrors returns a config with one error of each kind
// (issue 13 item 4, issue 20 item 3) and the lines -check-config must print
// for it, in file order, each naming its field. The e2e suite runs the
// shipped binary on the same files.
func checkConfigAllErrors(t *testing.T) (cfg string, want []string) {
	t.Helper()
	b, err := os.ReadFile("testdata/check-config-all-errors.yaml")
	if err != nil {
		t.Fatal(err)
	}
	w, err := os.ReadFile("testdata/check-config-all-errors.want")
	if err != nil {
		t.Fatal(err)
	}
	return string(b), strings.Split(strings.TrimSuffix(string(w), "\n"), "\n")
}

// TestCheckConfigAllErrors guards SPEC §5/§7 "-check-config names every
// error of the file in one run": an unknown key, a bad duration, an ftp://
// URL, a window of 1500ms and an unknown auth policy all appear in one
// run, with exit 1, whatever their kind.
func TestCheckConfigAllErrors(t *testing.T) {
	cfg, wantLines := checkConfigAllErrors(t)
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	if code := run([]string{"-check-config", "-config", path}, &out, &errb); code != 1 {
		t.Fatalf("exit %d, want 1; stderr:\n%s", code, errb.String())
	}
	var want []string
	for _, w := range wantLines {
		want = append(want, path+": "+w)
	}
	if got := strings.TrimSuffix(errb.String(), "\n"); got != strings.Join(want, "\n") {
		t.Errorf("stderr:\n%s\nwant:\n%s", got, strings.Join(want, "\n"))
	}
	if out.Len() != 0 {
		t.Errorf("stdout %q", out.String())
	}
}

// TestHashKey guards the operator helper of issue 3: a key on stdin gives
// the hex SHA-256 that keys.yaml and Redis hold; anything else is refused.
func TestHashKey(t *testing.T) {
	var out, errb bytes.Buffer
	if code := hashKey(strings.NewReader("sk_live_0123456789abcdefABCDEF01\n"), &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	if got := out.String(); got != "dbc71f5b6dd43be8fa9be1e7baab0ef1bed9cec5c2a2624ed5785452e159d8aa\n" {
		t.Errorf("hash %q", got)
	}
	out.Reset()
	if code := hashKey(strings.NewReader("not a key"), &out, &errb); code != 1 || out.Len() != 0 {
		t.Errorf("bad key: exit %d, stdout %q", code, out.String())
	}
}

// TestCheckConfigKeyFile guards issue 3's key-file validation through
// -check-config: every bad entry is named, together with the config's own
// errors.
func TestCheckConfigKeyFile(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.yaml")
	os.WriteFile(cfg, []byte(`
upstream: {url: "http://127.0.0.1:8081"}
auth: {store: file, file: keys.yaml}
routes: [{pattern: "/", auth: secret}]
log: {level: loud}
`), 0o600)
	os.WriteFile(filepath.Join(dir, "keys.yaml"), []byte(`
apps:
  - id: a
    keys:
      - sha256: abc
      - key: sk_live_short
      - key: sk_live_0123456789abcdefABCDEF01
  - id: b
    plan: gold
    keys:
      - sha256: dbc71f5b6dd43be8fa9be1e7baab0ef1bed9cec5c2a2624ed5785452e159d8aa
`), 0o600)
	var out, errb bytes.Buffer
	if code := run([]string{"-check-config", "-config", cfg}, &out, &errb); code != 1 {
		t.Fatalf("exit %d", code)
	}
	// The config's own errors and the key file's, in one run (issue 13
	// item 4).
	for _, want := range []string{
		cfg + `: log.level: must be debug, info, warn or error, got "loud"`,
		`auth.file: apps[0].keys[0].sha256: want 64 hex digits`,
		`auth.file: apps[0].keys[1].key: not a valid API key`,
		`auth.file: apps[1].plan: unknown plan "gold"`,
		`auth.file: apps[1].keys[0]: the same key as apps[0].keys[2] (app "a")`,
	} {
		if !strings.Contains(errb.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, errb.String())
		}
	}
}
