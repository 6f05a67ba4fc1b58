// Package ratelimit decides whether a request fits its identity's budget
// (SPEC §4): every tier of a [Policy] must admit it, an admitted request
// counts in every tier, and a denied one counts in none.
//
// The package knows nothing of HTTP: it takes a [Policy] and a [Key] and
// returns a [Decision]. Stores hold the state; [Memory] keeps it in
// process.
package ratelimit

import (
	"context"
	"crypto/sha256"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Tier is one limit: at most Limit requests in any sliding Window.
type Tier struct {
	Limit  int64
	Window time.Duration
	// Name is the window as written in the config ("1s", "1m"); the
	// RateLimit headers name the tier by it.
	Name string
}

// String returns the tier as "3/1s".
func (t Tier) String() string { return strconv.FormatInt(t.Limit, 10) + "/" + t.Name }

// Policy is the tiers of one budget. Its ID names the state: two policies
// with the same ID share counts, so a reload that keeps a bucket keeps its
// clients' budgets.
type Policy struct {
	ID        string
	Algorithm Algorithm
	Tiers     []Tier

	maxWindow time.Duration
	capacity  int64
	// slot is the ID's number in this process (see slotOf): what the
	// deny cache is keyed by, so that a reload that rebuilds a policy
	// with the same ID keeps its entries.
	slot uint32
	// scriptArgs describe the policy to the sliding-log script: its ARGV
	// for one policy, encoded once by slidingLogArgs, beside the script.
	scriptArgs []any
}

// NewPolicy returns a policy. It returns an error for no tiers, a
// non-positive limit or window, two tiers with one window, or GCRA with more
// than one tier.
func NewPolicy(id string, alg Algorithm, tiers []Tier) (*Policy, error) {
	if len(tiers) == 0 {
		return nil, fmt.Errorf("policy %q: no tiers", id)
	}
	if alg.oneTier() && len(tiers) != 1 {
		return nil, fmt.Errorf("policy %q: %s takes exactly one tier, got %d", id, alg, len(tiers))
	}
	p := &Policy{ID: id, Algorithm: alg, Tiers: append([]Tier(nil), tiers...), slot: slotOf(id)}
	seen := map[time.Duration]bool{}
	for _, t := range tiers {
		if t.Limit <= 0 || t.Window <= 0 {
			return nil, fmt.Errorf("policy %q: tier %s: limit and window must be positive", id, t)
		}
		if seen[t.Window] {
			return nil, fmt.Errorf("policy %q: two tiers with window %s", id, t.Window)
		}
		seen[t.Window] = true
		p.maxWindow = max(p.maxWindow, t.Window)
		p.capacity = max(p.capacity, t.Limit)
	}
	p.scriptArgs = slidingLogArgs(p)
	return p, nil
}

// policySlots numbers policy IDs for the life of the process: a handful
// per config, kept across reloads.
var policySlots struct {
	sync.Mutex
	m map[string]uint32
}

// slotOf returns the number of a policy ID, the same for every policy
// built with that ID.
func slotOf(id string) uint32 {
	policySlots.Lock()
	defer policySlots.Unlock()
	if policySlots.m == nil {
		policySlots.m = map[string]uint32{}
	}
	n, ok := policySlots.m[id]
	if !ok {
		n = uint32(len(policySlots.m) + 1)
		policySlots.m[id] = n
	}
	return n
}

// String returns the policy as "global: 3/1s, 20/10s, 100/1m".
func (p *Policy) String() string {
	s := make([]string, len(p.Tiers))
	for i, t := range p.Tiers {
		s[i] = t.String()
	}
	return p.ID + ": " + strings.Join(s, ", ")
}

// Key names an identity by a hash, never by a raw API key or address.
type Key [16]byte

// KeyFromHash returns the Key of an API key from its SHA-256.
func KeyFromHash(h [32]byte) Key { return Key(h[:16]) }

// KeyFromApp returns the Key of an app id.
func KeyFromApp(app string) Key { return derive("app:", []byte(app)) }

// KeyFromAddr returns the Key of a client address.
func KeyFromAddr(a netip.Addr) Key {
	b := a.Unmap().As16()
	return derive("ip:", b[:])
}

func derive(kind string, v []byte) Key {
	h := sha256.New()
	h.Write([]byte(kind))
	h.Write(v)
	var sum [32]byte
	h.Sum(sum[:0])
	return Key(sum[:16])
}

// Decision is the outcome of one request against a policy.
type Decision struct {
	// Allowed reports whether every tier admitted the request.
	Allowed bool
	// Tier is the index of the tier the RateLimit header reports: the one
	// with the least quota left after this request, or, when denied, the
	// one that blocks longest.
	Tier int
	// Remaining is what Tier has left after this request (0 when denied).
	Remaining int64
	// Reset is, when allowed, the time until Tier frees a slot; when
	// denied, the time until the request would be admitted.
	Reset time.Duration
}

// String returns the decision for logs and test failures.
func (d Decision) String() string {
	verb := "denied"
	if d.Allowed {
		verb = "allowed"
	}
	return fmt.Sprintf("%s tier=%d remaining=%d reset=%s", verb, d.Tier, d.Remaining, d.Reset)
}

// Store decides and records. Implementations are safe for concurrent use.
type Store interface {
	Allow(ctx context.Context, p *Policy, k Key) (Decision, error)
}

var _ Store = (*Memory)(nil)
