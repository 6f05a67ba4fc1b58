package proxy

import (
	"net/http"
	"time"

	"github.com/rs/cors"

	"github.com/innovartx/deskgate/config"
)

// corsPolicy is the gateway's `cors:` block (SPEC §8). The origin, header
// and method rules, and the headers of both answers, are rs/cors'; what it
// cannot know is per route, and stays here: which route a preflight is
// for (the method it announces may match another route than OPTIONS
// would), whether that route takes part in CORS (public and none routes,
// not `cors: false`, never secret ones), and that a preflight is answered
// by the gateway before any key check.
type corsPolicy struct {
	c *cors.Cors
}

// corsMethods are the methods rs/cors may grant; the route table decides
// which of them a path accepts, before rs/cors is asked.
var corsMethods = []string{
	http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut,
	http.MethodPatch, http.MethodDelete, http.MethodOptions,
}

// corsResponseHeaders are the response headers deskgate owns on a CORS
// route: an upstream's copies are removed, so there is one source of
// truth.
var corsResponseHeaders = [...]string{
	"Access-Control-Allow-Origin", "Access-Control-Allow-Credentials",
	"Access-Control-Allow-Methods", "Access-Control-Allow-Headers",
	"Access-Control-Expose-Headers", "Access-Control-Max-Age",
	"Access-Control-Allow-Private-Network",
}

// varyOrigin is the Vary value of a refused preflight, shared.
var varyOrigin = []string{"Origin"}

// newCORS returns the policy of cc, or nil when no origin is allowed.
func newCORS(cc config.CORS) *corsPolicy {
	if !cc.Enabled() {
		return nil
	}
	maxAge := int(cc.MaxAge.D() / time.Second)
	if maxAge == 0 {
		maxAge = -1 // rs/cors: send "Access-Control-Max-Age: 0"
	}
	return &corsPolicy{c: cors.New(cors.Options{
		AllowedOrigins:       cc.AllowedOrigins,
		AllowedMethods:       corsMethods,
		AllowedHeaders:       cc.AllowedHeaders,
		ExposedHeaders:       cc.ExposedHeaders,
		MaxAge:               maxAge,
		OptionsSuccessStatus: http.StatusNoContent,
	})}
}

// isPreflight reports whether r is a CORS preflight: OPTIONS with Origin
// and Access-Control-Request-Method.
func isPreflight(r *http.Request) bool {
	return r.Method == http.MethodOptions &&
		headerValue(r.Header, "Origin") != "" &&
		headerValue(r.Header, "Access-Control-Request-Method") != ""
}

// preflight answers a CORS preflight itself: no key, no budget, never
// forwarded. It is allowed (204 with Access-Control-Allow-*) when the
// announced method reaches a CORS route and rs/cors accepts the origin,
// method and headers; any other preflight gets 204 with no
// Access-Control-Allow-* header, which the browser reads as a refusal.
func (g *Gateway) preflight(st *state, r *http.Request, host string) {
	probe := *r
	probe.Method = headerValue(r.Header, "Access-Control-Request-Method")
	rt := g.lookup(&probe, host)
	if rt != nil {
		st.route = rt.metrics
	}
	if rt == nil || !rt.cors || len(r.Header["Origin"]) != 1 {
		st.route.Preflight(false)
		st.w.Header()["Vary"] = varyOrigin
		st.w.WriteHeader(http.StatusNoContent)
		return
	}
	g.cors.c.HandlerFunc(&st.w, r)
	_, allowed := st.w.Header()["Access-Control-Allow-Origin"]
	st.route.Preflight(allowed)
}

// corsActual sets the CORS headers of an answer on a CORS route, before
// anything else can answer: deskgate's own errors carry them too.
func (g *Gateway) corsActual(st *state, r *http.Request) {
	if len(r.Header["Origin"]) > 1 {
		// Two origins: allow neither (ACAO takes one).
		st.w.Header()["Vary"] = varyOrigin
		return
	}
	g.cors.c.HandlerFunc(&st.w, r)
}
