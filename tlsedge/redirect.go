package tlsedge

import (
	"net"
	"net/http"
	"strings"
)

// RedirectHandler is the handler of server.redirect_http, the plain
// listener: every request gets 308 Permanent Redirect to the same path
// and query over https (308, not 301: the method and body are kept), and
// with ACME, the CA's HTTP-01 challenges under
// /.well-known/acme-challenge/ are answered from the shared storage, so
// any replica can answer a challenge another one asked for.
//
// The https URL keeps the request's host. Its port is httpsPort (the
// port of server.listen) when the request named a port, and none when it
// did not: a client that reached the standard port 80 is sent to the
// standard 443, as behind a load balancer or a Kubernetes Service that
// maps 80 and 443 to the pod's ports; one that reached, say, :8080 is
// sent to server.listen's port, as on a developer's machine.
func (e *Edge) RedirectHandler(httpsPort string) http.Handler {
	var h http.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host := r.Host
		if host == "" {
			http.Error(w, "missing Host header", http.StatusBadRequest)
			return
		}
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
			if httpsPort != "" && httpsPort != "443" {
				host = net.JoinHostPort(h, httpsPort)
			} else if strings.Contains(h, ":") {
				host = "[" + h + "]"
			}
		}
		w.Header().Set("Location", "https://"+host+r.URL.RequestURI())
		w.WriteHeader(http.StatusPermanentRedirect)
	})
	if e.acme != nil {
		acme := e.acme.HTTPHandler(h)
		h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			// autocert checks the Host against acme.domains as it is;
			// a CA that reaches a port other than 80 names it there.
			if strings.HasPrefix(r.URL.Path, "/.well-known/acme-challenge/") {
				if h, _, err := net.SplitHostPort(r.Host); err == nil {
					r.Host = h
				}
			}
			acme.ServeHTTP(w, r)
		})
	}
	return h
}
