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
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"runtime/debug"
	"time"

	"github.com/innovartx/deskgate/apierror"
	"github.com/innovartx/deskgate/auth"
	"github.com/innovartx/deskgate/config"
	"github.com/innovartx/deskgate/metrics"
	"github.com/innovartx/deskgate/ratelimit"
	"github.com/innovartx/deskgate/tracing"
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
	// Logger receives error lines.
	Logger *slog.Logger
	// AccessLog, when set, receives the access log (see accessWriter):
	// JSON lines, or slog-style text lines with AccessLogText, at
	// LogLevel. Nil: no access log.
	AccessLog     io.Writer
	AccessLogText bool
	LogLevel      slog.Leveler
	// Transport, when set, replaces the upstream transports built from
	// the config. Tests use it to inject transport failures.
	Transport http.RoundTripper
	// UpstreamLimits remembers the upstream's 429s (SPEC §10); pass the
	// same one to every gateway of a process so that a reload keeps
	// them. Nil: the gateway makes its own.
	UpstreamLimits *UpstreamLimits
	// Tracer records and exports spans (SPEC §11); nil is export off,
	// where the client's traceparent still reaches the upstream.
	Tracer *tracing.Tracer
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
	tracer    *tracing.Tracer
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
	// quotaStore counts the quotas (SPEC §9), nil without any.
	quotaStore ratelimit.QuotaStore
	// quotaAllow, when the limiter can, reserves quotas with the rate
	// limit's decision (one Redis round trip for both).
	quotaAllow quotaAllower
	// upstream holds the upstream's 429s, honoured for up to
	// maxUpstreamRetry (rate_limit.max_upstream_retry_after).
	upstream         *UpstreamLimits
	maxUpstreamRetry time.Duration
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

		tracer:       o.Tracer,
		semicolons:   cfg.Server.AllowSemicolonPaths,
		cors:         newCORS(cfg.CORS),
		readTimeout:  cfg.Server.ReadTimeout.D(),
		writeTimeout: cfg.Server.WriteTimeout.D(),

		upstream:         o.UpstreamLimits,
		maxUpstreamRetry: cfg.RateLimit.MaxUpstreamRetryAfter.D(),
	}
	if g.upstream == nil {
		g.upstream = NewUpstreamLimits(0)
	}
	if o.AccessLog != nil {
		level := o.LogLevel
		if level == nil {
			level = slog.LevelInfo
		}
		g.access = &accessWriter{w: o.AccessLog, level: level, text: o.AccessLogText}
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

	if err := g.buildRoutes(cfg, o, codes); err != nil {
		return nil, err
	}
	if err := g.buildQuotas(cfg, o); err != nil {
		return nil, err
	}
	return g, nil
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
// (request id, client address, panic recovery, access log, metrics), runs
// the chain ([Gateway.handle]) and renders the error it returns, if any:
// the one place where a step's refusal becomes an answer.
func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	st := &state{start: time.Now(), route: g.unmatched}
	st.w = responseWriter{ResponseWriter: w, st: st}
	st.useH2Writer(r, g.writeTimeout)
	st.setRequestID(r.Header)
	g.tracer.Begin(&st.trace, r.Context(), r.Header, st.start)
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
	if err := g.handle(st, r); err != nil && err != errAbandoned {
		g.reply(st, r, err)
	}
}

// handle is the chain, in the order of SPEC §1 and §7:
//
//  1. path: control bytes and `;` refused, then cleaned ([checkPath]);
//  2. CORS preflights answered (SPEC §8, [Gateway.preflight]);
//  3. route: the policy of the method and path, or 404/405;
//  4. the route's steps ([route.serve]): CORS headers, auth, body size,
//     rate limit, upstream headers, an upstream connection slot, proxy.
//
// Each step returns nil to go on or the error to answer, which only
// [Gateway.ServeHTTP] renders; errAbandoned means there is nobody to
// answer (the client went away). Errors of the upstream exchange itself
// are ReverseProxy's, answered by [Gateway.proxyError].
func (g *Gateway) handle(st *state, r *http.Request) *apierror.Error {
	// SPEC §7: a control byte, or a `;` that a servlet upstream would
	// cut the path at, means the path the route is judged on may not be
	// the one the upstream serves. Go has already decoded %XX (and
	// refused raw control bytes in the request line).
	if err := checkPath(r.URL.Path, g.semicolons); err != nil {
		return err
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
		return nil
	}
	rt, err := g.route(st, r, host)
	if err != nil {
		return err
	}
	st.route = rt.metrics
	return rt.serve(st, r)
}

// errAbandoned is what a step returns when the client went away: the
// request is logged as 499 and nothing is answered.
var errAbandoned = &apierror.Error{Code: "CLIENT_GONE"}

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
	if st.holds != nil {
		g.settleQuotas(st, r, abort)
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
	if st.trace.Recording() {
		g.endTrace(st, r, status, elapsed)
	} else {
		st.route.Observe(r.Method, status, elapsed.Seconds())
		if st.upstream > 0 && !st.ownReply {
			st.route.Upstream(st.upstream.Seconds())
		}
	}
	level := slog.LevelInfo
	if status >= 500 {
		level = slog.LevelWarn
	}
	if g.access != nil && g.access.enabled(level) {
		g.access.write(st, r.Method, r.URL.Path, status, level, elapsed)
	}
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
