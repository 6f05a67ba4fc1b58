package e2e

// Tests of the command line (issue 20 items 4 and 6), on the binary that a
// plain `go build` makes from a git checkout: no -ldflags stamp, the VCS
// revision recorded by the go command.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	cliOnce sync.Once
	cliBin  string // the built deskgate
	cliRev  string // the commit it was built from
	cliErr  error
)

// cliBinary builds deskgate once per test run as a user would, `go build`
// in a git checkout, and returns its path and the commit it records. The
// work tree's files (tracked and untracked, not ignored) are committed to a
// new repository in a temporary directory first: the go command records no
// VCS information for a git worktree (its .git is a file) and none for
// uncommitted work, and the test must run the code as it is.
// -buildvcs=true overrides a GOFLAGS=-buildvcs=false of the environment;
// -trimpath lets the build cache serve what builtImage already compiled.
func cliBinary(t *testing.T) (bin, rev string) {
	t.Helper()
	cliOnce.Do(func() {
		dir, err := os.MkdirTemp("", "deskgate-cli-")
		if err != nil {
			cliErr = err
			return
		}
		atExit(func() { os.RemoveAll(dir) })
		src := filepath.Join(dir, "src")
		git := func(dir string, args ...string) (string, error) {
			cmd := exec.Command("git", append([]string{"-c", "user.name=deskgate-test", "-c", "user.email=test@deskgate.invalid", "-c", "commit.gpgsign=false"}, args...)...)
			cmd.Dir = dir
			out, err := cmd.Output()
			if err != nil {
				var ee *exec.ExitError
				if errors.As(err, &ee) {
					err = fmt.Errorf("git %s: %v: %s", strings.Join(args, " "), err, ee.Stderr)
				}
			}
			return strings.TrimSpace(string(out)), err
		}
		list, err := git(".", "ls-files", "-z", "--cached", "--others", "--exclude-standard")
		if err != nil {
			cliErr = err
			return
		}
		for _, f := range strings.Split(list, "\x00") {
			data, err := os.ReadFile(f)
			if f == "" || errors.Is(err, os.ErrNotExist) {
				continue // deleted in the work tree
			}
			if err != nil {
				cliErr = err
				return
			}
			if err := os.MkdirAll(filepath.Join(src, filepath.Dir(f)), 0o755); err != nil {
				cliErr = err
				return
			}
			if err := os.WriteFile(filepath.Join(src, f), data, 0o644); err != nil {
				cliErr = err
				return
			}
		}
		for _, args := range [][]string{{"init", "-q"}, {"add", "-A"}, {"commit", "-q", "-m", "cli test"}} {
			if _, err := git(src, args...); err != nil {
				cliErr = err
				return
			}
		}
		if cliRev, cliErr = git(src, "rev-parse", "HEAD"); cliErr != nil {
			return
		}
		cliBin = filepath.Join(dir, "deskgate")
		build := exec.Command("go", "build", "-buildvcs=true", "-trimpath", "-o", cliBin, ".")
		build.Dir = src
		if out, err := build.CombinedOutput(); err != nil {
			cliErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if cliErr != nil {
		t.Fatalf("building deskgate: %v", cliErr)
	}
	return cliBin, cliRev
}

// cliRun runs the built binary with args and stdin, at most 10 s.
func cliRun(t *testing.T, stdin io.Reader, env []string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	bin, _ := cliBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdin = stdin
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("deskgate %s: still running after 10 s (stdout %q, stderr %q)", strings.Join(args, " "), out.String(), errb.String())
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		t.Fatal(err)
	}
	return code, out.String(), errb.String()
}

// TestCLIHelp guards that -h explains the whole command line: both
// subcommands, where flags go, the listen overrides and their variables.
func TestCLIHelp(t *testing.T) {
	for _, args := range [][]string{{"-h"}, {"help"}, {"demo", "-h"}} {
		code, out, errOut := cliRun(t, nil, nil, args...)
		if code != 0 || errOut != "" {
			t.Errorf("deskgate %s: exit %d, stderr %q; want 0 and the usage on stdout", strings.Join(args, " "), code, errOut)
		}
		for _, want := range []string{
			"deskgate demo", "deskgate hash-key < key", "before or after the subcommand",
			"-config", "-check-config", "-version", "-listen", "-admin-listen",
			"DESKGATE_LISTEN", "DESKGATE_ADMIN_LISTEN",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("deskgate %s: the usage lacks %q:\n%s", strings.Join(args, " "), want, out)
			}
		}
	}
}

// TestCLIArguments guards where flags and subcommands go: SPEC §5's form
// exactly as before, flags before or after `demo`, and a clear refusal of
// anything else.
func TestCLIArguments(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "gw.yaml")
	if err := os.WriteFile(cfg, []byte("upstream: {url: \"http://127.0.0.1:1\"}\nroutes: [{pattern: \"/\", auth: secret}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	valid := cfg + ": configuration is valid (1 routes)\n"
	for _, tc := range []struct {
		args   []string
		code   int
		stdout string
		stderr []string
	}{
		{[]string{"-config", cfg, "-check-config"}, 0, valid, nil},
		{[]string{"-check-config", "-config", cfg}, 0, valid, nil},
		{[]string{"-config", cfg, "demo", "-check-config"}, 0, valid, nil},
		{[]string{"demo", "-config", cfg, "-check-config"}, 0, valid, nil},
		{[]string{"-check-config", "demo", "-config", cfg}, 0, valid, nil},
		{[]string{"-config", cfg, "demo", "extra"}, 2, "", []string{`unexpected argument "extra"`, "deskgate -h"}},
		{[]string{"-config", cfg, "frobnicate"}, 2, "", []string{`unknown command "frobnicate"`, "demo, hash-key", "before or after"}},
		{[]string{"-nope"}, 2, "", []string{"flag provided but not defined: -nope", "deskgate -h"}},
		{[]string{"-config", cfg, "-check-config", "-listen", "nope"}, 2, "", []string{`-listen: want host:port or :port, got "nope"`}},
		{[]string{"-config", cfg, "-check-config"}, 2, "", []string{`DESKGATE_ADMIN_LISTEN: want host:port or :port, got "9090"`}},
	} {
		var env []string
		if len(tc.stderr) > 0 && strings.HasPrefix(tc.stderr[0], "DESKGATE_ADMIN_LISTEN") {
			env = []string{"DESKGATE_ADMIN_LISTEN=9090"}
		}
		code, out, errOut := cliRun(t, nil, env, tc.args...)
		if code != tc.code || out != tc.stdout {
			t.Errorf("deskgate %s: exit %d stdout %q, want %d %q; stderr:\n%s", strings.Join(tc.args, " "), code, out, tc.code, tc.stdout, errOut)
		}
		for _, want := range tc.stderr {
			if !strings.Contains(errOut, want) {
				t.Errorf("deskgate %s: stderr lacks %q:\n%s", strings.Join(tc.args, " "), want, errOut)
			}
		}
	}
}

// TestCLIHashKey guards that hash-key refuses a key on the command line at
// once (it would land in shell history), without echoing it, and says how
// to pipe it; a key piped on stdin is hashed.
func TestCLIHashKey(t *testing.T) {
	const key = "sk_live_0123456789abcdefABCDEF01"
	// stdin is a pipe that is never closed: a hash-key that ignores its
	// argument and reads stdin hangs, and cliRun fails after 10 s.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	for _, args := range [][]string{{"hash-key", key}, {"-config", "x.yaml", "hash-key"}, {"hash-key", "-config", "x.yaml"}} {
		code, out, errOut := cliRun(t, r, nil, args...)
		if code != 2 || out != "" {
			t.Errorf("deskgate %s: exit %d stdout %q, want 2 and nothing", strings.Join(args, " "), code, out)
		}
		if strings.Contains(errOut, key) {
			t.Errorf("deskgate %s: the key is echoed on stderr", strings.Join(args, " "))
		}
		for _, want := range []string{"stdin", "| deskgate hash-key", "deskgate hash-key < "} {
			if !strings.Contains(errOut, want) {
				t.Errorf("deskgate %s: stderr lacks %q:\n%s", strings.Join(args, " "), want, errOut)
			}
		}
	}
	code, out, errOut := cliRun(t, strings.NewReader(key+"\n"), nil, "hash-key")
	if code != 0 || out != "dbc71f5b6dd43be8fa9be1e7baab0ef1bed9cec5c2a2624ed5785452e159d8aa\n" {
		t.Errorf("key on stdin: exit %d stdout %q stderr %q", code, out, errOut)
	}
}

// TestCLIVersion guards -version on a plain `go build`: the module version
// the go command derived from the checkout and the commit, not "dev".
func TestCLIVersion(t *testing.T) {
	_, rev := cliBinary(t)
	code, out, errOut := cliRun(t, nil, nil, "-version")
	want := regexp.MustCompile(`^deskgate v0\.0\.0-\d{14}-` + rev[:12] + ` ` + regexp.QuoteMeta(runtime.Version()) + ` \(commit ` + rev + `\)\n$`)
	if code != 0 || errOut != "" || !want.MatchString(out) {
		t.Errorf("-version: exit %d stdout %q stderr %q; want %s", code, out, errOut, want)
	}
}

// cliProc is a deskgate started by a CLI test.
type cliProc struct {
	cmd  *exec.Cmd
	logs *lockedBuffer
	done chan struct{}
}

func startCLI(t *testing.T, env []string, args ...string) *cliProc {
	t.Helper()
	bin, _ := cliBinary(t)
	p := &cliProc{cmd: exec.Command(bin, args...), logs: &lockedBuffer{}, done: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
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

// waitHTTP waits until GET url answers 200, at most 10 s.
func waitHTTP(t *testing.T, url string, logs *lockedBuffer) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if code, _, _ := opsGet(nil, url, ""); code == 200 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: no 200 after 10 s; log:\n%s", url, logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestCLIListenOverrides guards -listen/-admin-listen and
// DESKGATE_LISTEN/DESKGATE_ADMIN_LISTEN: a flag wins over the variable,
// which wins over the file, and the override holds across a reload that
// changes the file's addresses (SPEC §5: listen addresses do not change on
// reload), without a spurious warning.
func TestCLIListenOverrides(t *testing.T) {
	// The file's addresses are taken: a deskgate that used them would not
	// start.
	var held []string
	for range 2 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		held = append(held, ln.Addr().String())
	}
	flagPub, envPub, envAdmin, up := freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t)
	path := filepath.Join(t.TempDir(), "config.yaml")
	cfg := opsConfig{pub: held[0], admin: held[1], upstream: up, customers: "none"}
	writeAtomic(t, path, cfg.String())
	p := startCLI(t, []string{"DESKGATE_LISTEN=" + envPub, "DESKGATE_ADMIN_LISTEN=" + envAdmin},
		"-config", path, "demo", "-listen", flagPub)
	waitHTTP(t, "http://"+envAdmin+"/readyz", p.logs)
	if code, _, _ := opsGet(nil, "http://"+flagPub+"/api/v1/customers/cus_acme", ""); code != 200 {
		t.Fatalf("customers on -listen %s: %d, want 200 (auth none)", flagPub, code)
	}
	if code, _, err := opsGet(nil, "http://"+envPub+"/api/v1/health", ""); err == nil {
		t.Errorf("DESKGATE_LISTEN %s answers %d: the -listen flag should win", envPub, code)
	}

	// A reload that changes the policy and the file's listen addresses.
	cfg.customers, cfg.pub, cfg.admin = "secret", freeAddr(t), freeAddr(t)
	writeAtomic(t, path, cfg.String())
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(p.logs.String(), `"msg":"config reloaded"`) {
		if time.Now().After(deadline) {
			t.Fatalf("no reload after SIGHUP:\n%s", p.logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code, _, _ := opsGet(nil, "http://"+flagPub+"/api/v1/customers/cus_acme", ""); code != 401 {
		t.Errorf("customers after the reload to auth secret: %d, want 401", code)
	}
	waitHTTP(t, "http://"+envAdmin+"/readyz", p.logs)
	if strings.Contains(p.logs.String(), "listen addresses do not change") {
		t.Errorf("a reload warned about listen addresses that the overrides fix:\n%s", p.logs.String())
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		t.Fatal("no exit 10 s after SIGTERM")
	}
	if p.cmd.ProcessState.ExitCode() != 0 {
		t.Errorf("exit %d after SIGTERM", p.cmd.ProcessState.ExitCode())
	}
	line := regexp.MustCompile(`.*"msg":"deskgate started".*`).FindString(p.logs.String())
	listenAt := regexp.MustCompile(`"listen":"([^"]+)"`).FindStringSubmatch(line)
	adminAt := regexp.MustCompile(`"admin":"([^"]+)"`).FindStringSubmatch(line)
	if listenAt == nil || adminAt == nil || listenAt[1] != flagPub || adminAt[1] != envAdmin {
		t.Errorf("start-up log %q, want listen %s admin %s", line, flagPub, envAdmin)
	}
}

// TestCLIDemoExitsWithParent guards issue 20 item 6: `go run . demo` runs
// the built binary as a child, and go run neither forwards a signal nor
// stops its child when it is killed. Here the parent is a shell killed
// with SIGKILL; the orphaned demo must shut down by itself.
func TestCLIDemoExitsWithParent(t *testing.T) {
	bin, _ := cliBinary(t)
	dir := t.TempDir()
	cfg := newOpsConfig(t)
	path := filepath.Join(dir, "config.yaml")
	writeAtomic(t, path, cfg.String())
	logPath, pidPath := filepath.Join(dir, "log"), filepath.Join(dir, "pid")
	sh := exec.Command("sh", "-c", `"$0" -config "$1" demo >"$2" 2>&1 & echo $! >"$3"; wait`, bin, path, logPath, pidPath)
	if err := sh.Start(); err != nil {
		t.Fatal(err)
	}
	shDone := make(chan struct{})
	go func() { _ = sh.Wait(); close(shDone) }()
	defer func() { _ = sh.Process.Kill(); <-shDone }()
	readLog := func() string { b, _ := os.ReadFile(logPath); return string(b) }
	deadline := time.Now().Add(10 * time.Second)
	for {
		if code, _, _ := opsGet(nil, "http://"+cfg.admin+"/readyz", ""); code == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("demo not ready after 10 s:\n%s", readLog())
		}
		time.Sleep(20 * time.Millisecond)
	}
	b, err := os.ReadFile(pidPath)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(pid, syscall.SIGKILL) // if it outlives the test

	if err := sh.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-shDone
	// The orphan is re-parented to init (or a subreaper), which may or
	// may not reap it: gone or a zombie both mean it exited.
	exited := func() bool {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return syscall.Kill(pid, 0) != nil
		}
		f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		return len(f) > 0 && (f[0] == "Z" || f[0] == "X")
	}
	deadline = time.Now().Add(10 * time.Second)
	for !exited() {
		if time.Now().After(deadline) {
			t.Fatalf("the demo (pid %d) still runs 10 s after its parent died:\n%s", pid, readLog())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if log := readLog(); !strings.Contains(log, `"reason":"parent process exited"`) || !strings.Contains(log, `"msg":"stopped"`) {
		t.Errorf("the demo did not shut down cleanly on its parent's death:\n%s", log)
	}
	if code, _, err := opsGet(nil, "http://"+cfg.pub+"/api/v1/health", ""); err == nil {
		t.Errorf("the gateway still answers (%d) after the demo exited", code)
	}
}
