package tlsedge

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestRedirectLocation guards server.redirect_http's Location (SPEC §12):
// the same host, path and query over https; the port of server.listen
// when the request named a port, none (443) when it reached the standard
// port; 308 whatever the method.
func TestRedirectLocation(t *testing.T) {
	e := &Edge{}
	for _, tc := range []struct{ method, host, target, httpsPort, want string }{
		{"GET", "api.example.com", "/api/v1/tickets?status=open", "8443", "https://api.example.com/api/v1/tickets?status=open"},
		{"POST", "api.example.com:8080", "/api/v1/tickets", "8443", "https://api.example.com:8443/api/v1/tickets"},
		{"GET", "api.example.com:80", "/", "443", "https://api.example.com/"},
		{"DELETE", "[::1]:8080", "/a%2Fb?x=1", "8443", "https://[::1]:8443/a%2Fb?x=1"},
		{"GET", "[::1]:80", "/", "443", "https://[::1]/"},
		{"GET", "[::1]", "/", "8443", "https://[::1]/"},
	} {
		req := httptest.NewRequest(tc.method, "http://x"+tc.target, strings.NewReader(""))
		req.Host = tc.host
		rec := httptest.NewRecorder()
		e.RedirectHandler(tc.httpsPort).ServeHTTP(rec, req)
		if rec.Code != http.StatusPermanentRedirect || rec.Header().Get("Location") != tc.want {
			t.Errorf("%s %s%s: %d %q, want 308 %q", tc.method, tc.host, tc.target, rec.Code, rec.Header().Get("Location"), tc.want)
		}
	}
}
