package proxy

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"net/http"
	"strconv"

	"github.com/innovartx/deskgate/apierror"
	"github.com/innovartx/deskgate/metrics"
)

// WrapListener makes the errors that net/http's server answers by itself,
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
}

// serverErrorHead is what net/http puts between the status line and the
// body of its own error answers (server.go, "errorHeaders").
var serverErrorHead = []byte("\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n")

func (c *shapingConn) Write(b []byte) (int, error) {
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
	g.unmatched.Observe(metrics.Methods[len(metrics.Methods)-1], status, 0)
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
