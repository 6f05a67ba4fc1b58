package auth

import (
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/innovartx/deskgate/config"
)

// TestStoreKeeper: a reload that keeps the Redis settings keeps the store
// (and its cache); one that changes them gets a new store, which the next
// reload keeps; the file store is rebuilt every time.
func TestStoreKeeper(t *testing.T) {
	// No call reaches Redis: only the stores' identities are compared.
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	t.Cleanup(func() { c.Close() })
	k := NewStoreKeeper(c, 0, nil)

	a := redisAuthConfig()
	first, err := k.Store(a, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := first.(*RedisStore); !ok {
		t.Fatalf("store = %T, want *RedisStore", first)
	}
	a.ForwardKey = !a.ForwardKey // not a store setting
	if again, _ := k.Store(a, nil); again != first {
		t.Error("a reload with the same store settings replaced the Redis store")
	}
	a.CacheTTL = config.Duration(2 * a.CacheTTL.D())
	changed, _ := k.Store(a, nil)
	if changed == first {
		t.Error("a reload with another cache_ttl kept the Redis store")
	}
	if again, _ := k.Store(a, nil); again != changed {
		t.Error("the store of the new settings was not kept")
	}

	f := redisAuthConfig()
	f.Store = "file"
	f1, _ := k.Store(f, nil)
	f2, _ := k.Store(f, nil)
	if _, ok := f1.(*FileStore); !ok || f1 == f2 {
		t.Errorf("file stores %p and %p (%T): want a new *FileStore each time", f1, f2, f1)
	}
	f.Store = "none"
	if s, err := k.Store(f, nil); s != nil || err != nil {
		t.Errorf("auth.store none: %v, %v; want nil, nil", s, err)
	}
}

// TestStoreKeeperNoRedis: auth.store: redis without a Redis client is an
// error, not a store that fails every lookup.
func TestStoreKeeperNoRedis(t *testing.T) {
	k := NewStoreKeeper(nil, time.Second, nil)
	if s, err := k.Store(redisAuthConfig(), nil); err == nil || s != nil {
		t.Fatalf("Store = %v, %v; want an error", s, err)
	}
}
