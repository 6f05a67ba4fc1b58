package proxy

import (
	"net/http"
	"sync/atomic"
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
