package ratelimit

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/innovartx/deskgate/internal/redistest"
	"github.com/innovartx/deskgate/metrics"
	"github.com/innovartx/deskgate/redisclient"
)

// logBuffer collects a limiter's JSON log lines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// lines returns the log lines, parsed.
func (b *logBuffer) lines(t *testing.T) []map[string]any {
	t.Helper()
	b.mu.Lock()
	text := b.buf.String()
	b.mu.Unlock()
	var out []map[string]any
	for line := range strings.Lines(text) {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line is not JSON: %v: %s", err, line)
		}
		out = append(out, m)
	}
	return out
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// count returns how many lines have a msg containing part.
func (b *logBuffer) count(t *testing.T, part string) int {
	n := 0
	for _, l := range b.lines(t) {
		if msg, _ := l["msg"].(string); strings.Contains(msg, part) {
			n++
		}
	}
	return n
}

// find returns the lines whose msg contains part.
func (b *logBuffer) find(t *testing.T, part string) []map[string]any {
	var out []map[string]any
	for _, l := range b.lines(t) {
		if msg, _ := l["msg"].(string); strings.Contains(msg, part) {
			out = append(out, l)
		}
	}
	return out
}

// loggedLimiter is a limiter whose log a test reads, checking Redis every
// `every` at first, backing off to at most max.
func loggedLimiter(t *testing.T, r *Redis, every, max time.Duration) (*Limiter, *metrics.Metrics, *logBuffer) {
	t.Helper()
	logs := &logBuffer{}
	m := metrics.New(prometheus.NewRegistry(), "test")
	l := NewLimiter(LimiterOptions{
		Redis:       r,
		Local:       NewMemory(time.Hour),
		OnFailure:   FailLocal,
		Timeout:     200 * time.Millisecond,
		HealthEvery: every,
		HealthMax:   max,
		Metrics:     m,
		Logger:      slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	t.Cleanup(l.Close)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("limiter log:\n%s", logs)
		}
	})
	return l, m, logs
}

// waitGauge waits, at most 10 s, until g reads want.
func waitGauge(t *testing.T, g prometheus.Gauge, want float64, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for testutil.ToFloat64(g) != want {
		if time.Now().After(deadline) {
			t.Fatalf("%s: gauge still %v after 10 s, want %v", what, testutil.ToFloat64(g), want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// deadAddr returns a loopback address where nothing listens.
func deadAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// TestRealRedisRefusesWrites guards issue 13 item 10 (a): a Redis that
// answers PING but refuses writes — full with noeviction, or a read-only
// replica — keeps the limiter on its fallback, the gauge steady at 1 and a
// single log line, instead of flapping back at every health check; when
// writes work again, the limiter goes back to Redis. The health check
// writes only its own key.
func TestRealRedisRefusesWrites(t *testing.T) {
	for _, tc := range []struct {
		name          string
		refuse, allow func(t *testing.T, admin *redis.Client) error
	}{
		{
			"out_of_memory",
			func(t *testing.T, admin *redis.Client) error {
				return admin.ConfigSet(context.Background(), "maxmemory", "1").Err()
			},
			func(t *testing.T, admin *redis.Client) error {
				return admin.ConfigSet(context.Background(), "maxmemory", "0").Err()
			},
		},
		{
			"read_only",
			func(t *testing.T, admin *redis.Client) error {
				host, port, _ := net.SplitHostPort(deadAddr(t))
				return admin.Do(context.Background(), "replicaof", host, port).Err()
			},
			func(t *testing.T, admin *redis.Client) error {
				return admin.Do(context.Background(), "replicaof", "no", "one").Err()
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := redistest.Start(t)
			admin := srv.Client(t)
			client, err := redisclient.New(redisConfig(t, "{url: '"+srv.URL()+"', timeout: 200ms}"))
			if err != nil {
				t.Fatal(err)
			}
			defer client.Close()
			// Checks every 50 ms at first: today's PING check would flap
			// about 20 times a second.
			l, m, logs := loggedLimiter(t, NewRedis(client), 50*time.Millisecond, 400*time.Millisecond)
			if err := l.Start(context.Background()); err != nil {
				t.Fatalf("start with a healthy Redis: %v", err)
			}
			p := defaultPolicy(t)
			if d, err := l.Allow(context.Background(), p, Key{1}); err != nil || !d.Allowed {
				t.Fatalf("with Redis: %v %v", d, err)
			}
			if err := tc.refuse(t, admin); err != nil {
				t.Fatal(err)
			}
			// ~3 s of requests from 50 identities, every 10 ms.
			start := time.Now()
			samples, flips := 0, 0
			for i := 0; i < 400 && time.Since(start) < 3*time.Second; i++ {
				// The gauge before each request (but the first, which
				// meets the fault) and after it.
				if i > 0 {
					samples++
					if testutil.ToFloat64(m.RateLimitFallback) != 1 {
						flips++
					}
				}
				if _, err := l.Allow(context.Background(), p, Key{2, byte(i % 50)}); err != nil {
					t.Fatalf("request %d: %v", i, err)
				}
				samples++
				if testutil.ToFloat64(m.RateLimitFallback) != 1 {
					flips++
				}
				time.Sleep(10 * time.Millisecond)
			}
			if err := admin.Ping(context.Background()).Err(); err != nil {
				t.Fatalf("the scenario needs a Redis that answers PING: %v", err)
			}
			if flips != 0 {
				t.Errorf("fallback gauge read 0 in %d of %d samples while Redis refused writes: flapping", flips, samples)
			}
			down := logs.find(t, "rate-limit store unavailable")
			back := logs.count(t, "available again")
			if len(down) != 1 || back != 0 {
				t.Errorf("%d 'unavailable' and %d 'available again' lines in 3 s; want 1 and 0", len(down), back)
			} else if down[0]["reason"] != tc.name {
				t.Errorf("reason %v, want %s", down[0]["reason"], tc.name)
			}
			if n := testutil.ToFloat64(m.RateLimitDecisions.WithLabelValues("redis", "allowed")); n != 1 {
				t.Errorf("%v decisions by Redis, want only the one before the fault", n)
			}
			if n := testutil.ToFloat64(m.RateLimitStoreErrors); n != 1 {
				t.Errorf("%v store errors: requests went on asking a Redis that refuses writes", n)
			}

			if err := tc.allow(t, admin); err != nil {
				t.Fatal(err)
			}
			waitGauge(t, m.RateLimitFallback, 0, "after writes work again")
			if d, err := l.Allow(context.Background(), p, Key{3}); err != nil || !d.Allowed {
				t.Fatalf("after recovery: %v %v", d, err)
			}
			if n := testutil.ToFloat64(m.RateLimitDecisions.WithLabelValues("redis", "allowed")); n != 2 {
				t.Errorf("%v decisions by Redis after recovery, want 2", n)
			}
			if n := logs.count(t, "available again"); n != 1 {
				t.Errorf("%d 'available again' lines, want 1", n)
			}

			// The checks wrote their own key, in the slot of the identity
			// whose request failed, with a short expiry; the budgets are
			// those of the two requests Redis admitted.
			keys, err := admin.Keys(context.Background(), KeyPrefix+"*").Result()
			if err != nil {
				t.Fatal(err)
			}
			var budgets, health []string
			for _, k := range keys {
				if strings.HasSuffix(k, ":"+healthID) {
					health = append(health, k)
					if ttl := admin.PTTL(context.Background(), k).Val(); ttl <= 0 || ttl > 5*time.Second {
						t.Errorf("health key %s expires in %s, want within 5 s", k, ttl)
					}
				} else {
					budgets = append(budgets, k)
				}
			}
			failed := RedisKey(KeyPrefix, healthID, Key{2, 0})
			started := RedisKey(KeyPrefix, healthID, healthKey)
			if !slices.Contains(health, failed) || len(health) > 2 || len(health) == 2 && !slices.Contains(health, started) {
				t.Errorf("health keys %q, want %s (the failed identity's slot) and maybe %s (start-up's, if not expired yet)", health, failed, started)
			}
			want := []string{RedisKey(KeyPrefix, "global", Key{1}), RedisKey(KeyPrefix, "global", Key{3})}
			if !sameSet(budgets, want) {
				t.Errorf("budget keys %q, want %q", budgets, want)
			}
			t.Logf("limiter log:\n%s", logs)
		})
	}
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	seen := map[string]int{}
	for _, s := range a {
		seen[s]++
	}
	for _, s := range b {
		seen[s]--
	}
	for _, n := range seen {
		if n != 0 {
			return false
		}
	}
	return true
}

// TestStartRedisDown guards issue 13 item 10 (b): with Redis down at
// start-up, the limiter says so at once — gauge 1, a warning that names
// the start-up — and no request waits on Redis.
func TestStartRedisDown(t *testing.T) {
	client, err := redisclient.New(redisConfig(t, "{url: 'redis://"+deadAddr(t)+"/0', timeout: 100ms}"))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	l, m, logs := loggedLimiter(t, NewRedis(client), time.Second, 30*time.Second)
	if got := testutil.ToFloat64(m.RateLimitFallback); got != 0 {
		t.Fatalf("gauge %v before start", got)
	}
	start := time.Now()
	err = l.Start(context.Background())
	if el := time.Since(start); el > startBudget+500*time.Millisecond {
		t.Errorf("start-up waited %s on a dead Redis", el)
	}
	if err == nil {
		t.Fatal("Start reported a dead Redis as ready")
	}
	if got := testutil.ToFloat64(m.RateLimitFallback); got != 1 {
		t.Errorf("gauge %v right after start-up with Redis down, want 1", got)
	}
	if !l.FallbackActive() {
		t.Error("FallbackActive false with Redis down")
	}
	lines := logs.find(t, "unavailable at start-up")
	if len(lines) != 1 || lines[0]["level"] != "WARN" || lines[0]["reason"] != "unreachable" || lines[0]["on_failure"] != "local" {
		t.Errorf("start-up log lines %v, want one WARN with reason unreachable and on_failure local", lines)
	}
	d, err := l.Allow(context.Background(), defaultPolicy(t), Key{1})
	if err != nil || !d.Allowed {
		t.Fatalf("decision with Redis down: %v %v", d, err)
	}
	if n := testutil.ToFloat64(m.RateLimitDecisions.WithLabelValues("local_fallback", "allowed")); n != 1 {
		t.Errorf("%v local_fallback decisions, want 1", n)
	}
	if n := testutil.ToFloat64(m.RateLimitStoreErrors); n != 0 {
		t.Errorf("%v store errors: a request asked a Redis known to be down", n)
	}
}

// TestStartWithoutRedis: the in-process store has nothing to check.
func TestStartWithoutRedis(t *testing.T) {
	l, m, logs := loggedLimiter(t, nil, time.Second, time.Second)
	if err := l.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if testutil.ToFloat64(m.RateLimitFallback) != 0 || testutil.ToFloat64(m.RateLimitEvicting) != 0 || l.FallbackActive() {
		t.Error("gauges set without Redis")
	}
	if s := logs.String(); s != "" {
		t.Errorf("log without Redis: %s", s)
	}
}

// TestRealRedisWrongPassword guards issue 13 item 10 (b): a password that
// Redis refuses (WRONGPASS), or none where one is required (NOAUTH), is a
// configuration error: logged at ERROR as such at start-up and at each
// check that meets it again (not silenced as a passing outage), never
// with the password; the fallback applies from the start, and the limiter
// goes back to Redis once Redis accepts the credentials.
func TestRealRedisWrongPassword(t *testing.T) {
	const right, wrong = "R1ght-Secret-pw", "Wr0ng-Secret-pw"
	for _, tc := range []struct {
		name, url, fix string
	}{
		{"WRONGPASS", "redis://:" + wrong + "@{ADDR}/0", wrong},
		{"NOAUTH", "redis://{ADDR}/0", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := redistest.Start(t, "--requirepass", right)
			admin := srv.Client(t)
			client, err := redisclient.New(redisConfig(t, "{url: '"+strings.ReplaceAll(tc.url, "{ADDR}", srv.Addr())+"', timeout: 200ms}"))
			if err != nil {
				t.Fatal(err)
			}
			defer client.Close()
			l, m, logs := loggedLimiter(t, NewRedis(client), 50*time.Millisecond, 100*time.Millisecond)
			l.health.configEvery = 0 // every check that meets it logs it
			if err := l.Start(context.Background()); err == nil {
				t.Fatal("Start accepted refused credentials")
			}
			if got := testutil.ToFloat64(m.RateLimitFallback); got != 1 {
				t.Errorf("gauge %v right after start-up with refused credentials, want 1", got)
			}
			// The start-up line, then the checks' lines.
			deadline := time.Now().Add(5 * time.Second)
			for logs.count(t, "configuration error") < 3 && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			lines := logs.find(t, "configuration error")
			if len(lines) < 3 {
				t.Fatalf("%d configuration-error lines in 5 s of checks every 100 ms, want at least 3", len(lines))
			}
			for _, line := range lines {
				msg, _ := line["msg"].(string)
				if line["level"] != "ERROR" || line["reason"] != "credentials" || !strings.Contains(msg, "credentials") || !strings.Contains(msg, "redis.url") {
					t.Errorf("log line %v: want ERROR, reason credentials, naming the credentials and redis.url", line)
				}
			}
			if n := logs.count(t, "unavailable"); n != 0 {
				t.Errorf("%d 'unavailable' warnings besides the configuration errors", n)
			}
			if err := admin.ConfigSet(context.Background(), "requirepass", tc.fix).Err(); err != nil {
				t.Fatal(err)
			}
			waitGauge(t, m.RateLimitFallback, 0, "after Redis accepts the credentials")
			if logs.count(t, "available again") != 1 {
				t.Error("no 'available again' line")
			}
			for _, pw := range []string{right, wrong} {
				if strings.Contains(logs.String(), pw) {
					t.Errorf("a password is in the log")
				}
			}
			t.Logf("limiter log:\n%s", logs)
		})
	}
}

// TestRealRedisEvictionPolicy guards issue 13 item 10 (c): the start-up
// check reads maxmemory-policy — with CONFIG GET, or INFO memory where
// CONFIG is renamed away — and sets deskgate_ratelimit_store_evicting to 1
// with a warning for allkeys-* only (SPEC §4 accepts noeviction and
// volatile-*).
func TestRealRedisEvictionPolicy(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want float64
	}{
		{"noeviction", nil, 0},
		{"volatile-lru", []string{"--maxmemory-policy", "volatile-lru"}, 0},
		{"allkeys-lru", []string{"--maxmemory-policy", "allkeys-lru"}, 1},
		{"allkeys-lru without CONFIG", []string{"--maxmemory-policy", "allkeys-lru", "--rename-command", "CONFIG", ""}, 1},
		{"noeviction without CONFIG", []string{"--rename-command", "CONFIG", ""}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := redistest.Start(t, tc.args...)
			if strings.Contains(tc.name, "without CONFIG") && srv.Client(t).ConfigGet(context.Background(), "maxmemory-policy").Err() == nil {
				t.Fatal("CONFIG still answers: the scenario needs it renamed away")
			}
			l, m, logs := loggedLimiter(t, NewRedis(srv.Client(t)), time.Second, time.Second)
			if err := l.Start(context.Background()); err != nil {
				t.Fatal(err)
			}
			if got := testutil.ToFloat64(m.RateLimitEvicting); got != tc.want {
				t.Errorf("deskgate_ratelimit_store_evicting %v, want %v", got, tc.want)
			}
			policy := strings.Fields(tc.name)[0]
			warn := logs.find(t, "may evict any key")
			info := logs.find(t, "eviction policy")
			switch {
			case tc.want == 1 && (len(warn) != 1 || warn[0]["level"] != "WARN" || warn[0]["maxmemory_policy"] != policy):
				t.Errorf("warnings %v, want one WARN naming %s", warn, policy)
			case tc.want == 0 && (len(warn) != 0 || len(info) != 1 || info[0]["maxmemory_policy"] != policy):
				t.Errorf("warnings %v, info %v; want no warning and one line naming %s", warn, info, policy)
			}
			if n := logs.count(t, "could not read"); n != 0 {
				t.Errorf("%d 'could not read' lines", n)
			}
		})
	}
}

// TestRealRedisEvictionPolicyChanges: a policy changed at run time is
// seen by the periodic check, and logged once per change.
func TestRealRedisEvictionPolicyChanges(t *testing.T) {
	srv := redistest.Start(t)
	admin := srv.Client(t)
	l, m, logs := loggedLimiter(t, NewRedis(srv.Client(t)), time.Second, time.Second)
	l.policy.every = 50 * time.Millisecond
	if err := l.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(m.RateLimitEvicting); got != 0 {
		t.Fatalf("gauge %v with noeviction", got)
	}
	set := func(policy string) {
		t.Helper()
		if err := admin.ConfigSet(context.Background(), "maxmemory-policy", policy).Err(); err != nil {
			t.Fatal(err)
		}
	}
	set("allkeys-random")
	waitGauge(t, m.RateLimitEvicting, 1, "allkeys-random set at run time")
	set("volatile-ttl")
	waitGauge(t, m.RateLimitEvicting, 0, "volatile-ttl set at run time")
	time.Sleep(200 * time.Millisecond) // a few more checks: no more lines
	if n := logs.count(t, "may evict any key"); n != 1 {
		t.Errorf("%d warnings, want 1 (one change to allkeys-random)", n)
	}
	if n := logs.count(t, "eviction policy"); n != 2 {
		t.Errorf("%d info lines, want 2 (noeviction at start, then volatile-ttl)", n)
	}
}

// TestRealRedisClusterEvictionPolicy: in a Cluster every master is read;
// one allkeys-* master is enough for the gauge, and the warning names it.
func TestRealRedisClusterEvictionPolicy(t *testing.T) {
	c := redistest.StartCluster(t, 3)
	bad := c.Addrs()[1]
	node := redis.NewClient(&redis.Options{Addr: bad})
	defer node.Close()
	if err := node.ConfigSet(context.Background(), "maxmemory-policy", "allkeys-lfu").Err(); err != nil {
		t.Fatal(err)
	}
	l, m, logs := loggedLimiter(t, NewRedis(clusterClient(t, c)), time.Second, time.Second)
	if err := l.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(m.RateLimitEvicting); got != 1 {
		t.Errorf("gauge %v with one allkeys-lfu master", got)
	}
	warn := logs.find(t, "may evict any key")
	if len(warn) != 1 {
		t.Fatalf("warnings %v", warn)
	}
	policies, _ := warn[0]["maxmemory_policy"].(string)
	if !strings.Contains(policies, bad+"=allkeys-lfu") || strings.Count(policies, "=noeviction") != 2 {
		t.Errorf("maxmemory_policy %q, want the three masters with %s=allkeys-lfu", policies, bad)
	}
}

// TestHealthBacksOff guards the health check's backoff: against a dead
// Redis, checks every 20 ms for 200 ms, then doubling to 320 ms, make at
// most 25 checks in 2 s (a fixed 20 ms interval would make at least 100),
// and keep going.
func TestHealthBacksOff(t *testing.T) {
	client, err := redisclient.New(redisConfig(t, "{url: 'redis://"+deadAddr(t)+"/0', timeout: 100ms}"))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	l, _, logs := loggedLimiter(t, NewRedis(client), 20*time.Millisecond, 320*time.Millisecond)
	l.health.remindEvery = 0 // one line per failed check
	_ = l.Start(context.Background())
	time.Sleep(2 * time.Second)
	// Each check may come up to a quarter of its interval early: at most
	// 200/15 checks in the steady 200 ms, then at least 30, 60, 120 ms
	// apart, then 240 ms: 13 + 3 + (2000-410)/240.
	n := logs.count(t, "still unavailable")
	if n > 25 || n < 2 {
		t.Errorf("%d checks in 2 s, want between 2 and 25", n)
	}
	t.Logf("%d checks in 2 s", n)
	for range 1000 {
		for _, d := range []time.Duration{time.Second, 30 * time.Second} {
			if j := jitter(d); j > d || j < d*3/4 {
				t.Fatalf("jitter(%s) = %s, want within [%s, %s]", d, j, d*3/4, d)
			}
		}
	}
}

// TestClassify: why a call failed, as the log says it.
func TestClassify(t *testing.T) {
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	for _, tc := range []struct {
		err    error
		reason string
		config bool
	}{
		{errors.New("WRONGPASS invalid username-password pair or user is disabled."), "credentials", true},
		{fmt.Errorf("rate-limit script: %w", replyError("NOAUTH Authentication required.")), "credentials", true},
		{replyError("ERR AUTH <password> called without any password configured for the default user."), "credentials", true},
		// What Redis answers a client without a password that sends a
		// script call of more than 10 arguments (and closes it).
		{fmt.Errorf("rate-limit script: %w", replyError("ERR Protocol error: unauthenticated multibulk length")), "credentials", true},
		{replyError("NOPERM User deskgate has no permissions to run the 'evalsha' command"), "permission", true},
		{fmt.Errorf("rate-limit script: %w", replyError("OOM command not allowed when used memory > 'maxmemory'.")), "out_of_memory", false},
		{fmt.Errorf("rate-limit script: %w", replyError("READONLY You can't write against a read only replica.")), "read_only", false},
		{replyError("LOADING Redis is loading the dataset in memory"), "error_reply", false},
		{fmt.Errorf("rate-limit script: %w", context.DeadlineExceeded), "timeout", false},
		{fmt.Errorf("rate-limit script: %w", refused), "unreachable", false},
	} {
		reason, config := classify(tc.err)
		if reason != tc.reason || (config != "") != tc.config {
			t.Errorf("%v: %s %q, want %s (configuration error %v)", tc.err, reason, config, tc.reason, tc.config)
		}
		if tc.config && !strings.Contains(config, "configuration error") {
			t.Errorf("%v: %q does not say configuration error", tc.err, config)
		}
	}
}

// TestHealthKey: the start-up check's key is in the health budget, whose
// id no policy of the gateway has ("global", "plan:*", "bucket:*").
func TestHealthKey(t *testing.T) {
	want := KeyPrefix + "{" + hex.EncodeToString(healthKey[:]) + "}:health"
	if got := RedisKey(KeyPrefix, healthID, healthKey); got != want {
		t.Errorf("%s, want %s", got, want)
	}
}
