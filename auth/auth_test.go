package auth

import (
	"context"
	"crypto/sha256"
	"regexp"
	"strings"
	"testing"

	"github.com/innovartx/deskgate/apierror"
	"github.com/innovartx/deskgate/config"
)

// specKeyFormat is the key format of SPEC §3, written out from the SPEC.
const specKeyFormat = `^(pk|sk)_(live|test)_[A-Za-z0-9]{24,128}$`

var specKeyRE = regexp.MustCompile(specKeyFormat)

// alnum returns n characters of [A-Za-z0-9], starting at offset in that
// alphabet, so that test keys use every character class.
func alnum(n, offset int) string {
	const chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
	var b strings.Builder
	for i := range n {
		b.WriteByte(chars[(i+offset)%len(chars)])
	}
	return b.String()
}

// Well-formed keys used across the tests.
var (
	skLive = "sk_live_" + alnum(32, 0)
	skTest = "sk_test_" + alnum(32, 7)
	pkLive = "pk_live_" + alnum(32, 20)
	pkTest = "pk_test_" + alnum(32, 40)
)

// parseKeyCases is the ParseKey table; FuzzParseKey is seeded from it.
var parseKeyCases = []struct {
	name     string
	in       string
	wantOK   bool
	wantType KeyType
	wantEnv  Env
}{
	{"sk live", skLive, true, Secret, Live},
	{"sk test", skTest, true, Secret, Test},
	{"pk live", pkLive, true, Public, Live},
	{"pk test", pkTest, true, Public, Test},
	{"digits only", "sk_live_" + strings.Repeat("7", 24), true, Secret, Live},
	{"23 random chars", "sk_live_" + alnum(23, 3), false, 0, 0},
	{"24 random chars", "sk_live_" + alnum(24, 3), true, Secret, Live},
	{"128 random chars", "pk_test_" + alnum(128, 5), true, Public, Test},
	{"129 random chars", "pk_test_" + alnum(129, 5), false, 0, 0},
	{"empty", "", false, 0, 0},
	{"prefix only", "sk_live_", false, 0, 0},
	{"xk prefix", "xk_live_" + alnum(32, 0), false, 0, 0},
	{"uppercase PK", "PK_live_" + alnum(32, 0), false, 0, 0},
	{"uppercase SK", "SK_LIVE_" + alnum(32, 0), false, 0, 0},
	{"dash separator", "pk-live_" + alnum(32, 0), false, 0, 0},
	{"dash before random", "pk_live-" + alnum(32, 0), false, 0, 0},
	{"missing separator", "pklive_" + alnum(32, 0), false, 0, 0},
	{"prod environment", "sk_prod_" + alnum(32, 0), false, 0, 0},
	{"uppercase environment", "sk_LIVE_" + alnum(32, 0), false, 0, 0},
	{"underscore in random", "sk_live_" + alnum(16, 0) + "_" + alnum(16, 0), false, 0, 0},
	{"dash in random", "sk_live_" + alnum(16, 0) + "-" + alnum(16, 0), false, 0, 0},
	{"non-ASCII letter", "sk_live_" + alnum(31, 0) + "é", false, 0, 0},
	{"non-ASCII digit", "sk_live_" + alnum(31, 0) + "٣", false, 0, 0},
	{"invalid UTF-8", "sk_live_" + alnum(31, 0) + "\xff", false, 0, 0},
	{"NUL byte", "sk_live_" + alnum(31, 0) + "\x00", false, 0, 0},
	{"inner space", "sk_live_" + alnum(16, 0) + " " + alnum(16, 0), false, 0, 0},
	{"leading space", " " + skLive, false, 0, 0},
	{"trailing space", skLive + " ", false, 0, 0},
	{"trailing newline", skLive + "\n", false, 0, 0},
	{"trailing CRLF", skLive + "\r\n", false, 0, 0},
	{"Bearer scheme", "Bearer " + skLive, false, 0, 0},
	{"two keys", skLive + "," + pkLive, false, 0, 0},
}

// TestParseKey guards SPEC §3's key format
// `^(pk|sk)_(live|test)_[A-Za-z0-9]{24,128}$`, the key's type and
// environment, and that it is kept only as its SHA-256 and a display prefix
// (`sk_live_` plus 4 characters, SPEC §6).
func TestParseKey(t *testing.T) {
	for _, tt := range parseKeyCases {
		t.Run(tt.name, func(t *testing.T) {
			if re := specKeyRE.MatchString(tt.in); re != tt.wantOK {
				t.Fatalf("test table disagrees with the SPEC regexp on %q: wantOK %v, regexp %v", tt.in, tt.wantOK, re)
			}
			k, ok := ParseKey(tt.in)
			if ok != tt.wantOK {
				t.Fatalf("ParseKey(%q) ok = %v, want %v", tt.in, ok, tt.wantOK)
			}
			if !ok {
				if k != (Key{}) {
					t.Errorf("ParseKey(%q) failed but returned %+v, want the zero Key", tt.in, k)
				}
				return
			}
			if k.Type != tt.wantType {
				t.Errorf("Type = %v, want %v", k.Type, tt.wantType)
			}
			if k.Env != tt.wantEnv {
				t.Errorf("Env = %v, want %v", k.Env, tt.wantEnv)
			}
			wantPrefix := tt.in[:3] + tt.wantEnv.String() + "_" + tt.in[8:12]
			if k.Prefix != wantPrefix {
				t.Errorf("Prefix = %q, want %q", k.Prefix, wantPrefix)
			}
			if want := sha256.Sum256([]byte(tt.in)); k.Hash != want {
				t.Errorf("Hash = %x, want sha256 of the key %x", k.Hash, want)
			}
		})
	}
}

// TestParseKeyPrefixExample guards SPEC §6 key_prefix "at most `sk_live_`
// plus 4 characters" on a literal key.
func TestParseKeyPrefixExample(t *testing.T) {
	tests := []struct {
		in, want string
	}{
		{"sk_live_AbCdEfGhIjKlMnOpQrStUvWx", "sk_live_AbCd"},
		{"pk_test_0123456789abcdefghijklmn", "pk_test_0123"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			k, ok := ParseKey(tt.in)
			if !ok || k.Prefix != tt.want {
				t.Errorf("ParseKey(%q) = %+v, %v; want Prefix %q", tt.in, k, ok, tt.want)
			}
		})
	}
}

// TestDisplayPrefix guards SPEC §6: the access log's key_prefix shows at
// most `sk_live_` plus 4 characters of whatever the client sent.
func TestDisplayPrefix(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"well-formed key", skLive, skLive[:12]},
		{"well-formed public test key", pkTest, pkTest[:12]},
		{"too short random part", "sk_live_abc", "sk_live_"},
		{"bad character in random part", "pk_test_" + alnum(30, 0) + "!", "pk_test_"},
		{"only type and environment", "sk_live_", "sk_live_"},
		{"unknown environment", "sk_prod_" + alnum(32, 0), ""},
		{"unknown type", "xk_live_" + alnum(32, 0), ""},
		{"shorter than a prefix", "sk_liv", ""},
		{"empty", "", ""},
		{"some other secret", "hunter2-hunter2-hunter2-hunter2", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := DisplayPrefix(tt.in)
			if got != tt.want {
				t.Errorf("DisplayPrefix(%q) = %q, want %q", tt.in, got, tt.want)
			}
			if len(got) > 12 || !strings.HasPrefix(tt.in, got) {
				t.Errorf("DisplayPrefix(%q) = %q: want a prefix of the input, at most 12 bytes", tt.in, got)
			}
		})
	}
}

// newAuth builds an Authenticator for the `none` store and envs.
func newAuth(t *testing.T, envs ...config.Env) *Authenticator {
	t.Helper()
	a, err := New(config.Auth{Store: "none", Environments: envs}, nil)
	if err != nil {
		t.Fatalf("New(store none, %v): %v", envs, err)
	}
	return a
}

// TestAuthenticate guards SPEC §1 and §3: the route policy (`secret`,
// `public`, `none`), auth.environments, and the order of checks — key
// presence, then format and environment (401 AUTH_API_KEY_INVALID), then
// type against the route (403 AUTH_API_KEY_FORBIDDEN).
func TestAuthenticate(t *testing.T) {
	live := []config.Env{"live"}
	test := []config.Env{"test"}
	both := []config.Env{"live", "test"}
	malformedPK := "pk_live_" + alnum(10, 0) // right type, bad length
	tests := []struct {
		name     string
		envs     []config.Env
		policy   Policy
		values   []string
		wantCode apierror.Code // "" means accepted
		wantType KeyType
	}{
		// Presence.
		{"secret: no header", live, SecretOnly, nil, apierror.AuthKeyMissing, 0},
		{"public: no header", live, PublicOK, nil, apierror.AuthKeyMissing, 0},
		{"secret: empty slice", live, SecretOnly, []string{}, apierror.AuthKeyMissing, 0},
		{"secret: empty value", live, SecretOnly, []string{""}, apierror.AuthKeyMissing, 0},
		{"public: empty value", both, PublicOK, []string{""}, apierror.AuthKeyMissing, 0},

		// Two values are ambiguous.
		{"secret: two valid keys", live, SecretOnly, []string{skLive, skLive}, apierror.AuthKeyInvalid, 0},
		{"public: two different keys", live, PublicOK, []string{pkLive, skLive}, apierror.AuthKeyInvalid, 0},
		// Issue 13 item 11: an empty header among several is still two
		// headers, not a missing key.
		{"secret: first of two empty", live, SecretOnly, []string{"", skLive}, apierror.AuthKeyInvalid, 0},
		{"secret: second of two empty", live, SecretOnly, []string{skLive, ""}, apierror.AuthKeyInvalid, 0},
		{"public: two empty", live, PublicOK, []string{"", ""}, apierror.AuthKeyInvalid, 0},

		// Format.
		{"secret: malformed", live, SecretOnly, []string{"not-a-key"}, apierror.AuthKeyInvalid, 0},
		{"public: malformed", both, PublicOK, []string{"sk_live_short"}, apierror.AuthKeyInvalid, 0},
		{"secret: trailing newline", live, SecretOnly, []string{skLive + "\n"}, apierror.AuthKeyInvalid, 0},
		{"secret: Bearer scheme", live, SecretOnly, []string{"Bearer " + skLive}, apierror.AuthKeyInvalid, 0},

		// Environment.
		{"secret, envs [live]: sk_test", live, SecretOnly, []string{skTest}, apierror.AuthKeyInvalid, 0},
		{"public, envs [live]: pk_test", live, PublicOK, []string{pkTest}, apierror.AuthKeyInvalid, 0},
		{"public, envs [test]: sk_live", test, PublicOK, []string{skLive}, apierror.AuthKeyInvalid, 0},
		{"secret, envs [test]: sk_test", test, SecretOnly, []string{skTest}, "", Secret},
		{"public, envs [test]: pk_test", test, PublicOK, []string{pkTest}, "", Public},
		{"secret, envs [live,test]: sk_test", both, SecretOnly, []string{skTest}, "", Secret},
		{"secret, envs [live,test]: sk_live", both, SecretOnly, []string{skLive}, "", Secret},

		// Type against the route.
		{"secret: pk_live", live, SecretOnly, []string{pkLive}, apierror.AuthKeyForbidden, 0},
		{"secret, envs [live,test]: pk_test", both, SecretOnly, []string{pkTest}, apierror.AuthKeyForbidden, 0},
		{"secret: sk_live", live, SecretOnly, []string{skLive}, "", Secret},
		{"public: pk_live", live, PublicOK, []string{pkLive}, "", Public},
		{"public: sk_live", live, PublicOK, []string{skLive}, "", Secret},

		// Order: format and environment come before type.
		{"order: malformed pk on secret is invalid", live, SecretOnly, []string{malformedPK}, apierror.AuthKeyInvalid, 0},
		{"order: pk_test on secret with envs [live] is invalid", live, SecretOnly, []string{pkTest}, apierror.AuthKeyInvalid, 0},
		{"order: two pk keys on secret is invalid", live, SecretOnly, []string{pkLive, pkLive}, apierror.AuthKeyInvalid, 0},

		// `none` ignores the header altogether.
		{"none: no header", live, None, nil, "", 0},
		{"none: empty value", live, None, []string{""}, "", 0},
		{"none: malformed", live, None, []string{"garbage"}, "", 0},
		{"none: valid key", live, None, []string{skLive}, "", 0},
		{"none: wrong environment", live, None, []string{skTest}, "", 0},
		{"none: two values", live, None, []string{skLive, pkLive}, "", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newAuth(t, tt.envs...)
			id, err := a.Authenticate(context.Background(), tt.values, tt.policy)
			if tt.wantCode != "" {
				if err == nil {
					t.Fatalf("Authenticate(%q, %v) = %+v, nil; want %s", tt.values, tt.policy, id, tt.wantCode)
				}
				if err.Code != tt.wantCode {
					t.Errorf("Authenticate(%q, %v) code = %s, want %s", tt.values, tt.policy, err.Code, tt.wantCode)
				}
				if id != (Identity{}) {
					t.Errorf("rejected request got identity %+v, want zero", id)
				}
				return
			}
			if err != nil {
				t.Fatalf("Authenticate(%q, %v) = %v, want accepted", tt.values, tt.policy, err)
			}
			if tt.policy == None {
				if id != (Identity{}) {
					t.Errorf("auth none: identity = %+v, want the zero Identity", id)
				}
				return
			}
			if id.Key.Type != tt.wantType {
				t.Errorf("Key.Type = %v, want %v", id.Key.Type, tt.wantType)
			}
			if want := sha256.Sum256([]byte(tt.values[0])); id.Key.Hash != want {
				t.Errorf("Key.Hash = %x, want sha256 of the header value %x", id.Key.Hash, want)
			}
			if id.Key.Prefix != tt.values[0][:12] {
				t.Errorf("Key.Prefix = %q, want %q", id.Key.Prefix, tt.values[0][:12])
			}
			if id.AppID != "" || id.Plan != "" {
				t.Errorf("store none: AppID %q, Plan %q; want both empty", id.AppID, id.Plan)
			}
		})
	}
}

// TestAuthenticateStatuses guards SPEC §1's HTTP statuses of the auth
// rejections: 401 missing, 401 invalid, 403 forbidden.
func TestAuthenticateStatuses(t *testing.T) {
	a := newAuth(t, "live")
	tests := []struct {
		name       string
		values     []string
		wantStatus int
	}{
		{"missing", nil, 401},
		{"invalid", []string{"nope"}, 401},
		{"forbidden", []string{pkLive}, 403},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := a.Authenticate(context.Background(), tt.values, SecretOnly)
			if err == nil {
				t.Fatal("Authenticate accepted the request")
			}
			if got := err.HTTPStatus(); got != tt.wantStatus {
				t.Errorf("HTTPStatus() = %d, want %d", got, tt.wantStatus)
			}
		})
	}
}

// TestNew guards SPEC §3 auth.store and auth.environments: the store
// `none` takes no key store, `file` and `redis` need one, and an unknown
// environment is refused.
func TestNew(t *testing.T) {
	fileStore := NewFileStore(nil)
	tests := []struct {
		name    string
		cfg     config.Auth
		store   KeyStore
		wantErr bool
	}{
		{"store none, live", config.Auth{Store: "none", Environments: []config.Env{"live"}}, nil, false},
		{"store none, live and test", config.Auth{Store: "none", Environments: []config.Env{"live", "test"}}, nil, false},
		{"default config", config.Default().Auth, nil, false},
		{"store none with a key store", config.Auth{Store: "none", Environments: []config.Env{"live"}}, fileStore, true},
		{"store file", config.Auth{Store: "file", File: "apps.yaml", Environments: []config.Env{"live"}}, fileStore, false},
		{"store file without its store", config.Auth{Store: "file", File: "apps.yaml", Environments: []config.Env{"live"}}, nil, true},
		{"store redis without its store", config.Auth{Store: "redis", Environments: []config.Env{"live"}}, nil, true},
		{"unknown environment", config.Auth{Store: "none", Environments: []config.Env{"live", "prod"}}, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := New(tt.cfg, tt.store)
			if tt.wantErr {
				if err == nil {
					t.Errorf("New(%+v) = %v, nil; want an error", tt.cfg, a)
				}
				return
			}
			if err != nil || a == nil {
				t.Errorf("New(%+v) = %v, %v; want an Authenticator", tt.cfg, a, err)
			}
		})
	}
}

// TestKeyTypeString guards SPEC §3's X-Api-Key-Type header values.
func TestKeyTypeString(t *testing.T) {
	tests := []struct {
		t    KeyType
		want string
	}{
		{Public, "public"},
		{Secret, "secret"},
		{0, ""},
		{KeyType(99), ""},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			if got := tt.t.String(); got != tt.want {
				t.Errorf("KeyType(%d).String() = %q, want %q", tt.t, got, tt.want)
			}
		})
	}
}

// TestEnvString guards SPEC §3's environment names.
func TestEnvString(t *testing.T) {
	tests := []struct {
		e    Env
		want string
	}{
		{Live, "live"},
		{Test, "test"},
		{0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			if got := tt.e.String(); got != tt.want {
				t.Errorf("Env(%d).String() = %q, want %q", tt.e, got, tt.want)
			}
		})
	}
}

// TestPolicyOf guards SPEC §3's route policy values `secret`, `public`
// and `none`, spelled exactly.
func TestPolicyOf(t *testing.T) {
	tests := []struct {
		in      string
		want    Policy
		wantErr bool
	}{
		{"secret", SecretOnly, false},
		{"public", PublicOK, false},
		{"none", None, false},
		{"Secret", 0, true},
		{"private", 0, true},
		{"", 0, true},
		{" none", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := PolicyOf(config.AuthPolicy(tt.in))
			if (err != nil) != tt.wantErr {
				t.Fatalf("PolicyOf(%q) error = %v, want error %v", tt.in, err, tt.wantErr)
			}
			if !tt.wantErr && got != tt.want {
				t.Errorf("PolicyOf(%q) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
}

// TestParseKeyNoAlloc pins the hot path: parsing and hashing a key
// allocates nothing.
func TestParseKeyNoAlloc(t *testing.T) {
	if testing.CoverMode() != "" {
		t.Skip("coverage instrumentation allocates")
	}
	key := "sk_live_AbCdEfGhIjKlMnOpQrStUvWx"
	if n := testing.AllocsPerRun(100, func() { ParseKey(key) }); n != 0 && !raceEnabled {
		t.Fatalf("%v allocations per ParseKey", n)
	}
}
