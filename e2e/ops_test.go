package e2e

// End-to-end operations tests (issue 9, SPEC §5): the real binary — the one
// the Dockerfile builds, see builtImage — run as `deskgate demo` on free
// loopback ports, reloaded and stopped with real signals.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

const (
	opsSecretKey = "sk_live_0123456789abcdefABCDEF01"
	opsPublicKey = "pk_live_0123456789abcdefABCDEF01"
)

// opsConfig is the gateway config of the ops tests. The customers route's
// policy is what reloads change; it and the slow route are not rate
// limited, so that no 429 can hide among the answers.
type opsConfig struct {
	pub, admin, upstream string
	customers            string // auth of /api/v1/customers/
	watch                bool
	delay                string // server.shutdown_delay
	extra                string // appended verbatim
}

func (c opsConfig) String() string {
	delay := c.delay
	if delay == "" {
		delay = "0s"
	}
	return fmt.Sprintf(`
server: {listen: %q, shutdown_timeout: 5s, shutdown_delay: %s}
admin: {listen: %q}
upstream: {url: "http://%s"}
auth: {environments: [live, test]}
routes:
  - {pattern: "GET /api/v1/health", auth: none, rate_limit: false}
  - {pattern: "GET /api/v1/debug/slow", auth: none, rate_limit: false}
  - {pattern: "/api/v1/customers/", auth: %s, rate_limit: false}
  - {pattern: "/api/v1/", auth: secret}
watch_config: %t
%s`, c.pub, delay, c.admin, c.upstream, c.customers, c.watch, c.extra)
}

func newOpsConfig(t *testing.T) opsConfig {
	return opsConfig{pub: freeAddr(t), admin: freeAddr(t), upstream: freeAddr(t), customers: "none"}
}

// opsProc is a running deskgate process.
type opsProc struct {
	t      *testing.T
	cmd    *exec.Cmd
	logs   *lockedBuffer
	cfg    opsConfig
	done   chan struct{}
	exited time.Time
}

// startOps runs `deskgate demo -config path` and waits until /readyz
// answers 200 (at most 10 s).
func startOps(t *testing.T, cfg opsConfig, path string) *opsProc {
	t.Helper()
	p := launchOps(t, cfg, path)
	p.waitReady()
	return p
}

// launchOps starts `deskgate demo -config path`; t's cleanup kills it if
// it still runs.
func launchOps(t *testing.T, cfg opsConfig, path string) *opsProc {
	t.Helper()
	bin := deskgateBinary(t)
	p := &opsProc{t: t, logs: &lockedBuffer{}, cfg: cfg, done: make(chan struct{})}
	p.cmd = exec.Command(bin, "demo", "-config", path)
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = p.cmd.Wait()
		p.exited = time.Now()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("deskgate log:\n%s", p.logs.String())
		}
	})
	return p
}

// waitReady waits until /readyz answers 200, at most 10 s.
func (p *opsProc) waitReady() {
	t, cfg := p.t, p.cfg
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if code, _, _ := opsGet(nil, "http://"+cfg.admin+"/readyz", ""); code == 200 {
			return
		}
		select {
		case <-p.done:
			t.Fatalf("deskgate exited before it was ready: %v\n%s", p.cmd.ProcessState, p.logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready after 10s:\n%s", p.logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (p *opsProc) signal(sig os.Signal) {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatal(err)
	}
}

// waitLog waits until s occurs n times in the log, at most timeout.
func (p *opsProc) waitLog(s string, n int, timeout time.Duration) {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	for strings.Count(p.logs.String(), s) < n {
		if time.Now().After(deadline) {
			p.t.Fatalf("%s not seen %d times within %s; log:\n%s", s, n, timeout, p.logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// customers answers GET /api/v1/customers/cus_acme with key (none if "").
func (p *opsProc) customers(key string) int {
	code, _, _ := opsGet(nil, "http://"+p.cfg.pub+"/api/v1/customers/cus_acme", key)
	return code
}

// opsGet sends one GET with key as X-API-Key (none if ""), on a fresh
// connection unless client is given. code is 0 on a transport error.
func opsGet(client *http.Client, url, key string) (int, string, error) {
	if client == nil {
		client = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	}
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		return 0, "", err
	}
	if key != "" {
		req.Header.Set("X-API-Key", key)
	}
	res, err := client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	return res.StatusCode, string(b), err
}

// TestOpsReloadUnderLoad guards SPEC §5's reload ("loads, validates and
// swaps the whole config atomically; in-flight requests finish on the
// config they started with") and issue 9's "takes effect with no failed
// request": 4 workers send valid secret-key requests for 2 s while a
// SIGHUP turns the route from auth none to secret. Not one request may
// fail (transport error or any status but 200), and afterwards a request
// without a key gets 401.
func TestOpsReloadUnderLoad(t *testing.T) {
	cfg := newOpsConfig(t)
	path := filepath.Join(t.TempDir(), "config.yaml")
	writeAtomic(t, path, cfg.String())
	p := startOps(t, cfg, path)
	if code := p.customers(""); code != 200 {
		t.Fatalf("auth none route without a key: %d, want 200", code)
	}

	const workers, span = 4, 2 * time.Second
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: workers}}
	defer client.CloseIdleConnections()
	var total, failed atomic.Int64
	var mu sync.Mutex
	var failures []string
	start := time.Now()
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := 0; i < 100_000 && time.Since(start) < span; i++ {
				code, body, err := opsGet(client, "http://"+cfg.pub+"/api/v1/customers/cus_acme", opsSecretKey)
				total.Add(1)
				if err != nil || code != 200 {
					failed.Add(1)
					mu.Lock()
					if len(failures) < 5 {
						failures = append(failures, fmt.Sprintf("%s: %d %q %v", time.Since(start).Round(time.Millisecond), code, body, err))
					}
					mu.Unlock()
				}
			}
		})
	}
	time.Sleep(span / 3)
	before := total.Load()
	cfg.customers = "secret"
	writeAtomic(t, path, cfg.String())
	sent := time.Now()
	p.signal(syscall.SIGHUP)
	p.waitLog(`"msg":"config reloaded"`, 1, 5*time.Second)
	took := time.Since(sent)
	atReload := total.Load()
	wg.Wait()

	if failed.Load() != 0 {
		t.Errorf("%d of %d requests failed across the reload: %s", failed.Load(), total.Load(), strings.Join(failures, "; "))
	}
	if before == 0 || total.Load() == atReload {
		t.Errorf("the load did not span the reload: %d requests before it, %d after", before, total.Load()-atReload)
	}
	t.Logf("%d requests in %s (%d before the SIGHUP, %d after the reload), 0 failed; reload seen in the log %s after SIGHUP",
		total.Load(), span, before, total.Load()-atReload, took.Round(time.Microsecond))
	if code := p.customers(""); code != 401 {
		t.Errorf("after the reload to secret, no key: %d, want 401", code)
	}
	if code := p.customers(opsPublicKey); code != 403 {
		t.Errorf("after the reload to secret, a pk key: %d, want 403", code)
	}
}

// TestOpsRefusedReload guards SPEC §5's "a bad file is refused, logged,
// and the old config stays" and issue 9's "logs every error with its
// field, and counts deskgate_config_reloads_total{result} and
// deskgate_config_last_reload_successful"; a good file afterwards
// reloads and sets the gauge back to 1.
func TestOpsRefusedReload(t *testing.T) {
	cfg := newOpsConfig(t)
	path := filepath.Join(t.TempDir(), "config.yaml")
	writeAtomic(t, path, cfg.String())
	p := startOps(t, cfg, path)

	bad := cfg
	bad.customers = "maybe"      // routes[2].auth
	bad.delay = "10s"            // >= shutdown_timeout
	bad.extra = "colour: blue\n" // unknown key: reported alone, before validation
	writeAtomic(t, path, bad.String())
	p.signal(syscall.SIGHUP)
	p.waitLog(`"msg":"config reload refused"`, 1, 5*time.Second)
	if log := p.logs.String(); !strings.Contains(log, `"field":"colour"`) {
		t.Errorf("the refusal does not name the field colour:\n%s", log)
	}

	bad.extra = ""
	writeAtomic(t, path, bad.String())
	p.signal(syscall.SIGHUP)
	p.waitLog(`"msg":"config reload refused"`, 3, 5*time.Second)
	for _, field := range []string{`"field":"server.shutdown_delay"`, `"field":"routes[2].auth"`} {
		if !strings.Contains(p.logs.String(), field) {
			t.Errorf("the refusal does not name %s", field)
		}
	}
	if code := p.customers(""); code != 200 {
		t.Errorf("after refused reloads the old config (auth none) should serve: %d", code)
	}
	_, metrics, err := opsGet(nil, "http://"+cfg.admin+"/metrics", "")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"deskgate_config_last_reload_successful 0",
		`deskgate_config_reloads_total{result="failure"} 2`,
		`version="` + testVersion + `"`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	good := cfg
	good.customers = "secret"
	writeAtomic(t, path, good.String())
	p.signal(syscall.SIGHUP)
	p.waitLog(`"msg":"config reloaded"`, 1, 5*time.Second)
	if code := p.customers(""); code != 401 {
		t.Errorf("after the good reload, no key: %d, want 401", code)
	}
	if _, metrics, _ := opsGet(nil, "http://"+cfg.admin+"/metrics", ""); !strings.Contains(metrics, "deskgate_config_last_reload_successful 1") {
		t.Error("deskgate_config_last_reload_successful is not back to 1")
	}
}

// TestOpsWatchConfig guards `watch_config: true` (SPEC §5, issue 9:
// "survive the way Kubernetes swaps ConfigMap files through symlinks and
// editors that rename"). Three changes, each flipping the route's policy,
// must each reload: a new file renamed over the config path (an editor); the
// path replaced by a symlink (a symlink swap); and, with the path now a
// symlink through ..data, ..data swapped to a new directory while the path
// itself is untouched (exactly what the kubelet does to a mounted ConfigMap).
func TestOpsWatchConfig(t *testing.T) {
	cfg := newOpsConfig(t)
	cfg.watch = true
	dir := t.TempDir()
	path := filepath.Join(dir, "config.yaml")
	writeAtomic(t, path, cfg.String())
	p := startOps(t, cfg, path)
	// The watcher takes its first look after "deskgate started" (see
	// TestOpsWatchConfigChangeDuringStartup); let it.
	time.Sleep(100 * time.Millisecond)

	steps := []struct {
		name   string
		policy string
		swap   func(body string)
	}{
		{"rename a new file over the path", "secret", func(body string) { writeAtomic(t, path, body) }},
		{"swap the path for a symlink", "none", func(body string) {
			v := filepath.Join(dir, "..v2")
			if err := os.Mkdir(v, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(v, "config.yaml"), []byte(body), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink("..v2", filepath.Join(dir, "..data")); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink("..data/config.yaml", path+".tmp"); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(path+".tmp", path); err != nil {
				t.Fatal(err)
			}
		}},
		{"swap ..data as the kubelet does", "secret", func(body string) {
			v := filepath.Join(dir, "..v3")
			if err := os.Mkdir(v, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(v, "config.yaml"), []byte(body), 0o600); err != nil {
				t.Fatal(err)
			}
			tmp := filepath.Join(dir, "..data_tmp")
			if err := os.Symlink("..v3", tmp); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
				t.Fatal(err)
			}
			os.RemoveAll(filepath.Join(dir, "..v2"))
		}},
	}
	want := map[string]int{"secret": 401, "none": 200}
	for i, s := range steps {
		cfg.customers = s.policy
		start := time.Now()
		s.swap(cfg.String())
		p.waitLog(`"msg":"config reloaded"`, i+1, 5*time.Second)
		t.Logf("%s: reloaded after %s", s.name, time.Since(start).Round(time.Millisecond))
		if code := p.customers(""); code != want[s.policy] {
			t.Errorf("%s: no key gets %d, want %d (auth %s)", s.name, code, want[s.policy], s.policy)
		}
	}
	if strings.Contains(p.logs.String(), "config reload refused") {
		t.Errorf("a swap was seen half-done:\n%s", p.logs.String())
	}
}

// TestOpsWatchConfigChangeDuringStartup guards watch_config across
// start-up: a config that changes after the process read it but before it
// serves must still be applied.
func TestOpsWatchConfigChangeDuringStartup(t *testing.T) {
	// A Redis that accepts and never answers holds start-up for
	// redis.timeout; its first connection proves the config was read.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan struct{}, 1)
	go func() {
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
			select {
			case accepted <- struct{}{}:
			default:
			}
		}
	}()
	cfg := newOpsConfig(t)
	cfg.watch = true
	cfg.extra = fmt.Sprintf("redis: {addrs: [%q], timeout: 1s}\n", ln.Addr().String())
	path := filepath.Join(t.TempDir(), "config.yaml")
	writeAtomic(t, path, cfg.String())

	p := launchOps(t, cfg, path)
	select {
	case <-accepted:
	case <-time.After(10 * time.Second):
		t.Fatal("deskgate never connected to Redis")
	}
	cfg.customers = "secret"
	writeAtomic(t, path, cfg.String())
	p.waitReady()
	p.waitLog(`"msg":"config reloaded"`, 1, 3*time.Second)
	if code := p.customers(""); code != 401 {
		t.Errorf("no key: %d, want 401 from the config written during start-up", code)
	}
}

// TestOpsGracefulShutdown guards SPEC §5's shutdown and issue 9's drain:
// on SIGTERM during 5 in-flight slow requests, /readyz fails at once; a
// new connection within server.shutdown_delay is still served; after the
// delay new connections are refused; every in-flight request completes
// with 200; the process exits 0 within server.shutdown_timeout.
func TestOpsGracefulShutdown(t *testing.T) {
	const (
		delay    = 300 * time.Millisecond
		slow     = 800 * time.Millisecond
		inflight = 5
		timeout  = 5 * time.Second // shutdown_timeout of opsConfig
	)
	cfg := newOpsConfig(t)
	cfg.delay = delay.String()
	path := filepath.Join(t.TempDir(), "config.yaml")
	writeAtomic(t, path, cfg.String())
	p := startOps(t, cfg, path)

	type result struct {
		code int
		body string
		err  error
		at   time.Time
	}
	results := make(chan result, inflight)
	var written sync.WaitGroup
	written.Add(inflight)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	for range inflight {
		go func() {
			var once sync.Once
			trace := &httptrace.ClientTrace{WroteRequest: func(httptrace.WroteRequestInfo) { once.Do(written.Done) }}
			req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace),
				"GET", fmt.Sprintf("http://%s/api/v1/debug/slow?ms=%d", cfg.pub, slow.Milliseconds()), nil)
			res, err := client.Do(req)
			r := result{err: err}
			if err == nil {
				b, _ := io.ReadAll(res.Body)
				res.Body.Close()
				r.code, r.body = res.StatusCode, string(b)
			}
			r.at = time.Now()
			once.Do(written.Done)
			results <- r
		}()
	}
	written.Wait()
	time.Sleep(50 * time.Millisecond) // the server has read them: they are in flight
	sigAt := time.Now()
	p.signal(syscall.SIGTERM)

	// /readyz fails at once.
	var readyFail time.Duration
	for i := 0; ; i++ {
		code, _, _ := opsGet(nil, "http://"+cfg.admin+"/readyz", "")
		if code == 503 {
			readyFail = time.Since(sigAt)
			break
		}
		if i == 100 || time.Since(sigAt) > delay/2 {
			t.Fatalf("/readyz still %d %s after SIGTERM", code, time.Since(sigAt))
		}
		time.Sleep(2 * time.Millisecond)
	}

	// Halfway through the delay a new connection is still served.
	time.Sleep(delay/2 - time.Since(sigAt))
	lateAt := time.Since(sigAt)
	code, _, err := opsGet(nil, "http://"+cfg.pub+"/api/v1/health", "")
	if lateAt < delay-50*time.Millisecond && (err != nil || code != 200) {
		t.Errorf("a new request %s after SIGTERM, within shutdown_delay %s: %d %v, want 200", lateAt, delay, code, err)
	}

	// After it, new connections are refused.
	var refusedAt time.Duration
	for i := 0; i < 200 && time.Since(sigAt) < delay+2*time.Second; i++ {
		c, err := net.DialTimeout("tcp", cfg.pub, 200*time.Millisecond)
		if err == nil {
			c.Close()
			time.Sleep(10 * time.Millisecond)
			continue
		}
		if errors.Is(err, syscall.ECONNRESET) {
			// Dialled as the listener closed: the kernel resets what
			// was still in its accept queue. The next dial tells.
			time.Sleep(10 * time.Millisecond)
			continue
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("dial after the delay: %v, want connection refused", err)
		}
		refusedAt = time.Since(sigAt)
		break
	}
	if refusedAt == 0 {
		t.Fatal("new connections still accepted 2s after the shutdown delay")
	}
	if refusedAt < delay {
		t.Errorf("connections refused %s after SIGTERM, before shutdown_delay %s", refusedAt, delay)
	}

	// Every in-flight request completes.
	var lastDone time.Time
	for range inflight {
		select {
		case r := <-results:
			if r.err != nil || r.code != 200 || !strings.Contains(r.body, `"sleptMs":800`) {
				t.Errorf("in-flight request: %d %q %v, want 200", r.code, r.body, r.err)
			}
			if r.at.After(lastDone) {
				lastDone = r.at
			}
		case <-time.After(timeout):
			t.Fatal("an in-flight request did not finish within shutdown_timeout")
		}
	}
	if lastDone.Sub(sigAt) < refusedAt {
		t.Errorf("the in-flight requests ended %s after SIGTERM, before the listener closed (%s): the test did not overlap them", lastDone.Sub(sigAt), refusedAt)
	}

	select {
	case <-p.done:
	case <-time.After(timeout):
		t.Fatalf("no exit within shutdown_timeout %s", timeout)
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
	if !strings.Contains(p.logs.String(), `"msg":"stopped"`) {
		t.Error(`no "stopped" in the log`)
	}
	t.Logf("/readyz 503 after %s; served a new connection at %s; refused connections from %s; in-flight done at %s; exit 0 at %s (delay %s, timeout %s)",
		readyFail.Round(time.Microsecond), lateAt.Round(time.Microsecond), refusedAt.Round(time.Millisecond),
		lastDone.Sub(sigAt).Round(time.Millisecond), p.exited.Sub(sigAt).Round(time.Millisecond), delay, timeout)
}

// TestOpsSupportdeskBinary guards cmd/supportdesk, the example upstream
// that deploy/docker-compose.yml runs (built from the Dockerfile's
// supportdesk stage): it serves the API on -listen and, on SIGTERM, lets a
// request in flight finish, then exits 0.
func TestOpsSupportdeskBinary(t *testing.T) {
	img := builtImage(t)
	sd := img.stage("supportdesk")
	bin := img.file(t, sd, sd.execForm(t, "ENTRYPOINT")[0])
	addr := freeAddr(t)
	logs := &lockedBuffer{}
	cmd := exec.Command(bin, "-listen", addr)
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(done) }()
	defer func() {
		select {
		case <-done:
		default:
			_ = cmd.Process.Kill()
			<-done
		}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if code, body, _ := opsGet(nil, "http://"+addr+"/api/v1/health", ""); code == 200 {
			if !strings.Contains(body, `"ok"`) {
				t.Fatalf("health: %s", body)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("supportdesk not serving after 10s:\n%s", logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	slow := make(chan int, 1)
	go func() {
		code, _, _ := opsGet(nil, "http://"+addr+"/api/v1/debug/slow?ms=400", "")
		slow <- code
	}()
	time.Sleep(100 * time.Millisecond)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case code := <-slow:
		if code != 200 {
			t.Errorf("in-flight request: %d, want 200", code)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the in-flight request never finished")
	}
	select {
	case <-done:
		if waitErr != nil {
			t.Errorf("exit: %v, want 0; log:\n%s", waitErr, logs.String())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no exit 5s after SIGTERM")
	}
}
