// Package redistest starts real redis-server processes (single servers,
// Redis Cluster and Sentinel) on the loopback interface for tests.
//
// Every process is started in its own process group, lives in a t.TempDir(),
// listens on 127.0.0.1 only, has persistence disabled and is stopped in
// t.Cleanup. Every wait is bounded. When redis-server (or redis-cli) is not on
// PATH the calling test is skipped with a loud message, unless the environment
// variable DESKGATE_REQUIRE_REDIS=1 is set (as CI does), in which case the
// test fails instead.
package redistest

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// RequireEnv is the environment variable that turns a missing Redis binary
// from a skip into a test failure when it is set to "1".
const RequireEnv = "DESKGATE_REQUIRE_REDIS"

const (
	// startAttempts is how many fresh ports are tried when redis-server
	// exits during start-up (typically because another process grabbed the
	// port between freePort and the bind).
	startAttempts = 5
	// readyTimeout bounds the wait for a started process to answer PING.
	readyTimeout = 10 * time.Second
	// rebindTimeout bounds how long Restart keeps retrying the same port.
	rebindTimeout = 5 * time.Second
	// stopGrace is how long Stop waits after SIGTERM before SIGKILL.
	stopGrace = 5 * time.Second
	// pollInterval is the pause between readiness probes.
	pollInterval = 20 * time.Millisecond
	// logTail is how many bytes of a process log go into a failure message.
	logTail = 16 << 10
)

// Require skips t (t.Skip with a loud message naming the missing binary and
// how to install it: `apt-get install redis-server`) when redis-server (or
// redis-cli, for Cluster) is not on PATH, or fails t (t.Fatal) when
// DESKGATE_REQUIRE_REDIS=1. With no binaries given it checks redis-server.
func Require(t testing.TB, binaries ...string) {
	t.Helper()
	if len(binaries) == 0 {
		binaries = []string{"redis-server"}
	}
	msg, fail := check(exec.LookPath, os.Getenv(RequireEnv), binaries)
	switch {
	case msg == "":
		return
	case fail:
		t.Fatal(msg)
	default:
		t.Skip(msg)
	}
}

// check reports what Require should do: an empty msg when every binary is
// found by lookPath, otherwise the message to log and whether the test must
// fail (requireEnv is the value of DESKGATE_REQUIRE_REDIS) rather than skip.
func check(lookPath func(string) (string, error), requireEnv string, binaries []string) (msg string, fail bool) {
	var missing []string
	for _, b := range binaries {
		if _, err := lookPath(b); err != nil {
			missing = append(missing, b)
		}
	}
	if len(missing) == 0 {
		return "", false
	}
	what := fmt.Sprintf("%s not found on PATH", strings.Join(missing, " and "))
	how := "these tests need a real Redis; install it with `apt-get install redis-server` " +
		"(Debian/Ubuntu; it provides redis-server and redis-cli)"
	if requireEnv == "1" {
		return fmt.Sprintf("!!! REDIS REQUIRED: %s and %s=1 is set; %s.", what, RequireEnv, how), true
	}
	return fmt.Sprintf("!!! SKIPPING REDIS TEST: %s; %s. Set %s=1 to make this a failure instead of a skip.",
		what, how, RequireEnv), false
}

// Server is one redis-server process on 127.0.0.1.
type Server struct {
	dir      string
	password string
	// argv builds the full argument list for a process listening on port.
	argv func(port int) ([]string, error)
	log  *logBuffer

	mu   sync.Mutex
	port int
	proc *proc
}

// Start starts a redis-server on a free loopback port with no persistence
// (--save "" --appendonly no), in t.TempDir(), with --maxmemory-policy
// noeviction, and waits (at most 10 s) until it answers PING. Extra args are
// appended to the command line, so they can override the defaults (for
// example "--requirepass", "s3cret"). It calls Require first, and registers
// Stop in t.Cleanup.
func Start(t testing.TB, args ...string) *Server {
	t.Helper()
	Require(t, "redis-server")
	dir := t.TempDir()
	extra := append([]string(nil), args...)
	s := newServer(dir, func(port int) ([]string, error) {
		return append(baseArgs(port, dir), extra...), nil
	})
	s.password = passwordFrom(extra)
	s.startFresh(t)
	return s
}

// newServer returns a Server that is not running yet.
func newServer(dir string, argv func(port int) ([]string, error)) *Server {
	return &Server{dir: dir, argv: argv, log: &logBuffer{}}
}

// baseArgs is the redis-server command line shared by every non-sentinel
// process: loopback only, no persistence, no eviction.
func baseArgs(port int, dir string) []string {
	return []string{
		"--port", strconv.Itoa(port),
		"--bind", "127.0.0.1",
		"--dir", dir,
		"--save", "",
		"--appendonly", "no",
		"--maxmemory-policy", "noeviction",
		"--daemonize", "no",
	}
}

// passwordFrom returns the value of the last --requirepass in args.
func passwordFrom(args []string) string {
	pw := ""
	for i := 0; i+1 < len(args); i++ {
		if args[i] == "--requirepass" {
			pw = args[i+1]
		}
	}
	return pw
}

// Addr returns the server's address, "127.0.0.1:port".
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return addrOf(s.port)
}

// URL returns a redis:// URL for database 0 of the server, carrying the
// password when the server was started with --requirepass
// ("redis://:pw@127.0.0.1:port/0"). It can be parsed with redis.ParseURL.
func (s *Server) URL() string {
	u := url.URL{Scheme: "redis", Host: s.Addr(), Path: "/0"}
	if s.password != "" {
		u.User = url.UserPassword("", s.password)
	}
	return u.String()
}

// Client returns a go-redis client (default options, plus the password if
// any) connected to the server; it is closed in t.Cleanup.
func (s *Server) Client(t testing.TB) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: s.Addr(), Password: s.password})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// Log returns everything the server's processes (including earlier ones,
// before a Restart) wrote to stdout and stderr so far.
func (s *Server) Log() string { return s.log.String() }

// Kill sends SIGKILL to the server's process group and waits for the
// process to exit, leaving the port free. It is a no-op when the server is
// not running.
func (s *Server) Kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc != nil {
		s.proc.kill()
		fmt.Fprintf(s.log, "--- redistest: killed (%v)\n", s.proc.err)
		s.proc = nil
	}
}

// Stop sends SIGTERM to the server's process group and waits for it to exit
// (SIGKILL after 5 s). It is idempotent and is registered in t.Cleanup by
// the functions that start servers.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc != nil {
		s.proc.terminate(stopGrace)
		fmt.Fprintf(s.log, "--- redistest: stopped (%v)\n", s.proc.err)
		s.proc = nil
	}
}

// Restart starts the server again on the same port with the same arguments
// (killing it first if it is still running), retrying the bind for up to 5 s
// in case the port is not free yet, and waits until it answers PING. The
// new process starts empty: there is no persistence.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Kill()
	s.mu.Lock()
	defer s.mu.Unlock()
	deadline := time.Now().Add(rebindTimeout)
	for {
		p, exited, err := s.boot(s.port)
		if err == nil {
			s.proc = p
			return
		}
		if !exited || time.Now().After(deadline) {
			t.Fatalf("redistest: restarting redis-server on %s: %v\n%s", addrOf(s.port), err, s.logTail())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// startFresh starts the server on a free port, trying new ports when the
// process exits during start-up, and registers Stop in t.Cleanup.
func (s *Server) startFresh(t testing.TB) {
	t.Helper()
	t.Cleanup(s.Stop)
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []string
	for attempt := 1; attempt <= startAttempts; attempt++ {
		port, err := freePort()
		if err != nil {
			t.Fatalf("redistest: finding a free port: %v", err)
		}
		p, exited, err := s.boot(port)
		if err == nil {
			s.port, s.proc = port, p
			return
		}
		errs = append(errs, fmt.Sprintf("attempt %d (port %d): %v", attempt, port, err))
		if !exited {
			break
		}
	}
	t.Fatalf("redistest: starting redis-server failed:\n  %s\n%s", strings.Join(errs, "\n  "), s.logTail())
}

// boot starts one process on port and waits until it answers PING and
// reports its own pid (so a stranger that took the port is not mistaken for
// it). exited reports that the process died before becoming ready, which is
// worth retrying (usually the port was taken); on any error nothing is left
// running.
func (s *Server) boot(port int) (p *proc, exited bool, err error) {
	args, err := s.argv(port)
	if err != nil {
		return nil, false, err
	}
	fmt.Fprintf(s.log, "--- redistest: redis-server %s\n", quoteArgs(args))
	p, err = startProc(s.dir, s.log, "redis-server", args...)
	if err != nil {
		return nil, false, err
	}
	addr := addrOf(port)
	deadline := time.Now().Add(readyTimeout)
	var last error
	for {
		select {
		case <-p.done:
			return nil, true, fmt.Errorf("redis-server exited during start-up: %v", p.err)
		default:
		}
		if last = probe(addr, s.password, p.pid()); last == nil {
			return p, false, nil
		}
		if time.Now().After(deadline) {
			p.kill()
			return nil, false, fmt.Errorf("no PING answer from %s within %v: %v", addr, readyTimeout, last)
		}
		time.Sleep(pollInterval)
	}
}

// probe checks that the server at addr answers PING and is the process pid.
func probe(addr, password string, pid int) error {
	c, err := dialRESP(addr, password, time.Second)
	if err != nil {
		return err
	}
	defer c.close()
	if r, err := c.do("PING"); err != nil {
		return err
	} else if r != "PONG" {
		return fmt.Errorf("PING answered %q", r)
	}
	r, err := c.do("INFO", "server")
	if err != nil {
		return err
	}
	info, _ := r.(string)
	if got := infoField(info, "process_id"); got != strconv.Itoa(pid) {
		return fmt.Errorf("%s is served by pid %q, not by our pid %d", addr, got, pid)
	}
	return nil
}

// logTail returns the end of the server's log for failure messages.
func (s *Server) logTail() string {
	return "---- redis-server log ----\n" + s.log.tail(logTail)
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func addrOf(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

// quoteArgs renders args for the log so that empty arguments stay visible.
func quoteArgs(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, " \t\"'") {
			a = strconv.Quote(a)
		}
		q[i] = a
	}
	return strings.Join(q, " ")
}

// infoField returns the value of field in an INFO or CLUSTER INFO reply.
func infoField(info, field string) string {
	for _, line := range strings.Split(info, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok && k == field {
			return v
		}
	}
	return ""
}
