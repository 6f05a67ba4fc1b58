package proxy

import (
	"strconv"
	"sync/atomic"
	"time"

	"github.com/innovartx/deskgate/ratelimit"
)

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
