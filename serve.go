package main

// The running gateway: its listeners, its reloads and its shutdown.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"reflect"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/innovartx/deskgate/auth"
	"github.com/innovartx/deskgate/config"
	"github.com/innovartx/deskgate/internal/filestamp"
	"github.com/innovartx/deskgate/metrics"
	"github.com/innovartx/deskgate/proxy"
	"github.com/innovartx/deskgate/ratelimit"
	"github.com/innovartx/deskgate/redisclient"
	"github.com/innovartx/deskgate/tlsedge"
	"github.com/innovartx/deskgate/tracing"
)

func newLogger(w io.Writer, cfg config.Log, level *slog.LevelVar) *slog.Logger {
	level.Set(parseLevel(cfg.Level))
	opts := &slog.HandlerOptions{Level: level}
	if cfg.Format == config.FormatText {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

// parseLevel maps log.level (validated) to slog's level.
func parseLevel(l config.LogLevel) slog.Level {
	switch l {
	case config.LevelDebug:
		return slog.LevelDebug
	case config.LevelWarn:
		return slog.LevelWarn
	case config.LevelError:
		return slog.LevelError
	}
	return slog.LevelInfo
}

// process is the running gateway: what a reload replaces and what it keeps.
type process struct {
	log     *slog.Logger
	out     *bufferedWriter
	level   *slog.LevelVar
	metrics *metrics.Metrics
	limiter *ratelimit.Limiter
	// keys hands out the key store of each config; it shares the Redis
	// client of the limiter.
	keys   *auth.StoreKeeper
	listen listenOverrides
	// upstream429 remembers the upstream's 429s across reloads.
	upstream429 *proxy.UpstreamLimits
	current     atomic.Pointer[proxy.Gateway]
	cfg         atomic.Pointer[config.Config]
	ready       atomic.Bool
	// traces are the trace providers (SPEC §11).
	traces traces
}

// build builds the gateway of cfg, with the trace provider it exports to
// (nil: export off), which the caller adopts once the gateway is in use.
func (p *process) build(cfg *config.Config) (*proxy.Gateway, *tracing.Provider, error) {
	store, err := p.keys.Store(cfg.Auth, cfg.KeyFile)
	if err != nil {
		return nil, nil, err
	}
	authn, err := auth.New(cfg.Auth, store)
	if err != nil {
		return nil, nil, err
	}
	tp, err := p.traces.forConfig(cfg.Tracing)
	if err != nil {
		return nil, nil, err
	}
	gw, err := proxy.New(proxy.Options{
		AccessLog:     p.out,
		AccessLogText: cfg.Log.Format == config.FormatText,
		LogLevel:      p.level,
		Config:        cfg,
		Auth:          authn,
		Limiter:       p.limiter,
		Metrics:       p.metrics,
		Logger:        p.log,

		UpstreamLimits: p.upstream429,
		Tracer:         tp.Tracer(cfg.Tracing.SampleRatio),
	})
	if err != nil {
		p.traces.discard(tp)
		return nil, nil, err
	}
	return gw, tp, nil
}

// reload loads, validates and builds the config at path, then swaps it in
// atomically. Requests in flight finish on the gateway they started with.
// A bad config is refused and the old one keeps serving (SPEC §5).
func (p *process) reload(path string) {
	cfg, err := config.Load(path)
	var gw *proxy.Gateway
	var tp *tracing.Provider
	if err == nil {
		_ = p.listen.apply(cfg, false)
		gw, tp, err = p.build(cfg)
	}
	if err != nil {
		p.metrics.ConfigReloads.WithLabelValues("failure").Inc()
		p.metrics.ConfigLastReloadOK.Set(0)
		var errs config.Errors
		if errors.As(err, &errs) {
			for _, e := range errs {
				p.log.Error("config reload refused", "field", e.Path, "error", e.Msg)
			}
		} else {
			p.log.Error("config reload refused", "error", err.Error())
		}
		return
	}
	old := p.cfg.Load()
	if cfg.Server.Listen != old.Server.Listen || cfg.Admin.Listen != old.Admin.Listen {
		p.log.Warn("listen addresses do not change on reload; restart to apply",
			"server.listen", cfg.Server.Listen, "admin.listen", cfg.Admin.Listen)
	}
	if !reflect.DeepEqual(cfg.Redis, old.Redis) {
		p.log.Warn("redis settings do not change on reload; restart to apply")
	}
	if !reflect.DeepEqual(cfg.Server.TLS, old.Server.TLS) || cfg.Server.RedirectHTTP != old.Server.RedirectHTTP {
		// The certificate itself reloads on its own (tlsedge).
		p.log.Warn("server.tls and server.redirect_http do not change on reload; restart to apply")
	}
	p.level.Set(parseLevel(cfg.Log.Level))
	p.cfg.Store(cfg)
	prev := p.current.Swap(gw)
	prev.Close()
	grace := max(minRetireGrace, longestTimeout(old))
	if p.traces.adopt(tp, cfg.Tracing, grace, cfg.Server.ShutdownTimeout.D()) {
		// The old provider keeps exporting the spans of the requests
		// still in flight on the old gateway.
		p.log.Info("tracing export changed; the previous exporter stops after a grace period",
			"otlp_endpoint", cfg.Tracing.OTLPEndpoint, "service_name", cfg.Tracing.ServiceName, "grace", grace.String())
	}
	p.metrics.ConfigReloads.WithLabelValues("success").Inc()
	p.metrics.ConfigLastReloadOK.Set(1)
	p.log.Info("config reloaded", "routes", len(cfg.Routes))
}

// serve runs the gateway of cfg, loaded from path when the file was at
// version loaded, until ctx ends. The listen overrides of the command line
// apply to every reloaded config too.
//
// Start-up, in order: the buffered log and the metrics; the stores (the
// Redis client, then the key stores and the rate limiter that share it);
// the first gateway and its trace provider; the demo upstream; the
// listeners (public, admin, https redirect), then ready; then the
// watchers. It then serves, reloading on SIGHUP and on file changes,
// until ctx ends (a clean shutdown, return nil) or a listener fails (an
// error, without the shutdown). Shutdown, in order: not ready;
// shutdown_delay; the public listener drains within shutdown_timeout; the
// spans flushed; the admin and redirect listeners; the gateway closed.
// Then, however serve returns, what start-up opened closes in reverse:
// the watchers, the demo upstream, the trace providers (flushed within
// the first config's shutdown_timeout), the limiter, the Redis client,
// and last the log, flushed.
func serve(ctx context.Context, cfg *config.Config, path string, loaded filestamp.Stamp, demo bool, hup <-chan os.Signal, stdout io.Writer, listen listenOverrides) error {
	keysLoaded := filestamp.Of(cfg.KeyFilePath)
	p, reg := newProcess(cfg, stdout, listen)
	defer p.out.Close()
	closeStores, err := p.openStores(cfg.Redis)
	if err != nil {
		return err
	}
	defer closeStores()
	if err := p.startGateway(cfg); err != nil {
		return err
	}
	// Spans still queued if serve returns early (a clean shutdown has
	// flushed them already, within shutdown_timeout).
	defer p.flushTraces(cfg.Server.ShutdownTimeout.D())
	if demo {
		upstream, err := startDemoUpstream(cfg.Upstream.URL, p.log)
		if err != nil {
			return err
		}
		defer upstream.Close()
	}
	l, err := p.openListeners(cfg, reg)
	if err != nil {
		return err
	}
	errc := l.serve()
	p.ready.Store(true)
	p.logStarted(cfg, l)
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	changed := p.watch(wctx, path, loaded, keysLoaded, l.edge)
	if err := p.runUntilDone(ctx, path, hup, changed, errc, l.edge); err != nil {
		return err
	}
	p.shutdown(context.Cause(ctx), l)
	return nil
}

// newProcess starts the process of cfg: its buffered log on stdout, which
// the caller closes last, and its metrics, in the registry it returns.
func newProcess(cfg *config.Config, stdout io.Writer, listen listenOverrides) (*process, *prometheus.Registry) {
	p := &process{level: new(slog.LevelVar), listen: listen, upstream429: proxy.NewUpstreamLimits(0)}
	p.out = newBufferedWriter(stdout, 64<<10, 100*time.Millisecond)
	p.log = newLogger(p.out, cfg.Log, p.level)
	reg := prometheus.NewRegistry()
	p.metrics = metrics.New(reg, buildVersion())
	return p, reg
}

// openStores opens the Redis client of cfg (none without Redis), the
// rate limiter and the key store keeper, which share it. closeStores
// closes the limiter, then the client.
func (p *process) openStores(cfg config.Redis) (closeStores func(), err error) {
	// client is the Redis of redis.*, shared by the limiter and the key
	// store; nil without Redis.
	var client redis.UniversalClient
	if cfg.Enabled() {
		redisclient.SetLogger(p.log)
		if client, err = redisclient.New(cfg); err != nil {
			return nil, err
		}
	}
	closeClient := func() {
		if client != nil {
			client.Close()
		}
	}
	p.keys = auth.NewStoreKeeper(client, cfg.Timeout.D(), p.log)
	p.limiter = newLimiter(cfg, client, p.metrics, p.log)
	return func() {
		p.limiter.Close()
		closeClient()
	}, nil
}

// startGateway builds the gateway of cfg, with its trace provider, and
// puts it in service.
func (p *process) startGateway(cfg *config.Config) error {
	tracing.SetLogger(p.log)
	p.traces.opts = tracing.Options{Version: buildVersion(), Dropped: p.metrics.TraceSpansDropped, Logger: p.log}
	gw, tp, err := p.build(cfg)
	if err != nil {
		return err
	}
	p.traces.adopt(tp, cfg.Tracing, 0, 0)
	p.current.Store(gw)
	p.cfg.Store(cfg)
	return nil
}

// flushTraces stops the trace providers, exporting the spans they still
// hold within timeout.
func (p *process) flushTraces(timeout time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	p.traces.shutdown(ctx)
}

// logStarted is the start-up line: what serves where, with which stores.
func (p *process) logStarted(cfg *config.Config, l *listeners) {
	p.log.Info("deskgate started",
		"version", buildVersion(),
		"listen", l.pubLn.Addr().String(),
		"tls", tlsMode(cfg.Server.TLS),
		"redirect_http", cfg.Server.RedirectHTTP,
		"admin", l.adminLn.Addr().String(),
		"upstream", cfg.Upstream.URL,
		"routes", len(cfg.Routes),
		"rate_limit_store", p.limiter.StoreName(),
		"rate_limit_fallback_active", p.limiter.FallbackActive(),
		"redis", redisTopology(cfg.Redis),
		"key_store", keyStoreName(cfg.Auth),
		"tracing", tracingTarget(cfg.Tracing))
}

// watch starts, until ctx ends, the certificate's own reloads and renewals
// (edge, nil without TLS) and the polling of the config file at path and
// of the key file the current config names, from the versions loaded and
// keysLoaded. The channel it returns signals a file change.
func (p *process) watch(ctx context.Context, path string, loaded, keysLoaded filestamp.Stamp, edge *tlsedge.Edge) <-chan struct{} {
	changed := make(chan struct{}, 1)
	if edge != nil {
		go edge.Run(ctx)
	}
	// The config file, and auth.file as the current config names it.
	go watchFile(ctx, func() string { return path }, loaded, time.Second, changed)
	go watchFile(ctx, func() string { return p.cfg.Load().KeyFilePath }, keysLoaded, time.Second, changed)
	return changed
}

// runUntilDone serves until ctx ends, reloading the config at path on
// SIGHUP (with the certificate files of edge) and, with watch_config, when
// a watched file changed. It returns an error if a listener stops first.
func (p *process) runUntilDone(ctx context.Context, path string, hup <-chan os.Signal, changed <-chan struct{}, errc <-chan error, edge *tlsedge.Edge) error {
	for {
		select {
		case <-hup:
			p.reload(path)
			if edge != nil {
				edge.Reload() // cert-manager renewals: the files, now
			}
		case <-changed:
			if p.cfg.Load().WatchConfig {
				p.log.Info("config file changed; reloading", "path", path)
				p.reload(path)
			}
		case err := <-errc:
			return fmt.Errorf("listener stopped: %w", err)
		case <-ctx.Done():
			return nil
		}
	}
}

// shutdown stops the gateway for reason (SPEC §5): not ready at once,
// stop accepting, let requests in flight finish within shutdown_timeout.
func (p *process) shutdown(reason error, l *listeners) {
	p.ready.Store(false)
	final := p.cfg.Load().Server
	timeout := final.ShutdownTimeout.D()
	p.log.Info("shutting down", "reason", reason.Error(), "delay", final.ShutdownDelay.D().String(), "timeout", timeout.String())
	sctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	// Keep accepting while load balancers notice /readyz failing.
	time.Sleep(final.ShutdownDelay.D())
	err := l.pub.Shutdown(sctx)
	// The spans of the requests just finished, and of any retired
	// exporter, within what is left of shutdown_timeout.
	p.traces.shutdown(sctx)
	_ = l.admin.Shutdown(sctx)
	if l.redirect != nil {
		_ = l.redirect.Shutdown(sctx)
	}
	p.current.Load().Close()
	if err != nil {
		p.log.Warn("shutdown timed out; remaining connections closed", "error", err.Error())
		_ = l.pub.Close()
	}
	p.log.Info("stopped")
}

// newLimiter builds the rate-limit store of cfg: in process, or Redis with
// the in-process store as fallback. Redis being down at start-up is not
// fatal: the limiter checks it (within 2 s) and applies redis.on_failure
// from the start, with the gauge and the log saying so, until it answers.
func newLimiter(cfg config.Redis, client redis.UniversalClient, m *metrics.Metrics, log *slog.Logger) *ratelimit.Limiter {
	o := ratelimit.LimiterOptions{
		Local:     ratelimit.NewMemory(0),
		OnFailure: onFailureOf(cfg.OnFailure),
		Timeout:   cfg.Timeout.D(),
		Metrics:   m,
		Logger:    log,
	}
	if client != nil {
		o.Redis = ratelimit.NewRedis(client)
	}
	l := ratelimit.NewLimiter(o)
	_ = l.Start(context.Background()) // logged by the limiter
	return l
}

// onFailureOf is the limiter's policy for redis.on_failure, which
// validation has checked.
func onFailureOf(f config.OnFailure) ratelimit.OnFailure {
	switch f {
	case config.OnFailureAllow:
		return ratelimit.FailOpen
	case config.OnFailureDeny:
		return ratelimit.FailClosed
	}
	return ratelimit.FailLocal
}

// tlsMode names how server.listen is served, for the start-up log.
func tlsMode(t config.TLS) string {
	switch {
	case t.ACME.Enabled():
		return "acme"
	case t.Enabled():
		return "files"
	}
	return "off"
}

// tracingTarget is what the start-up line says of tracing.
func tracingTarget(cfg config.Tracing) string {
	if !cfg.Enabled() {
		return "off (traceparent passed through)"
	}
	return cfg.OTLPEndpoint
}

func redisTopology(cfg config.Redis) string {
	if !cfg.Enabled() {
		return "none"
	}
	return redisclient.Describe(cfg)
}

// keyStoreName names auth.store for the start-up log: "none", "file
// (path)" or "redis (prefix)".
func keyStoreName(a config.Auth) string {
	switch a.Store {
	case config.StoreFile:
		return "file (" + a.File + ")"
	case config.StoreRedis:
		return "redis (" + a.RedisPrefix + ")"
	}
	return string(a.Store)
}
