package proxy

import (
	"io"
	"log/slog"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"
)

// accessWriter writes the access log as JSON lines of the shape slog's
// JSON handler gives (`time`, `level`, `msg`, then the fields of SPEC §6),
// appended by hand into a pooled buffer: slog formats every float through
// encoding/json (reflection) and captures the caller's PC for each record,
// which made the log line cost as much as the rest of the chain.
type accessWriter struct {
	w     io.Writer
	level slog.Leveler
}

var linePool = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

func (a *accessWriter) enabled(l slog.Level) bool { return l >= a.level.Level() }

func (a *accessWriter) write(st *state, method, path string, status int, level slog.Level, elapsed time.Duration) {
	bp := linePool.Get().(*[]byte)
	b := (*bp)[:0]
	b = append(b, `{"time":"`...)
	b = time.Now().AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","level":"`...)
	b = append(b, level.String()...)
	b = append(b, `","msg":"request","request_id":`...)
	b = appendJSONString(b, st.requestID)
	b = append(b, `,"method":`...)
	b = appendJSONString(b, method)
	b = append(b, `,"route":`...)
	b = appendJSONString(b, st.route.Name())
	b = append(b, `,"path":`...)
	b = appendJSONString(b, path)
	b = append(b, `,"status":`...)
	b = strconv.AppendInt(b, int64(status), 10)
	if st.code != "" {
		b = append(b, `,"code":`...)
		b = appendJSONString(b, string(st.code))
	}
	b = append(b, `,"duration_ms":`...)
	b = appendMillis(b, elapsed)
	if st.upstream > 0 {
		b = append(b, `,"upstream_ms":`...)
		b = appendMillis(b, st.upstream)
	}
	if st.appID != "" {
		b = append(b, `,"app_id":`...)
		b = appendJSONString(b, st.appID)
	}
	if st.keyPrefix != "" {
		b = append(b, `,"key_prefix":`...)
		b = appendJSONString(b, st.keyPrefix)
	}
	if st.clientIP.IsValid() {
		b = append(b, `,"client_ip":"`...)
		b = st.clientIP.AppendTo(b)
		b = append(b, '"')
	}
	b = append(b, `,"bytes_out":`...)
	b = strconv.AppendInt(b, st.w.written, 10)
	if st.cause != nil {
		b = append(b, `,"error":`...)
		b = appendJSONString(b, st.cause.Error())
	}
	b = append(b, "}\n"...)
	_, _ = a.w.Write(b)
	*bp = b
	linePool.Put(bp)
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
