package redistest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestCheck(t *testing.T) {
	t.Parallel()
	found := func(string) (string, error) { return "/usr/bin/x", nil }
	onlyServer := func(name string) (string, error) {
		if name == "redis-server" {
			return "/usr/bin/redis-server", nil
		}
		return "", exec.ErrNotFound
	}
	none := func(string) (string, error) { return "", exec.ErrNotFound }

	if msg, fail := check(found, "1", []string{"redis-server", "redis-cli"}); msg != "" || fail {
		t.Errorf("all present: got (%q, %v), want no message", msg, fail)
	}
	if msg, fail := check(onlyServer, "", []string{"redis-server"}); msg != "" || fail {
		t.Errorf("redis-server present: got (%q, %v), want no message", msg, fail)
	}

	msg, fail := check(onlyServer, "", []string{"redis-server", "redis-cli"})
	if fail || !strings.Contains(msg, "redis-cli not found") || strings.Contains(msg, "redis-server not found") ||
		!strings.Contains(msg, "apt-get install redis-server") || !strings.Contains(msg, "SKIPPING") {
		t.Errorf("redis-cli missing, env unset: got (%q, %v), want a skip naming redis-cli", msg, fail)
	}

	for _, env := range []string{"", "0", "yes"} {
		if msg, fail := check(none, env, []string{"redis-server"}); fail || !strings.Contains(msg, "redis-server not found") {
			t.Errorf("env %q: got (%q, %v), want a skip", env, msg, fail)
		}
	}

	msg, fail = check(none, "1", []string{"redis-server"})
	if !fail || !strings.Contains(msg, "redis-server not found") || !strings.Contains(msg, RequireEnv) ||
		!strings.Contains(msg, "apt-get install redis-server") {
		t.Errorf("env 1: got (%q, %v), want a failure naming redis-server and %s", msg, fail, RequireEnv)
	}
}

// TestRequireChild is run by TestRequireEmptyPath in a child process with
// an empty PATH; on its own it does nothing.
func TestRequireChild(t *testing.T) {
	if os.Getenv("REDISTEST_CHILD") != "1" {
		t.Skip("helper for TestRequireEmptyPath")
	}
	Require(t, "redis-server", "redis-cli")
	t.Log("REQUIRE RETURNED")
}

// TestRequireEmptyPath runs Require for real in a child test binary whose
// PATH holds no binaries: it must skip, or fail with DESKGATE_REQUIRE_REDIS=1.
func TestRequireEmptyPath(t *testing.T) {
	t.Parallel()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		require  string
		wantFail bool
		wantText string
	}{
		{"", false, "--- SKIP: TestRequireChild"},
		{"1", true, "--- FAIL: TestRequireChild"},
	} {
		t.Run("require="+tc.require, func(t *testing.T) {
			ctx := ctxT(t, 30*time.Second)
			cmd := exec.CommandContext(ctx, exe, "-test.run=^TestRequireChild$", "-test.v", "-test.count=1")
			var env []string
			for _, kv := range os.Environ() {
				if !strings.HasPrefix(kv, "PATH=") && !strings.HasPrefix(kv, RequireEnv+"=") &&
					!strings.HasPrefix(kv, "GORACE=") {
					env = append(env, kv)
				}
			}
			// GORACE: a -race binary otherwise sleeps 1 s before a clean exit.
			gorace := strings.TrimSpace(os.Getenv("GORACE") + " atexit_sleep_ms=0")
			env = append(env, "PATH="+t.TempDir(), "REDISTEST_CHILD=1", "GORACE="+gorace)
			if tc.require != "" {
				env = append(env, RequireEnv+"="+tc.require)
			}
			cmd.Env = env
			out, err := cmd.CombinedOutput()
			text := string(out)
			var exitErr *exec.ExitError
			if tc.wantFail != errors.As(err, &exitErr) || (!tc.wantFail && err != nil) {
				t.Fatalf("child exit: %v, want failure=%v\n%s", err, tc.wantFail, text)
			}
			for _, want := range []string{tc.wantText, "redis-server and redis-cli not found on PATH", "apt-get install redis-server"} {
				if !strings.Contains(text, want) {
					t.Errorf("child output lacks %q:\n%s", want, text)
				}
			}
			if strings.Contains(text, "REQUIRE RETURNED") {
				t.Errorf("Require returned with an empty PATH:\n%s", text)
			}
		})
	}
}

func TestServerSetGet(t *testing.T) {
	t.Parallel()
	s := Start(t)
	ctx := ctxT(t, 10*time.Second)
	c := s.Client(t)
	if err := c.Set(ctx, "greeting", "hello", 0).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}
	if got, err := c.Get(ctx, "greeting").Result(); err != nil || got != "hello" {
		t.Fatalf("GET = %q, %v; want hello", got, err)
	}
	if !strings.HasPrefix(s.Addr(), "127.0.0.1:") {
		t.Errorf("Addr() = %q, want loopback", s.Addr())
	}
	if want := "redis://" + s.Addr() + "/0"; s.URL() != want {
		t.Errorf("URL() = %q, want %q", s.URL(), want)
	}
	// The configuration this package promises.
	cfg, err := c.ConfigGet(ctx, "*").Result()
	if err != nil {
		t.Fatalf("CONFIG GET: %v", err)
	}
	for k, want := range map[string]string{
		"save": "", "appendonly": "no", "maxmemory-policy": "noeviction", "bind": "127.0.0.1",
	} {
		if cfg[k] != want {
			t.Errorf("config %s = %q, want %q", k, cfg[k], want)
		}
	}
}

func TestServerPassword(t *testing.T) {
	t.Parallel()
	s := Start(t, "--requirepass", "s3cret")
	ctx := ctxT(t, 10*time.Second)

	anon := redis.NewClient(&redis.Options{Addr: s.Addr(), MaxRetries: -1})
	defer anon.Close()
	err := anon.Ping(ctx).Err()
	if err == nil || !strings.Contains(err.Error(), "NOAUTH") {
		t.Fatalf("unauthenticated PING: err = %v, want NOAUTH", err)
	}

	if want := "redis://:s3cret@" + s.Addr() + "/0"; s.URL() != want {
		t.Errorf("URL() = %q, want %q", s.URL(), want)
	}
	opt, err := redis.ParseURL(s.URL())
	if err != nil {
		t.Fatalf("ParseURL(%q): %v", s.URL(), err)
	}
	authed := redis.NewClient(opt)
	defer authed.Close()
	if err := authed.Ping(ctx).Err(); err != nil {
		t.Fatalf("PING with URL credentials: %v", err)
	}
	if err := s.Client(t).Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("SET through Client: %v", err)
	}
}

func TestServerKillRestart(t *testing.T) {
	t.Parallel()
	s := Start(t)
	c := s.Client(t)
	addr := s.Addr()
	if err := c.Set(ctxT(t, 5*time.Second), "before", "1", 0).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}

	// A client that neither retries commands nor dials: its PING must hit
	// the dead server and report a connection error, not a timeout.
	fast := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialerRetries: 1})
	defer fast.Close()
	if err := fast.Ping(ctxT(t, 5*time.Second)).Err(); err != nil {
		t.Fatalf("PING before Kill: %v", err)
	}

	s.Kill()
	if conn, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		conn.Close()
		t.Fatalf("%s still accepts connections after Kill", addr)
	}
	for name, cl := range map[string]*redis.Client{"fast client": fast, "Client(t)": c} {
		start := time.Now()
		err := cl.Ping(ctxT(t, time.Second)).Err()
		el := time.Since(start)
		if err == nil {
			t.Fatalf("%s: PING succeeded after Kill", name)
		}
		if el > 1200*time.Millisecond {
			t.Fatalf("%s: PING after Kill took %v to fail", name, el)
		}
		if name == "fast client" && errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("%s: PING after Kill timed out instead of failing to connect: %v", name, err)
		}
		t.Logf("%s: PING after Kill failed in %v: %v", name, el, err)
	}
	s.Kill() // idempotent

	s.Restart(t)
	if s.Addr() != addr {
		t.Fatalf("Restart moved the server from %s to %s", addr, s.Addr())
	}
	ctx := ctxT(t, 5*time.Second)
	for name, cl := range map[string]*redis.Client{"fast client": fast, "Client(t)": c} {
		if err := cl.Ping(ctx).Err(); err != nil {
			t.Fatalf("%s: PING after Restart: %v", name, err)
		}
	}
	// A new, empty process: no persistence.
	if err := c.Get(ctx, "before").Err(); !errors.Is(err, redis.Nil) {
		t.Fatalf("GET of a key from before the restart: %v, want redis.Nil", err)
	}
	if strings.Count(s.Log(), "--- redistest: redis-server ") < 2 {
		t.Errorf("log does not show two starts:\n%s", s.Log())
	}

	s.Stop()
	s.Stop() // idempotent
	if conn, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		conn.Close()
		t.Fatalf("%s still accepts connections after Stop", addr)
	}
}

func TestServerStartFailureIncludesLog(t *testing.T) {
	t.Parallel()
	Require(t)
	// A bad argument makes redis-server exit at once; startFresh must give
	// up (after its retries) and report the server's own complaint.
	ft := &fakeTB{TB: t}
	func() {
		defer func() {
			if r := recover(); r != nil && r != any(ft) {
				panic(r)
			}
		}()
		Start(ft, "--no-such-option", "x")
	}()
	if !ft.failed {
		t.Fatal("Start with a bad option did not fail")
	}
	// "FATAL CONFIG FILE ERROR" is redis-server's own output, not ours.
	for _, want := range []string{"exited during start-up", "attempt 5", "FATAL CONFIG FILE ERROR", "no-such-option"} {
		if !strings.Contains(ft.msg, want) {
			t.Errorf("failure message lacks %q:\n%s", want, ft.msg)
		}
	}
}

// fakeTB records a Fatal instead of failing the real test; Fatal panics to
// stop the caller, as FailNow's runtime.Goexit would.
type fakeTB struct {
	testing.TB
	failed bool
	msg    string
}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.failed, f.msg = true, fmt.Sprintf(format, args...)
	panic(f)
}

func TestCluster(t *testing.T) {
	t.Parallel()
	cl := StartCluster(t, 3)
	ctx := ctxT(t, 20*time.Second)
	cc := cl.Client(t)
	addrs := cl.Addrs()
	if len(addrs) != 3 {
		t.Fatalf("Addrs() = %v, want 3", addrs)
	}
	nodes := make([]*redis.Client, len(addrs))
	for i, a := range addrs {
		nodes[i] = redis.NewClient(&redis.Options{Addr: a})
		defer nodes[i].Close()
	}

	// 100 keys in 100 different hash slots.
	slots := map[int64]string{}
	for i := 0; len(slots) < 100; i++ {
		key := fmt.Sprintf("key:%d", i)
		slot, err := nodes[0].ClusterKeySlot(ctx, key).Result()
		if err != nil {
			t.Fatalf("CLUSTER KEYSLOT: %v", err)
		}
		if _, dup := slots[slot]; !dup {
			slots[slot] = key
		}
	}
	for _, key := range slots {
		if err := cc.Set(ctx, key, "v", 0).Err(); err != nil {
			t.Fatalf("SET %s: %v", key, err)
		}
	}

	total := int64(0)
	for i, n := range nodes {
		size, err := n.DBSize(ctx).Result()
		if err != nil {
			t.Fatalf("DBSIZE on %s: %v", addrs[i], err)
		}
		if size == 0 {
			t.Errorf("node %s holds no keys: keys are not spread", addrs[i])
		}
		t.Logf("node %s: DBSIZE %d", addrs[i], size)
		total += size
	}
	if total != 100 {
		t.Errorf("DBSIZE sums to %d over the nodes, want 100", total)
	}
	// Every key's slot holds exactly one key, on exactly one node.
	for slot, key := range slots {
		holders := 0
		for _, n := range nodes {
			cnt, err := n.ClusterCountKeysInSlot(ctx, int(slot)).Result()
			if err != nil {
				t.Fatalf("CLUSTER COUNTKEYSINSLOT %d: %v", slot, err)
			}
			if cnt == 1 {
				holders++
			} else if cnt != 0 {
				t.Errorf("slot %d (%s) has %d keys on one node", slot, key, cnt)
			}
		}
		if holders != 1 {
			t.Errorf("slot %d (%s) is held by %d nodes, want 1", slot, key, holders)
		}
	}

	t.Run("hash tag", func(t *testing.T) {
		tagged := []string{"{x}:a", "{x}:b", "{x}:c", "user:{x}", "{x}"}
		pairs := make([]any, 0, 2*len(tagged))
		for _, k := range tagged {
			pairs = append(pairs, k, "v")
		}
		// A multi-key command only works when every key is in one slot.
		if err := cc.MSet(ctx, pairs...).Err(); err != nil {
			t.Fatalf("MSET of {x} keys: %v", err)
		}
		slot, err := nodes[0].ClusterKeySlot(ctx, "{x}").Result()
		if err != nil {
			t.Fatal(err)
		}
		var holders []string
		for i, n := range nodes {
			cnt, err := n.ClusterCountKeysInSlot(ctx, int(slot)).Result()
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case cnt == int64(len(tagged)):
				holders = append(holders, addrs[i])
				for _, k := range tagged {
					if got, err := n.Get(ctx, k).Result(); err != nil || got != "v" {
						t.Errorf("GET %s directly on %s = %q, %v", k, addrs[i], got, err)
					}
				}
			case cnt != 0:
				t.Errorf("node %s holds %d of the {x} keys", addrs[i], cnt)
			}
		}
		if len(holders) != 1 {
			t.Errorf("{x} keys are on %v, want exactly one node", holders)
		}
	})
}

func TestSentinel(t *testing.T) {
	t.Parallel()
	s := StartSentinel(t, "deskgate-master")
	ctx := ctxT(t, 10*time.Second)
	if len(s.Addrs()) != 1 || s.Addrs()[0] == s.Master.Addr() {
		t.Fatalf("Addrs() = %v (master %s)", s.Addrs(), s.Master.Addr())
	}
	fc := redis.NewFailoverClient(&redis.FailoverOptions{MasterName: "deskgate-master", SentinelAddrs: s.Addrs()})
	defer fc.Close()
	if err := fc.Set(ctx, "through-sentinel", "yes", 0).Err(); err != nil {
		t.Fatalf("SET via sentinel: %v", err)
	}
	if got, err := fc.Get(ctx, "through-sentinel").Result(); err != nil || got != "yes" {
		t.Fatalf("GET via sentinel = %q, %v", got, err)
	}
	// The write really reached the master.
	if got, err := s.Master.Client(t).Get(ctx, "through-sentinel").Result(); err != nil || got != "yes" {
		t.Fatalf("GET on master = %q, %v", got, err)
	}
}
