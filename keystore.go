package main

// The key store of auth.store, kept across reloads.

import (
	"errors"
	"sync"

	"github.com/innovartx/deskgate/auth"
	"github.com/innovartx/deskgate/config"
)

// keyStores is the Redis key store that outlives reloads, and the
// settings it was built with.
type keyStores struct {
	mu       sync.Mutex
	redis    *auth.RedisStore
	settings config.AuthStoreSettings
}

// keyStore returns the key store of cfg. The Redis store (and its cache)
// outlives reloads that keep its settings, so that a reload does not send
// every key back to Redis.
func (p *process) keyStore(cfg *config.Config) (auth.KeyStore, error) {
	switch cfg.Auth.Store {
	case "file":
		return auth.NewFileStore(cfg.KeyFile), nil
	case "redis":
		if p.redis == nil {
			return nil, errors.New("auth.store: redis needs the Redis of redis.url/redis.addrs, set at start-up")
		}
		p.keys.mu.Lock()
		defer p.keys.mu.Unlock()
		if p.keys.redis == nil || p.keys.settings != cfg.Auth.StoreSettings() {
			p.keys.redis = auth.NewRedisStore(auth.RedisStoreOptions{
				Client:  p.redis,
				Config:  cfg.Auth,
				Timeout: p.redisTimeout,
				Logger:  p.log,
			})
			p.keys.settings = cfg.Auth.StoreSettings()
		}
		return p.keys.redis, nil
	}
	return nil, nil
}
