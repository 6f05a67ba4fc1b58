package proxy

import (
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/innovartx/deskgate/ratelimit"
)

// routeCache remembers which route ServeMux chose for a method and a
// cleaned path, so that the hot path skips ServeMux's matching (which
// allocates for subtree and wildcard patterns). It is direct-mapped and
// bounded: a slot holds the last path that hashed to it. A gateway's
// patterns never change, so an entry never goes stale.
type routeCache struct {
	slots [1024]atomic.Pointer[routeCacheEntry]
}

type routeCacheEntry struct {
	method, host, path string
	rt                 *route
}

func routeHash(method, host, path string) uint32 {
	h := uint32(2166136261)
	for _, s := range [...]string{method, host, path} {
		for i := 0; i < len(s); i++ {
			h ^= uint32(s[i])
			h *= 16777619
		}
		h ^= 0xff
		h *= 16777619
	}
	return h
}

func (c *routeCache) get(method, host, path string) *route {
	e := c.slots[routeHash(method, host, path)%uint32(len(c.slots))].Load()
	if e != nil && e.path == path && e.method == method && e.host == host {
		return e.rt
	}
	return nil
}

func (c *routeCache) put(method, host, path string, rt *route) {
	c.slots[routeHash(method, host, path)%uint32(len(c.slots))].Store(&routeCacheEntry{method, host, path, rt})
}

// headerCache keeps the RateLimit header values of one tier, built on
// first use: one per (remaining, seconds) pair, so that answering does not
// format a string per request. Tiers with more pairs than maxHeaderPairs
// format theirs each time.
type headerCache struct {
	tier  ratelimit.Tier
	secs  int64
	slots []atomic.Pointer[[]string]
}

const maxHeaderPairs = 1 << 15

func newHeaderCache(t ratelimit.Tier) *headerCache {
	c := &headerCache{tier: t, secs: int64(t.Window / time.Second)}
	if n := t.Limit * (c.secs + 1); n <= maxHeaderPairs {
		c.slots = make([]atomic.Pointer[[]string], n)
	}
	return c
}

// value returns the RateLimit field value `"1s";r=2;t=1` of d.
func (c *headerCache) value(d ratelimit.Decision) []string {
	secs := ceilSeconds(d.Reset)
	if d.Remaining < 0 || d.Remaining >= c.tier.Limit || secs > c.secs || c.slots == nil {
		return []string{c.format(d.Remaining, secs)}
	}
	slot := &c.slots[d.Remaining*(c.secs+1)+secs]
	if v := slot.Load(); v != nil {
		return *v
	}
	v := []string{c.format(d.Remaining, secs)}
	slot.Store(&v)
	return v
}

func (c *headerCache) format(remaining, secs int64) string {
	b := make([]byte, 0, 32)
	b = append(b, '"')
	b = append(b, c.tier.Name...)
	b = append(b, `";r=`...)
	b = strconv.AppendInt(b, remaining, 10)
	b = append(b, ";t="...)
	return string(strconv.AppendInt(b, secs, 10))
}

// bufferPool is the httputil.BufferPool of every reverse proxy: 32 KiB
// copy buffers, reused through a channel, which unlike sync.Pool takes a
// []byte back without allocating.
var bufferPool = newBytePool(256)

type bytePool struct{ c chan []byte }

func newBytePool(n int) *bytePool { return &bytePool{c: make(chan []byte, n)} }

func (p *bytePool) Get() []byte {
	select {
	case b := <-p.c:
		return b
	default:
		return make([]byte, 32<<10)
	}
}

func (p *bytePool) Put(b []byte) {
	select {
	case p.c <- b:
	default:
	}
}

var _ interface {
	Get() []byte
	Put([]byte)
} = (*bytePool)(nil)

// hostOf is the host ServeMux matches on: r.Host without its port.
func hostOf(r *http.Request) string {
	h := r.Host
	for i := len(h) - 1; i >= 0; i-- {
		switch h[i] {
		case ':':
			return h[:i]
		case ']':
			return h
		}
	}
	return h
}
