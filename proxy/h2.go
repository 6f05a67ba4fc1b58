package proxy

import (
	"net/http"
	"time"
)

// writeDeadliner is the part of the HTTP/2 server's response writer that
// http.ResponseController.SetWriteDeadline uses: a deadline for the
// stream's writes.
type writeDeadliner interface {
	SetWriteDeadline(time.Time) error
}

// h2Writer applies server.write_timeout to one HTTP/2 stream (SPEC §12:
// the rules of §1–§11 hold per stream). Over HTTP/1.1 the deadline is the
// connection's, pushed by [WrapConn] on every write. Over HTTP/2 that
// still catches a client that reads nothing at all, but not one that
// starves a single stream of flow-control window while the connection
// stays busy: the handler would wait for window forever, holding its
// goroutine and upstream connection. So each write (and flush) of the
// stream gets the stream's own write deadline, lifted once it returns —
// the HTTP/2 server resets the stream when the deadline passes, even with
// no write under way, so a deadline left armed would cut a response that
// is only waiting for its upstream (a quiet event stream). When the
// handler returns, [state.endH2] arms it once more for the bytes the
// server still has to send.
type h2Writer struct {
	http.ResponseWriter
	dl      writeDeadliner
	timeout time.Duration
}

func (w *h2Writer) Write(b []byte) (int, error) {
	_ = w.dl.SetWriteDeadline(time.Now().Add(w.timeout))
	n, err := w.ResponseWriter.Write(b)
	if err == nil {
		_ = w.dl.SetWriteDeadline(time.Time{})
	}
	return n, err
}

// FlushError is what http.ResponseController.Flush finds first: a flush
// of the stream under the same deadline.
func (w *h2Writer) FlushError() error {
	_ = w.dl.SetWriteDeadline(time.Now().Add(w.timeout))
	err := http.NewResponseController(w.ResponseWriter).Flush()
	if err == nil {
		_ = w.dl.SetWriteDeadline(time.Time{})
	}
	return err
}

// Unwrap returns the server's writer, for the rest of
// http.ResponseController (read deadlines, full duplex).
func (w *h2Writer) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// useH2Writer puts the stream's writer of an HTTP/2 request behind an
// [h2Writer] held in the state (no allocation of its own).
func (st *state) useH2Writer(r *http.Request, timeout time.Duration) {
	if r.ProtoMajor != 2 {
		return
	}
	dl, ok := st.w.ResponseWriter.(writeDeadliner)
	if !ok {
		return
	}
	st.h2 = h2Writer{ResponseWriter: st.w.ResponseWriter, dl: dl, timeout: timeout}
	st.w.ResponseWriter = &st.h2
}

// endH2 arms the stream's write deadline for what the HTTP/2 server sends
// after the handler returns (its buffered bytes, the end of the stream).
// The server stops the timer when the stream closes.
func (st *state) endH2() {
	if st.h2.dl != nil {
		_ = st.h2.dl.SetWriteDeadline(time.Now().Add(st.h2.timeout))
	}
}
