// Package proxy is deskgate's request path: the handler chain that routes a
// request to its policy, checks its key, applies its rate limit and
// proxies it with httputil.ReverseProxy, normalising upstream errors on the
// way back (SPEC §1–§4, §6).
//
// A [Gateway] is built from one config and never changes; a reload builds
// a new one and swaps it in. Everything a request needs — routes, policies,
// reverse proxies, header values, metric children — is built by [New].
package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"path"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/innovartx/deskgate/apierror"
	"github.com/innovartx/deskgate/auth"
	"github.com/innovartx/deskgate/config"
	"github.com/innovartx/deskgate/metrics"
	"github.com/innovartx/deskgate/ratelimit"
)

// Authenticator checks a request's X-API-Key values against a route
// policy. The error is nil or one to answer as is.
type Authenticator interface {
	Authenticate(ctx context.Context, values []string, p auth.Policy) (auth.Identity, *apierror.Error)
}

// Limiter decides one request of identity k against policy p. An error
// means no decision could be made and the request is refused with 503.
type Limiter interface {
	Allow(ctx context.Context, p *ratelimit.Policy, k ratelimit.Key) (ratelimit.Decision, error)
}

// Options are what [New] wires together.
type Options struct {
	Config  *config.Config
	Auth    Authenticator
	Limiter Limiter
	Metrics *metrics.Metrics
	// Logger receives error lines, and the access log unless AccessLog
	// is set.
	Logger *slog.Logger
	// AccessLog, when set, receives the access log as JSON lines written
	// without slog (see accessWriter), at LogLevel.
	AccessLog io.Writer
	LogLevel  slog.Leveler
	// Transport, when set, replaces the upstream transports built from
	// the config. Tests use it to inject transport failures.
	Transport http.RoundTripper
}

// Gateway is the public handler for one config.
type Gateway struct {
	mux     *http.ServeMux
	catalog *apierror.Catalog
	auth    Authenticator
	limiter Limiter
	log     *slog.Logger
	trusted []netip.Prefix
	maxBody int64
	fwdKey  bool
	// semicolons is server.allow_semicolon_paths (SPEC §7).
	semicolons bool
	// cors is the cors: block, nil when no origin is allowed (SPEC §8).
	cors      *corsPolicy
	access    *accessWriter
	unmatched *metrics.Route
	transport []*http.Transport
	routes    []*route
	cache     routeCache
	// hostPatterns is set when a pattern names a host, which then takes
	// part in route lookups.
	hostPatterns bool
	// readTimeout is server.read_timeout, applied per request;
	// writeTimeout is server.write_timeout, applied by the listener.
	readTimeout  time.Duration
	writeTimeout time.Duration
}

// route is one compiled route policy.
type route struct {
	g       *Gateway
	pattern string
	policy  auth.Policy
	// limit is nil on `rate_limit: false` routes.
	limit   *bucket
	keyByIP bool
	keyBy   string
	// websocket is routes[].websocket: Upgrade: websocket goes through.
	websocket bool
	// cors is set when the route takes part in the gateway's CORS policy.
	cors    bool
	proxy   *httputil.ReverseProxy
	metrics *metrics.Route
	// slots are the upstream host's (upstream.max_conns_per_host), and
	// timeout the route's upstream timeout, the longest a request waits
	// for one.
	slots   *hostSlots
	timeout time.Duration
}

// hostSlots caps the exchanges in flight to one upstream host
// (upstream.max_conns_per_host): one token in c per exchange. With
// HTTP/1.1 upstreams an exchange holds one connection, so this caps the
// connections in use too. Routes to the same host share it.
//
// It is not http.Transport.MaxConnsPerHost: a request past that cap waits
// in the transport until its context is done, and the inbound context
// has no deadline; giving every outbound request one (context.WithTimeout
// and Request.WithContext) costs several allocations per request, against
// issue 7's rule. A buffered channel costs nothing until it is full; only
// a request that has to wait makes a timer.
type hostSlots struct {
	c    chan struct{}
	host string
}

// slotKey names an upstream host: scheme, host and port, the port made
// explicit so that http://x and http://x:80 share their slots.
func slotKey(u *url.URL) string {
	port := u.Port()
	if port == "" {
		port = "80"
		if u.Scheme == "https" {
			port = "443"
		}
	}
	return u.Scheme + "://" + net.JoinHostPort(strings.ToLower(u.Hostname()), port)
}

// bucket is one budget: its default policy and, for the global bucket,
// one per plan.
type bucket struct {
	def   *limitPolicy
	plans map[string]*limitPolicy
}

func (b *bucket) forPlan(plan string) *limitPolicy {
	if plan != "" {
		if p, ok := b.plans[plan]; ok {
			return p
		}
	}
	return b.def
}

// limitPolicy is a policy with its RateLimit-Policy header value and
// the RateLimit values of its tiers.
type limitPolicy struct {
	p      *ratelimit.Policy
	header []string
	tiers  []*headerCache
}

// New builds the gateway for o.Config, which must be valid.
func New(o Options) (*Gateway, error) {
	cfg := o.Config
	catalog, err := apierror.NewCatalog(cfg.Messages)
	if err != nil {
		return nil, fmt.Errorf("messages: %w", err)
	}
	g := &Gateway{
		mux:     http.NewServeMux(),
		catalog: catalog,
		auth:    o.Auth,
		limiter: o.Limiter,
		log:     o.Logger,
		maxBody: cfg.Server.MaxBodyBytes,
		fwdKey:  cfg.Auth.ForwardKey,

		semicolons:   cfg.Server.AllowSemicolonPaths,
		cors:         newCORS(cfg.CORS),
		readTimeout:  cfg.Server.ReadTimeout.D(),
		writeTimeout: cfg.Server.WriteTimeout.D(),
	}
	if o.AccessLog != nil {
		level := o.LogLevel
		if level == nil {
			level = slog.LevelInfo
		}
		g.access = &accessWriter{w: o.AccessLog, level: level}
	}
	codes := make([]string, 0, 16)
	for _, c := range apierror.Own {
		codes = append(codes, string(c))
	}
	g.unmatched = o.Metrics.ForRoute(metrics.Unmatched, codes)
	for _, s := range cfg.Server.TrustedProxies {
		p, err := config.ParsePrefix(s)
		if err != nil {
			return nil, err
		}
		g.trusted = append(g.trusted, p)
	}

	global, err := newBucket("global", cfg.RateLimit.Algorithm, cfg.RateLimit.Tiers)
	if err != nil {
		return nil, err
	}
	for name, plan := range cfg.RateLimit.Plans {
		lp, err := newLimitPolicy("plan:"+name, cfg.RateLimit.Algorithm, plan.Tiers)
		if err != nil {
			return nil, err
		}
		if global.plans == nil {
			global.plans = map[string]*limitPolicy{}
		}
		global.plans[name] = lp
	}
	buckets := map[string]*bucket{}

	transports := map[time.Duration]http.RoundTripper{}
	slots := map[string]*hostSlots{}
	for i, rc := range cfg.Routes {
		rt := &route{g: g, pattern: rc.Pattern, keyBy: cfg.RateLimit.KeyBy, websocket: rc.WebSocket}
		if rt.policy, err = auth.ParsePolicy(rc.Auth); err != nil {
			return nil, fmt.Errorf("routes[%d].auth: %w", i, err)
		}
		rt.keyByIP = rt.policy == auth.None || cfg.RateLimit.KeyBy == "ip"
		rt.cors = g.cors != nil && rt.policy != auth.SecretOnly && (rc.CORS == nil || *rc.CORS)
		switch {
		case rc.RateLimit.Disabled:
		case rc.RateLimit.Bucket == "":
			rt.limit = global
		default:
			b := buckets[rc.RateLimit.Bucket]
			if b == nil {
				alg := rc.RateLimit.Algorithm
				if alg == "" {
					alg = cfg.RateLimit.Algorithm
				}
				tiers := rc.RateLimit.Tiers
				if len(tiers) == 0 {
					tiers = cfg.RateLimit.Tiers
				}
				if b, err = newBucket("bucket:"+rc.RateLimit.Bucket, alg, tiers); err != nil {
					return nil, fmt.Errorf("routes[%d].rate_limit: %w", i, err)
				}
				buckets[rc.RateLimit.Bucket] = b
			}
			rt.limit = b
		}

		target := cfg.Upstream.URL
		if rc.Upstream != "" {
			target = rc.Upstream
		}
		u, err := config.ParseUpstream(target)
		if err != nil {
			return nil, fmt.Errorf("routes[%d].upstream: %w", i, err)
		}
		timeout := cfg.Upstream.Timeout.D()
		if rc.Timeout > 0 {
			timeout = rc.Timeout.D()
		}
		tr := o.Transport
		if tr == nil {
			if tr = transports[timeout]; tr == nil {
				t := newTransport(cfg.Upstream, timeout)
				g.transport = append(g.transport, t)
				transports[timeout] = t
				tr = t
			}
		}
		rt.timeout = timeout
		key := slotKey(u)
		if rt.slots = slots[key]; rt.slots == nil {
			rt.slots = &hostSlots{c: make(chan struct{}, cfg.Upstream.MaxConnsPerHost), host: u.Host}
			slots[key] = rt.slots
		}
		rt.metrics = o.Metrics.ForRoute(rc.Pattern, codes)
		rt.proxy = g.newReverseProxy(rt, u, tr, cfg.Upstream.MaxErrorBodyBytes)
		if err := config.Register(g.mux, rc.Pattern, rt); err != nil {
			return nil, fmt.Errorf("routes[%d].pattern: %w", i, err)
		}
		g.routes = append(g.routes, rt)
		if p := rc.Pattern; !strings.HasPrefix(p[strings.IndexByte(p, ' ')+1:], "/") {
			g.hostPatterns = true
		}
	}
	return g, nil
}

func newBucket(id, alg string, tiers []config.Tier) (*bucket, error) {
	lp, err := newLimitPolicy(id, alg, tiers)
	if err != nil {
		return nil, err
	}
	return &bucket{def: lp}, nil
}

func newLimitPolicy(id, alg string, tiers []config.Tier) (*limitPolicy, error) {
	a, err := ratelimit.ParseAlgorithm(alg)
	if err != nil {
		return nil, err
	}
	ts := make([]ratelimit.Tier, len(tiers))
	items := make([]string, len(tiers))
	for i, t := range tiers {
		ts[i] = ratelimit.Tier{Limit: int64(t.Limit), Window: t.Window.D, Name: t.Window.Text}
		items[i] = strconv.Quote(t.Window.Text) + ";q=" + strconv.Itoa(t.Limit) + ";w=" + strconv.FormatInt(int64(t.Window.D/time.Second), 10)
	}
	p, err := ratelimit.NewPolicy(id, a, ts)
	if err != nil {
		return nil, err
	}
	lp := &limitPolicy{p: p, header: []string{strings.Join(items, ", ")}}
	for _, t := range p.Tiers {
		lp.tiers = append(lp.tiers, newHeaderCache(t))
	}
	return lp, nil
}

// Close releases the idle upstream connections of this gateway's
// transports. Call it once a reload has swapped the gateway out; requests
// still in flight finish normally.
func (g *Gateway) Close() {
	for _, t := range g.transport {
		t.CloseIdleConnections()
	}
}

// ServeHTTP is the outermost step of the chain: it observes the request
// (request id, client address, panic recovery, access log, metrics), then
// routes it. The order of the inner steps is route, auth, body size, rate
// limit, proxy (SPEC §1).
func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	st := &state{start: time.Now(), route: g.unmatched}
	st.w = responseWriter{ResponseWriter: w, st: st}
	st.useH2Writer(r, g.writeTimeout)
	st.setRequestID(r.Header)
	st.peer, st.clientIP, st.trusted = clientAddr(r, g.trusted)
	w.Header()["X-Request-Id"] = st.idHdr[:]
	st.hasBody = r.Body != nil && r.Body != http.NoBody
	if len(r.TransferEncoding) > 0 {
		// Go has already let Transfer-Encoding override any
		// Content-Length and removed it, but keeps the connection open;
		// RFC 9112 §6.1 says a server must close it after such a
		// request, or bytes a front proxy counted as this body may be
		// read as a smuggled next request. Chunked requests are rare in
		// APIs: close after every one, whatever the answer.
		w.Header()["Connection"] = connectionClose
	}

	defer g.finish(st, r)
	g.route(st, r)
}

// connectionClose is the Connection header value of an answer after
// which the connection must not be reused; shared, never modified.
var connectionClose = []string{"close"}

// finish recovers a panic into 500 INTERNAL_ERROR, then writes the access
// log line and the request metrics.
func (g *Gateway) finish(st *state, r *http.Request) {
	abort := false
	if v := recover(); v != nil {
		if v == http.ErrAbortHandler {
			// ReverseProxy aborts a response whose body it could not
			// finish copying; the client sees a cut connection.
			abort = true
			if st.w.status == 0 {
				st.w.status = http.StatusBadGateway
			}
		} else {
			g.log.LogAttrs(r.Context(), slog.LevelError, "panic serving request",
				slog.String("request_id", st.requestID),
				slog.Any("panic", v),
				slog.String("stack", string(debug.Stack())))
			if st.w.status == 0 {
				g.reply(st, r, apierror.ErrInternal)
			} else {
				abort = true
			}
		}
	}
	if st.hasBody {
		st.endBody(g.readTimeout)
	}
	g.accessLog(st, r)
	st.endH2()
	if abort {
		panic(http.ErrAbortHandler)
	}
}

func (g *Gateway) accessLog(st *state, r *http.Request) {
	status := st.w.status
	if st.canceled {
		status = 499 // client closed the request: not a 5xx of ours
	}
	elapsed := time.Since(st.start)
	st.route.Observe(r.Method, status, elapsed.Seconds())
	if st.upstream > 0 && !st.ownReply {
		st.route.Upstream(st.upstream.Seconds())
	}
	level := slog.LevelInfo
	if status >= 500 {
		level = slog.LevelWarn
	}
	if g.access != nil {
		if g.access.enabled(level) {
			g.access.write(st, r.Method, r.URL.Path, status, level, elapsed)
		}
		return
	}
	ctx := r.Context()
	if !g.log.Enabled(ctx, level) {
		return
	}
	attrs := make([]slog.Attr, 0, 16)
	attrs = append(attrs,
		slog.String("request_id", st.requestID),
		slog.String("method", r.Method),
		slog.String("route", st.route.Name()),
		slog.String("path", r.URL.Path),
		slog.Int("status", status),
	)
	if st.code != "" {
		attrs = append(attrs, slog.String("code", string(st.code)))
	}
	attrs = append(attrs,
		slog.Float64("duration_ms", float64(elapsed.Microseconds())/1000),
	)
	if st.upstream > 0 {
		attrs = append(attrs, slog.Float64("upstream_ms", float64(st.upstream.Microseconds())/1000))
	}
	if st.appID != "" {
		attrs = append(attrs, slog.String("app_id", st.appID))
	}
	if st.keyPrefix != "" {
		attrs = append(attrs, slog.String("key_prefix", st.keyPrefix))
	}
	if st.clientIP.IsValid() {
		attrs = append(attrs, slog.String("client_ip", st.clientIP.String()))
	}
	attrs = append(attrs, slog.Int64("bytes_out", st.w.written))
	if st.cause != nil {
		attrs = append(attrs, slog.String("error", st.cause.Error()))
	}
	g.log.LogAttrs(ctx, level, "request", attrs...)
}

// reply answers e in the standard shape and counts it as a rejection.
func (g *Gateway) reply(st *state, r *http.Request, e *apierror.Error) {
	st.code = e.Code
	st.ownReply = true
	if e.Cause != nil {
		st.cause = e.Cause
	}
	st.route.Reject(string(e.Code))
	g.catalog.Write(&st.w, r, e)
}

// route finds the request's route policy. ServeMux answers 404, 405 and
// redirects with text of its own; deskgate answers them in the standard
// shape instead.
func (g *Gateway) route(st *state, r *http.Request) {
	// SPEC §7: a control byte, or a `;` that a servlet upstream would
	// cut the path at, means the path the route is judged on may not be
	// the one the upstream serves. Go has already decoded %XX (and
	// refused raw control bytes in the request line).
	if err := checkPath(r.URL.Path, g.semicolons); err != nil {
		g.reply(st, r, err)
		return
	}
	// Judge and forward one and the same path: the decoded, cleaned one.
	// An escaped slash or backslash (%2F, %5C) is decoded too, as
	// Envoy's UNESCAPE_AND_FORWARD does: ServeMux would keep "a%2Fb" as
	// one segment while many upstreams split it, and the policy must be
	// judged on the segments the upstream will see.
	if p := cleanPath(r.URL.Path); p != r.URL.Path || hasEscapedSlash(r.URL.RawPath) {
		r.URL.Path, r.URL.RawPath = p, ""
	}
	host := ""
	if g.hostPatterns {
		host = hostOf(r)
	}
	if g.cors != nil && isPreflight(r) {
		g.preflight(st, r, host)
		return
	}
	if rt := g.lookup(r, host); rt != nil {
		st.route = rt.metrics
		rt.serve(st, r)
		return
	}
	h, pattern := g.mux.Handler(r)
	if pattern == "" {
		// No route: ask the mux's own handler whether it is 404 or 405,
		// and which methods the path allows.
		var c captureWriter
		h.ServeHTTP(&c, r)
		if c.status == http.StatusMethodNotAllowed {
			if allow := c.header.Get("Allow"); allow != "" {
				st.w.Header().Set("Allow", allow)
			}
			g.reply(st, r, apierror.ErrMethodNotAllowed)
			return
		}
	}
	// No route, or a redirect to a path with a trailing slash: a gateway
	// does not redirect on the upstream's behalf.
	g.reply(st, r, apierror.ErrNotFound)
}

// lookup returns the route of r's method, host and cleaned path, or nil.
func (g *Gateway) lookup(r *http.Request, host string) *route {
	if r.Method == http.MethodConnect {
		// CONNECT's path is an authority: never cached.
		h, _ := g.mux.Handler(r)
		rt, _ := h.(*route)
		return rt
	}
	if rt := g.cache.get(r.Method, host, r.URL.Path); rt != nil {
		return rt
	}
	h, _ := g.mux.Handler(r)
	rt, ok := h.(*route)
	if ok {
		g.cache.put(r.Method, host, r.URL.Path, rt)
	}
	return rt
}

// The causes of a refused path, for the log.
var (
	errPathControl   = apierror.New(apierror.BadRequest, errors.New("control byte in path"))
	errPathSemicolon = apierror.New(apierror.BadRequest, errors.New("';' in path (server.allow_semicolon_paths is false)"))
)

// checkPath refuses a decoded path holding a control byte (0x00–0x1F,
// 0x7F) or, unless semicolons is set, a `;`.
func checkPath(p string, semicolons bool) *apierror.Error {
	for i := 0; i < len(p); i++ {
		switch c := p[i]; {
		case c < 0x20 || c == 0x7f:
			return errPathControl
		case c == ';' && !semicolons:
			return errPathSemicolon
		}
	}
	return nil
}

// hasEscapedSlash reports whether an escaped path holds %2F or %5C.
func hasEscapedSlash(raw string) bool {
	for i := 0; i+2 < len(raw); i++ {
		if raw[i] == '%' && (raw[i+1] == '2' && (raw[i+2] == 'F' || raw[i+2] == 'f') || raw[i+1] == '5' && (raw[i+2] == 'C' || raw[i+2] == 'c')) {
			return true
		}
	}
	return false
}

// cleanPath is path.Clean that keeps a trailing slash, as ServeMux does.
func cleanPath(p string) string {
	if p == "" {
		return "/"
	}
	if p[0] != '/' {
		p = "/" + p
	}
	np := path.Clean(p)
	if p[len(p)-1] == '/' && np != "/" {
		np += "/"
	}
	return np
}

// captureWriter records what ServeMux's fallback handlers would answer.
type captureWriter struct {
	header http.Header
	status int
}

func (c *captureWriter) Header() http.Header {
	if c.header == nil {
		c.header = http.Header{}
	}
	return c.header
}
func (c *captureWriter) WriteHeader(code int)        { c.status = code }
func (c *captureWriter) Write(b []byte) (int, error) { return len(b), nil }

// ServeHTTP lets a route stand in ServeMux; the gateway calls serve.
func (rt *route) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if st := stateOf(w); st != nil {
		rt.serve(st, r)
		return
	}
	rt.g.ServeHTTP(w, r)
}

// serve runs auth, the body-size check and the rate limit, then proxies.
func (rt *route) serve(st *state, r *http.Request) {
	g := rt.g
	h := r.Header
	if rt.cors {
		g.corsActual(st, r)
	}
	st.keyPrefix = auth.DisplayPrefix(headerValue(h, "X-Api-Key"))
	id, aerr := g.auth.Authenticate(r.Context(), h["X-Api-Key"], rt.policy)
	if aerr != nil {
		g.reply(st, r, aerr)
		return
	}
	st.appID = id.AppID

	if r.ContentLength > g.maxBody {
		g.reply(st, r, apierror.ErrPayloadTooLarge)
		return
	}

	if rt.limit != nil && !rt.rateLimit(st, r, id) {
		return
	}

	// Headers for the upstream (SPEC §3). The client's copies of the
	// identity headers are never trusted. The ones set here are set
	// again on the outbound request by restoreOwnHeaders, after
	// ReverseProxy has removed what the client's Connection header named.
	delete(h, "X-App-Id")
	delete(h, "X-Api-Key-Type")
	if id.Key.Type != 0 {
		h["X-Api-Key-Type"] = keyTypeHeader[id.Key.Type]
	}
	if !g.fwdKey {
		// Whatever the route's auth: the key never leaves (SPEC §3).
		delete(h, "X-Api-Key")
	}
	if id.AppID != "" {
		st.appHdr[0] = id.AppID
		h["X-App-Id"] = st.appHdr[:]
	}
	h["X-Request-Id"] = st.idHdr[:]
	if !st.trusted {
		// Forwarding headers from an untrusted peer are lies until
		// proven otherwise; Rewrite sets ours. So are the other
		// client-address headers, and the headers some frameworks
		// honour to act on another method or path than the one the
		// route was judged on.
		for _, k := range untrustedHeaders {
			delete(h, k)
		}
	}
	if _, ok := h["Upgrade"]; ok && !(rt.websocket && isWebSocket(h["Upgrade"])) {
		// Only a websocket upgrade on a route that opted in becomes a
		// tunnel; any other (h2c, a websocket on another route) goes
		// up as a plain request, as nginx does without an explicit
		// Upgrade header in its config. After a 101, ReverseProxy
		// relays bytes blindly: no auth, limit or log per request.
		delete(h, "Upgrade")
	}
	if !rt.acquire(st, r) {
		return
	}
	defer rt.release()
	if st.hasBody {
		st.forwardBody(r, g.readTimeout)
		r.Body = http.MaxBytesReader(&st.w, r.Body, g.maxBody)
	}
	st.proxyStart = time.Now()
	rt.proxy.ServeHTTP(&st.w, r)
}

// untrustedHeaders are removed from the requests of a peer that is not a
// trusted proxy (SPEC §7): forwarding and client-address headers, which
// it could use to pose as another client, and method and URL overrides,
// which an upstream framework would honour after the route was judged.
var untrustedHeaders = [...]string{
	"X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "Forwarded",
	"X-Real-Ip", "True-Client-Ip", "X-Client-Ip",
	"X-Http-Method-Override", "X-Http-Method", "X-Method-Override",
	"X-Original-Url", "X-Rewrite-Url",
}

// ownHeaders are the headers deskgate sets (or lets through) for the
// upstream that a client must not remove by naming them in Connection.
// X-Forwarded-* are set in Rewrite, after that removal.
var ownHeaders = [...]string{
	"X-App-Id", "X-Api-Key-Type", "X-Request-Id", "X-Api-Key",
	"Traceparent", "Tracestate",
}

// restoreOwnHeaders sets on the outbound request the headers of
// ownHeaders that the inbound one carries. ReverseProxy removes every
// header the client's Connection names before Rewrite runs, so the
// client could otherwise make X-Api-Key-Type or X-Request-Id vanish.
func restoreOwnHeaders(in, out http.Header) {
	for _, k := range ownHeaders {
		if v, ok := in[k]; ok {
			out[k] = v
		}
	}
}

// isWebSocket reports whether an Upgrade header asks for websocket and
// nothing else.
func isWebSocket(v []string) bool {
	return len(v) == 1 && strings.EqualFold(strings.TrimSpace(v[0]), "websocket")
}

// acquire takes one of the upstream host's slots, waiting up to the
// route's timeout when all are in use. It reports whether the request
// may go on; if not, it has answered 503 (or the client went away).
func (rt *route) acquire(st *state, r *http.Request) bool {
	select {
	case rt.slots.c <- struct{}{}:
		return true
	default:
	}
	t := time.NewTimer(rt.timeout)
	defer t.Stop()
	select {
	case rt.slots.c <- struct{}{}:
		return true
	case <-r.Context().Done():
		st.canceled = true
		st.cause = context.Cause(r.Context())
		return false
	case <-t.C:
		// Not 504: the upstream has not been asked. The log says why.
		rt.g.reply(st, r, apierror.New(apierror.ServiceUnavailable, fmt.Errorf(
			"no upstream connection free: upstream.max_conns_per_host (%d) all in use for %s, waited %s",
			cap(rt.slots.c), rt.slots.host, rt.timeout)))
		return false
	}
}

// release gives back the slot taken by acquire, once the exchange is over
// (ReverseProxy has closed the upstream body, or aborted).
func (rt *route) release() { <-rt.slots.c }

// keyTypeHeader holds the X-Api-Key-Type values, shared: ReverseProxy
// copies request headers, never changes them in place.
var keyTypeHeader = [...][]string{auth.Public: {"public"}, auth.Secret: {"secret"}}

func headerValue(h http.Header, key string) string {
	if v := h[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// rateLimit applies the route's budget and sets the RateLimit headers. It
// reports whether the request may go on; if not, it has answered.
func (rt *route) rateLimit(st *state, r *http.Request, id auth.Identity) bool {
	g := rt.g
	lp := rt.limit.forPlan(id.Plan)
	var k ratelimit.Key
	switch {
	case rt.keyByIP:
		k = ratelimit.KeyFromAddr(st.clientIP)
	case id.AppID != "" && rt.keyBy == "app":
		k = ratelimit.KeyFromApp(id.AppID)
	default:
		k = ratelimit.KeyFromHash(id.Key.Hash)
	}
	d, err := g.limiter.Allow(r.Context(), lp.p, k)
	if err != nil {
		if r.Context().Err() != nil {
			st.canceled = true
			st.cause = err
			return false
		}
		g.reply(st, r, apierror.New(apierror.ServiceUnavailable, fmt.Errorf("rate limit: %w", err)))
		return false
	}
	h := st.w.Header()
	h["Ratelimit-Policy"] = lp.header
	tier := lp.p.Tiers[d.Tier]
	if d.Allowed {
		// A negative Remaining means no store could count (on_failure:
		// allow): there is no quota to report.
		if d.Remaining >= 0 {
			h["Ratelimit"] = lp.tiers[d.Tier].value(d)
		}
		return true
	}
	h["Ratelimit"] = lp.tiers[d.Tier].value(d)
	secs := retrySeconds(d.Reset)
	h["Retry-After"] = []string{strconv.FormatInt(secs, 10)}
	details := make([]byte, 0, 80)
	details = append(details, `{"limit":`...)
	details = strconv.AppendInt(details, tier.Limit, 10)
	details = append(details, `,"window_seconds":`...)
	details = strconv.AppendInt(details, int64(tier.Window/time.Second), 10)
	details = append(details, `,"retry_after_seconds":`...)
	details = strconv.AppendInt(details, secs, 10)
	details = append(details, '}')
	g.reply(st, r, &apierror.Error{Code: apierror.TooManyRequests, Details: details})
	return false
}

func ceilSeconds(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64((d + time.Second - 1) / time.Second)
}

// retrySeconds is Retry-After: whole seconds, rounded up, at least 1.
func retrySeconds(d time.Duration) int64 { return max(1, ceilSeconds(d)) }

// newTransport returns a transport sized for a gateway: a deep keep-alive
// pool per upstream host instead of the default two idle connections, and
// the route's timeout on the response headers.
func newTransport(u config.Upstream, headerTimeout time.Duration) *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns = 0 // no global cap; the per-host one applies
	t.MaxIdleConnsPerHost = u.MaxIdleConnsPerHost
	t.IdleConnTimeout = 90 * time.Second
	t.ResponseHeaderTimeout = headerTimeout
	// Pass the client's Accept-Encoding through and never decode on its
	// behalf: responses stream as the upstream sent them.
	t.DisableCompression = true
	return t
}

func (g *Gateway) newReverseProxy(rt *route, target *url.URL, tr http.RoundTripper, maxErrBody int64) *httputil.ReverseProxy {
	n := &normalizer{g: g, rt: rt, max: maxErrBody}
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			restoreOwnHeaders(pr.In.Header, pr.Out.Header)
			setXForwarded(pr)
		},
		Transport:      tr,
		BufferPool:     bufferPool,
		ModifyResponse: n.modify,
		ErrorHandler:   g.proxyError,
		ErrorLog:       slog.NewLogLogger(g.log.Handler(), slog.LevelWarn),
	}
}

// setXForwarded sets X-Forwarded-For, -Host and -Proto on the outbound
// request as ProxyRequest.SetXForwarded does, with one allocation for the
// three values instead of one each. Rewrite has emptied them; what a
// trusted proxy sent is still on the inbound request (clientAddr's rule:
// an untrusted peer's X-Forwarded-* were removed), and is kept: the peer
// is appended to its X-Forwarded-For, its host and scheme are kept.
func setXForwarded(pr *httputil.ProxyRequest) {
	in, out := pr.In, pr.Out.Header
	v := make([]string, 3)
	if h := in.Header["X-Forwarded-Host"]; len(h) > 0 {
		out["X-Forwarded-Host"] = h
	} else {
		v[1] = in.Host
		out["X-Forwarded-Host"] = v[1:2:2]
	}
	if p := in.Header["X-Forwarded-Proto"]; len(p) > 0 {
		out["X-Forwarded-Proto"] = p
	} else {
		v[2] = "http"
		if in.TLS != nil {
			v[2] = "https"
		}
		out["X-Forwarded-Proto"] = v[2:3:3]
	}
	ip, _, err := net.SplitHostPort(in.RemoteAddr)
	if err != nil {
		delete(out, "X-Forwarded-For")
		return
	}
	if prior := in.Header["X-Forwarded-For"]; len(prior) > 0 {
		ip = strings.Join(prior, ", ") + ", " + ip
	}
	v[0] = ip
	out["X-Forwarded-For"] = v[0:1:1]
}

// proxyError answers a failed upstream exchange (SPEC §1): 408 for a
// request body that stalled past server.read_timeout, 413 for a body over
// the limit, 504 for a timeout, 502 for anything else. A client that went
// away gets nothing and is logged as 499.
func (g *Gateway) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	st := stateOf(w)
	if st == nil {
		g.catalog.Write(w, r, apierror.ErrBadGateway)
		return
	}
	if st.w.status != 0 {
		// ReverseProxy reports errors before it writes anything; should
		// one come after, a second status line cannot be sent.
		st.cause = err
		return
	}
	if st.bodyStalled(r, err) {
		// The rest of the body will never be read: close the connection
		// after the answer rather than read it as the next request. Over
		// HTTP/2 the stream ends alone; "Connection: close" would make
		// the server send GOAWAY to every other stream's client.
		if r.ProtoMajor < 2 {
			st.w.Header()["Connection"] = connectionClose
		}
		g.reply(st, r, apierror.New(apierror.RequestTimeout,
			fmt.Errorf("request body not received within server.read_timeout (%s): %w", g.readTimeout, err)))
		return
	}
	if r.Context().Err() != nil {
		st.canceled = true
		st.cause = err
		return
	}
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		g.reply(st, r, apierror.New(apierror.PayloadTooLarge, err))
		return
	}
	kind := upstreamErrorKind(err)
	st.route.UpstreamError(kind)
	if kind == "timeout" {
		g.reply(st, r, apierror.New(apierror.GatewayTimeout, err))
		return
	}
	g.reply(st, r, apierror.New(apierror.BadGateway, err))
}
