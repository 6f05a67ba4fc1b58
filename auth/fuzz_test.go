package auth

import (
	"crypto/sha256"
	"strings"
	"testing"
)

// FuzzParseKey guards SPEC §3's key format and SPEC §6's key_prefix bound:
// ParseKey(s) succeeds exactly when s matches
// `^(pk|sk)_(live|test)_[A-Za-z0-9]{24,128}$`; a parsed key keeps only
// s[:12] and sha256(s); DisplayPrefix never shows more than 12 bytes and
// only a prefix of s.
func FuzzParseKey(f *testing.F) {
	for _, tt := range parseKeyCases {
		f.Add(tt.in)
	}
	f.Fuzz(func(t *testing.T, s string) {
		k, ok := ParseKey(s)
		if want := specKeyRE.MatchString(s); ok != want {
			t.Fatalf("ParseKey(%q) ok = %v, SPEC regexp says %v", s, ok, want)
		}
		if ok {
			if k.Prefix != s[:12] {
				t.Errorf("ParseKey(%q).Prefix = %q, want %q", s, k.Prefix, s[:12])
			}
			if want := sha256.Sum256([]byte(s)); k.Hash != want {
				t.Errorf("ParseKey(%q).Hash = %x, want %x", s, k.Hash, want)
			}
			if k.Type.String() != map[byte]string{'p': "public", 's': "secret"}[s[0]] {
				t.Errorf("ParseKey(%q).Type = %v", s, k.Type)
			}
			if k.Env.String() != s[3:7] {
				t.Errorf("ParseKey(%q).Env = %v, want %s", s, k.Env, s[3:7])
			}
		} else if k != (Key{}) {
			t.Errorf("ParseKey(%q) failed but returned %+v", s, k)
		}
		if len(k.Prefix) > 12 {
			t.Errorf("ParseKey(%q).Prefix = %q, longer than 12", s, k.Prefix)
		}
		p := DisplayPrefix(s)
		if len(p) > 12 || !strings.HasPrefix(s, p) {
			t.Errorf("DisplayPrefix(%q) = %q: want a prefix of the input, at most 12 bytes", s, p)
		}
		if ok && p != k.Prefix {
			t.Errorf("DisplayPrefix(%q) = %q, want the key's Prefix %q", s, p, k.Prefix)
		}
	})
}
