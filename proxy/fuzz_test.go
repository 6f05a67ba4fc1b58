package proxy

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/innovartx/deskgate/apierror"
	"github.com/innovartx/deskgate/metrics"
)

// FuzzRequestID guards SPEC §6: a client X-Request-Id is echoed if and
// only if it is 1–128 visible ASCII characters; otherwise the id is 32
// generated hex digits.
func FuzzRequestID(f *testing.F) {
	for _, s := range []string{"", "abc", "a b", "réq", strings.Repeat("x", 128), strings.Repeat("x", 129), "\x7f", "!~", "id\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		valid := len(s) >= 1 && len(s) <= 128
		for i := 0; i < len(s); i++ {
			if s[i] < '!' || s[i] > '~' {
				valid = false
			}
		}
		var st state
		st.setRequestID(http.Header{"X-Request-Id": {s}})
		got := st.requestID
		if st.idHdr[0] != got {
			t.Fatalf("header value %q, id %q", st.idHdr[0], got)
		}
		if valid && got != s {
			t.Fatalf("valid id %q replaced by %q", s, got)
		}
		if !valid && !hexID.MatchString(got) {
			t.Fatalf("invalid id %q gave %q, want 32 hex digits", s, got)
		}
	})
}

// FuzzNormalize guards SPEC §2 on the normaliser alone: whatever an
// upstream error body holds, the client gets the standard shape or the
// body itself (only when it conforms and the status is below 500).
func FuzzNormalize(f *testing.F) {
	f.Add(404, []byte(`{"code":"X","message":"y"}`), "")
	f.Add(500, []byte(`<html>panic</html>`), "")
	f.Add(400, []byte(`{"code":1}`), "gzip")
	f.Add(429, []byte{}, "deflate")
	h := newNormalizeHarness(f)
	f.Fuzz(func(t *testing.T, status int, body []byte, enc string) {
		status = 400 + abs(status)%200
		out, hdr := h.run(status, body, enc)
		passed := string(out) == string(body) && len(body) > 0
		if passed {
			if status >= 500 {
				t.Fatalf("%d body passed through: %q", status, body)
			}
			return
		}
		if !apierror.Conforms(out) {
			t.Fatalf("status %d: output not the standard shape: %q", status, out)
		}
		if hdr.Get("Content-Type") != "application/json; charset=utf-8" || hdr.Get("Content-Encoding") != "" {
			t.Fatalf("headers %v", hdr)
		}
	})
}

func abs(i int) int {
	if i < 0 {
		if i == -i { // math.MinInt
			return 0
		}
		return -i
	}
	return i
}

// normalizeHarness runs a route's normaliser on a synthetic response.
type normalizeHarness struct {
	n *normalizer
}

func newNormalizeHarness(t testing.TB) *normalizeHarness {
	catalog, err := apierror.NewCatalog(nil)
	if err != nil {
		t.Fatal(err)
	}
	m := metrics.New(prometheus.NewRegistry(), "test")
	g := &Gateway{catalog: catalog, log: slog.New(slog.DiscardHandler)}
	rt := &route{g: g, metrics: m.ForRoute("/", nil)}
	return &normalizeHarness{n: &normalizer{g: g, rt: rt, max: 1024}}
}

func (h *normalizeHarness) run(status int, body []byte, enc string) ([]byte, http.Header) {
	req, _ := http.NewRequest("GET", "http://upstream/x", nil)
	res := &http.Response{
		StatusCode:    status,
		Header:        http.Header{},
		Body:          io.NopCloser(bytes.NewReader(body)),
		ContentLength: int64(len(body)),
		Request:       req,
	}
	if enc != "" {
		res.Header.Set("Content-Encoding", enc)
	}
	if err := h.n.modify(res); err != nil {
		panic(err)
	}
	out, _ := io.ReadAll(res.Body)
	return out, res.Header
}

// FuzzCleanPath guards the path normalisation that routing and the
// upstream share (issue 8): the result is absolute, has no empty, "." or
// ".." segment, keeps a trailing slash, and cleaning it again changes
// nothing.
func FuzzCleanPath(f *testing.F) {
	for _, s := range []string{"", "/", "//", "/a/../b", "/a/./b/", "a/b", "/..", "/a//b//", "/a/b/..", "/%2e%2e/"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		c := cleanPath(p)
		if c == "" || c[0] != '/' {
			t.Fatalf("cleanPath(%q) = %q: not absolute", p, c)
		}
		if cleanPath(c) != c {
			t.Fatalf("cleanPath not idempotent: %q -> %q -> %q", p, c, cleanPath(c))
		}
		inner := strings.TrimSuffix(c[1:], "/")
		if c != "/" {
			for _, seg := range strings.Split(inner, "/") {
				if seg == "" || seg == "." || seg == ".." {
					t.Fatalf("cleanPath(%q) = %q keeps segment %q", p, c, seg)
				}
			}
		}
		if p != "" && strings.HasSuffix(p, "/") && c != "/" && !strings.HasSuffix(c, "/") {
			t.Fatalf("cleanPath(%q) = %q lost the trailing slash", p, c)
		}
	})
}

// FuzzAccessLogString guards the hand-written access log (SPEC §6: one
// JSON line per request): any path or id becomes a valid JSON string that
// decodes to the same text, invalid UTF-8 bytes each replaced by U+FFFD,
// and never breaks the line.
func FuzzAccessLogString(f *testing.F) {
	for _, s := range []string{"", "/api/v1/x", "a\"b\\c", "\x00\n\r\t\x1f", "é\u2028\u2029", "\xff\xfe", "\xed\xa0\x80"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		out := appendJSONString(nil, s)
		if bytes.ContainsAny(out, "\n\r") {
			t.Fatalf("line break in %q", out)
		}
		var got string
		if err := json.Unmarshal(out, &got); err != nil {
			t.Fatalf("%q -> %q: %v", s, out, err)
		}
		var want strings.Builder
		for i := 0; i < len(s); {
			r, size := utf8.DecodeRuneInString(s[i:])
			want.WriteRune(r) // RuneError for an invalid byte
			i += size
		}
		if got != want.String() {
			t.Fatalf("%q -> %q decodes to %q, want %q", s, out, got, want.String())
		}
	})
}

// TestAppendMillis checks the duration_ms numbers.
func TestAppendMillis(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0: "0", time.Microsecond: "0.001", 1500 * time.Microsecond: "1.5",
		3042 * time.Microsecond: "3.042", 2 * time.Second: "2000", 10*time.Millisecond + 10*time.Microsecond: "10.01",
	} {
		if got := string(appendMillis(nil, d)); got != want {
			t.Errorf("%s: %q, want %q", d, got, want)
		}
	}
}

// TestAccessLogText: with log.format text, the access log is written by
// the same writer as JSON, as key=value pairs that slog's TextHandler
// would write: values with spaces, quotes or control bytes quoted.
func TestAccessLogText(t *testing.T) {
	var buf bytes.Buffer
	a := &accessWriter{w: &buf, level: slog.LevelInfo, text: true}
	st := &state{requestID: "req-1", route: metrics.New(prometheus.NewRegistry(), "t").ForRoute("/api/v1/", nil),
		code: "NOT_FOUND", keyPrefix: "sk_live_AbCd", clientIP: netip.MustParseAddr("192.0.2.7")}
	st.w.written = 42
	st.cause = errors.New(`dial "x": refused`)
	a.write(st, "GET", "/api/v1/a b\n", 404, slog.LevelInfo, 1500*time.Microsecond)
	line := buf.String()
	for _, want := range []string{
		" level=INFO msg=request request_id=req-1 method=GET route=/api/v1/ ",
		` path="/api/v1/a b\n" status=404 code=NOT_FOUND duration_ms=1.5 key_prefix=sk_live_AbCd client_ip=192.0.2.7 bytes_out=42 error="dial \"x\": refused"` + "\n",
	} {
		if !strings.Contains(line, want) {
			t.Errorf("line %q lacks %q", line, want)
		}
	}
	if !strings.HasPrefix(line, "time=") || strings.Count(line, "\n") != 1 {
		t.Errorf("line %q", line)
	}
}
