package tlsedge

import (
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"golang.org/x/crypto/acme"
)

// Wrappers are what the request path puts around each connection.
type Wrappers struct {
	// TCP wraps each accepted connection, beneath TLS (package proxy:
	// server.write_timeout on every write, HTTP/1.1 and HTTP/2 alike).
	// nil leaves it bare.
	TCP func(net.Conn) net.Conn
	// HTTP1 wraps the plaintext of a connection that did not negotiate
	// HTTP/2 (package proxy: net/http's own error answers rewritten into
	// the standard shape). The connection it returns must have a
	// ConnectionState method, from which net/http sets Request.TLS. nil
	// hands net/http the *tls.Conn.
	HTTP1 func(*tls.Conn) net.Conn
	// HandshakeTimeout bounds a handshake (server.read_header_timeout);
	// 0 is 10 seconds.
	HandshakeTimeout time.Duration
}

// Listener returns a listener that accepts on ln and hands out each
// connection once its TLS handshake is done: a *tls.Conn when the client
// chose HTTP/2 (net/http dispatches HTTP/2 on that type only), the
// HTTP1-wrapped connection otherwise.
//
// The handshake is done here, not by net/http, because the two sides
// need different connections: net/http writes its own error answers
// (400, 431, 501) to the connection it holds, so under TLS only a
// wrapper of the plaintext can see and reshape them — but a wrapper is
// not a *tls.Conn, and net/http would then never serve HTTP/2 on it.
// Which one a connection needs is known once ALPN is done. Handshakes run
// in their own goroutines, at most HandshakeTimeout each, so a slow
// client never holds up the accept loop.
//
// A failed handshake is counted in deskgate_tls_handshake_errors_total
// and logged at debug level (scanners make many), except a connection
// closed before its first byte (a load balancer's TCP health check).
// Plain HTTP sent to the TLS port gets 400 BAD_REQUEST in the standard
// shape, through TCP's wrapper, instead of net/http's text.
func (e *Edge) Listener(ln net.Listener, w Wrappers) net.Listener {
	if w.HandshakeTimeout <= 0 {
		w.HandshakeTimeout = 10 * time.Second
	}
	l := &listener{
		Listener: ln,
		e:        e,
		w:        w,
		ready:    make(chan net.Conn),
		done:     make(chan struct{}),
		pending:  map[net.Conn]struct{}{},
	}
	go l.acceptLoop()
	return l
}

type listener struct {
	net.Listener
	e     *Edge
	w     Wrappers
	ready chan net.Conn
	done  chan struct{}

	mu      sync.Mutex
	closed  bool
	err     error // why the accept loop stopped
	pending map[net.Conn]struct{}
}

// Accept returns the next connection whose handshake is done.
func (l *listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ready:
		return c, nil
	case <-l.done:
		l.mu.Lock()
		defer l.mu.Unlock()
		return nil, l.err
	}
}

// Close stops accepting and closes the connections still in their
// handshake or not yet taken by Accept.
func (l *listener) Close() error {
	err := l.Listener.Close()
	l.stop(net.ErrClosed)
	return err
}

func (l *listener) stop(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return
	}
	l.closed = true
	l.err = err
	close(l.done)
	for c := range l.pending {
		c.Close()
	}
	clear(l.pending)
}

// track records c as pending, or reports false once the listener is
// closed.
func (l *listener) track(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	l.pending[c] = struct{}{}
	return true
}

func (l *listener) untrack(c net.Conn) {
	l.mu.Lock()
	delete(l.pending, c)
	l.mu.Unlock()
}

func (l *listener) acceptLoop() {
	var backoff time.Duration
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				l.stop(err)
				return
			}
			// Out of file descriptors and the like: wait and retry, as
			// net/http's own loop does.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			l.e.log.Warn("accept failed; retrying", "error", err.Error(), "retry_in", backoff.String())
			select {
			case <-time.After(backoff):
				continue
			case <-l.done:
				return
			}
		}
		backoff = 0
		if !l.track(c) {
			c.Close()
			return
		}
		go l.handshake(c)
	}
}

func (l *listener) handshake(raw net.Conn) {
	c := raw
	if l.w.TCP != nil {
		c = l.w.TCP(raw)
	}
	tc := tls.Server(c, l.e.tls)
	_ = tc.SetDeadline(time.Now().Add(l.w.HandshakeTimeout))
	if err := tc.Handshake(); err != nil {
		l.failed(c, err)
		raw.Close()
		l.untrack(raw)
		return
	}
	_ = tc.SetDeadline(time.Time{})
	var out net.Conn = tc
	switch tc.ConnectionState().NegotiatedProtocol {
	case "h2":
	case acme.ALPNProto:
		// A CA's TLS-ALPN-01 validation: the handshake was all it wanted.
		tc.Close()
		l.untrack(raw)
		return
	default:
		if l.w.HTTP1 != nil {
			out = l.w.HTTP1(tc)
		}
	}
	select {
	case l.ready <- out:
		l.untrack(raw)
	case <-l.done:
		out.Close()
	}
}

// failed counts and logs a failed handshake on c (TCP's wrapper of the
// raw connection), answering plain HTTP with a 400.
func (l *listener) failed(c net.Conn, err error) {
	if errors.Is(err, io.EOF) {
		// Closed before the first byte (crypto/tls says io.EOF only at a
		// record boundary): a TCP health check, not a client.
		return
	}
	l.e.m.TLSHandshakeErrors.Inc()
	reason := err.Error()
	var re tls.RecordHeaderError
	if errors.As(err, &re) && re.Conn != nil && looksLikeHTTP(re.RecordHeader) {
		// Written the way net/http writes its own answers, so that TCP's
		// wrapper (package proxy) rewrites it into the standard shape.
		const msg = "400 Bad Request: client sent an HTTP request to an HTTPS server"
		_, _ = io.WriteString(c, "HTTP/1.1 "+msg+"\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"+msg)
		reason = "client sent an HTTP request to an HTTPS server"
	}
	l.e.log.Debug("TLS handshake failed", slog.String("client_ip", hostOf(c.RemoteAddr())), slog.String("error", reason))
}

// looksLikeHTTP reports whether the first five bytes of a connection are
// the start of an HTTP/1.x request, as net/http checks.
func looksLikeHTTP(hdr [5]byte) bool {
	switch string(hdr[:]) {
	case "GET /", "HEAD ", "POST ", "PUT /", "OPTIO", "DELET", "PATCH", "CONNE", "TRACE":
		return true
	}
	return false
}

func hostOf(a net.Addr) string {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.IP.String()
	}
	if a == nil {
		return ""
	}
	return a.String()
}
