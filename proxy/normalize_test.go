package proxy

import (
	"net/http"
	"strings"
	"testing"
)

// TestUpstreamCannotWriteTheLoggedCode: the business code in the access
// log is deskgate's, from the request's state: a header an upstream sends
// cannot set it (the normaliser once passed the code to the writer in a
// made-up response header, which an upstream could send too), and such a
// header reaches the client like any other.
func TestUpstreamCannotWriteTheLoggedCode(t *testing.T) {
	h := newHarness(t, harnessOpt{upstream: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Deskgate-Internal-Code", "FORGED")
		if r.URL.Path == "/api/v1/fail" {
			w.WriteHeader(http.StatusBadGateway)
			return
		}
		w.WriteHeader(http.StatusOK)
	})})
	ok := h.do("GET", "/api/v1/customers", "", "X-API-Key", skLive)
	if ok.StatusCode != 200 || ok.Header.Get("X-Deskgate-Internal-Code") != "FORGED" {
		t.Errorf("200: status %d, header %q: want the upstream's header passed through", ok.StatusCode, ok.Header.Get("X-Deskgate-Internal-Code"))
	}
	h.wantError(h.do("GET", "/api/v1/fail", "", "X-API-Key", skLive), 502, "INTERNAL_ERROR")
	var lines []string
	for _, l := range strings.Split(h.logs.String(), "\n") {
		if strings.Contains(l, `"msg":"request"`) {
			lines = append(lines, l)
		}
	}
	if len(lines) != 2 {
		t.Fatalf("%d access-log lines: %q", len(lines), lines)
	}
	if strings.Contains(lines[0], "FORGED") || strings.Contains(lines[0], `"code"`) {
		t.Errorf("2xx line %s: an upstream header wrote a code", lines[0])
	}
	if strings.Contains(lines[1], "FORGED") || !strings.Contains(lines[1], `"code":"INTERNAL_ERROR"`) {
		t.Errorf("normalised 502 line %s: want code INTERNAL_ERROR", lines[1])
	}
}
