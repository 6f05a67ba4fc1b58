package e2e

// The shared harness of the black-box suites: the test run's set-up and
// clean-up, the gateway binary, free ports, the process's start and stop,
// its log. The scrape parsers stay with the suites that read them
// (observability_test.go, faults_test.go, tls_test.go): each parses what
// it asserts on.

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestMain runs the suites from the root of the repository, so that they
// read config.yaml, the Dockerfile, deploy/ and docs/ by the paths the
// docs and the Dockerfile give them, then removes what the shared builds
// left and prints the fault suite's table.
func TestMain(m *testing.M) {
	if err := os.Chdir(".."); err != nil {
		panic(err)
	}
	if _, err := os.Stat("go.mod"); err != nil {
		panic("e2e: the parent directory is not the repository's root: " + err.Error())
	}
	code := m.Run()
	printFaultSummary()
	if buildRoot != "" {
		os.RemoveAll(buildRoot)
	}
	exitMu.Lock()
	for _, f := range exitFuncs {
		f()
	}
	exitMu.Unlock()
	os.Exit(code)
}

var (
	exitMu    sync.Mutex
	exitFuncs []func()
)

// atExit has TestMain call f after every test ran: the removal of what a
// build shared by several tests left.
func atExit(f func()) {
	exitMu.Lock()
	defer exitMu.Unlock()
	exitFuncs = append(exitFuncs, f)
}

// deskgateBinary returns the gateway binary that ships in the image: the
// Dockerfile's build, mirrored once per test run (builtImage).
func deskgateBinary(t *testing.T) string {
	t.Helper()
	img := builtImage(t)
	return img.file(t, img.stage("deskgate"), img.stage("deskgate").execForm(t, "ENTRYPOINT")[0])
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

// serveForTest runs `bin demo -config path` (the gateway and the example
// upstream) until ctx ends, then stops it with SIGTERM and returns its
// exit status. Each value received on hup is sent to it as SIGHUP; its
// stdout and stderr go to w.
func serveForTest(ctx context.Context, bin, path string, hup <-chan os.Signal, w io.Writer) int {
	return serveBinary(ctx, bin, path, true, hup, w)
}

// serveBinary is serveForTest, in demo mode or not.
func serveBinary(ctx context.Context, bin, path string, demo bool, hup <-chan os.Signal, w io.Writer) int {
	args := []string{"-config", path}
	if demo {
		args = append([]string{"demo"}, args...)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		io.WriteString(w, err.Error()+"\n")
		return 1
	}
	exited := make(chan struct{})
	go func() {
		for {
			select {
			case <-exited:
				return
			case <-hup:
				_ = cmd.Process.Signal(syscall.SIGHUP)
			case <-ctx.Done():
				_ = cmd.Process.Signal(syscall.SIGTERM)
				return
			}
		}
	}()
	err := cmd.Wait()
	close(exited)
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee) && ee.ExitCode() >= 0:
		return ee.ExitCode()
	}
	io.WriteString(w, err.Error()+"\n")
	return 1
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

func waitForWithin(t *testing.T, logs *lockedBuffer, s string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !strings.Contains(logs.String(), s) {
		if time.Now().After(deadline) {
			t.Fatalf("no %s in the log after %v:\n%s", s, d, logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// writeAtomic writes data to a new file beside path and renames it over
// path, as editors and config management do.
func writeAtomic(t *testing.T, path, data string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}
