package proxy

import (
	"io"
	"log/slog"
	"strconv"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"
)

// accessWriter writes the access log, one line per request with the
// fields of SPEC §6 (and §11's trace_id), in the shape slog's handlers
// give (`time`, `level`, `msg`, then the fields): a JSON object, or with
// text set, key=value pairs as slog's TextHandler writes them. Each line is appended by hand
// into a pooled buffer: slog formats every float through encoding/json
// (reflection) and captures the caller's PC for each record, which made
// the log line cost as much as the rest of the chain. It is the only
// access-log writer, whatever log.format says.
type accessWriter struct {
	w     io.Writer
	level slog.Leveler
	text  bool
}

var linePool = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

func (a *accessWriter) enabled(l slog.Level) bool { return l >= a.level.Level() }

func (a *accessWriter) write(st *state, method, path string, status int, level slog.Level, elapsed time.Duration) {
	bp := linePool.Get().(*[]byte)
	e := lineEncoder{b: (*bp)[:0], text: a.text}
	e.begin(level)
	e.str("request_id", st.requestID)
	if id := st.trace.TraceID(); id != "" {
		e.str("trace_id", id)
	}
	e.str("method", method)
	e.str("route", st.route.Name())
	e.str("path", path)
	e.int("status", int64(status))
	if st.code != "" {
		e.str("code", string(st.code))
	}
	if st.quota != "" {
		e.str("quota", st.quota)
	}
	if st.shadow != "" {
		e.str("shadow", string(st.shadow))
	}
	if st.limitedBy != "" {
		e.str("limited_by", st.limitedBy)
	}
	e.millis("duration_ms", elapsed)
	if st.upstream > 0 {
		e.millis("upstream_ms", st.upstream)
	}
	if st.appID != "" {
		e.str("app_id", st.appID)
	}
	if st.keyPrefix != "" {
		e.str("key_prefix", st.keyPrefix)
	}
	if st.clientIP.IsValid() {
		e.key("client_ip")
		e.b = st.clientIP.AppendTo(append(e.b, e.quote()...))
		e.b = append(e.b, e.quote()...)
	}
	e.int("bytes_out", st.w.written)
	if st.cause != nil {
		e.str("error", st.cause.Error())
	}
	e.end()
	_, _ = a.w.Write(e.b)
	*bp = e.b
	linePool.Put(bp)
}

// lineEncoder appends one access-log line, JSON or text.
type lineEncoder struct {
	b    []byte
	text bool
}

func (e *lineEncoder) begin(level slog.Level) {
	if e.text {
		e.b = append(e.b, "time="...)
		e.b = time.Now().AppendFormat(e.b, "2006-01-02T15:04:05.000Z07:00")
		e.b = append(e.b, " level="...)
		e.b = append(e.b, level.String()...)
		e.b = append(e.b, " msg=request"...)
		return
	}
	e.b = append(e.b, `{"time":"`...)
	e.b = time.Now().AppendFormat(e.b, time.RFC3339Nano)
	e.b = append(e.b, `","level":"`...)
	e.b = append(e.b, level.String()...)
	e.b = append(e.b, `","msg":"request"`...)
}

func (e *lineEncoder) end() {
	if !e.text {
		e.b = append(e.b, '}')
	}
	e.b = append(e.b, '\n')
}

func (e *lineEncoder) key(k string) {
	if e.text {
		e.b = append(e.b, ' ')
		e.b = append(e.b, k...)
		e.b = append(e.b, '=')
		return
	}
	e.b = append(e.b, ',', '"')
	e.b = append(e.b, k...)
	e.b = append(e.b, '"', ':')
}

// quote is what encloses a value known to need no escaping: JSON's
// quotes, nothing in text.
func (e *lineEncoder) quote() string {
	if e.text {
		return ""
	}
	return `"`
}

func (e *lineEncoder) str(k, v string) {
	e.key(k)
	if e.text {
		e.b = appendTextValue(e.b, v)
		return
	}
	e.b = appendJSONString(e.b, v)
}

func (e *lineEncoder) int(k string, v int64) {
	e.key(k)
	e.b = strconv.AppendInt(e.b, v, 10)
}

func (e *lineEncoder) millis(k string, d time.Duration) {
	e.key(k)
	e.b = appendMillis(e.b, d)
}

// appendTextValue appends s as slog's TextHandler does: as is when it is
// a non-empty run of printable characters without space, '=' or '"';
// otherwise quoted with Go escapes.
func appendTextValue(b []byte, s string) []byte {
	if s == "" {
		return append(b, `""`...)
	}
	for _, r := range s {
		if r == ' ' || r == '=' || r == '"' || r == utf8.RuneError || !unicode.IsPrint(r) {
			return strconv.AppendQuote(b, s)
		}
	}
	return append(b, s...)
}

// appendMillis appends d in milliseconds with microsecond precision, as a
// JSON number (3.042).
func appendMillis(b []byte, d time.Duration) []byte {
	us := d.Microseconds()
	b = strconv.AppendInt(b, us/1000, 10)
	if frac := us % 1000; frac != 0 {
		b = append(b, '.', byte('0'+frac/100), byte('0'+frac/10%10), byte('0'+frac%10))
		for b[len(b)-1] == '0' {
			b = b[:len(b)-1]
		}
	}
	return b
}

// appendJSONString appends s as a JSON string: quotes, backslashes and
// control characters escaped, invalid UTF-8 replaced by U+FFFD, and
// U+2028/U+2029 escaped for JavaScript readers.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 || r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			switch r {
			case '\u2028':
				b = append(b, `\u2028`...)
			case '\u2029':
				b = append(b, `\u2029`...)
			default:
				b = append(b, `\ufffd`...)
			}
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
