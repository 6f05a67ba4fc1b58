package proxy

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/innovartx/deskgate/apierror"
	"github.com/innovartx/deskgate/auth"
	"github.com/innovartx/deskgate/config"
	"github.com/innovartx/deskgate/metrics"
	"github.com/innovartx/deskgate/ratelimit"
)

// route is one compiled route policy.
type route struct {
	g       *Gateway
	pattern string
	policy  auth.Policy
	// limit is nil on `rate_limit: false` routes.
	limit   *bucket
	keyByIP bool
	keyBy   config.KeyBy
	// websocket is routes[].websocket: Upgrade: websocket goes through.
	websocket bool
	// cors is set when the route takes part in the gateway's CORS policy.
	cors    bool
	proxy   *httputil.ReverseProxy
	metrics *metrics.Route
	// slots are the upstream host's (upstream.max_conns_per_host), and
	// timeout the route's upstream timeout, the longest a request waits
	// for one.
	slots   *hostSlots
	timeout time.Duration
	// quotas are those whose pattern may match the route's requests.
	quotas []routeQuota
	// upHost and upPort name the upstream on its span (SPEC §11).
	upHost string
	upPort int
}

// ServeHTTP lets a route stand in ServeMux, which the gateway only asks
// which route matches ([Gateway.lookup]); it never calls a route. Called
// anyway, a route answers 500 rather than run half a chain.
func (rt *route) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rt.g.catalog.Write(w, r, apierror.ErrInternal)
}

// hostSlots caps the exchanges in flight to one upstream host
// (upstream.max_conns_per_host): one token in c per exchange. With
// HTTP/1.1 upstreams an exchange holds one connection, so this caps the
// connections in use too. Routes to the same host share it.
//
// It is not http.Transport.MaxConnsPerHost: a request past that cap waits
// in the transport until its context is done, and the inbound context
// has no deadline; giving every outbound request one (context.WithTimeout
// and Request.WithContext) costs several allocations per request, against
// issue 7's rule. A buffered channel costs nothing until it is full; only
// a request that has to wait makes a timer.
type hostSlots struct {
	c    chan struct{}
	host string
}

// hostPort returns u's host and port, the port made explicit.
func hostPort(u *url.URL) (string, int) {
	port, err := strconv.Atoi(u.Port())
	if err != nil {
		port = 80
		if u.Scheme == "https" {
			port = 443
		}
	}
	return u.Hostname(), port
}

// slotKey names an upstream host: scheme, host and port, the port made
// explicit so that http://x and http://x:80 share their slots.
func slotKey(u *url.URL) string {
	port := u.Port()
	if port == "" {
		port = "80"
		if u.Scheme == "https" {
			port = "443"
		}
	}
	return u.Scheme + "://" + net.JoinHostPort(strings.ToLower(u.Hostname()), port)
}

// bucket is one budget: its default policy and, for the global bucket,
// one per plan.
type bucket struct {
	def   *limitPolicy
	plans map[string]*limitPolicy
	// shadow is `mode: shadow` (SPEC §10): refusals are counted, not
	// answered.
	shadow bool
}

func (b *bucket) forPlan(plan string) *limitPolicy {
	if plan != "" {
		if p, ok := b.plans[plan]; ok {
			return p
		}
	}
	return b.def
}

// limitPolicy is a policy with its RateLimit-Policy header value and
// the RateLimit values of its tiers.
type limitPolicy struct {
	p *ratelimit.Policy
	// bucketID names the budget the policy belongs to ("global" for the
	// plans too): the upstream's 429s are remembered per bucket.
	bucketID string
	header   []string
	tiers    []*headerCache
}

// buildRoutes compiles cfg's routes: each one's auth policy, budget,
// upstream (transport, connection slots, ReverseProxy) and metrics, and
// registers its pattern.
func (g *Gateway) buildRoutes(cfg *config.Config, o Options, codes []string) error {
	var err error
	global, err := newBucket("global", cfg.RateLimit.Algorithm, cfg.RateLimit.Tiers)
	if err != nil {
		return err
	}
	global.shadow = cfg.RateLimit.Mode.Shadow()
	for name, plan := range cfg.RateLimit.Plans {
		lp, err := newLimitPolicy("plan:"+name, cfg.RateLimit.Algorithm, plan.Tiers)
		if err != nil {
			return err
		}
		lp.bucketID = global.def.bucketID
		if global.plans == nil {
			global.plans = map[string]*limitPolicy{}
		}
		global.plans[name] = lp
	}
	buckets := map[string]*bucket{}

	transports := map[time.Duration]http.RoundTripper{}
	slots := map[string]*hostSlots{}
	for i, rc := range cfg.Routes {
		rt := &route{g: g, pattern: rc.Pattern, keyBy: cfg.RateLimit.KeyBy, websocket: rc.WebSocket}
		if rt.policy, err = auth.PolicyOf(rc.Auth); err != nil {
			return fmt.Errorf("routes[%d].auth: %w", i, err)
		}
		rt.keyByIP = rt.policy == auth.None || cfg.RateLimit.KeyBy == config.KeyByIP
		rt.cors = g.cors != nil && rt.policy != auth.SecretOnly && (rc.CORS == nil || *rc.CORS)
		switch {
		case rc.RateLimit.Disabled:
		case rc.RateLimit.Bucket == "":
			rt.limit = global
		default:
			b := buckets[rc.RateLimit.Bucket]
			if b == nil {
				alg := rc.RateLimit.Algorithm.Or(cfg.RateLimit.Algorithm)
				tiers := rc.RateLimit.Tiers
				if len(tiers) == 0 {
					tiers = cfg.RateLimit.Tiers
				}
				if b, err = newBucket("bucket:"+rc.RateLimit.Bucket, alg, tiers); err != nil {
					return fmt.Errorf("routes[%d].rate_limit: %w", i, err)
				}
				b.shadow = rc.RateLimit.Mode.Shadow()
				buckets[rc.RateLimit.Bucket] = b
			}
			rt.limit = b
		}

		target := cfg.Upstream.URL
		if rc.Upstream != "" {
			target = rc.Upstream
		}
		u, err := config.ParseUpstream(target)
		if err != nil {
			return fmt.Errorf("routes[%d].upstream: %w", i, err)
		}
		timeout := cfg.Upstream.Timeout.D()
		if rc.Timeout > 0 {
			timeout = rc.Timeout.D()
		}
		tr := o.Transport
		if tr == nil {
			if tr = transports[timeout]; tr == nil {
				t := newTransport(cfg.Upstream, timeout)
				g.transport = append(g.transport, t)
				transports[timeout] = t
				tr = t
			}
		}
		rt.timeout = timeout
		rt.upHost, rt.upPort = hostPort(u)
		key := slotKey(u)
		if rt.slots = slots[key]; rt.slots == nil {
			rt.slots = &hostSlots{c: make(chan struct{}, cfg.Upstream.MaxConnsPerHost), host: u.Host}
			slots[key] = rt.slots
		}
		rt.metrics = o.Metrics.ForRoute(rc.Pattern, codes)
		rt.proxy = g.newReverseProxy(rt, u, tr, cfg.Upstream.MaxErrorBodyBytes)
		if err := config.Register(g.mux, rc.Pattern, rt); err != nil {
			return fmt.Errorf("routes[%d].pattern: %w", i, err)
		}
		g.routes = append(g.routes, rt)
		if p := rc.Pattern; !strings.HasPrefix(p[strings.IndexByte(p, ' ')+1:], "/") {
			g.hostPatterns = true
		}
	}
	return nil
}

func newBucket(id string, alg config.Algorithm, tiers []config.Tier) (*bucket, error) {
	lp, err := newLimitPolicy(id, alg, tiers)
	if err != nil {
		return nil, err
	}
	lp.bucketID = id
	return &bucket{def: lp}, nil
}

func newLimitPolicy(id string, alg config.Algorithm, tiers []config.Tier) (*limitPolicy, error) {
	ts := make([]ratelimit.Tier, len(tiers))
	items := make([]string, len(tiers))
	for i, t := range tiers {
		ts[i] = ratelimit.Tier{Limit: int64(t.Limit), Window: t.Window.D, Name: t.Window.Text}
		items[i] = strconv.Quote(t.Window.Text) + ";q=" + strconv.Itoa(t.Limit) + ";w=" + strconv.FormatInt(int64(t.Window.D/time.Second), 10)
	}
	p, err := ratelimit.NewPolicy(id, algorithmOf(alg), ts)
	if err != nil {
		return nil, err
	}
	lp := &limitPolicy{p: p, header: []string{strings.Join(items, ", ")}}
	for _, t := range p.Tiers {
		lp.tiers = append(lp.tiers, newHeaderCache(t))
	}
	return lp, nil
}

// algorithmOf is the store's algorithm for a bucket's, which validation
// has checked.
func algorithmOf(a config.Algorithm) ratelimit.Algorithm {
	if a == config.GCRA {
		return ratelimit.GCRA
	}
	return ratelimit.SlidingLog
}

// newTransport returns a transport sized for a gateway: a deep keep-alive
// pool per upstream host instead of the default two idle connections, and
// the route's timeout on the response headers.
func newTransport(u config.Upstream, headerTimeout time.Duration) *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns = 0 // no global cap; the per-host one applies
	t.MaxIdleConnsPerHost = u.MaxIdleConnsPerHost
	t.IdleConnTimeout = 90 * time.Second
	t.ResponseHeaderTimeout = headerTimeout
	// Pass the client's Accept-Encoding through and never decode on its
	// behalf: responses stream as the upstream sent them.
	t.DisableCompression = true
	return t
}

func (g *Gateway) newReverseProxy(rt *route, target *url.URL, tr http.RoundTripper, maxErrBody int64) *httputil.ReverseProxy {
	n := &normalizer{g: g, rt: rt, max: maxErrBody}
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			restoreOwnHeaders(pr.In.Header, pr.Out.Header)
			setXForwarded(pr)
			noDefaultUserAgent(pr.Out.Header)
		},
		Transport:      tr,
		BufferPool:     bufferPool,
		ModifyResponse: n.modify,
		ErrorHandler:   g.proxyError,
		ErrorLog:       slog.NewLogLogger(g.log.Handler(), slog.LevelWarn),
	}
}
