package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/innovartx/deskgate/config"
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

// checkConfigAllErrors is a config with one error of each kind (issue 13
// item 4, issue 20 item 3) and the lines -check-config must print for it,
// in file order, each naming its field.
const checkConfigAllErrors = `
server:
  listne_timeout: 5s
  idel_timeout: 60s
upstream:
  url: ftp://files.example.com
  timeout: 30 seconds
rate_limit:
  tiers:
    - {limit: 3, window: 1500ms}
routes:
  - {pattern: "/api/v1/health", auth: none}
  - {pattern: "/api/v1/", auth: maybe}
`

var checkConfigAllErrorsWant = []string{
	`server.listne_timeout: unknown key (valid keys: listen, read_header_timeout, read_timeout, write_timeout, idle_timeout, max_header_bytes, max_body_bytes, shutdown_timeout, shutdown_delay, trusted_proxies, allow_semicolon_paths, tls, redirect_http)`,
	`server.idel_timeout: unknown key; did you mean "idle_timeout"? (valid keys: listen, read_header_timeout, read_timeout, write_timeout, idle_timeout, max_header_bytes, max_body_bytes, shutdown_timeout, shutdown_delay, trusted_proxies, allow_semicolon_paths, tls, redirect_http)`,
	`upstream.url: want an http:// or https:// URL, got "ftp://files.example.com"`,
	`upstream.timeout: invalid duration "30 seconds" (want e.g. 50ms, 10s, 1m)`,
	`rate_limit.tiers[0].window: must be a whole number of seconds, got 1500ms`,
	`routes[1].auth: must be secret, public or none, got "maybe"`,
}

// TestCheckConfigAllErrors guards SPEC §5/§7 "-check-config names every
// error of the file in one run": an unknown key, a bad duration, an ftp://
// URL, a window of 1500ms and an unknown auth policy all appear in one
// run, with exit 1, whatever their kind.
func TestCheckConfigAllErrors(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(checkConfigAllErrors), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	if code := run([]string{"-check-config", "-config", path}, &out, &errb); code != 1 {
		t.Fatalf("exit %d, want 1; stderr:\n%s", code, errb.String())
	}
	var want []string
	for _, w := range checkConfigAllErrorsWant {
		want = append(want, path+": "+w)
	}
	if got := strings.TrimSuffix(errb.String(), "\n"); got != strings.Join(want, "\n") {
		t.Errorf("stderr:\n%s\nwant:\n%s", got, strings.Join(want, "\n"))
	}
	if out.Len() != 0 {
		t.Errorf("stdout %q", out.String())
	}
}

// TestCheckConfigBinary runs the shipped binary (the Dockerfile's build,
// shared with the ops tests) with -check-config on the same file: exit
// status 1, nothing on stdout, and every error on stderr, one per line.
func TestCheckConfigBinary(t *testing.T) {
	img := builtImage(t)
	bin := img.file(t, img.stage("deskgate"), img.stage("deskgate").execForm(t, "ENTRYPOINT")[0])
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(checkConfigAllErrors), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	cmd := exec.Command(bin, "-check-config", "-config", path)
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("exit: %v, want status 1; stderr:\n%s", err, errb.String())
	}
	var want []string
	for _, w := range checkConfigAllErrorsWant {
		want = append(want, path+": "+w)
	}
	if got := strings.TrimSuffix(errb.String(), "\n"); got != strings.Join(want, "\n") {
		t.Errorf("stderr:\n%s\nwant:\n%s", got, strings.Join(want, "\n"))
	}
	if out.Len() != 0 {
		t.Errorf("stdout %q", out.String())
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// lockedBuffer collects the process log.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

const serveConfig = `
server: {listen: "%s", shutdown_timeout: 5s}
admin: {listen: "%s"}
upstream: {url: "http://%s"}
auth: {environments: [live, test]}
routes:
  - {pattern: "GET /api/v1/health", auth: none, rate_limit: false}
  - {pattern: "/api/v1/customers/", auth: %s}
  - {pattern: "/api/v1/", auth: secret}
`

// TestServeDemoReloadShutdown runs the whole process in demo mode: the
// example upstream behind the gateway, a SIGHUP reload that changes a
// route's policy, a refused bad reload, /readyz, /metrics, and a clean
// shutdown (SPEC §5, §6).
func TestServeDemoReloadShutdown(t *testing.T) {
	pub, adm, up := freeAddr(t), freeAddr(t), freeAddr(t)
	path := filepath.Join(t.TempDir(), "config.yaml")
	write := func(policy string) {
		if err := os.WriteFile(path, fmt.Appendf(nil, serveConfig, pub, adm, up, policy), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("public")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	hup := make(chan os.Signal, 1)
	logs := &lockedBuffer{}
	done := make(chan int, 1)
	go func() { done <- serveForTest(ctx, path, hup, logs) }()

	client := &http.Client{Timeout: 5 * time.Second}
	get := func(url string, header ...string) (int, string) {
		req, _ := http.NewRequest("GET", url, nil)
		for i := 0; i+1 < len(header); i += 2 {
			req.Header.Set(header[i], header[i+1])
		}
		res, err := client.Do(req)
		if err != nil {
			return 0, err.Error()
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if code, _ := get("http://" + adm + "/readyz"); code == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready after 10s; log:\n%s", logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code, _ := get("http://" + adm + "/healthz"); code != 200 {
		t.Errorf("/healthz %d", code)
	}
	pk := "pk_test_AbCdEfGhIjKlMnOpQrStUvWx"
	if code, body := get("http://"+pub+"/api/v1/customers/cus_acme", "X-API-Key", pk); code != 200 || !strings.Contains(body, "ACME SARL") {
		t.Fatalf("public route with pk key: %d %s", code, body)
	}

	write("secret")
	hup <- nil
	waitFor(t, logs, `"msg":"config reloaded"`)
	if code, body := get("http://"+pub+"/api/v1/customers/cus_acme", "X-API-Key", pk); code != 403 || !strings.Contains(body, "AUTH_API_KEY_FORBIDDEN") {
		t.Fatalf("after reload to secret: %d %s", code, body)
	}

	os.WriteFile(path, []byte("routes: [{pattern: '/x', auth: nope}]\n"), 0o600)
	hup <- nil
	waitFor(t, logs, `"msg":"config reload refused"`)
	if code, _ := get("http://"+pub+"/api/v1/customers/cus_acme", "X-API-Key", pk); code != 403 {
		t.Fatalf("after a refused reload the old config should serve: %d", code)
	}
	_, metrics := get("http://" + adm + "/metrics")
	for _, want := range []string{
		`deskgate_config_reloads_total{result="success"} 1`,
		`deskgate_config_reloads_total{result="failure"} 1`,
		`deskgate_config_last_reload_successful 0`,
		`deskgate_build_info{goversion="go`,
		`deskgate_requests_total{method="GET",route="/api/v1/customers/",status="403"} 2`,
		`deskgate_rejections_total{code="AUTH_API_KEY_FORBIDDEN",route="/api/v1/customers/"} 2`,
		`go_goroutines `,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if !strings.Contains(logs.String(), `"field":"routes[0].auth"`) {
		t.Errorf("refused reload does not name the field:\n%s", logs.String())
	}

	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("exit %d; log:\n%s", code, logs.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no exit 10s after shutdown")
	}
	if code, _ := get("http://" + adm + "/readyz"); code == 200 {
		t.Error("/readyz still 200 after shutdown")
	}
}

// serveForTest is run after its flags: load, then serve in demo mode
// until ctx ends.
func serveForTest(ctx context.Context, path string, hup <-chan os.Signal, w io.Writer) int {
	loaded := stampOf(path)
	cfg, err := config.Load(path)
	if err != nil {
		fmt.Fprintln(w, err)
		return 1
	}
	if err := serve(ctx, cfg, path, loaded, true, hup, w); err != nil {
		fmt.Fprintln(w, err)
		return 1
	}
	return 0
}

func waitFor(t *testing.T, logs *lockedBuffer, s string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for strings.Count(logs.String(), s) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no %s in the log:\n%s", s, logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestWatchConfig guards `watch_config: true` (SPEC §5): a change of the
// file reloads it, including the way Kubernetes updates a ConfigMap (a
// symlink swapped to a new directory).
func TestWatchConfig(t *testing.T) {
	pub, adm, up := freeAddr(t), freeAddr(t), freeAddr(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "config.yaml")
	writeVersion := func(name, policy string) {
		d := filepath.Join(dir, name)
		os.Mkdir(d, 0o700)
		body := fmt.Sprintf(serveConfig, pub, adm, up, policy) + "watch_config: true\n"
		if err := os.WriteFile(filepath.Join(d, "config.yaml"), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		tmp := filepath.Join(dir, "config.yaml.tmp")
		os.Remove(tmp)
		if err := os.Symlink(filepath.Join(d, "config.yaml"), tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil { // atomic swap
			t.Fatal(err)
		}
	}
	writeVersion("v1", "public")
	ctx, cancel := context.WithCancel(context.Background())
	logs := &lockedBuffer{}
	done := make(chan int, 1)
	go func() { done <- serveForTest(ctx, path, nil, logs) }()
	defer func() { cancel(); <-done }()
	waitFor(t, logs, `"msg":"deskgate started"`)
	writeVersion("v2", "secret")
	waitFor(t, logs, `"msg":"config reloaded"`)
	req, _ := http.NewRequest("GET", "http://"+pub+"/api/v1/customers/cus_acme", nil)
	req.Header.Set("X-API-Key", "pk_test_AbCdEfGhIjKlMnOpQrStUvWx")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 403 {
		t.Fatalf("after the watched change: %d, want 403", res.StatusCode)
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
