// Package auth checks API keys (SPEC §3): the key's presence and format,
// its environment, its type against the route's policy and, with a key
// store, the app it belongs to.
//
// A key is kept only as its SHA-256 and a short display prefix
// ([Key.Prefix]); the full key never leaves [ParseKey].
package auth

import (
	"context"
	"crypto/sha256"
	"fmt"

	"github.com/innovartx/deskgate/apierror"
	"github.com/innovartx/deskgate/config"
)

// KeyType is the type of an API key: public (pk_) or secret (sk_).
type KeyType uint8

// The key types. The zero value is no key.
const (
	Public KeyType = iota + 1
	Secret
)

// String returns "public", "secret", or "" for no key: the values of the
// X-Api-Key-Type header sent upstream.
func (t KeyType) String() string {
	switch t {
	case Public:
		return "public"
	case Secret:
		return "secret"
	}
	return ""
}

// Env is a key's environment.
type Env uint8

// The environments.
const (
	Live Env = iota + 1
	Test
)

// String returns "live" or "test".
func (e Env) String() string {
	switch e {
	case Live:
		return "live"
	case Test:
		return "test"
	}
	return ""
}

// Key is a well-formed API key, reduced to what deskgate may keep.
type Key struct {
	Type KeyType
	Env  Env
	// Hash is the SHA-256 of the whole key string.
	Hash [32]byte
	// Prefix is the key's type, environment and first four random
	// characters (`sk_live_AbCd`), the most of a key a log line shows.
	Prefix string
}

// Key length bounds of the random part (SPEC §3).
const (
	minRandom = 24
	maxRandom = 128
)

// ParseKey reports whether s has the format
// `^(pk|sk)_(live|test)_[A-Za-z0-9]{24,128}$` and, if so, returns the key
// with its hash. It is written by hand, without regexp, because it runs on
// every request.
func ParseKey(s string) (Key, bool) {
	k, ok := parseFormat(s)
	if !ok {
		return Key{}, false
	}
	// Hash from a stack copy: []byte(s) would allocate per request.
	var buf [8 + maxRandom]byte
	k.Hash = sha256.Sum256(buf[:copy(buf[:], s)])
	return k, true
}

func parseFormat(s string) (Key, bool) {
	// "pk_live_" is 8 bytes long, like "sk_test_".
	if len(s) < 8+minRandom || len(s) > 8+maxRandom || s[1] != 'k' || s[2] != '_' || s[7] != '_' {
		return Key{}, false
	}
	var k Key
	switch s[0] {
	case 'p':
		k.Type = Public
	case 's':
		k.Type = Secret
	default:
		return Key{}, false
	}
	switch s[3:7] {
	case "live":
		k.Env = Live
	case "test":
		k.Env = Test
	default:
		return Key{}, false
	}
	for i := 8; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return Key{}, false
		}
	}
	k.Prefix = s[:12]
	return k, true
}

// DisplayPrefix returns what a log line may show of a raw header value: the
// prefix of a well-formed key, or at most its first 8 bytes when they look
// like a key's type and environment, else "".
func DisplayPrefix(s string) string {
	if k, ok := parseFormat(s); ok {
		return k.Prefix
	}
	if len(s) >= 8 && (s[:3] == "pk_" || s[:3] == "sk_") && (s[3:8] == "live_" || s[3:8] == "test_") {
		return s[:8]
	}
	return ""
}

// Policy is a route's `auth:` value.
type Policy uint8

// The policies.
const (
	None Policy = iota
	PublicOK
	SecretOnly
)

// PolicyOf returns the Policy of a route's auth. A value that validation
// would refuse is an error, never [None].
func PolicyOf(p config.AuthPolicy) (Policy, error) {
	switch p {
	case config.AuthNone:
		return None, nil
	case config.AuthPublic:
		return PublicOK, nil
	case config.AuthSecret:
		return SecretOnly, nil
	}
	return 0, fmt.Errorf("unknown auth policy %q", p)
}

// Identity is who made a request, as far as the gateway knows.
type Identity struct {
	// Key is the request's key; its Type is zero on `auth: none` routes.
	Key Key
	// AppID is the app owning the key, "" when the store is none.
	AppID string
	// Plan is the app's plan, "" for the default tiers.
	Plan string
}

// Authenticator checks keys against route policies. It is built per
// config and safe for concurrent use.
type Authenticator struct {
	envs  [3]bool // indexed by Env
	store KeyStore
}

// New returns an Authenticator for cfg with its key store: nil for
// `auth.store: none` (format and type only; the app is unknown to the
// gateway), a [FileStore] or a [RedisStore].
func New(cfg config.Auth, store KeyStore) (*Authenticator, error) {
	if (cfg.Store == "none") != (store == nil) {
		return nil, fmt.Errorf("auth.store %q needs a key store to match", cfg.Store)
	}
	a := &Authenticator{store: store}
	for _, e := range cfg.Environments {
		switch e {
		case config.EnvLive:
			a.envs[Live] = true
		case config.EnvTest:
			a.envs[Test] = true
		default:
			return nil, fmt.Errorf("unknown environment %q", e)
		}
	}
	return a, nil
}

// Authenticate checks the X-API-Key values of a request against p, in the
// order of SPEC §1: presence, format (and environment), type against the
// route, then the key store. More than one X-API-Key header is
// AUTH_API_KEY_INVALID even when some are empty; only a single empty one
// (or none) is AUTH_API_KEY_MISSING. Refusals are shared sentinels; a store that
// cannot answer gives 503 SERVICE_UNAVAILABLE.
func (a *Authenticator) Authenticate(ctx context.Context, values []string, p Policy) (Identity, *apierror.Error) {
	if p == None {
		return Identity{}, nil
	}
	if len(values) > 1 {
		// Two headers are ambiguous, whatever they hold (an empty one
		// too): which one would the upstream read? As with two
		// Authorization headers, the credentials are refused, not
		// reported missing.
		return Identity{}, apierror.ErrKeyInvalid
	}
	if len(values) == 0 || values[0] == "" {
		return Identity{}, apierror.ErrKeyMissing
	}
	k, ok := ParseKey(values[0])
	if !ok || !a.envs[k.Env] {
		return Identity{}, apierror.ErrKeyInvalid
	}
	if p == SecretOnly && k.Type != Secret {
		return Identity{}, apierror.ErrKeyForbidden
	}
	if a.store == nil {
		return Identity{Key: k}, nil
	}
	app, err := a.store.Lookup(ctx, k.Hash)
	if err != nil {
		// Never an unauthenticated pass: no answer is 503.
		return Identity{}, apierror.New(apierror.ServiceUnavailable, err)
	}
	if app == nil || !app.Active {
		return Identity{}, apierror.ErrKeyInvalid
	}
	return Identity{Key: k, AppID: app.ID, Plan: app.Plan}, nil
}
