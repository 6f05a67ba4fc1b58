package supportdesk

import (
	"net/http"
	"strconv"
	"time"
)

// crashPage is the HTML body of GET /api/v1/debug/crash: the kind of page a
// carelessly written upstream leaks when it panics.
const crashPage = "<html><body><h1>500 Internal Server Error</h1><pre>panic: runtime error: index out of range [3] with length 3\n\ngoroutine 1 [running]:\nmain.handler(...)</pre></body></html>"

// maxSlowMillis is the longest delay GET /api/v1/debug/slow accepts.
const maxSlowMillis = 60000

// debugCrash answers GET /api/v1/debug/crash with an HTML 500 that leaks a
// stack trace, on purpose.
func (s *Server) debugCrash(w http.ResponseWriter, _ *http.Request) {
	writeRaw(w, http.StatusInternalServerError, "text/html", []byte(crashPage))
}

// debugStatus answers GET /api/v1/debug/status/{code} with that status and
// a plain-text body, on purpose not in the standard error shape.
func (s *Server) debugStatus(w http.ResponseWriter, r *http.Request) {
	raw := r.PathValue("code")
	code, err := strconv.Atoi(raw)
	if err != nil || code < 400 || code > 599 {
		writeValidation(w, map[string][]string{"code": {msgBadValue}})
		return
	}
	writeRaw(w, code, "text/plain", []byte("upstream says "+strconv.Itoa(code)))
}

// debugSlow answers GET /api/v1/debug/slow?ms=N after sleeping N
// milliseconds, or returns without answering as soon as the request's
// context is cancelled.
func (s *Server) debugSlow(w http.ResponseWriter, r *http.Request) {
	ms := 0
	if raw := r.URL.Query().Get("ms"); raw != "" {
		n, err := strconv.Atoi(raw)
		if err != nil || n < 0 || n > maxSlowMillis {
			writeValidation(w, map[string][]string{"ms": {msgBadValue}})
			return
		}
		ms = n
	}
	completed := false
	if s.onSlowExit != nil {
		defer func() { s.onSlowExit(completed) }()
	}
	timer := time.NewTimer(time.Duration(ms) * time.Millisecond)
	defer timer.Stop()
	if s.onSlowStart != nil {
		s.onSlowStart()
	}
	select {
	case <-r.Context().Done():
		return
	case <-timer.C:
	}
	completed = true
	writeJSON(w, http.StatusOK, map[string]int{"sleptMs": ms})
}

// debugHeaders answers GET /api/v1/debug/headers with the request headers
// it received, one key per header, plus remoteAddr, host, path and rawQuery.
func (s *Server) debugHeaders(w http.ResponseWriter, r *http.Request) {
	out := make(map[string]any, len(r.Header)+4)
	for k, v := range r.Header {
		out[k] = v
	}
	out["remoteAddr"] = r.RemoteAddr
	out["host"] = r.Host
	out["path"] = r.URL.Path
	out["rawQuery"] = r.URL.RawQuery
	writeJSON(w, http.StatusOK, out)
}
