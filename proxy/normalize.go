package proxy

import (
	"bytes"
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"

	"github.com/innovartx/deskgate/apierror"
)

// normalizer is a route's ModifyResponse: it leaves every response below
// 400 untouched (so streams stream) and makes every error the standard
// shape (SPEC §2).
type normalizer struct {
	g   *Gateway
	rt  *route
	max int64
}

// entityHeaders describe the body; a replaced body takes none of them.
// Everything else (Retry-After, CORS, Set-Cookie, Vary) is kept.
var entityHeaders = []string{
	"Content-Encoding", "Content-Length", "Content-Type", "Content-Range",
	"Content-Md5", "Content-Disposition", "Content-Language", "Etag",
	"Last-Modified", "Transfer-Encoding", "Trailer", "Digest",
}

func (n *normalizer) modify(res *http.Response) error {
	h := res.Header
	// deskgate's own request id and rate-limit state are the ones the
	// client gets.
	delete(h, "X-Request-Id")
	if n.rt.cors {
		for _, k := range corsResponseHeaders {
			delete(h, k)
		}
	}
	if n.rt.limit != nil {
		delete(h, "Ratelimit")
		delete(h, "Ratelimit-Policy")
	}
	if res.StatusCode < 400 {
		return nil
	}
	if res.Request.Method == http.MethodHead {
		n.replace(res, nil)
		return nil
	}
	raw, err := io.ReadAll(io.LimitReader(res.Body, n.max+1))
	_ = res.Body.Close()
	if err != nil || int64(len(raw)) > n.max {
		n.replace(res, raw)
		return nil
	}
	if res.StatusCode < 500 && n.conforming(h, raw) {
		// Passed through byte for byte, encoding and all.
		res.Body = io.NopCloser(bytes.NewReader(raw))
		res.ContentLength = int64(len(raw))
		h["Content-Length"] = []string{strconv.Itoa(len(raw))}
		delete(h, "Transfer-Encoding")
		res.TransferEncoding = nil
		return nil
	}
	n.replace(res, raw)
	return nil
}

// conforming reports whether raw, decoded by its Content-Encoding, is in
// the standard shape. An encoding deskgate cannot decode is not.
func (n *normalizer) conforming(h http.Header, raw []byte) bool {
	var body []byte
	switch enc := strings.ToLower(strings.TrimSpace(headerValue(h, "Content-Encoding"))); enc {
	case "", "identity":
		body = raw
	case "gzip", "x-gzip":
		zr, err := gzip.NewReader(bytes.NewReader(raw))
		if err != nil {
			return false
		}
		body, err = n.readDecoded(zr)
		if err != nil {
			return false
		}
	case "deflate":
		// RFC 9110 "deflate" is zlib-wrapped; some servers send raw
		// deflate, which is tried second.
		var err error
		if zr, zerr := zlib.NewReader(bytes.NewReader(raw)); zerr == nil {
			body, err = n.readDecoded(zr)
		} else {
			body, err = n.readDecoded(flate.NewReader(bytes.NewReader(raw)))
		}
		if err != nil {
			return false
		}
	default:
		return false
	}
	return apierror.Conforms(body)
}

var errTooLarge = errors.New("decoded error body over upstream.max_error_body_bytes")

func (n *normalizer) readDecoded(r io.Reader) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, n.max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > n.max {
		return nil, errTooLarge
	}
	return b, nil
}

// replace swaps the body for the standard shape of the status, keeping the
// status. An upstream 5xx body is never shown: at debug level, an excerpt
// goes to the log.
func (n *normalizer) replace(res *http.Response, raw []byte) {
	e := &apierror.Error{Code: apierror.StatusCode(res.StatusCode), Status: res.StatusCode}
	body := n.g.catalog.Body(e)
	h := res.Header
	for _, k := range entityHeaders {
		delete(h, k)
	}
	h["Content-Type"] = []string{apierror.ContentType}
	h["Content-Length"] = []string{strconv.Itoa(len(body))}
	res.TransferEncoding = nil
	res.Trailer = nil
	res.ContentLength = int64(len(body))
	if res.Request.Method == http.MethodHead {
		res.Body = http.NoBody
	} else {
		res.Body = io.NopCloser(bytes.NewReader(body))
	}
	n.rt.metrics.Normalized(res.StatusCode)
	if st := stateFrom(res.Request); st != nil {
		st.code = e.Code
	}
	if res.StatusCode >= 500 && len(raw) > 0 && n.g.log.Enabled(context.Background(), slog.LevelDebug) {
		excerpt := raw[:min(len(raw), 256)]
		n.g.log.LogAttrs(context.Background(), slog.LevelDebug, "upstream error body replaced",
			slog.String("request_id", res.Request.Header.Get("X-Request-Id")),
			slog.Int("status", res.StatusCode),
			slog.Int("body_bytes", len(raw)),
			slog.String("excerpt", strconv.Quote(string(excerpt))))
	}
}

// upstreamErrorKind classifies a failed exchange for
// deskgate_upstream_errors_total: connect (no connection), timeout (no
// response headers in time) or protocol (reset, EOF, a bad response).
func upstreamErrorKind(err error) string {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return "connect"
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, context.DeadlineExceeded) {
		return "timeout"
	}
	return "protocol"
}
