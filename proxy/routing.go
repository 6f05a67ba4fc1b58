package proxy

import (
	"errors"
	"net/http"
	"path"

	"github.com/innovartx/deskgate/apierror"
)

// route finds the request's route policy. ServeMux answers 404, 405 and
// redirects with text of its own; deskgate answers them in the standard
// shape instead.
func (g *Gateway) route(st *state, r *http.Request, host string) (*route, *apierror.Error) {
	if rt := g.lookup(r, host); rt != nil {
		return rt, nil
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
			return nil, apierror.ErrMethodNotAllowed
		}
	}
	// No route, or a redirect to a path with a trailing slash: a gateway
	// does not redirect on the upstream's behalf.
	return nil, apierror.ErrNotFound
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

func (c *captureWriter) WriteHeader(code int) { c.status = code }

func (c *captureWriter) Write(b []byte) (int, error) { return len(b), nil }
