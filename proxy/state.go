package proxy

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/innovartx/deskgate/apierror"
	"github.com/innovartx/deskgate/metrics"
	"github.com/innovartx/deskgate/ratelimit"
	"github.com/innovartx/deskgate/tracing"
)

// state is everything the gateway learns about one request: one
// allocation, reached through the response writer (the chain passes
// &state.w down), so that no context value is needed.
type state struct {
	w responseWriter

	start     time.Time
	requestID string
	// idBuf holds a generated request id and idHdr the header value
	// slice, both inside this one allocation.
	idBuf [32]byte
	idHdr [1]string
	// appHdr is the X-App-Id value slice sent upstream.
	appHdr   [1]string
	clientIP netip.Addr
	peer     netip.Addr
	trusted  bool // the peer is a trusted proxy

	route     *metrics.Route
	appID     string
	keyPrefix string

	// code is the business code of an error answer, own or normalised.
	code apierror.Code
	// cause is what made deskgate answer an error itself, for the log.
	cause error
	// shadow is the code a budget or quota in shadow mode would have
	// answered (SPEC §10): the request was forwarded instead. quota names
	// the quota that refused (or would have), and holds are the quota
	// slots to settle (quota.go).
	shadow apierror.Code
	quota  string
	holds  []quotaHold
	quotas *quotaPlan // the quotas that count the request (quota.go)
	// fwd is the context of the request as forwarded ([stateContext]).
	fwd stateContext
	// key is the request's rate-limit identity once keyed (identityKey).
	key   ratelimit.Key
	keyed bool
	// limitedBy is "upstream" when the refusal (or shadow refusal) came
	// from the upstream's own 429 Retry-After, not deskgate's budget.
	limitedBy string

	// trace is the request's W3C trace and, when recorded, its spans
	// (SPEC §11).
	trace tracing.Request

	proxyStart time.Time
	upstream   time.Duration
	// upstreamKind is how the exchange failed (connect, timeout,
	// protocol), for the upstream span.
	upstreamKind string
	// ownReply is set when deskgate answers an error itself, so that a
	// failed exchange is not counted as an upstream response time.
	ownReply bool
	canceled bool

	// hasBody is set when the request came with a body (see
	// [state.forwardBody] and [state.endBody]).
	hasBody bool
	// body is the forwarded request body, inside the state so that it
	// costs no allocation of its own; readDeadline is when it must have
	// arrived (server.read_timeout), zero until it is forwarded.
	body         bodyReader
	readDeadline time.Time

	// h2 is the stream's writer over HTTP/2 (see [h2Writer]); unused
	// over HTTP/1.1.
	h2 h2Writer
}

// readDeadliner is the part of the server's response writer that
// http.ResponseController.SetReadDeadline uses: it sets the read deadline
// of the client's connection (of the stream, over HTTP/2).
type readDeadliner interface {
	SetReadDeadline(time.Time) error
}

// readDeadlinerOf finds the server's writer under w through Unwrap, as
// http.ResponseController does, but without allocating an error when
// there is none (httptest's recorder): nil then.
func readDeadlinerOf(w http.ResponseWriter) readDeadliner {
	for {
		switch t := w.(type) {
		case readDeadliner:
			return t
		case interface{ Unwrap() http.ResponseWriter }:
			w = t.Unwrap()
		default:
			return nil
		}
	}
}

// forwardBody arms server.read_timeout on the request body as it is about
// to be forwarded, and wraps it to see its end. The clock starts here, not
// when the headers arrived: the route's checks and the wait for an
// upstream connection are not the client's time (and a client that sent
// "Expect: 100-continue" only starts sending now). A client that trickles
// its body — headers, then a byte every few seconds — would otherwise
// hold this goroutine and an upstream connection for as long as it likes.
//
// The deadline is on the connection: net/http's Server.ReadTimeout would
// do the same but from the headers and for every request, and could not
// change on reload.
func (st *state) forwardBody(r *http.Request, timeout time.Duration) {
	c := readDeadlinerOf(st.w.ResponseWriter)
	if c == nil {
		return
	}
	st.readDeadline = time.Now().Add(timeout)
	if c.SetReadDeadline(st.readDeadline) != nil {
		st.readDeadline = time.Time{}
		return
	}
	st.body.ReadCloser = r.Body
	st.body.conn = c
	r.Body = &st.body
}

// endBody runs when the handler returns. net/http then reads what is left
// of an unread body (up to 256 KiB) so that it can reuse the connection;
// for a request refused before its body was forwarded, that read gets
// server.read_timeout from now. A forwarded body keeps the deadline it
// was given (a stalled one has passed it: the connection is closed).
func (st *state) endBody(timeout time.Duration) {
	if st.body.conn != nil {
		st.body.mu.Lock()
		st.body.finished = true
		st.body.mu.Unlock()
		return
	}
	if c := readDeadlinerOf(st.w.ResponseWriter); c != nil {
		_ = c.SetReadDeadline(time.Now().Add(timeout))
	}
}

// bodyStalled reports whether a failed exchange is the client's body not
// arriving by its deadline. The transport may report that as the read
// error itself or, as net/http's server cancels the request's context on
// a failed connection read, as a canceled context; either way the body is
// unfinished and its deadline has passed.
func (st *state) bodyStalled(r *http.Request, err error) bool {
	if st.readDeadline.IsZero() || time.Now().Before(st.readDeadline) {
		return false
	}
	st.body.mu.Lock()
	eof := st.body.eof
	st.body.mu.Unlock()
	return !eof && (errors.Is(err, os.ErrDeadlineExceeded) || r.Context().Err() != nil)
}

// bodyReader is a forwarded request body that lifts the read deadline
// once the body has been read to its end. It must: net/http then reads
// the connection in the background to notice a client that goes away,
// and that read failing at the deadline would cancel a request whose
// upstream is merely slow to answer. The transport reads the body in its
// own goroutine, which may outlive the handler; mu orders the lift before
// the server takes the connection back (finished), so that it never
// clears the keep-alive deadline net/http sets after the handler.
type bodyReader struct {
	io.ReadCloser
	conn     readDeadliner
	mu       sync.Mutex
	eof      bool
	finished bool
}

func (b *bodyReader) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.mu.Lock()
		if !b.eof && !b.finished {
			_ = b.conn.SetReadDeadline(time.Time{})
		}
		b.eof = true
		b.mu.Unlock()
	}
	return n, err
}

// stateOf returns the state behind a response writer of the chain.
func stateOf(w http.ResponseWriter) *state {
	if rw, ok := w.(*responseWriter); ok {
		return rw.st
	}
	return nil
}

// stateKey finds a request's state in the context of its outbound
// request ([stateFrom]).
type stateKey struct{}

// stateContext is the context of a forwarded request: the request's own,
// with its state under stateKey, so that ModifyResponse, which sees only
// the response and the outbound request, records what it did in the
// state. It lives in the state: forwarding costs the request copy of
// Request.WithContext and nothing more.
type stateContext struct {
	context.Context
	st *state
}

func (c *stateContext) Value(k any) any {
	if k == (stateKey{}) {
		return c.st
	}
	return c.Context.Value(k)
}

// stateFrom returns the state of a forwarded request, from its outbound
// request; nil for a request that did not come through the chain.
func stateFrom(out *http.Request) *state {
	st, _ := out.Context().Value(stateKey{}).(*state)
	return st
}

// responseWriter records the status and size of the answer. It unwraps
// (Unwrap) so that http.ResponseController reaches Flush and Hijack of the
// server's writer, which ReverseProxy needs for streams and upgrades.
type responseWriter struct {
	http.ResponseWriter
	st      *state
	status  int
	written int64
}

func (w *responseWriter) WriteHeader(code int) {
	if w.status == 0 && (code >= 200 || code == http.StatusSwitchingProtocols) {
		w.status = code
		if !w.st.proxyStart.IsZero() && w.st.upstream == 0 {
			w.st.upstream = time.Since(w.st.proxyStart)
		}
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *responseWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	n, err := w.ResponseWriter.Write(b)
	w.written += int64(n)
	return n, err
}

// Hijack takes the connection over for a protocol upgrade: ReverseProxy
// does so after an upstream's 101, writing the answer itself, so the
// status is recorded here (logged and counted as 101, not 0).
func (w *responseWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err == nil && w.status == 0 {
		w.status = http.StatusSwitchingProtocols
		if !w.st.proxyStart.IsZero() && w.st.upstream == 0 {
			w.st.upstream = time.Since(w.st.proxyStart)
		}
	}
	return c, brw, err
}

// Unwrap returns the server's writer.
func (w *responseWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// maxRequestID is the longest client X-Request-Id accepted (SPEC §6).
const maxRequestID = 128

// validRequestID reports whether a client's X-Request-Id is 1–128 visible
// ASCII characters (0x21–0x7E), the only ids deskgate passes on.
func validRequestID(s string) bool {
	if len(s) == 0 || len(s) > maxRequestID {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// setRequestID takes the client's id if it is valid, else 128 random bits
// in hex written into the state itself, and prepares the header value.
func (st *state) setRequestID(h http.Header) {
	if v := h["X-Request-Id"]; len(v) == 1 && validRequestID(v[0]) {
		st.requestID = v[0]
	} else {
		var b [16]byte
		_, _ = rand.Read(b[:]) // never fails (crypto/rand, Go 1.24+)
		hex.Encode(st.idBuf[:], b[:])
		// The string points into the state, which the GC keeps alive as
		// long as the string is; the bytes are never written again.
		st.requestID = unsafe.String(&st.idBuf[0], len(st.idBuf))
	}
	st.idHdr[0] = st.requestID
}

// clientAddr returns the peer's address and the client's: the peer itself
// unless it is a trusted proxy, in which case X-Forwarded-For is read from
// the right, skipping trusted hops, up to the first address that is not
// trusted.
func clientAddr(r *http.Request, trusted []netip.Prefix) (peer, client netip.Addr, peerTrusted bool) {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		// Not a TCP peer (tests with a bare handler, unix sockets).
		return netip.Addr{}, netip.Addr{}, false
	}
	peer = ap.Addr().Unmap()
	if !isTrusted(peer, trusted) {
		return peer, peer, false
	}
	client = peer
	xff := r.Header["X-Forwarded-For"]
	for i := len(xff) - 1; i >= 0; i-- {
		s := xff[i]
		for s != "" {
			var hop string
			if j := strings.LastIndexByte(s, ','); j >= 0 {
				hop, s = s[j+1:], s[:j]
			} else {
				hop, s = s, ""
			}
			a, err := netip.ParseAddr(strings.TrimSpace(hop))
			if err != nil {
				return peer, client, true
			}
			client = a.Unmap()
			if !isTrusted(client, trusted) {
				return peer, client, true
			}
		}
	}
	return peer, client, true
}

func isTrusted(a netip.Addr, trusted []netip.Prefix) bool {
	for _, p := range trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
