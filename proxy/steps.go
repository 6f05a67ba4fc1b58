package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"strconv"
	"strings"
	"time"

	"github.com/innovartx/deskgate/apierror"
	"github.com/innovartx/deskgate/auth"
)

// serve runs the route's steps in order — CORS headers, auth, body size,
// rate limit, upstream headers, a connection slot — then proxies. It
// returns the error to answer, or nil once the request is forwarded (or
// answered by ReverseProxy's error handler).
func (rt *route) serve(st *state, r *http.Request) *apierror.Error {
	g := rt.g
	if rt.cors {
		g.corsActual(st, r)
	}
	id, err := rt.authenticate(st, r)
	if err != nil {
		return err
	}
	if r.ContentLength > g.maxBody {
		return apierror.ErrPayloadTooLarge
	}
	if rt.limit != nil {
		if err := rt.rateLimit(st, r, id); err != nil {
			return err
		}
	}
	if rt.quotas != nil {
		if err := rt.reserveQuotas(st, r, id); err != nil {
			return err
		}
	}
	rt.upstreamHeaders(st, r, id)
	if err := rt.acquire(st, r); err != nil {
		return err
	}
	defer rt.release()
	if st.hasBody {
		st.forwardBody(r, g.readTimeout)
		r.Body = http.MaxBytesReader(&st.w, r.Body, g.maxBody)
	}
	st.proxyStart = time.Now()
	g.tracer.Upstream(&st.trace, r.Header, r.Method, rt.upHost, rt.upPort, st.proxyStart)
	st.fwd = stateContext{Context: r.Context(), st: st}
	rt.proxy.ServeHTTP(&st.w, r.WithContext(&st.fwd))
	if st.w.status == http.StatusTooManyRequests && rt.limit != nil && !st.ownReply {
		rt.noteUpstream429(st, id)
	}
	return nil
}

// authenticate checks the request's X-API-Key against the route's policy
// (SPEC §3) and records what the log shows of it.
func (rt *route) authenticate(st *state, r *http.Request) (auth.Identity, *apierror.Error) {
	h := r.Header
	st.keyPrefix = auth.DisplayPrefix(headerValue(h, "X-Api-Key"))
	id, err := rt.g.auth.Authenticate(st.trace.Context(r.Context()), h["X-Api-Key"], rt.policy)
	if err != nil {
		return id, err
	}
	st.appID = id.AppID
	return id, nil
}

// upstreamHeaders sets the headers the upstream gets (SPEC §3, §7). The
// client's copies of the identity headers are never trusted. The ones set
// here are set again on the outbound request by restoreOwnHeaders, after
// ReverseProxy has removed what the client's Connection header named.
func (rt *route) upstreamHeaders(st *state, r *http.Request, id auth.Identity) {
	h := r.Header
	delete(h, "X-App-Id")
	delete(h, "X-Api-Key-Type")
	if id.Key.Type != 0 {
		h["X-Api-Key-Type"] = keyTypeHeader[id.Key.Type]
	}
	if !rt.g.fwdKey {
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

// noUserAgent is the User-Agent of an outbound request whose client sent
// none; shared, never modified (ReverseProxy and the transports only read
// it).
var noUserAgent = []string{""}

// noDefaultUserAgent gives an outbound request without a User-Agent an
// empty one, which the transports do not send. ReverseProxy does the same
// after Rewrite, so that Go's default User-Agent does not go upstream in
// the client's name, but with Header.Set: a new slice per request.
func noDefaultUserAgent(out http.Header) {
	if _, ok := out["User-Agent"]; !ok {
		out["User-Agent"] = noUserAgent
	}
}

// isWebSocket reports whether an Upgrade header asks for websocket and
// nothing else.
func isWebSocket(v []string) bool {
	return len(v) == 1 && strings.EqualFold(strings.TrimSpace(v[0]), "websocket")
}

// acquire takes one of the upstream host's slots, waiting up to the
// route's timeout when all are in use: 503 past that (not 504: the
// upstream has not been asked; the log says why).
func (rt *route) acquire(st *state, r *http.Request) *apierror.Error {
	select {
	case rt.slots.c <- struct{}{}:
		return nil
	default:
	}
	t := time.NewTimer(rt.timeout)
	defer t.Stop()
	select {
	case rt.slots.c <- struct{}{}:
		return nil
	case <-r.Context().Done():
		st.canceled = true
		st.cause = context.Cause(r.Context())
		return errAbandoned
	case <-t.C:
		return apierror.New(apierror.ServiceUnavailable, fmt.Errorf(
			"no upstream connection free: upstream.max_conns_per_host (%d) all in use for %s, waited %s",
			cap(rt.slots.c), rt.slots.host, rt.timeout))
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

// rateLimit applies the route's budget (SPEC §4) and sets the RateLimit
// headers; a refusal is 429 with the blocking tier's details.
func (rt *route) rateLimit(st *state, r *http.Request, id auth.Identity) *apierror.Error {
	lp := rt.limit.forPlan(id.Plan)
	k := rt.identityKey(st, id)
	if err, ok := rt.upstreamLimited(st, lp, k); ok {
		return err
	}
	d, err := rt.allow(st, r, id, lp.p, k)
	if err != nil {
		if r.Context().Err() != nil {
			st.canceled = true
			st.cause = err
			return errAbandoned
		}
		err = fmt.Errorf("rate limit: %w", err)
		if rt.limit.shadow {
			st.cause = err
			return rt.shadowed(st, apierror.ServiceUnavailable)
		}
		return apierror.New(apierror.ServiceUnavailable, err)
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
		return nil
	}
	h["Ratelimit"] = lp.tiers[d.Tier].value(d)
	if rt.limit.shadow {
		// The real state (no quota left, t until the blocking tier
		// frees a slot) but no Retry-After: the request is served.
		return rt.shadowed(st, apierror.TooManyRequests)
	}
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
	return &apierror.Error{Code: apierror.TooManyRequests, Details: details}
}

func ceilSeconds(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64((d + time.Second - 1) / time.Second)
}

// retrySeconds is Retry-After: whole seconds, rounded up, at least 1.
func retrySeconds(d time.Duration) int64 { return max(1, ceilSeconds(d)) }

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

// proxyError is ReverseProxy's ErrorHandler: it answers a failed
// upstream exchange with the error [exchangeError] gives, through the same
// [Gateway.reply] as every other refusal.
func (g *Gateway) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	st := stateOf(w)
	if st == nil {
		g.catalog.Write(w, r, apierror.ErrBadGateway)
		return
	}
	if e := g.exchangeError(st, r, err); e != errAbandoned {
		g.reply(st, r, e)
	}
}

// exchangeError maps a failed upstream exchange to its answer (SPEC §1):
// 408 for a request body that stalled past server.read_timeout, 413 for a
// body over the limit, 504 for a timeout, 502 for anything else. A client
// that went away, or an answer already started, gets errAbandoned: nothing
// more can be sent (a client gone is logged as 499).
func (g *Gateway) exchangeError(st *state, r *http.Request, err error) *apierror.Error {
	if st.w.status != 0 {
		// ReverseProxy reports errors before it writes anything; should
		// one come after, a second status line cannot be sent.
		st.cause = err
		return errAbandoned
	}
	if st.bodyStalled(r, err) {
		// The rest of the body will never be read: close the connection
		// after the answer rather than read it as the next request. Over
		// HTTP/2 the stream ends alone; "Connection: close" would make
		// the server send GOAWAY to every other stream's client.
		if r.ProtoMajor < 2 {
			st.w.Header()["Connection"] = connectionClose
		}
		return apierror.New(apierror.RequestTimeout,
			fmt.Errorf("request body not received within server.read_timeout (%s): %w", g.readTimeout, err))
	}
	if r.Context().Err() != nil {
		st.canceled = true
		st.cause = err
		return errAbandoned
	}
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return apierror.New(apierror.PayloadTooLarge, err)
	}
	kind := upstreamErrorKind(err)
	st.upstreamKind = kind
	st.route.UpstreamError(kind)
	if kind == "timeout" {
		return apierror.New(apierror.GatewayTimeout, err)
	}
	return apierror.New(apierror.BadGateway, err)
}
