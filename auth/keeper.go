package auth

import (
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/innovartx/deskgate/config"
)

// StoreKeeper hands out the key store of each config a process loads, at
// start-up and at every reload, and decides which store a reload keeps.
// The file store is rebuilt from each config's key file. The Redis store,
// and its cache, outlives the reloads that keep its settings
// ([config.Auth.StoreSettings]), so that a reload does not send every key
// back to Redis; a reload that changes them gets a new store with an empty
// cache, and the gateway it replaces keeps the old one for its requests
// in flight. A store replaced this way holds nothing to close: the Redis
// client is shared and belongs to the caller, which closes it at exit.
type StoreKeeper struct {
	client  redis.UniversalClient
	timeout time.Duration
	log     *slog.Logger

	mu       sync.Mutex
	redis    *RedisStore
	settings config.AuthStoreSettings
}

// NewStoreKeeper returns a keeper whose Redis stores use client, the
// Redis of redis.* (nil without Redis), with timeout on each call.
func NewStoreKeeper(client redis.UniversalClient, timeout time.Duration, log *slog.Logger) *StoreKeeper {
	return &StoreKeeper{client: client, timeout: timeout, log: log}
}

// Store returns the key store of a, with kf the key file of `auth.store:
// file`: a new [FileStore], the current [RedisStore] when its settings are
// unchanged, else a new one, which becomes current; nil when a names no
// store.
func (k *StoreKeeper) Store(a config.Auth, kf *config.KeyFile) (KeyStore, error) {
	switch a.Store {
	case config.StoreFile:
		return NewFileStore(kf), nil
	case config.StoreRedis:
		if k.client == nil {
			return nil, errors.New("auth.store: redis needs the Redis of redis.url/redis.addrs, set at start-up")
		}
		k.mu.Lock()
		defer k.mu.Unlock()
		if k.redis == nil || k.settings != a.StoreSettings() {
			k.redis = NewRedisStore(RedisStoreOptions{
				Client:  k.client,
				Config:  a,
				Timeout: k.timeout,
				Logger:  k.log,
			})
			k.settings = a.StoreSettings()
		}
		return k.redis, nil
	}
	return nil, nil
}
