package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// checkConfigAllErrors returns a config with one error of each kind
// (issue 13 item 4, issue 20 item 3) and the lines -check-config must print
// for it, in file order, each naming its field. The root package's
// TestCheckConfigAllErrors runs run() on the same files.
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

// TestCheckConfigBinary runs the shipped binary (the Dockerfile's build,
// shared with the ops tests) with -check-config on the same file: exit
// status 1, nothing on stdout, and every error on stderr, one per line.
func TestCheckConfigBinary(t *testing.T) {
	bin := deskgateBinary(t)
	cfg, wantLines := checkConfigAllErrors(t)
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
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
	bin := deskgateBinary(t)
	go func() { done <- serveForTest(ctx, bin, path, hup, logs) }()

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
	bin := deskgateBinary(t)
	go func() { done <- serveForTest(ctx, bin, path, nil, logs) }()
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
