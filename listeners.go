package main

// The listeners of the running gateway: public (HTTP or HTTPS), admin,
// and the https redirect.

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/innovartx/deskgate/config"
	"github.com/innovartx/deskgate/proxy"
	"github.com/innovartx/deskgate/tlsedge"
)

// listeners are the servers of the running gateway and the sockets they
// serve: redirect and redirectLn are nil without server.redirect_http,
// edge without server.tls.
type listeners struct {
	pub, admin, redirect       *http.Server
	pubLn, adminLn, redirectLn net.Listener
	edge                       *tlsedge.Edge
}

// openListeners opens the listeners of cfg, the admin one serving the
// metrics of reg. If one cannot listen, those already open are closed.
func (p *process) openListeners(cfg *config.Config, reg *prometheus.Registry) (*listeners, error) {
	l := &listeners{pub: p.publicServer(cfg.Server)}
	l.admin = &http.Server{
		Handler:           p.adminHandler(reg),
		ReadHeaderTimeout: 5 * time.Second,
		ErrorLog:          l.pub.ErrorLog,
	}
	var err error
	if l.edge, l.pubLn, err = p.listenPublic(cfg.Server, l.pub); err != nil {
		return nil, err
	}
	if l.adminLn, err = net.Listen("tcp", cfg.Admin.Listen); err != nil {
		l.pubLn.Close()
		return nil, fmt.Errorf("admin.listen: %w", err)
	}
	if addr := cfg.Server.RedirectHTTP; addr != "" {
		if l.redirectLn, err = net.Listen("tcp", addr); err != nil {
			l.pubLn.Close()
			l.adminLn.Close()
			return nil, fmt.Errorf("server.redirect_http: %w", err)
		}
		_, httpsPort, _ := net.SplitHostPort(l.pubLn.Addr().String())
		l.redirect = &http.Server{
			Handler:           l.edge.RedirectHandler(httpsPort),
			ReadHeaderTimeout: cfg.Server.ReadHeaderTimeout.D(),
			IdleTimeout:       cfg.Server.IdleTimeout.D(),
			MaxHeaderBytes:    cfg.Server.MaxHeaderBytes,
			ErrorLog:          l.pub.ErrorLog,
		}
	}
	return l, nil
}

// publicServer is the server of server.listen: every request goes to the
// gateway current when it arrives.
func (p *process) publicServer(cfg config.Server) *http.Server {
	return &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			p.current.Load().ServeHTTP(w, r)
		}),
		ReadHeaderTimeout: cfg.ReadHeaderTimeout.D(),
		IdleTimeout:       cfg.IdleTimeout.D(),
		MaxHeaderBytes:    cfg.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(p.log.Handler(), slog.LevelWarn),
		// No ReadTimeout or WriteTimeout: each is one deadline for a
		// whole request or response, which would cut long downloads and
		// could not change on reload. server.read_timeout is applied by
		// the gateway to the request body, server.write_timeout by
		// proxy.WrapListener to each write.
	}
}

// listenPublic listens on server.listen for pub, through TLS with
// server.tls (edge, else nil), with server.write_timeout on every write.
func (p *process) listenPublic(cfg config.Server, pub *http.Server) (edge *tlsedge.Edge, ln net.Listener, err error) {
	// HTTPS (SPEC §12): the certificate, read now (or obtained by ACME
	// in the background), and the HTTP/2 limits.
	if cfg.TLS.Enabled() {
		if edge, err = tlsedge.New(cfg.TLS, tlsedge.Options{Metrics: p.metrics, Logger: p.log}); err != nil {
			return nil, nil, err
		}
		pub.HTTP2 = tlsedge.HTTP2()
		pub.Protocols = tlsedge.Protocols()
	}
	if ln, err = net.Listen("tcp", cfg.Listen); err != nil {
		return nil, nil, fmt.Errorf("server.listen: %w", err)
	}
	if edge == nil {
		return nil, proxy.WrapListener(ln, p.current.Load), nil
	}
	// Beneath TLS, write_timeout on every write; above it, for HTTP/1.1,
	// net/http's own error answers in the standard shape.
	return edge, edge.Listener(ln, tlsedge.Wrappers{
		TCP:              func(c net.Conn) net.Conn { return proxy.WrapConn(c, p.current.Load) },
		HTTP1:            func(c *tls.Conn) net.Conn { return proxy.WrapTLSConn(c, p.current.Load) },
		HandshakeTimeout: cfg.ReadHeaderTimeout.D(),
	}), nil
}

// serve serves each listener in its own goroutine; the channel it returns
// gets the error of any that stops.
func (l *listeners) serve() <-chan error {
	errc := make(chan error, 3)
	go func() { errc <- l.pub.Serve(l.pubLn) }()
	go func() { errc <- l.admin.Serve(l.adminLn) }()
	if l.redirect != nil {
		go func() { errc <- l.redirect.Serve(l.redirectLn) }()
	}
	return errc
}
