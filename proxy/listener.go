package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/innovartx/deskgate/apierror"
	"github.com/innovartx/deskgate/metrics"
)

// WrapListener applies server.write_timeout to every write on the
// accepted connections (see [shapingConn.pushWriteDeadline]), and makes
// the errors that net/http's server answers by itself,
// before any handler runs — 400 for a malformed request (duplicate
// Content-Length, a NUL in a header, a bad request line), 431 for headers
// over server.max_header_bytes, 501 for an unknown transfer coding —
// leave in the standard shape like every other error (SPEC §1), and logs
// and counts them. current returns the gateway whose messages apply.
//
// net/http writes those answers straight to the connection in one write,
// with a fixed head that no handler's response can produce (its header
// order is not sorted, and it has neither Date nor Content-Length); the
// connection is closed right after. Only such a write is rewritten.
func WrapListener(ln net.Listener, current func() *Gateway) net.Listener {
	return &shapingListener{Listener: ln, current: current}
}

// WrapConn applies server.write_timeout to the writes of c, one
// connection, as [WrapListener] does to each connection it accepts. Under
// TLS it wraps the TCP connection, beneath the TLS layer, for HTTP/1.1
// and HTTP/2 alike; the rewriting of net/http's own error answers never
// matches there (TLS records do not start with "HTTP/1.1"): that is
// [WrapTLSConn]'s job, on the plaintext side.
func WrapConn(c net.Conn, current func() *Gateway) net.Conn {
	return &shapingConn{Conn: c, current: current}
}

// WrapTLSConn is the plaintext side of an HTTPS connection that will
// speak HTTP/1.1, its handshake done: net/http's own error answers (400,
// 431, 501) are written there, so they are rewritten into the standard
// shape, logged and counted as [WrapListener] does for plain HTTP. It
// reports c's TLS state through ConnectionState, from which net/http sets
// Request.TLS (and so X-Forwarded-Proto: https), as it does for a
// *tls.Conn. write_timeout is not pushed here but by [WrapConn] beneath c.
//
// HTTP/2 connections are handed to net/http as the *tls.Conn itself (it
// dispatches HTTP/2 on that type only); the HTTP/2 server answers in
// frames, not with such raw writes.
func WrapTLSConn(c *tls.Conn, current func() *Gateway) net.Conn {
	return &tlsShapingConn{shapingConn: shapingConn{Conn: c, current: current}, tc: c}
}

// tlsShapingConn is the [WrapTLSConn] connection.
type tlsShapingConn struct {
	shapingConn
	tc *tls.Conn
}

// ConnectionState is the TLS state net/http reads for Request.TLS.
func (c *tlsShapingConn) ConnectionState() tls.ConnectionState { return c.tc.ConnectionState() }

func (c *tlsShapingConn) Write(b []byte) (int, error) { return c.shape(b) }

type shapingListener struct {
	net.Listener
	current func() *Gateway
}

func (l *shapingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &shapingConn{Conn: c, current: l.current}, nil
}

type shapingConn struct {
	net.Conn
	current func() *Gateway
	// pushed is when the write deadline was last pushed back, as the
	// (monotonic) time since connEpoch; 0 when it must be set before the
	// next write. slack is write_timeout/16 as of that push.
	pushed atomic.Int64
	slack  atomic.Int64
}

// connEpoch is the origin of shapingConn.pushed.
var connEpoch = time.Now()

// pushWriteDeadline implements server.write_timeout: before each write
// to the client, the connection's write deadline is pushed back to
// write_timeout from now, so a write fails only when the client has
// taken nothing for that long. A client that never reads its answer
// fills the socket buffers, the write blocks, fails at the deadline, and
// the connection is closed (ReverseProxy aborts the handler, which frees
// the goroutine and the upstream connection); a long download read
// slowly but steadily is never cut, as net/http's Server.WriteTimeout
// (one deadline for the whole response) would cut it.
//
// It is done here, on the connection, rather than per request through
// http.ResponseController in the response writer: every byte net/http
// writes passes here — the response, its final flush after the handler
// has returned, "100 Continue", the answers net/http gives by itself
// between two requests — so a deadline set for one request can never be
// found stale by the next write, and it costs nothing per request: the
// deadline moves at most once every write_timeout/16 per connection (a
// write gets between 15/16 of write_timeout and all of it). The value is
// the current gateway's, so a reload applies to open connections too.
func (c *shapingConn) pushWriteDeadline() {
	now := time.Since(connEpoch)
	if p := c.pushed.Load(); p != 0 && int64(now)-p < c.slack.Load() {
		return
	}
	wt := c.current().writeTimeout
	if c.Conn.SetWriteDeadline(connEpoch.Add(now+wt)) == nil {
		c.slack.Store(int64(wt / 16))
		c.pushed.Store(max(int64(now), 1))
	}
}

// SetDeadline and SetWriteDeadline are net/http's (a hijack clears the
// deadlines): the next write sets write_timeout again.
func (c *shapingConn) SetDeadline(t time.Time) error {
	c.pushed.Store(0)
	return c.Conn.SetDeadline(t)
}

func (c *shapingConn) SetWriteDeadline(t time.Time) error {
	c.pushed.Store(0)
	return c.Conn.SetWriteDeadline(t)
}

// serverErrorHead is what net/http puts between the status line and the
// body of its own error answers (server.go, "errorHeaders").
var serverErrorHead = []byte("\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n")

func (c *shapingConn) Write(b []byte) (int, error) {
	c.pushWriteDeadline()
	return c.shape(b)
}

// shape writes b, or the standard-shape answer of it when b is one of
// net/http's own error answers.
func (c *shapingConn) shape(b []byte) (int, error) {
	if len(b) < 12 || b[0] != 'H' || !bytes.HasPrefix(b, []byte("HTTP/1.1 ")) {
		return c.Conn.Write(b)
	}
	i := bytes.Index(b, serverErrorHead)
	if i < 0 || bytes.Contains(b[:i], []byte("\r\n")) {
		return c.Conn.Write(b)
	}
	status, err := strconv.Atoi(string(b[9:12]))
	if err != nil || status < 400 {
		return c.Conn.Write(b)
	}
	g := c.current()
	code := apierror.BadRequest
	if status == http.StatusRequestHeaderFieldsTooLarge {
		code = apierror.HeadersTooLarge
	}
	e := &apierror.Error{Code: code, Status: status}
	body := g.catalog.Body(e)
	out := make([]byte, 0, 160+len(body))
	out = append(out, "HTTP/1.1 "...)
	out = strconv.AppendInt(out, int64(status), 10)
	out = append(out, ' ')
	out = append(out, http.StatusText(status)...)
	out = append(out, "\r\nConnection: close\r\nContent-Length: "...)
	out = strconv.AppendInt(out, int64(len(body)), 10)
	out = append(out, "\r\nContent-Type: "...)
	out = append(out, apierror.ContentType...)
	out = append(out, "\r\n\r\n"...)
	out = append(out, body...)

	g.unmatched.Reject(string(code))
	g.unmatched.Observe(metrics.MethodOther, status, 0)
	// What net/http said after the status line names the fault without
	// echoing client bytes (it never quotes values).
	reason := string(b[13:i])
	g.log.LogAttrs(context.Background(), slog.LevelInfo, "request refused by the HTTP server",
		slog.Int("status", status),
		slog.String("code", string(code)),
		slog.String("reason", reason),
		slog.String("client_ip", remoteIP(c.Conn.RemoteAddr())),
	)
	if _, err := c.Conn.Write(out); err != nil {
		return 0, err
	}
	return len(b), nil
}

func remoteIP(a net.Addr) string {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.IP.String()
	}
	return a.String()
}
