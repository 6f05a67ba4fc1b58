package main

// The running gateway: its listeners, its reloads and its shutdown.

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
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
	if cfg.Format == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

func parseLevel(s string) slog.Level {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return slog.LevelInfo
	}
	return l
}

// process is the running gateway: what a reload replaces and what it keeps.
type process struct {
	log     *slog.Logger
	out     *bufferedWriter
	level   *slog.LevelVar
	metrics *metrics.Metrics
	limiter *ratelimit.Limiter
	// redis is the client of redis.*, shared by the limiter and the key
	// store; nil without Redis.
	redis        redis.UniversalClient
	redisTimeout time.Duration
	keys         keyStores
	listen       listenOverrides
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
	store, err := p.keyStore(cfg)
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
		AccessLogText: cfg.Log.Format == "text",
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
func serve(ctx context.Context, cfg *config.Config, path string, loaded filestamp.Stamp, demo bool, hup <-chan os.Signal, stdout io.Writer, listen listenOverrides) error {
	keysLoaded := filestamp.Of(cfg.KeyFilePath)
	p := &process{level: new(slog.LevelVar), listen: listen, upstream429: proxy.NewUpstreamLimits(0)}
	p.out = newBufferedWriter(stdout, 64<<10, 100*time.Millisecond)
	defer p.out.Close()
	p.log = newLogger(p.out, cfg.Log, p.level)
	reg := prometheus.NewRegistry()
	p.metrics = metrics.New(reg, buildVersion())
	var err error
	if cfg.Redis.Enabled() {
		redisclient.SetLogger(p.log)
		if p.redis, err = redisclient.New(cfg.Redis); err != nil {
			return err
		}
		defer p.redis.Close()
		p.redisTimeout = cfg.Redis.Timeout.D()
	}
	limiter := newLimiter(cfg.Redis, p.redis, p.metrics, p.log)
	p.limiter = limiter
	defer limiter.Close()
	tracing.SetLogger(p.log)
	p.traces.opts = tracing.Options{Version: buildVersion(), Dropped: p.metrics.TraceSpansDropped, Logger: p.log}
	gw, tp, err := p.build(cfg)
	if err != nil {
		return err
	}
	p.traces.adopt(tp, cfg.Tracing, 0, 0)
	// Spans still queued if serve returns early (a clean shutdown has
	// flushed them already, within shutdown_timeout).
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), cfg.Server.ShutdownTimeout.D())
		defer cancel()
		p.traces.shutdown(ctx)
	}()
	p.current.Store(gw)
	p.cfg.Store(cfg)

	var upstream *http.Server
	if demo {
		if upstream, err = startDemoUpstream(cfg.Upstream.URL, p.log); err != nil {
			return err
		}
		defer upstream.Close()
	}

	pub := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			p.current.Load().ServeHTTP(w, r)
		}),
		ReadHeaderTimeout: cfg.Server.ReadHeaderTimeout.D(),
		IdleTimeout:       cfg.Server.IdleTimeout.D(),
		MaxHeaderBytes:    cfg.Server.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(p.log.Handler(), slog.LevelWarn),
		// No ReadTimeout or WriteTimeout: each is one deadline for a
		// whole request or response, which would cut long downloads and
		// could not change on reload. server.read_timeout is applied by
		// the gateway to the request body, server.write_timeout by
		// proxy.WrapListener to each write.
	}
	admin := &http.Server{
		Handler:           p.adminHandler(reg),
		ReadHeaderTimeout: 5 * time.Second,
		ErrorLog:          pub.ErrorLog,
	}
	// HTTPS (SPEC §12): the certificate, read now (or obtained by ACME
	// in the background), and the HTTP/2 limits.
	var edge *tlsedge.Edge
	if cfg.Server.TLS.Enabled() {
		if edge, err = tlsedge.New(cfg.Server.TLS, tlsedge.Options{Metrics: p.metrics, Logger: p.log}); err != nil {
			return err
		}
		pub.HTTP2 = tlsedge.HTTP2()
		pub.Protocols = tlsedge.Protocols()
	}
	pubLn, err := net.Listen("tcp", cfg.Server.Listen)
	if err != nil {
		return fmt.Errorf("server.listen: %w", err)
	}
	if edge != nil {
		// Beneath TLS, write_timeout on every write; above it, for
		// HTTP/1.1, net/http's own error answers in the standard shape.
		pubLn = edge.Listener(pubLn, tlsedge.Wrappers{
			TCP:              func(c net.Conn) net.Conn { return proxy.WrapConn(c, p.current.Load) },
			HTTP1:            func(c *tls.Conn) net.Conn { return proxy.WrapTLSConn(c, p.current.Load) },
			HandshakeTimeout: cfg.Server.ReadHeaderTimeout.D(),
		})
	} else {
		pubLn = proxy.WrapListener(pubLn, p.current.Load)
	}
	adminLn, err := net.Listen("tcp", cfg.Admin.Listen)
	if err != nil {
		pubLn.Close()
		return fmt.Errorf("admin.listen: %w", err)
	}
	var redirect *http.Server
	var redirectLn net.Listener
	if addr := cfg.Server.RedirectHTTP; addr != "" {
		if redirectLn, err = net.Listen("tcp", addr); err != nil {
			pubLn.Close()
			adminLn.Close()
			return fmt.Errorf("server.redirect_http: %w", err)
		}
		_, httpsPort, _ := net.SplitHostPort(pubLn.Addr().String())
		redirect = &http.Server{
			Handler:           edge.RedirectHandler(httpsPort),
			ReadHeaderTimeout: cfg.Server.ReadHeaderTimeout.D(),
			IdleTimeout:       cfg.Server.IdleTimeout.D(),
			MaxHeaderBytes:    cfg.Server.MaxHeaderBytes,
			ErrorLog:          pub.ErrorLog,
		}
	}
	errc := make(chan error, 3)
	go func() { errc <- pub.Serve(pubLn) }()
	go func() { errc <- admin.Serve(adminLn) }()
	if redirect != nil {
		go func() { errc <- redirect.Serve(redirectLn) }()
	}
	p.ready.Store(true)
	p.log.Info("deskgate started",
		"version", buildVersion(),
		"listen", pubLn.Addr().String(),
		"tls", tlsMode(cfg.Server.TLS),
		"redirect_http", cfg.Server.RedirectHTTP,
		"admin", adminLn.Addr().String(),
		"upstream", cfg.Upstream.URL,
		"routes", len(cfg.Routes),
		"rate_limit_store", p.limiter.StoreName(),
		"rate_limit_fallback_active", p.limiter.FallbackActive(),
		"redis", redisTopology(cfg.Redis),
		"key_store", keyStoreName(cfg.Auth),
		"tracing", tracingTarget(cfg.Tracing))

	changed := make(chan struct{}, 1)
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	if edge != nil {
		go edge.Run(wctx)
	}
	// The config file, and auth.file as the current config names it.
	go watchFile(wctx, func() string { return path }, loaded, time.Second, changed)
	go watchFile(wctx, func() string { return p.cfg.Load().KeyFilePath }, keysLoaded, time.Second, changed)

	for {
		select {
		case <-hup:
			p.reload(path)
			if edge != nil {
				edge.Reload() // cert-manager renewals: the files, now
			}
			continue
		case <-changed:
			if p.cfg.Load().WatchConfig {
				p.log.Info("config file changed; reloading", "path", path)
				p.reload(path)
			}
			continue
		case err := <-errc:
			return fmt.Errorf("listener stopped: %w", err)
		case <-ctx.Done():
		}
		break
	}

	// Shutdown (SPEC §5): not ready at once, stop accepting, let requests
	// in flight finish within shutdown_timeout.
	p.ready.Store(false)
	final := p.cfg.Load().Server
	timeout := final.ShutdownTimeout.D()
	p.log.Info("shutting down", "reason", context.Cause(ctx).Error(), "delay", final.ShutdownDelay.D().String(), "timeout", timeout.String())
	sctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	// Keep accepting while load balancers notice /readyz failing.
	time.Sleep(final.ShutdownDelay.D())
	err = pub.Shutdown(sctx)
	// The spans of the requests just finished, and of any retired
	// exporter, within what is left of shutdown_timeout.
	p.traces.shutdown(sctx)
	_ = admin.Shutdown(sctx)
	if redirect != nil {
		_ = redirect.Shutdown(sctx)
	}
	p.current.Load().Close()
	if err != nil {
		p.log.Warn("shutdown timed out; remaining connections closed", "error", err.Error())
		_ = pub.Close()
	}
	p.log.Info("stopped")
	return nil
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
	case "file":
		return "file (" + a.File + ")"
	case "redis":
		return "redis (" + a.RedisPrefix + ")"
	}
	return a.Store
}
