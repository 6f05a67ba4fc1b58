package auth

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/innovartx/deskgate/config"
)

// App is what a key store knows of a key's owner.
type App struct {
	ID   string
	Plan string
	// Active is false for a revoked key or a disabled app.
	Active bool
}

// KeyStore finds the app of a key by the key's SHA-256. A nil App with a
// nil error means the key is unknown; an error means the store could not
// answer.
type KeyStore interface {
	Lookup(ctx context.Context, hash [32]byte) (*App, error)
}

// tracerName is the instrumentation scope of the key store's spans.
const tracerName = "github.com/innovartx/deskgate/auth"

// FileStore is the key store of `auth.store: file`: the key file, in
// memory, indexed by hash. It is rebuilt at every config load.
type FileStore struct {
	byHash map[[32]byte]*App
}

var _ KeyStore = (*FileStore)(nil)

// NewFileStore indexes a validated key file. Plaintext entries are hashed
// here, so that no plaintext comparison ever happens at request time.
func NewFileStore(kf *config.KeyFile) *FileStore {
	s := &FileStore{byHash: map[[32]byte]*App{}}
	if kf == nil {
		return s
	}
	for _, a := range kf.Apps {
		app := &App{ID: a.ID, Plan: a.Plan, Active: !a.Disabled}
		for _, k := range a.Keys {
			s.byHash[k.Hash()] = app
		}
	}
	return s
}

// Lookup returns the app of hash, or nil.
func (s *FileStore) Lookup(_ context.Context, hash [32]byte) (*App, error) {
	return s.byHash[hash], nil
}

// RedisStore is the key store of `auth.store: redis`: `HGETALL
// <prefix><sha256 hex>` gives `app`, `status` and `plan`. Answers are
// cached in process — known keys for ttl, unknown ones for negTTL — so a
// flood of bad keys does not become a flood of Redis calls, and concurrent
// lookups of one key share one call. When Redis cannot answer, a cached
// answer up to stale past its expiry is used; beyond that the lookup fails
// (and the request gets 503, never a pass).
type RedisStore struct {
	client  redis.UniversalClient
	prefix  string
	ttl     time.Duration
	negTTL  time.Duration
	stale   time.Duration
	timeout time.Duration
	log     *slog.Logger
	now     func() time.Time

	perShard int
	shards   [32]cacheShard

	lookups atomic.Int64
}

var _ KeyStore = (*RedisStore)(nil)

type cacheShard struct {
	mu    sync.Mutex
	m     map[[32]byte]cacheEntry
	calls map[[32]byte]*lookupCall
}

type cacheEntry struct {
	app *App
	// bad is a record that failed validation ([RecordError]): cached
	// like an unknown key, so that its requests do not each cost a
	// Redis call, but answered as a store error.
	bad        *RecordError
	expires    time.Time
	staleUntil time.Time
}

// RecordError is a key store record that breaks SPEC §3's rules: its
// `app`, `plan` or `status` is not 1 to 128 visible ASCII characters
// ([config.ValidIdent]). It is a fault of the store's data, not of the
// client's key: the lookup fails as if the store could not answer (a
// stale cached answer is used within auth.stale_if_error, else 503), and
// the value never reaches a header or a log line. The message names the
// record by its hash prefix only.
type RecordError struct {
	// Record is the Redis key, with only the first 8 hex digits of the
	// hash.
	Record string
	// Field is the offending field: app, plan or status.
	Field string
}

func (e *RecordError) Error() string {
	return fmt.Sprintf("key store: record %s: field %q is not 1 to %d visible ASCII characters", e.Record, e.Field, config.MaxIdentLen)
}

// lookupCall is one Redis lookup in flight, shared by every request for
// the same key that arrives meanwhile.
type lookupCall struct {
	done chan struct{}
	app  *App
	err  error
}

// RedisStoreOptions configure [NewRedisStore].
type RedisStoreOptions struct {
	Client redis.UniversalClient
	Config config.Auth
	// Timeout bounds each Redis call.
	Timeout time.Duration
	Logger  *slog.Logger
	// Now is the clock (tests).
	Now func() time.Time
}

// NewRedisStore returns a Redis key store with an empty cache.
func NewRedisStore(o RedisStoreOptions) *RedisStore {
	s := &RedisStore{
		client:   o.Client,
		prefix:   o.Config.RedisPrefix,
		ttl:      o.Config.CacheTTL.D(),
		negTTL:   o.Config.NegativeCacheTTL.D(),
		stale:    o.Config.StaleIfError.D(),
		timeout:  o.Timeout,
		log:      o.Logger,
		now:      o.Now,
		perShard: max(1, o.Config.CacheSize/32),
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.timeout <= 0 {
		s.timeout = 50 * time.Millisecond
	}
	for i := range s.shards {
		s.shards[i].m = map[[32]byte]cacheEntry{}
		s.shards[i].calls = map[[32]byte]*lookupCall{}
	}
	return s
}

// Lookups returns how many Redis calls the store has made.
func (s *RedisStore) Lookups() int64 { return s.lookups.Load() }

// Lookup returns the app of hash from the cache, or from Redis.
func (s *RedisStore) Lookup(ctx context.Context, hash [32]byte) (*App, error) {
	sh := &s.shards[hash[0]%32]
	now := s.now()
	sh.mu.Lock()
	e, cached := sh.m[hash]
	if cached && now.Before(e.expires) {
		sh.mu.Unlock()
		if e.bad != nil {
			return nil, e.bad
		}
		return e.app, nil
	}
	if c := sh.calls[hash]; c != nil {
		sh.mu.Unlock()
		select {
		case <-c.done:
			return c.app, c.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	c := &lookupCall{done: make(chan struct{})}
	sh.calls[hash] = c
	sh.mu.Unlock()

	// The call serves every waiter, so one client going away must not
	// cancel it.
	app, err := s.fetch(context.WithoutCancel(ctx), hash)

	now = s.now()
	sh.mu.Lock()
	delete(sh.calls, hash)
	var bad *RecordError
	switch {
	case err == nil:
		ttl := s.ttl
		if app == nil {
			ttl = s.negTTL
		}
		s.put(sh, hash, cacheEntry{app: app, expires: now.Add(ttl), staleUntil: now.Add(ttl + s.stale)})
	case cached && e.bad == nil && now.Before(e.staleUntil):
		// The last good answer stands in, whether Redis is down or
		// the record went bad (its entry is kept for the next try).
		s.log.Warn("key store cannot answer; using a stale cached answer", "error", err.Error())
		app, err = e.app, nil
	case errors.As(err, &bad):
		s.put(sh, hash, cacheEntry{bad: bad, expires: now.Add(s.negTTL), staleUntil: now.Add(s.negTTL)})
	}
	c.app, c.err = app, err
	close(c.done)
	sh.mu.Unlock()
	return app, err
}

// put caches e, making room first if the shard is full: expired entries
// go, else an arbitrary one (map order is random).
func (s *RedisStore) put(sh *cacheShard, hash [32]byte, e cacheEntry) {
	if len(sh.m) >= s.perShard {
		now := s.now()
		scanned := 0
		for k, old := range sh.m {
			if now.After(old.staleUntil) {
				delete(sh.m, k)
			}
			if scanned++; scanned >= 16 {
				break
			}
		}
		for k := range sh.m {
			if len(sh.m) < s.perShard {
				break
			}
			delete(sh.m, k)
		}
	}
	sh.m[hash] = e
}

func (s *RedisStore) fetch(ctx context.Context, hash [32]byte) (app *App, err error) {
	s.lookups.Add(1)
	if parent := trace.SpanFromContext(ctx); parent.IsRecording() {
		// SPEC §11: a lookup that goes to Redis is a child span of
		// the request whose trace is recorded (the one that made the
		// call, when several wait on it). It names no key, nor its
		// hash.
		var span trace.Span
		ctx, span = parent.TracerProvider().Tracer(tracerName).Start(ctx, "key store lookup",
			trace.WithSpanKind(trace.SpanKindClient),
			trace.WithAttributes(
				attribute.String("db.system.name", "redis"),
				attribute.String("db.operation.name", "HGETALL")))
		defer func() {
			span.SetAttributes(attribute.Bool("deskgate.key_store.found", app != nil))
			if err != nil {
				span.RecordError(err)
				span.SetStatus(codes.Error, "key store cannot answer")
			}
			span.End()
		}()
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	key := s.prefix + hex.EncodeToString(hash[:])
	fields, err := s.client.HGetAll(ctx, key).Result()
	if err != nil {
		return nil, fmt.Errorf("key store: HGETALL: %w", err)
	}
	if len(fields) == 0 {
		return nil, nil
	}
	record := s.prefix + hex.EncodeToString(hash[:4]) + "…"
	app = &App{ID: fields["app"], Plan: fields["plan"], Active: fields["status"] == "active"}
	if app.ID == "" {
		// A record without its app cannot say whom to bill: the key
		// is refused, and the operator told (by hash prefix only).
		s.log.Warn("key store record without app; key refused", "record", record)
		return nil, nil
	}
	// Every value is checked before it is trusted: an app id with a CR
	// or LF would otherwise reach the X-App-Id header (and fail there,
	// as a 502 blamed on the upstream, after the budget was spent).
	// Plan and status are optional but, when present, follow the same
	// rule. (An empty plan is the default tiers; an empty status, like
	// any but active, refuses the key.)
	for _, f := range [...]string{"app", "plan", "status"} {
		if v := fields[f]; v != "" && !config.ValidIdent(v) {
			s.log.Warn("key store record invalid; its keys cannot be checked", "record", record, "field", f, "length", len(v))
			return nil, &RecordError{Record: record, Field: f}
		}
	}
	if st := fields["status"]; st != "active" && st != "revoked" {
		s.log.Warn("key store record with unknown status; key refused", "status", st, "app", app.ID)
	}
	return app, nil
}
