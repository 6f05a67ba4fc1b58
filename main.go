// Command deskgate is the edge API gateway in front of the SupportDesk REST
// API: it checks API keys against route policies, applies the global rate
// limit, proxies to the upstream and answers every error in the standard
// shape. The contract is SPEC.md; the README says how to run it.
//
// Usage:
//
//	deskgate [-config config.yaml] [-check-config] [-version]
//	deskgate demo [-config config.yaml]
//
// `demo` also serves the example SupportDesk upstream at upstream.url, in
// the same process, for the quick start.
package main

import (
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/url"
	"os"
	"os/signal"
	"reflect"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"

	"github.com/innovartx/deskgate/auth"
	"github.com/innovartx/deskgate/config"
	"github.com/innovartx/deskgate/internal/supportdesk"
	"github.com/innovartx/deskgate/metrics"
	"github.com/innovartx/deskgate/proxy"
	"github.com/innovartx/deskgate/ratelimit"
	"github.com/innovartx/deskgate/tracing"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3".
var version = ""

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func buildVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

// run is main with its exit code returned, so that tests can call it.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "hash-key" {
		return hashKey(os.Stdin, stdout, stderr)
	}
	demo := false
	if len(args) > 0 && args[0] == "demo" {
		demo, args = true, args[1:]
	}
	fs := flag.NewFlagSet("deskgate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "config.yaml", "path of the YAML configuration")
	checkOnly := fs.Bool("check-config", false, "validate the configuration and exit: 0 if valid, 1 with every error on stderr")
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "deskgate: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if *showVersion {
		fmt.Fprintf(stdout, "deskgate %s %s\n", buildVersion(), runtime.Version())
		return 0
	}
	// The file's version is taken before it is read: a change that lands
	// during start-up is then seen by watch_config.
	loaded := stampOf(*configPath)
	cfg, err := config.Load(*configPath)
	if err != nil {
		printConfigError(stderr, *configPath, err)
		return 1
	}
	if *checkOnly {
		fmt.Fprintf(stdout, "%s: configuration is valid (%d routes)\n", *configPath, len(cfg.Routes))
		return 0
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	if err := serve(ctx, cfg, *configPath, loaded, demo, hup, stdout); err != nil {
		fmt.Fprintf(stderr, "deskgate: %v\n", err)
		return 1
	}
	return 0
}

// hashKey reads one API key on stdin and prints its SHA-256 in hex, the
// form keys.yaml and the Redis key store hold (SPEC §3). The key never
// reaches a command line, where shell history and ps would keep it.
func hashKey(stdin io.Reader, stdout, stderr io.Writer) int {
	b, err := io.ReadAll(io.LimitReader(stdin, 4096))
	if err != nil {
		fmt.Fprintf(stderr, "deskgate hash-key: reading stdin: %v\n", err)
		return 1
	}
	key := strings.TrimSpace(string(b))
	k, ok := auth.ParseKey(key)
	if !ok {
		fmt.Fprintf(stderr, "deskgate hash-key: stdin is not an API key of the form (pk|sk)_(live|test)_<24-128 letters or digits>\n")
		return 1
	}
	fmt.Fprintln(stdout, hex.EncodeToString(k.Hash[:]))
	return 0
}

func printConfigError(w io.Writer, path string, err error) {
	var errs config.Errors
	if errors.As(err, &errs) {
		for _, e := range errs {
			fmt.Fprintf(w, "%s: %s\n", path, e)
		}
		return
	}
	fmt.Fprintf(w, "%s: %v\n", path, err)
}

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

// app is the running gateway: what a reload replaces and what it keeps.
type app struct {
	log     *slog.Logger
	out     *bufferedWriter
	level   *slog.LevelVar
	metrics *metrics.Metrics
	limiter *ratelimit.Limiter
	// redis is the client of redis.*, shared by the limiter and the key
	// store; nil without Redis.
	redis        redis.UniversalClient
	redisTimeout time.Duration
	keysMu       sync.Mutex
	keys         *auth.RedisStore
	keysCfg      config.AuthStoreSettings
	current      atomic.Pointer[proxy.Gateway]
	cfg          atomic.Pointer[config.Config]
	ready        atomic.Bool
	// traces are the trace providers (SPEC §11).
	traces traces
}

// keyStore returns the key store of cfg. The Redis store (and its cache)
// outlives reloads that keep its settings, so that a reload does not send
// every key back to Redis.
func (a *app) keyStore(cfg *config.Config) (auth.KeyStore, error) {
	switch cfg.Auth.Store {
	case "file":
		return auth.NewFileStore(cfg.KeyFile), nil
	case "redis":
		if a.redis == nil {
			return nil, errors.New("auth.store: redis needs the Redis of redis.url/redis.addrs, set at start-up")
		}
		a.keysMu.Lock()
		defer a.keysMu.Unlock()
		if a.keys == nil || a.keysCfg != cfg.Auth.StoreSettings() {
			a.keys = auth.NewRedisStore(auth.RedisStoreOptions{
				Client:  a.redis,
				Config:  cfg.Auth,
				Timeout: a.redisTimeout,
				Logger:  a.log,
			})
			a.keysCfg = cfg.Auth.StoreSettings()
		}
		return a.keys, nil
	}
	return nil, nil
}

// build builds the gateway of cfg, with the trace provider it exports to
// (nil: export off), which the caller adopts once the gateway is in use.
func (a *app) build(cfg *config.Config) (*proxy.Gateway, *tracing.Provider, error) {
	store, err := a.keyStore(cfg)
	if err != nil {
		return nil, nil, err
	}
	authn, err := auth.New(cfg.Auth, store)
	if err != nil {
		return nil, nil, err
	}
	tp, err := a.traces.forConfig(cfg.Tracing)
	if err != nil {
		return nil, nil, err
	}
	gw, err := proxy.New(proxy.Options{
		AccessLog:     a.out,
		AccessLogText: cfg.Log.Format == "text",
		LogLevel:      a.level,
		Config:        cfg,
		Auth:          authn,
		Limiter:       a.limiter,
		Metrics:       a.metrics,
		Logger:        a.log,
		Tracer:        tp.Tracer(cfg.Tracing.SampleRatio),
	})
	if err != nil {
		a.traces.discard(tp)
		return nil, nil, err
	}
	return gw, tp, nil
}

// reload loads, validates and builds the config at path, then swaps it in
// atomically. Requests in flight finish on the gateway they started with.
// A bad config is refused and the old one keeps serving (SPEC §5).
func (a *app) reload(path string) {
	cfg, err := config.Load(path)
	var gw *proxy.Gateway
	var tp *tracing.Provider
	if err == nil {
		gw, tp, err = a.build(cfg)
	}
	if err != nil {
		a.metrics.ConfigReloads.WithLabelValues("failure").Inc()
		a.metrics.ConfigLastReloadOK.Set(0)
		var errs config.Errors
		if errors.As(err, &errs) {
			for _, e := range errs {
				a.log.Error("config reload refused", "field", e.Path, "error", e.Msg)
			}
		} else {
			a.log.Error("config reload refused", "error", err.Error())
		}
		return
	}
	old := a.cfg.Load()
	if cfg.Server.Listen != old.Server.Listen || cfg.Admin.Listen != old.Admin.Listen {
		a.log.Warn("listen addresses do not change on reload; restart to apply",
			"server.listen", cfg.Server.Listen, "admin.listen", cfg.Admin.Listen)
	}
	if !reflect.DeepEqual(cfg.Redis, old.Redis) {
		a.log.Warn("redis settings do not change on reload; restart to apply")
	}
	a.level.Set(parseLevel(cfg.Log.Level))
	a.cfg.Store(cfg)
	prev := a.current.Swap(gw)
	prev.Close()
	grace := max(minRetireGrace, longestTimeout(old))
	if a.traces.adopt(tp, cfg.Tracing, grace, cfg.Server.ShutdownTimeout.D()) {
		// The old provider keeps exporting the spans of the requests
		// still in flight on the old gateway.
		a.log.Info("tracing export changed; the previous exporter stops after a grace period",
			"otlp_endpoint", cfg.Tracing.OTLPEndpoint, "service_name", cfg.Tracing.ServiceName, "grace", grace.String())
	}
	a.metrics.ConfigReloads.WithLabelValues("success").Inc()
	a.metrics.ConfigLastReloadOK.Set(1)
	a.log.Info("config reloaded", "routes", len(cfg.Routes))
}

// serve runs the gateway of cfg, loaded from path when the file was at
// version loaded, until ctx ends.
func serve(ctx context.Context, cfg *config.Config, path string, loaded fileStamp, demo bool, hup <-chan os.Signal, stdout io.Writer) error {
	keysLoaded := stampOf(cfg.KeyFilePath)
	a := &app{level: new(slog.LevelVar)}
	a.out = newBufferedWriter(stdout, 64<<10, 100*time.Millisecond)
	defer a.out.Close()
	a.log = newLogger(a.out, cfg.Log, a.level)
	reg := prometheus.NewRegistry()
	a.metrics = metrics.New(reg, buildVersion())
	var err error
	if cfg.Redis.Enabled() {
		ratelimit.SetLogger(a.log)
		if a.redis, err = ratelimit.NewClient(cfg.Redis); err != nil {
			return err
		}
		defer a.redis.Close()
		a.redisTimeout = cfg.Redis.Timeout.D()
	}
	limiter, err := newLimiter(cfg.Redis, a.redis, a.metrics, a.log)
	if err != nil {
		return err
	}
	a.limiter = limiter
	defer limiter.Close()
	tracing.SetLogger(a.log)
	a.traces.opts = tracing.Options{Version: buildVersion(), Dropped: a.metrics.TraceSpansDropped, Logger: a.log}
	gw, tp, err := a.build(cfg)
	if err != nil {
		return err
	}
	a.traces.adopt(tp, cfg.Tracing, 0, 0)
	// Spans still queued if serve returns early (a clean shutdown has
	// flushed them already, within shutdown_timeout).
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), cfg.Server.ShutdownTimeout.D())
		defer cancel()
		a.traces.shutdown(ctx)
	}()
	a.current.Store(gw)
	a.cfg.Store(cfg)

	var upstream *http.Server
	if demo {
		if upstream, err = startDemoUpstream(cfg.Upstream.URL, a.log); err != nil {
			return err
		}
		defer upstream.Close()
	}

	pub := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			a.current.Load().ServeHTTP(w, r)
		}),
		ReadHeaderTimeout: cfg.Server.ReadHeaderTimeout.D(),
		IdleTimeout:       cfg.Server.IdleTimeout.D(),
		MaxHeaderBytes:    cfg.Server.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(a.log.Handler(), slog.LevelWarn),
		// No ReadTimeout or WriteTimeout: each is one deadline for a
		// whole request or response, which would cut long downloads and
		// could not change on reload. server.read_timeout is applied by
		// the gateway to the request body, server.write_timeout by
		// proxy.WrapListener to each write.
	}
	admin := &http.Server{
		Handler:           a.adminHandler(reg),
		ReadHeaderTimeout: 5 * time.Second,
		ErrorLog:          pub.ErrorLog,
	}
	pubLn, err := net.Listen("tcp", cfg.Server.Listen)
	if err != nil {
		return fmt.Errorf("server.listen: %w", err)
	}
	pubLn = proxy.WrapListener(pubLn, a.current.Load)
	adminLn, err := net.Listen("tcp", cfg.Admin.Listen)
	if err != nil {
		pubLn.Close()
		return fmt.Errorf("admin.listen: %w", err)
	}
	errc := make(chan error, 2)
	go func() { errc <- pub.Serve(pubLn) }()
	go func() { errc <- admin.Serve(adminLn) }()
	a.ready.Store(true)
	a.log.Info("deskgate started",
		"version", buildVersion(),
		"listen", pubLn.Addr().String(),
		"admin", adminLn.Addr().String(),
		"upstream", cfg.Upstream.URL,
		"routes", len(cfg.Routes),
		"rate_limit_store", a.limiter.StoreName(),
		"rate_limit_fallback_active", a.limiter.FallbackActive(),
		"redis", redisTopology(cfg.Redis),
		"tracing", tracingTarget(cfg.Tracing))

	changed := make(chan struct{}, 1)
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	// The config file, and auth.file as the current config names it.
	go watchFile(wctx, func() string { return path }, loaded, time.Second, changed)
	go watchFile(wctx, func() string { return a.cfg.Load().KeyFilePath }, keysLoaded, time.Second, changed)

	for {
		select {
		case <-hup:
			a.reload(path)
			continue
		case <-changed:
			if a.cfg.Load().WatchConfig {
				a.log.Info("config file changed; reloading", "path", path)
				a.reload(path)
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
	a.ready.Store(false)
	final := a.cfg.Load().Server
	timeout := final.ShutdownTimeout.D()
	a.log.Info("shutting down", "delay", final.ShutdownDelay.D().String(), "timeout", timeout.String())
	sctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	// Keep accepting while load balancers notice /readyz failing.
	time.Sleep(final.ShutdownDelay.D())
	err = pub.Shutdown(sctx)
	// The spans of the requests just finished, and of any retired
	// exporter, within what is left of shutdown_timeout.
	a.traces.shutdown(sctx)
	_ = admin.Shutdown(sctx)
	a.current.Load().Close()
	if err != nil {
		a.log.Warn("shutdown timed out; remaining connections closed", "error", err.Error())
		_ = pub.Close()
	}
	a.log.Info("stopped")
	return nil
}

func (a *app) adminHandler(reg *prometheus.Registry) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		Registry:          reg,
		EnableOpenMetrics: true,
	}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "ok\n")
	})
	if a.cfg.Load().Admin.Pprof {
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if !a.ready.Load() || a.current.Load() == nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, "not ready\n")
			return
		}
		_, _ = io.WriteString(w, "ready\n")
	})
	return mux
}

// newLimiter builds the rate-limit store of cfg: in process, or Redis with
// the in-process store as fallback. Redis being down at start-up is not
// fatal: the limiter checks it (within 2 s) and applies redis.on_failure
// from the start, with the gauge and the log saying so, until it answers.
func newLimiter(cfg config.Redis, client redis.UniversalClient, m *metrics.Metrics, log *slog.Logger) (*ratelimit.Limiter, error) {
	onFailure, err := ratelimit.ParseOnFailure(cfg.OnFailure)
	if err != nil {
		return nil, err
	}
	o := ratelimit.LimiterOptions{
		Local:     ratelimit.NewMemory(0),
		OnFailure: onFailure,
		Timeout:   cfg.Timeout.D(),
		Metrics:   m,
		Logger:    log,
	}
	if client != nil {
		o.Redis = ratelimit.NewRedis(client)
	}
	l := ratelimit.NewLimiter(o)
	_ = l.Start(context.Background()) // logged by the limiter
	return l, nil
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
	return ratelimit.Describe(cfg)
}

// startDemoUpstream serves the example SupportDesk API on the host and
// port of upstream (quick start only).
func startDemoUpstream(upstream string, log *slog.Logger) (*http.Server, error) {
	u, err := url.Parse(upstream)
	if err != nil || u.Scheme != "http" {
		return nil, fmt.Errorf("demo: upstream.url must be an http:// URL to serve the example upstream on, got %q", upstream)
	}
	ln, err := net.Listen("tcp", u.Host)
	if err != nil {
		return nil, fmt.Errorf("demo: serving the example upstream on %s: %w", u.Host, err)
	}
	srv := &http.Server{Handler: supportdesk.New(), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	log.Info("example SupportDesk upstream started", "listen", ln.Addr().String())
	return srv, nil
}

// fileStamp identifies a version of a file: a Kubernetes ConfigMap update
// swaps a symlink (new inode), an editor renames a new file in place (new
// inode), a plain write changes size or mtime.
type fileStamp struct {
	mod   time.Time
	size  int64
	inode uint64
	err   bool
}

func stampOf(path string) fileStamp {
	fi, err := os.Stat(path) // follows symlinks
	if err != nil {
		return fileStamp{err: true}
	}
	st := fileStamp{mod: fi.ModTime(), size: fi.Size()}
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		st.inode = sys.Ino
	}
	return st
}

// watchFile polls the file path() names every interval and signals
// changed when it differs from the last version seen, starting from
// loaded, the version the running config was read from ("" watches
// nothing). Polling a stat a second costs nothing and, unlike inotify,
// survives symlink swaps and renames without re-arming.
func watchFile(ctx context.Context, path func() string, loaded fileStamp, every time.Duration, changed chan<- struct{}) {
	name := path()
	last := loaded
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if n := path(); n != name {
			name, last = n, stampOf(n) // a reload named another file
			continue
		}
		if name == "" {
			continue
		}
		s := stampOf(name)
		if s == last || s.err {
			continue // a missing file mid-swap is not a change yet
		}
		last = s
		select {
		case changed <- struct{}{}:
		default:
		}
	}
}
