package apierror

import (
	"bytes"
	"encoding/json"
	"testing"
)

// FuzzConforms guards SPEC §2's pass-through rule: Conforms never panics;
// a body it accepts is valid JSON, one object whose exact keys "code" and
// "message" are strings and whose "details", if present, is an object;
// and, for objects without repeated keys, every such body is accepted.
func FuzzConforms(f *testing.F) {
	for _, tt := range conformsCases {
		f.Add([]byte(tt.body))
	}
	f.Add([]byte(`{"code":"X","message":"y","details":{"nested":{"deep":[1,2,{"a":null}]}}}`))
	f.Add([]byte(`{"code":"X","message":"\ud800","details":{"k":"\u00e9"}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		got := Conforms(b)
		want, unique := conformsOracle(b)
		if got && !want {
			t.Fatalf("Conforms(%q) = true, but it is not a JSON object with string code and message and object details", b)
		}
		if unique && got != want {
			t.Fatalf("Conforms(%q) = %v, want %v", b, got, want)
		}
	})
}

// conformsOracle decides the SPEC §2 shape with encoding/json's map
// decoding. unique reports whether the top-level object has no repeated
// key, the only case where the map sees every value.
func conformsOracle(b []byte) (ok, unique bool) {
	if !json.Valid(b) {
		return false, true
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil || m == nil {
		return false, true
	}
	unique = countKeys(b) == len(m)
	isKind := func(key string, first byte) bool {
		raw, ok := m[key]
		raw = bytes.TrimSpace(raw)
		return ok && len(raw) > 0 && raw[0] == first
	}
	if !isKind("code", '"') || !isKind("message", '"') {
		return false, unique
	}
	if _, has := m["details"]; has && !isKind("details", '{') {
		return false, unique
	}
	return true, unique
}

// countKeys counts the keys of the top-level object of the valid JSON b.
func countKeys(b []byte) int {
	dec := json.NewDecoder(bytes.NewReader(b))
	if _, err := dec.Token(); err != nil {
		return -1
	}
	n := 0
	for dec.More() {
		if _, err := dec.Token(); err != nil {
			return -1
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return -1
		}
		n++
	}
	return n
}
