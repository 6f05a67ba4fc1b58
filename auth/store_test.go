package auth

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/innovartx/deskgate/apierror"
	"github.com/innovartx/deskgate/config"
	"github.com/innovartx/deskgate/internal/redistest"
)

// manualClock is the key cache's clock in tests.
type manualClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *manualClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *manualClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func testKey(i int) string { return fmt.Sprintf("sk_live_%024d", i) }

func hashOf(key string) [32]byte { return sha256.Sum256([]byte(key)) }

func hexOf(key string) string { h := hashOf(key); return hex.EncodeToString(h[:]) }

func redisAuthConfig() config.Auth {
	a := config.Default().Auth
	a.Store = "redis"
	a.Environments = []config.Env{"live", "test"}
	return a
}

// registerKey stores a key record as an operator would with redis-cli.
func registerKey(t *testing.T, c redis.UniversalClient, key string, fields ...string) {
	t.Helper()
	if err := c.HSet(context.Background(), "deskgate:apikey:"+hexOf(key), fields).Err(); err != nil {
		t.Fatal(err)
	}
}

func newStore(t *testing.T, c redis.UniversalClient, clock *manualClock) *RedisStore {
	o := RedisStoreOptions{Client: c, Config: redisAuthConfig(), Timeout: 200 * time.Millisecond}
	if clock != nil {
		o.Now = clock.Now
	}
	return NewRedisStore(o)
}

func miniClient(t *testing.T) (*miniredis.Miniredis, *redis.Client) {
	mr := miniredis.RunT(t)
	c := redis.NewClient(&redis.Options{Addr: mr.Addr(), MaxRetries: -1, ContextTimeoutEnabled: true})
	t.Cleanup(func() { c.Close() })
	return mr, c
}

// TestRedisStoreRecords guards SPEC §3's record: app required, status
// active or revoked, plan optional; and the checks end to end through an
// Authenticator.
func TestRedisStoreRecords(t *testing.T) {
	_, c := miniClient(t)
	registerKey(t, c, testKey(1), "app", "app_acme", "status", "active", "plan", "pro")
	registerKey(t, c, testKey(2), "app", "app_acme", "status", "revoked")
	registerKey(t, c, testKey(3), "status", "active") // no app
	registerKey(t, c, testKey(4), "app", "app_x", "status", "paused")
	registerKey(t, c, "pk_live_"+strings.Repeat("P", 24), "app", "app_acme", "status", "active", "plan", "pro")
	a, err := New(redisAuthConfig(), newStore(t, c, nil))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		key    string
		policy Policy
		app    string
		plan   string
		err    *apierror.Error
	}{
		{"active", testKey(1), SecretOnly, "app_acme", "pro", nil},
		{"revoked", testKey(2), SecretOnly, "", "", apierror.ErrKeyInvalid},
		{"record without app", testKey(3), SecretOnly, "", "", apierror.ErrKeyInvalid},
		{"unknown status", testKey(4), SecretOnly, "", "", apierror.ErrKeyInvalid},
		{"unknown key", testKey(5), SecretOnly, "", "", apierror.ErrKeyInvalid},
		{"public key of the app", "pk_live_" + strings.Repeat("P", 24), PublicOK, "app_acme", "pro", nil},
		// Type before lookup: a known pk key on a secret route is 403.
		{"public key on secret route", "pk_live_" + strings.Repeat("P", 24), SecretOnly, "", "", apierror.ErrKeyForbidden},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, e := a.Authenticate(context.Background(), []string{tc.key}, tc.policy)
			if e != tc.err {
				t.Fatalf("error %v, want %v", e, tc.err)
			}
			if id.AppID != tc.app || id.Plan != tc.plan {
				t.Errorf("identity app=%q plan=%q, want %q %q", id.AppID, id.Plan, tc.app, tc.plan)
			}
		})
	}
}

// TestRedisStoreBadRecords guards issue 13 item 9: a record's app, plan
// and status must be 1 to 128 visible ASCII characters. A record that
// breaks the rule is a key store error (503 SERVICE_UNAVAILABLE, never a
// pass, never its value in a header), logged by hash prefix only and
// without the value; it is cached for negative_cache_ttl like an unknown
// key, so a flood of its key costs one Redis call.
func TestRedisStoreBadRecords(t *testing.T) {
	mr, c := miniClient(t)
	long := strings.Repeat("a", 129)
	registerKey(t, c, testKey(1), "app", "app_x\r\nX-Evil: 1", "status", "active")
	registerKey(t, c, testKey(2), "app", long, "status", "active")
	registerKey(t, c, testKey(3), "app", "app_ok", "status", "active", "plan", "pro plan")
	registerKey(t, c, testKey(4), "app", "app_ok", "status", "active\n")
	registerKey(t, c, testKey(5), "app", "app_\u00e9t\u00e9", "status", "active")
	registerKey(t, c, testKey(6), "app", "app\x00", "status", "active")
	registerKey(t, c, testKey(7), "app", strings.Repeat("a", 128), "status", "active", "plan", "pro")
	var logs strings.Builder
	var logMu sync.Mutex
	o := RedisStoreOptions{Client: c, Config: redisAuthConfig(), Timeout: 200 * time.Millisecond,
		Logger: slog.New(slog.NewJSONHandler(writerFunc(func(p []byte) (int, error) {
			logMu.Lock()
			defer logMu.Unlock()
			return logs.Write(p)
		}), nil))}
	clock := &manualClock{t: time.Unix(1_800_000_000, 0)}
	o.Now = clock.Now
	s := NewRedisStore(o)
	a, err := New(redisAuthConfig(), s)
	if err != nil {
		t.Fatal(err)
	}
	for i, field := range map[int]string{1: "app", 2: "app", 3: "plan", 4: "status", 5: "app", 6: "app"} {
		t.Run(fmt.Sprintf("key %d bad %s", i, field), func(t *testing.T) {
			id, e := a.Authenticate(context.Background(), []string{testKey(i)}, SecretOnly)
			if e == nil || e.Code != apierror.ServiceUnavailable || e.HTTPStatus() != 503 {
				t.Fatalf("Authenticate = %+v, %v; want 503 SERVICE_UNAVAILABLE", id, e)
			}
			var re *RecordError
			if !errors.As(e, &re) || re.Field != field {
				t.Fatalf("cause %v, want a RecordError on %s", e.Cause, field)
			}
			h := hexOf(testKey(i))
			if want := "deskgate:apikey:" + h[:8] + "…"; re.Record != want {
				t.Errorf("record %q, want %q", re.Record, want)
			}
			if strings.Contains(e.Error(), h) || strings.Contains(e.Error(), "X-Evil") || strings.Contains(e.Error(), long) {
				t.Errorf("error %q shows the full hash or the bad value", e.Error())
			}
		})
	}
	logMu.Lock()
	got := logs.String()
	logMu.Unlock()
	if n := strings.Count(got, "key store record invalid"); n != 6 {
		t.Errorf("%d warnings for 6 bad records:\n%s", n, got)
	}
	for i := 1; i <= 6; i++ {
		if h := hexOf(testKey(i)); strings.Contains(got, h) {
			t.Errorf("log shows a full key hash: %s", got)
		}
	}
	if strings.Contains(got, "X-Evil") || strings.Contains(got, testKey(1)) {
		t.Errorf("log shows the bad value or a key:\n%s", got)
	}

	// 128 characters is the bound, not past it.
	if id, e := a.Authenticate(context.Background(), []string{testKey(7)}, SecretOnly); e != nil || len(id.AppID) != 128 || id.Plan != "pro" {
		t.Fatalf("128-character app: %+v %v", id, e)
	}

	// Cached for negative_cache_ttl: repeats cost no Redis call.
	before := mr.CommandCount()
	for range 100 {
		if _, e := a.Authenticate(context.Background(), []string{testKey(1)}, SecretOnly); e == nil || e.Code != apierror.ServiceUnavailable {
			t.Fatalf("repeat: %v", e)
		}
	}
	if n := mr.CommandCount() - before; n != 0 {
		t.Errorf("100 repeats of a bad record cost %d Redis commands, want 0", n)
	}
	// Fixed by the operator: seen after negative_cache_ttl.
	registerKey(t, c, testKey(1), "app", "app_x")
	clock.Advance(5 * time.Second)
	if id, e := a.Authenticate(context.Background(), []string{testKey(1)}, SecretOnly); e != nil || id.AppID != "app_x" {
		t.Fatalf("after the fix: %+v %v", id, e)
	}

	// A record that goes bad while a good answer is cached: the good
	// answer stands in up to stale_if_error, as when Redis is down.
	registerKey(t, c, testKey(1), "app", "app_x\r\n")
	clock.Advance(31 * time.Second)
	if id, e := a.Authenticate(context.Background(), []string{testKey(1)}, SecretOnly); e != nil || id.AppID != "app_x" {
		t.Fatalf("stale answer: %+v %v", id, e)
	}
	clock.Advance(5 * time.Minute)
	if _, e := a.Authenticate(context.Background(), []string{testKey(1)}, SecretOnly); e == nil || e.Code != apierror.ServiceUnavailable {
		t.Fatalf("past stale_if_error: %v, want SERVICE_UNAVAILABLE", e)
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// TestRedisStoreCache guards the cache semantics of SPEC §3: known keys
// are cached for cache_ttl (a revocation takes effect within it), unknown
// ones for negative_cache_ttl.
func TestRedisStoreCache(t *testing.T) {
	_, c := miniClient(t)
	clock := &manualClock{t: time.Unix(1_800_000_000, 0)}
	s := newStore(t, c, clock)
	registerKey(t, c, testKey(1), "app", "a1", "status", "active")
	app, _ := s.Lookup(context.Background(), hashOf(testKey(1)))
	if app == nil || !app.Active {
		t.Fatalf("lookup %v", app)
	}
	registerKey(t, c, testKey(1), "status", "revoked")
	clock.Advance(29 * time.Second)
	if app, _ := s.Lookup(context.Background(), hashOf(testKey(1))); app == nil || !app.Active {
		t.Fatal("revocation seen before cache_ttl: the cache did not hold")
	}
	clock.Advance(time.Second)
	if app, _ := s.Lookup(context.Background(), hashOf(testKey(1))); app == nil || app.Active {
		t.Fatalf("revoked key still active after cache_ttl: %v", app)
	}
	if n := s.Lookups(); n != 2 {
		t.Errorf("%d Redis lookups, want 2", n)
	}

	// Unknown keys: negative_cache_ttl (5s).
	if app, _ := s.Lookup(context.Background(), hashOf(testKey(9))); app != nil {
		t.Fatal("unknown key found")
	}
	registerKey(t, c, testKey(9), "app", "a9", "status", "active")
	clock.Advance(4 * time.Second)
	if app, _ := s.Lookup(context.Background(), hashOf(testKey(9))); app != nil {
		t.Fatal("negative cache did not hold for 4s")
	}
	clock.Advance(time.Second)
	if app, _ := s.Lookup(context.Background(), hashOf(testKey(9))); app == nil {
		t.Fatal("a key registered after a miss is still unknown after negative_cache_ttl")
	}
}

// TestRedisStoreNegativeFlood guards the flood rule of issue 3: 10,000
// requests over 100 distinct unknown keys cost at most 100 lookups, and
// 10,000 with one unknown key cost 1.
func TestRedisStoreNegativeFlood(t *testing.T) {
	for _, tc := range []struct {
		name     string
		distinct int
		max      int64
	}{{"100 unknown keys", 100, 100}, {"one unknown key", 1, 1}} {
		t.Run(tc.name, func(t *testing.T) {
			mr, c := miniClient(t)
			s := newStore(t, c, nil)
			a, _ := New(redisAuthConfig(), s)
			c.Ping(context.Background()) // connection set-up is not a lookup
			before := mr.CommandCount()
			for i := range 10_000 {
				_, e := a.Authenticate(context.Background(), []string{testKey(1000 + i%tc.distinct)}, SecretOnly)
				if e != apierror.ErrKeyInvalid {
					t.Fatalf("request %d: %v", i, e)
				}
			}
			if n := s.Lookups(); n > tc.max {
				t.Fatalf("%d Redis lookups, want at most %d", n, tc.max)
			}
			if n := mr.CommandCount() - before; int64(n) > tc.max {
				t.Fatalf("Redis saw %d commands, want at most %d", n, tc.max)
			}
		})
	}
}

// TestRedisStoreSingleflight guards issue 3's collapsing: 100 concurrent
// requests for one cold key make one Redis lookup (against a real Redis,
// where the call takes real time).
func TestRedisStoreSingleflight(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	registerKey(t, c, testKey(1), "app", "a1", "status", "active")
	s := newStore(t, c, nil)
	var wg sync.WaitGroup
	var ok atomic.Int64
	start := make(chan struct{})
	for range 100 {
		wg.Go(func() {
			<-start
			if app, err := s.Lookup(context.Background(), hashOf(testKey(1))); err == nil && app != nil && app.ID == "a1" {
				ok.Add(1)
			}
		})
	}
	close(start)
	wg.Wait()
	if ok.Load() != 100 {
		t.Fatalf("%d of 100 lookups found the app", ok.Load())
	}
	if n := s.Lookups(); n != 1 {
		t.Fatalf("%d Redis lookups for 100 concurrent requests of one key, want 1", n)
	}
}

// TestRedisStoreDown guards the store-down policy: a cached answer serves
// up to stale_if_error past its TTL; beyond that, or with nothing cached,
// the request gets 503 SERVICE_UNAVAILABLE — never a pass.
func TestRedisStoreDown(t *testing.T) {
	srv := redistest.Start(t)
	client, _ := redis.ParseURL(srv.URL())
	client.MaxRetries = -1
	client.ContextTimeoutEnabled = true
	c := redis.NewClient(client)
	defer c.Close()
	registerKey(t, c, testKey(1), "app", "a1", "status", "active")
	clock := &manualClock{t: time.Unix(1_800_000_000, 0)}
	s := newStore(t, c, clock)
	a, _ := New(redisAuthConfig(), s)
	if id, e := a.Authenticate(context.Background(), []string{testKey(1)}, SecretOnly); e != nil || id.AppID != "a1" {
		t.Fatalf("with Redis: %v %v", id, e)
	}
	srv.Kill()
	clock.Advance(31 * time.Second) // past cache_ttl, within stale_if_error
	if id, e := a.Authenticate(context.Background(), []string{testKey(1)}, SecretOnly); e != nil || id.AppID != "a1" {
		t.Fatalf("stale answer: %v %v", id, e)
	}
	_, e := a.Authenticate(context.Background(), []string{testKey(2)}, SecretOnly)
	if e == nil || e.Code != apierror.ServiceUnavailable {
		t.Fatalf("uncached key with Redis down: %v, want SERVICE_UNAVAILABLE", e)
	}
	clock.Advance(5 * time.Minute)
	_, e = a.Authenticate(context.Background(), []string{testKey(1)}, SecretOnly)
	if e == nil || e.Code != apierror.ServiceUnavailable {
		t.Fatalf("past stale_if_error: %v, want SERVICE_UNAVAILABLE", e)
	}
	if e.HTTPStatus() != 503 {
		t.Errorf("status %d", e.HTTPStatus())
	}
}

// TestRedisStoreBounded checks that the cache does not grow past
// cache_size under a flood of distinct keys.
func TestRedisStoreBounded(t *testing.T) {
	_, c := miniClient(t)
	cfg := redisAuthConfig()
	cfg.CacheSize = 320
	s := NewRedisStore(RedisStoreOptions{Client: c, Config: cfg, Timeout: time.Second})
	for i := range 5000 {
		s.Lookup(context.Background(), hashOf(testKey(i)))
	}
	n := 0
	for i := range s.shards {
		n += len(s.shards[i].m)
	}
	if n > 320 {
		t.Fatalf("cache holds %d entries, cache_size is 320", n)
	}
}

// TestFileStore guards `auth.store: file`: keys by hash or plaintext,
// disabled apps refused, plan carried.
func TestFileStore(t *testing.T) {
	plans := map[string]config.Plan{"pro": {}}
	kf, err := config.ParseKeyFile([]byte(`
apps:
  - id: app_demo
    plan: pro
    keys:
      - sha256: `+hexOf(testKey(1))+`
      - key: pk_live_`+strings.Repeat("Q", 24)+`
  - id: app_off
    disabled: true
    keys: [{key: `+testKey(2)+`}]
`), plans)
	if err != nil {
		t.Fatal(err)
	}
	cfg := config.Default().Auth
	cfg.Store, cfg.File = "file", "keys.yaml"
	a, err := New(cfg, NewFileStore(kf))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		key  string
		pol  Policy
		app  string
		want *apierror.Error
	}{
		{testKey(1), SecretOnly, "app_demo", nil},
		{"pk_live_" + strings.Repeat("Q", 24), PublicOK, "app_demo", nil},
		{testKey(2), SecretOnly, "", apierror.ErrKeyInvalid},
		{testKey(3), SecretOnly, "", apierror.ErrKeyInvalid},
	} {
		id, e := a.Authenticate(context.Background(), []string{tc.key}, tc.pol)
		if e != tc.want || id.AppID != tc.app {
			t.Errorf("%s: %v %v, want app %q err %v", tc.key[:12], id.AppID, e, tc.app, tc.want)
		}
		if tc.app != "" && id.Plan != "pro" {
			t.Errorf("plan %q", id.Plan)
		}
	}
}

// BenchmarkRedisStoreCached measures a cached lookup (issue 3's note).
func BenchmarkRedisStoreCached(b *testing.B) {
	mr := miniredis.RunT(b)
	c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer c.Close()
	c.HSet(context.Background(), "deskgate:apikey:"+hexOf(testKey(1)), "app", "a1", "status", "active")
	s := NewRedisStore(RedisStoreOptions{Client: c, Config: redisAuthConfig()})
	h := hashOf(testKey(1))
	s.Lookup(context.Background(), h)
	b.ReportAllocs()
	for b.Loop() {
		if app, _ := s.Lookup(context.Background(), h); app == nil {
			b.Fatal("not found")
		}
	}
}
