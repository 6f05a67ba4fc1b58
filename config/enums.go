package config

// The config's enumerations. Each is a named string type: yaml decodes the
// text as written, [Config.Validate] (the one place that judges it) names
// a bad value with its field path, and the consumers switch on the
// constants below instead of spelling the values again.
//
// They are checked by Validate rather than by the decoder's checker on
// purpose: a value the checker reports is taken out of the tree, and the
// rules that read it (a route's rate_limit block is "set" when it names an
// algorithm or a mode; two routes sharing a bucket must agree on both)
// would then see the default and report something else.

// OnFailure is redis.on_failure: what the limiter does when Redis cannot
// decide.
type OnFailure string

// The values of redis.on_failure.
const (
	// OnFailureLocal decides in process with the same tiers.
	OnFailureLocal OnFailure = "local"
	// OnFailureAllow admits the request.
	OnFailureAllow OnFailure = "allow"
	// OnFailureDeny refuses it with 503.
	OnFailureDeny OnFailure = "deny"
)

func (f OnFailure) valid() bool {
	return f == OnFailureLocal || f == OnFailureAllow || f == OnFailureDeny
}

// Algorithm is how a bucket counts: rate_limit.algorithm, or a route's
// rate_limit.algorithm, where "" is the global one.
type Algorithm string

// The values of rate_limit.algorithm.
const (
	// SlidingLog keeps the time of every admitted request.
	SlidingLog Algorithm = "sliding_log"
	// GCRA is redis_rate's generic cell rate algorithm: one tier.
	GCRA Algorithm = "gcra"
)

func (a Algorithm) valid() bool { return a == SlidingLog || a == GCRA }

// Or returns a, or def when a is "" (not written).
func (a Algorithm) Or(def Algorithm) Algorithm {
	if a == "" {
		return def
	}
	return a
}

// Mode is a bucket's or a quota's mode (SPEC §10); "" is enforce.
type Mode string

// The values of mode.
const (
	// Enforce refuses what is over the limit.
	Enforce Mode = "enforce"
	// Shadow only counts and reports what enforce would refuse.
	Shadow Mode = "shadow"
)

func (m Mode) valid() bool { return m == "" || m == Enforce || m == Shadow }

// Shadow reports whether m only observes.
func (m Mode) Shadow() bool { return m == Shadow }

// AuthPolicy is a route's auth: which keys it takes.
type AuthPolicy string

// The values of routes[].auth.
const (
	// AuthSecret takes secret keys only.
	AuthSecret AuthPolicy = "secret"
	// AuthPublic takes public and secret keys.
	AuthPublic AuthPolicy = "public"
	// AuthNone takes no key: requests are limited by client address.
	AuthNone AuthPolicy = "none"
)

func (p AuthPolicy) valid() bool { return p == AuthSecret || p == AuthPublic || p == AuthNone }

// Env is a key environment of auth.environments.
type Env string

// The values of auth.environments.
const (
	EnvLive Env = "live"
	EnvTest Env = "test"
)

func (e Env) valid() bool { return e == EnvLive || e == EnvTest }

// KeyStore is auth.store: where keys are checked.
type KeyStore string

// The values of auth.store.
const (
	// StoreNone checks a key's format and type only.
	StoreNone KeyStore = "none"
	// StoreFile checks keys against the key file (auth.file).
	StoreFile KeyStore = "file"
	// StoreRedis checks keys against records in Redis.
	StoreRedis KeyStore = "redis"
)

// KeyBy is rate_limit.key_by: whose budget a request spends.
type KeyBy string

// The values of rate_limit.key_by.
const (
	// KeyByApp spends the app's budget (the key's, without a key store).
	KeyByApp KeyBy = "app"
	// KeyByKey spends the key's budget.
	KeyByKey KeyBy = "key"
	// KeyByIP spends the client address's budget.
	KeyByIP KeyBy = "ip"
)

func (k KeyBy) valid() bool { return k == KeyByApp || k == KeyByKey || k == KeyByIP }

// LogLevel is log.level.
type LogLevel string

// The values of log.level.
const (
	LevelDebug LogLevel = "debug"
	LevelInfo  LogLevel = "info"
	LevelWarn  LogLevel = "warn"
	LevelError LogLevel = "error"
)

func (l LogLevel) valid() bool {
	return l == LevelDebug || l == LevelInfo || l == LevelWarn || l == LevelError
}

// LogFormat is log.format.
type LogFormat string

// The values of log.format.
const (
	FormatJSON LogFormat = "json"
	FormatText LogFormat = "text"
)

func (f LogFormat) valid() bool { return f == FormatJSON || f == FormatText }

// TLSVersion is server.tls.min_version.
type TLSVersion string

// The values of server.tls.min_version.
const (
	TLS12 TLSVersion = "1.2"
	TLS13 TLSVersion = "1.3"
)

func (v TLSVersion) valid() bool { return v == TLS12 || v == TLS13 }
