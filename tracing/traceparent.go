package tracing

import "go.opentelemetry.io/otel/trace"

// traceparentLen is the length of a version 00 traceparent:
// "00-" 32 hex "-" 16 hex "-" 2 hex.
const traceparentLen = 55

// parent is what a valid traceparent says.
type parent struct {
	traceID trace.TraceID
	spanID  trace.SpanID
	flags   trace.TraceFlags
}

// parseTraceparent reads a W3C traceparent header value (Trace Context
// §3.2): lowercase hex only, neither id all zeros, version ff refused, a
// version 00 value exactly 55 characters. A later version is read as 00
// (its first four fields), as the spec tells a version 00 parser to do,
// when what follows them starts with '-'. It never allocates.
func parseTraceparent(v string, p *parent) bool {
	if len(v) < traceparentLen {
		return false
	}
	var ver [1]byte
	if !decodeHex(ver[:], v[0:2]) || ver[0] == 0xff {
		return false
	}
	if ver[0] == 0 && len(v) != traceparentLen || len(v) > traceparentLen && v[traceparentLen] != '-' {
		return false
	}
	if v[2] != '-' || v[35] != '-' || v[52] != '-' {
		return false
	}
	var f [1]byte
	if !decodeHex(p.traceID[:], v[3:35]) || !decodeHex(p.spanID[:], v[36:52]) || !decodeHex(f[:], v[53:55]) {
		return false
	}
	p.flags = trace.TraceFlags(f[0])
	return p.traceID.IsValid() && p.spanID.IsValid()
}

// decodeHex decodes the lowercase hex s into dst, len(dst)*2 characters.
func decodeHex(dst []byte, s string) bool {
	for i := range dst {
		hi, ok1 := fromHex(s[2*i])
		lo, ok2 := fromHex(s[2*i+1])
		if !ok1 || !ok2 {
			return false
		}
		dst[i] = hi<<4 | lo
	}
	return true
}

func fromHex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}

const hexDigits = "0123456789abcdef"

// encodeHex writes src as lowercase hex into dst, which must hold
// 2*len(src) bytes.
func encodeHex(dst []byte, src []byte) {
	for i, b := range src {
		dst[2*i] = hexDigits[b>>4]
		dst[2*i+1] = hexDigits[b&0xf]
	}
}
