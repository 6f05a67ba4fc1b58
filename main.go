// Command deskgate is the edge API gateway in front of the SupportDesk REST
// API: it checks API keys against route policies, applies the global rate
// limit, proxies to the upstream and answers every error in the standard
// shape. The contract is SPEC.md; the README says how to run it.
//
// Usage:
//
//	deskgate [-config config.yaml] [-check-config] [-version] [-listen addr] [-admin-listen addr]
//	deskgate demo [flags]
//	deskgate hash-key < key
//	deskgate budget [-admin 127.0.0.1:9090] < key
//
// Flags may come before or after the subcommand. `demo` also serves the
// example SupportDesk upstream at upstream.url, in the same process, for
// the quick start. `deskgate -h` prints the whole usage.
package main

import (
	"context"
	"crypto/tls"
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
	"strconv"
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
	"github.com/innovartx/deskgate/tlsedge"
	"github.com/innovartx/deskgate/tracing"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3".
var version = ""

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// buildVersion is the version of the binary: the -ldflags stamp, else the
// module version that `go build` recorded (a tag, or a pseudo-version
// naming the commit, "+dirty" for a modified tree), else "dev" (`go run`,
// -buildvcs=false, no VCS).
func buildVersion() string {
	bi, _ := debug.ReadBuildInfo()
	v, _ := versionOf(version, bi)
	return v
}

// versionOf returns the version of a binary stamped with ldflags (may be
// "") and built as bi (may be nil), and, when `go build` recorded it, the
// VCS revision it was built from: "<revision>" or "<revision>, modified".
func versionOf(ldflags string, bi *debug.BuildInfo) (v, revision string) {
	v = ldflags
	if bi == nil {
		if v == "" {
			v = "dev"
		}
		return v, ""
	}
	if v == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		v = bi.Main.Version
	}
	if v == "" {
		v = "dev"
	}
	var modified bool
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			revision = s.Value
		case "vcs.modified":
			modified = s.Value == "true"
		}
	}
	if revision != "" && modified {
		revision += ", modified"
	}
	return v, revision
}

// versionLine is what -version prints: "deskgate <version> <go version>",
// then "(commit <revision>)" when the build recorded one.
func versionLine() string {
	bi, _ := debug.ReadBuildInfo()
	v, rev := versionOf(version, bi)
	line := fmt.Sprintf("deskgate %s %s", v, runtime.Version())
	if rev != "" {
		line += " (commit " + rev + ")"
	}
	return line
}

const usageText = `Usage:
  deskgate [flags]            run the gateway
  deskgate demo [flags]       also serve the example SupportDesk upstream on
                              the host:port of upstream.url (quick start)
  deskgate hash-key < key     read an API key on stdin, print its SHA-256 hex
                              (never on the command line: shell history and
                              ps would keep it)
  deskgate budget [-admin 127.0.0.1:9090] < key
                              print a key's budgets (admin GET /budget),
                              without spending any; the key on stdin too

Flags go before or after the subcommand (deskgate -config x.yaml demo).
The listen addresses are taken from -listen/-admin-listen, else from
DESKGATE_LISTEN/DESKGATE_ADMIN_LISTEN, else from the config file; they hold
across reloads.

Flags:
`

// hashKeyArgs answers `deskgate hash-key <anything>`. The argument is not
// echoed: it is likely the key.
const hashKeyArgs = `deskgate hash-key: takes no argument and no flag; it reads the key on stdin, so that the key stays out of shell history and ps:
  deskgate hash-key < key.txt
  read -rs KEY && printf '%s\n' "$KEY" | deskgate hash-key
(a key typed on a command line is in your shell history now)
`

// run is main with its exit code returned, so that tests can call it.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "budget" {
		// budget has flags of its own (-admin) and reads no config.
		return budgetCmd(args[1:], os.Stdin, stdout, stderr)
	}
	fs := flag.NewFlagSet("deskgate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "config.yaml", "path of the YAML configuration")
	checkOnly := fs.Bool("check-config", false, "validate the configuration and exit: 0 if valid, 1 with every error on stderr")
	showVersion := fs.Bool("version", false, "print the version and exit")
	listen := fs.String("listen", "", "public listen address, instead of server.listen (env DESKGATE_LISTEN)")
	adminListen := fs.String("admin-listen", "", "admin listen address, instead of admin.listen (env DESKGATE_ADMIN_LISTEN)")
	// -h prints the usage on stdout and exits 0; a bad flag gets its error
	// and a pointer to -h on stderr, exit 2.
	fs.Usage = func() {}
	help := func() int {
		fmt.Fprint(stdout, usageText)
		fs.SetOutput(stdout)
		fs.PrintDefaults()
		return 0
	}
	// Flags, then an optional subcommand, then more flags.
	parse := func(args []string) (int, bool) {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return help(), false
			}
			fmt.Fprintln(stderr, "deskgate -h for help")
			return 2, false
		}
		return 0, true
	}
	if code, ok := parse(args); !ok {
		return code
	}
	cmd := ""
	if fs.NArg() > 0 {
		cmd = fs.Arg(0)
		switch cmd {
		case "demo", "hash-key":
			if code, ok := parse(fs.Args()[1:]); !ok {
				return code
			}
		case "budget":
			return budgetCmd(fs.Args()[1:], os.Stdin, stdout, stderr)
		case "help":
			return help()
		default:
			fmt.Fprintf(stderr, "deskgate: unknown command %q (commands: demo, hash-key, budget; flags go before or after them; deskgate -h for help)\n", cmd)
			return 2
		}
	}
	if cmd == "hash-key" {
		set := 0
		fs.Visit(func(*flag.Flag) { set++ })
		if fs.NArg() > 0 || set > 0 {
			_, _ = io.WriteString(stderr, hashKeyArgs)
			return 2
		}
		return hashKey(os.Stdin, stdout, stderr)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "deskgate: unexpected argument %q (deskgate -h for help)\n", fs.Arg(0))
		return 2
	}
	if *showVersion {
		fmt.Fprintln(stdout, versionLine())
		return 0
	}
	over := listenOverrides{}
	over.server, over.serverFrom = pick(fs, "listen", *listen, "DESKGATE_LISTEN")
	over.admin, over.adminFrom = pick(fs, "admin-listen", *adminListen, "DESKGATE_ADMIN_LISTEN")
	// The file's version is taken before it is read: a change that lands
	// during start-up is then seen by watch_config.
	loaded := stampOf(*configPath)
	cfg, err := config.Load(*configPath)
	if err != nil {
		printConfigError(stderr, *configPath, err)
		return 1
	}
	if err := over.apply(cfg, true); err != nil {
		fmt.Fprintf(stderr, "deskgate: %v\n", err)
		return 2
	}
	if *checkOnly {
		fmt.Fprintf(stdout, "%s: configuration is valid (%d routes)\n", *configPath, len(cfg.Routes))
		return 0
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if cmd == "demo" {
		// `go run` neither forwards a signal sent to it nor, when it
		// dies, stops its child: the demo goes when its parent does.
		var cancel context.CancelCauseFunc
		ctx, cancel = context.WithCancelCause(ctx)
		defer cancel(nil)
		go watchParent(ctx, os.Getppid(), time.Second, cancel)
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	if err := serve(ctx, cfg, *configPath, loaded, cmd == "demo", hup, stdout, over); err != nil {
		fmt.Fprintf(stderr, "deskgate: %v\n", err)
		return 1
	}
	return 0
}

// pick returns the value of a listen override: the flag if set, else the
// environment variable if not empty, else "" (the file's), and where it
// came from.
func pick(fs *flag.FlagSet, name, value, env string) (string, string) {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	if set {
		return value, "-" + name
	}
	if v := os.Getenv(env); v != "" {
		return v, env
	}
	return "", ""
}

// listenOverrides are the listen addresses given by flag or environment.
// They win over the file's at start-up and on every reload, since listen
// addresses never change on reload (SPEC §5): a second local replica
// needs no copied config.
type listenOverrides struct {
	server, serverFrom string // "" keeps server.listen
	admin, adminFrom   string // "" keeps admin.listen
}

// apply sets the overridden addresses in cfg; at start-up it also checks
// them, naming the flag or variable they came from.
func (o listenOverrides) apply(cfg *config.Config, check bool) error {
	if o.server != "" {
		cfg.Server.Listen = o.server
	}
	if o.admin != "" {
		cfg.Admin.Listen = o.admin
	}
	if !check {
		return nil
	}
	for _, a := range []struct{ addr, from string }{{o.server, o.serverFrom}, {o.admin, o.adminFrom}} {
		if a.addr == "" {
			continue
		}
		_, port, err := net.SplitHostPort(a.addr)
		if n, perr := strconv.Atoi(port); err != nil || perr != nil || n < 0 || n > 65535 {
			return fmt.Errorf("%s: want host:port or :port, got %q", a.from, a.addr)
		}
	}
	if (o.server != "" || o.admin != "") && cfg.Server.Listen == cfg.Admin.Listen {
		return fmt.Errorf("the public and admin listen addresses are both %q (%s)", cfg.Server.Listen, strings.TrimPrefix(o.serverFrom+" "+o.adminFrom, " "))
	}
	return nil
}

// errParentExited ends the demo when the process that started it is gone.
var errParentExited = errors.New("parent process exited")

// watchParent calls stop when the process's parent changes from ppid (the
// kernel re-parents an orphan to init or a subreaper), checking every
// interval. Polling getppid works on every Unix, needs no thread-bound
// prctl(PR_SET_PDEATHSIG) and costs one system call a second. A process
// started by init (ppid 1) or from outside its PID namespace (0) has no
// parent to watch.
func watchParent(ctx context.Context, ppid int, every time.Duration, stop context.CancelCauseFunc) {
	if ppid <= 1 {
		return
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if os.Getppid() != ppid {
			stop(errParentExited)
			return
		}
	}
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
	listen       listenOverrides
	// upstream429 remembers the upstream's 429s across reloads.
	upstream429 *proxy.UpstreamLimits
	current     atomic.Pointer[proxy.Gateway]
	cfg         atomic.Pointer[config.Config]
	ready       atomic.Bool
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

		UpstreamLimits: a.upstream429,
		Tracer:         tp.Tracer(cfg.Tracing.SampleRatio),
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
		_ = a.listen.apply(cfg, false)
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
	if !reflect.DeepEqual(cfg.Server.TLS, old.Server.TLS) || cfg.Server.RedirectHTTP != old.Server.RedirectHTTP {
		// The certificate itself reloads on its own (tlsedge).
		a.log.Warn("server.tls and server.redirect_http do not change on reload; restart to apply")
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
// version loaded, until ctx ends. The listen overrides of the command line
// apply to every reloaded config too.
func serve(ctx context.Context, cfg *config.Config, path string, loaded fileStamp, demo bool, hup <-chan os.Signal, stdout io.Writer, listen listenOverrides) error {
	keysLoaded := stampOf(cfg.KeyFilePath)
	a := &app{level: new(slog.LevelVar), listen: listen, upstream429: proxy.NewUpstreamLimits(0)}
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
	// HTTPS (SPEC §12): the certificate, read now (or obtained by ACME
	// in the background), and the HTTP/2 limits.
	var edge *tlsedge.Edge
	if cfg.Server.TLS.Enabled() {
		if edge, err = tlsedge.New(cfg.Server.TLS, tlsedge.Options{Metrics: a.metrics, Logger: a.log}); err != nil {
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
			TCP:              func(c net.Conn) net.Conn { return proxy.WrapConn(c, a.current.Load) },
			HTTP1:            func(c *tls.Conn) net.Conn { return proxy.WrapTLSConn(c, a.current.Load) },
			HandshakeTimeout: cfg.Server.ReadHeaderTimeout.D(),
		})
	} else {
		pubLn = proxy.WrapListener(pubLn, a.current.Load)
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
	a.ready.Store(true)
	a.log.Info("deskgate started",
		"version", buildVersion(),
		"listen", pubLn.Addr().String(),
		"tls", tlsMode(cfg.Server.TLS),
		"redirect_http", cfg.Server.RedirectHTTP,
		"admin", adminLn.Addr().String(),
		"upstream", cfg.Upstream.URL,
		"routes", len(cfg.Routes),
		"rate_limit_store", a.limiter.StoreName(),
		"rate_limit_fallback_active", a.limiter.FallbackActive(),
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
	go watchFile(wctx, func() string { return a.cfg.Load().KeyFilePath }, keysLoaded, time.Second, changed)

	for {
		select {
		case <-hup:
			a.reload(path)
			if edge != nil {
				edge.Reload() // cert-manager renewals: the files, now
			}
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
	a.log.Info("shutting down", "reason", context.Cause(ctx).Error(), "delay", final.ShutdownDelay.D().String(), "timeout", timeout.String())
	sctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	// Keep accepting while load balancers notice /readyz failing.
	time.Sleep(final.ShutdownDelay.D())
	err = pub.Shutdown(sctx)
	// The spans of the requests just finished, and of any retired
	// exporter, within what is left of shutdown_timeout.
	a.traces.shutdown(sctx)
	_ = admin.Shutdown(sctx)
	if redirect != nil {
		_ = redirect.Shutdown(sctx)
	}
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
	mux.HandleFunc("GET /budget", a.serveBudget)
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
	return ratelimit.Describe(cfg)
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
