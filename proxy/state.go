package proxy

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"
	"unsafe"

	"github.com/innovartx/deskgate/apierror"
	"github.com/innovartx/deskgate/metrics"
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

	proxyStart time.Time
	upstream   time.Duration
	// ownReply is set when deskgate answers an error itself, so that a
	// failed exchange is not counted as an upstream response time.
	ownReply bool
	canceled bool
}

// stateOf returns the state behind a response writer of the chain.
func stateOf(w http.ResponseWriter) *state {
	if rw, ok := w.(*responseWriter); ok {
		return rw.st
	}
	return nil
}

// codeHeader carries the business code of a normalised upstream error
// from ModifyResponse (which sees only the response) to the writer, which
// removes it before the headers leave.
const codeHeader = "X-Deskgate-Internal-Code"

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
	if v, ok := w.ResponseWriter.Header()[codeHeader]; ok {
		if len(v) > 0 {
			w.st.code = apierror.Code(v[0])
		}
		delete(w.ResponseWriter.Header(), codeHeader)
	}
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
