// Package redisclient builds the go-redis client of the redis: config
// block, shared by the rate limiter and the Redis key store: one server
// (url or one address), Sentinel or Cluster through UniversalClient, with
// every call bounded by redis.timeout and never retried. It also names the
// endpoint for logs, without its password.
package redisclient

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/innovartx/deskgate/config"
)

// New returns the go-redis client of cfg: one server (url, or one
// addr), Sentinel (master_name with the sentinels' addrs) or Cluster
// (addrs with cluster: true). Every call honours its context's deadline
// and is never retried: a request waits redis.timeout at most.
func New(cfg config.Redis) (redis.UniversalClient, error) {
	timeout := cfg.Timeout.D()
	o := &redis.UniversalOptions{
		Addrs:                 cfg.Addrs,
		MasterName:            cfg.MasterName,
		IsClusterMode:         cfg.Cluster,
		Username:              cfg.Username,
		Password:              cfg.Password,
		ContextTimeoutEnabled: true,
		MaxRetries:            -1,
		DialerRetries:         1,
		DialTimeout:           max(timeout, time.Second),
		ReadTimeout:           timeout,
		WriteTimeout:          timeout,
		PoolTimeout:           timeout,
	}
	if cfg.URL != "" {
		u, err := redis.ParseURL(cfg.URL)
		if err != nil {
			return nil, fmt.Errorf("redis.url: %w", err)
		}
		o.Addrs = []string{u.Addr}
		o.Username, o.Password, o.DB = u.Username, u.Password, u.DB
		o.TLSConfig = u.TLSConfig
	}
	if cfg.TLS && o.TLSConfig == nil {
		o.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	if len(o.Addrs) == 0 {
		return nil, errors.New("redis: no address")
	}
	return redis.NewUniversalClient(o), nil
}

// SetLogger sends go-redis' own messages (dial failures, pool notices) to
// log at debug level: the limiter already reports store failures once, with
// their effect.
func SetLogger(log *slog.Logger) { redis.SetLogger(slogPrintf{log}) }

type slogPrintf struct{ log *slog.Logger }

func (s slogPrintf) Printf(ctx context.Context, format string, v ...any) {
	if s.log.Enabled(ctx, slog.LevelDebug) {
		s.log.Debug("redis: " + fmt.Sprintf(format, v...))
	}
}

// Describe names the Redis of cfg for the start-up log, without any
// password: "redis://host:port/db" (or rediss://) for a URL, the address
// for one server, "cluster(a, b, c)" for Cluster seeds and
// "sentinel(master at a, b)" for Sentinel.
func Describe(cfg config.Redis) string {
	switch {
	case cfg.URL != "":
		u, err := redis.ParseURL(cfg.URL)
		if err != nil {
			return "invalid url"
		}
		scheme := "redis"
		if u.TLSConfig != nil {
			scheme = "rediss"
		}
		return scheme + "://" + u.Addr + "/" + strconv.Itoa(u.DB)
	case cfg.Cluster:
		return "cluster(" + strings.Join(cfg.Addrs, ", ") + ")"
	case cfg.MasterName != "":
		return "sentinel(" + cfg.MasterName + " at " + strings.Join(cfg.Addrs, ", ") + ")"
	}
	return strings.Join(cfg.Addrs, ", ")
}
