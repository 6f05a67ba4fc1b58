package ratelimit

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// The health of the shared store.
//
// A request whose Redis call fails switches the replica to redis.on_failure
// (markDown) and starts one health loop. The loop checks Redis with the
// operation that failed — the rate-limit script, which writes, on a key of
// its own in the slot of the identity that failed ([Redis.Probe]) — and not
// with a PING: a Redis that answers PING but refuses writes (full under
// noeviction, a read-only replica after a failover) would pass a PING and
// fail the next request, and the replica would flap between Redis and its
// fallback at every check. The checks come every HealthEvery for the first
// steadyChecks intervals of an outage (restarts and failovers take
// seconds: each check is a chance to be back soon), then back off, twice
// as long each time up to HealthMax; each is shortened by up to a quarter
// at random so that replicas that lost Redis together do not check it in
// step.
//
// The log says each change of state once — down (and why), back — plus,
// while down: a line when the reason changes, a reminder every remindEvery,
// and a configuration error (credentials refused, NOPERM) at ERROR each
// time a check meets it, at most every configErrorEvery.
//
// Start checks the store the same way before the first request, and reads
// its maxmemory-policy (again after each recovery and every policyEvery).

const (
	remindEvery      = 5 * time.Minute
	configErrorEvery = 30 * time.Second
	policyEvery      = 5 * time.Minute
	// steadyChecks is how many HealthEvery intervals of an outage pass
	// before the checks back off.
	steadyChecks = 10
	// startBudget bounds Start: start-up does not wait on a dead Redis.
	startBudget = 2 * time.Second
	// policyTimeout bounds one read of maxmemory-policy.
	policyTimeout = 2 * time.Second
)

// healthKey is the identity whose health key Start checks: the hash of no
// app, key or address.
var healthKey = derive("health:", nil)

// health is the state of the store's failures, under mu.
type health struct {
	mu     sync.Mutex
	closed bool
	since  time.Time // when the store went down
	key    Key       // the identity whose slot the checks probe
	reason string    // of the last line logged while down
	logged time.Time // when that line was logged

	remindEvery time.Duration
	configEvery time.Duration
}

// policyState is what was last said of maxmemory-policy, under mu.
type policyState struct {
	mu     sync.Mutex
	every  time.Duration
	last   string // the policies last logged; "" before the first read
	unread bool   // "could not read" was logged since
}

var onFailureNames = [...]string{"local", "allow", "deny"}

// Start checks the shared store before the first request, within 2 s:
// it loads the script (on every master of a Cluster), runs one health
// check, and reads maxmemory-policy. When the check fails, the limiter
// applies redis.on_failure from the start (gauge, log, health loop) and
// Start returns the error. It also starts the periodic read of
// maxmemory-policy. Call it once, before serving; without Redis it does
// nothing.
func (l *Limiter) Start(ctx context.Context) error {
	if l.redis == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, startBudget)
	defer cancel()
	err := l.redis.Load(ctx)
	if err == nil || answered(err) {
		// A refused SCRIPT LOAD (an ACL, say) is judged by the check
		// itself, which falls back to EVAL.
		err = l.redis.Probe(ctx, healthKey)
	}
	if err != nil && l.healthy.CompareAndSwap(true, false) {
		l.goDown(err, healthKey, "rate-limit store unavailable at start-up; applying redis.on_failure from the start")
	}
	l.checkPolicy(ctx)
	l.health.mu.Lock()
	defer l.health.mu.Unlock()
	if !l.health.closed {
		l.wg.Add(1)
		go l.policyLoop()
	}
	return err
}

// markDown switches to the failure policy after a failed call for k,
// once: a request path's only way into health.
func (l *Limiter) markDown(err error, k Key) {
	if !l.healthy.CompareAndSwap(true, false) {
		return
	}
	l.goDown(err, k, "rate-limit store unavailable; applying redis.on_failure")
}

// goDown sets the gauge, logs msg and starts the health loop. The caller
// has just turned healthy from true to false.
func (l *Limiter) goDown(err error, k Key, msg string) {
	h := &l.health
	h.mu.Lock()
	defer h.mu.Unlock()
	l.fallback.Set(1)
	h.since, h.key = time.Now(), k
	l.report(err, true, msg)
	if h.closed {
		return
	}
	l.wg.Add(1)
	go l.healthLoop()
}

// healthLoop checks the store, backing off after the first steadyChecks
// intervals, until a check succeeds; then it switches back to Redis and
// reads maxmemory-policy again.
func (l *Limiter) healthLoop() {
	defer l.wg.Done()
	wait := l.every
	steady := time.Now().Add(steadyChecks * l.every)
	t := time.NewTimer(jitter(wait))
	defer t.Stop()
	for {
		select {
		case <-l.bg.Done():
			return
		case <-t.C:
		}
		l.health.mu.Lock()
		k := l.health.key
		l.health.mu.Unlock()
		// The same budget as a decision: a Redis that answers, but slower
		// than redis.timeout, is not back (it would flap).
		ctx, cancel := context.WithTimeout(l.bg, l.timeout)
		err := l.redis.Probe(ctx, k)
		cancel()
		if l.bg.Err() != nil {
			return
		}
		if err == nil {
			l.up()
			ctx, cancel := context.WithTimeout(l.bg, policyTimeout)
			l.checkPolicy(ctx)
			cancel()
			return
		}
		l.health.mu.Lock()
		l.report(err, false, "")
		l.health.mu.Unlock()
		if time.Now().After(steady) {
			wait = min(2*wait, l.maxWait)
		}
		t.Reset(jitter(wait))
	}
}

// up switches back to Redis.
func (l *Limiter) up() {
	h := &l.health
	h.mu.Lock()
	defer h.mu.Unlock()
	l.healthy.Store(true)
	l.fallback.Set(0)
	h.reason = ""
	l.log.Info("rate-limit store available again; back to redis",
		"down_for", time.Since(h.since).Round(time.Millisecond).String())
}

// report logs a failure of the store, under health.mu: always when it
// puts the store down (first), and while down when the reason changes, a
// configuration error every configEvery, anything else every remindEvery.
func (l *Limiter) report(err error, first bool, msg string) {
	h := &l.health
	now := time.Now()
	reason, config := classify(err)
	every := h.remindEvery
	if config != "" {
		every = h.configEvery
	}
	if !first && reason == h.reason && now.Sub(h.logged) < every {
		return
	}
	h.reason, h.logged = reason, now
	attrs := []any{"reason", reason, "on_failure", onFailureNames[l.onFailure], "error", err.Error()}
	if !first {
		attrs = append(attrs, "down_for", now.Sub(h.since).Round(time.Second).String())
		msg = "rate-limit store still unavailable; applying redis.on_failure"
	}
	if config != "" {
		// Not a passing outage: nothing changes until someone fixes the
		// config, so it is an error every time it is seen.
		l.log.Error(config, attrs...)
		return
	}
	l.log.Warn(msg, attrs...)
}

// classify names why a store call failed; config is the message to log at
// ERROR when the failure is a configuration error. The error texts never
// hold the password.
func classify(err error) (reason, config string) {
	s := err.Error()
	switch {
	case redis.IsAuthError(err) || strings.Contains(s, "WRONGPASS") || strings.Contains(s, "NOAUTH") ||
		strings.Contains(s, "invalid password") || strings.Contains(s, "without any password configured"):
		return "credentials", "redis refused the credentials: configuration error, check redis.url / redis.username / redis.password"
	case redis.IsPermissionError(err) || strings.Contains(s, "NOPERM"):
		return "permission", "redis refused a command to deskgate's user (NOPERM): configuration error, check the ACL of redis.username"
	case redis.IsOOMError(err) || strings.Contains(s, "OOM "):
		return "out_of_memory", ""
	case redis.IsReadOnlyError(err) || strings.Contains(s, "READONLY"):
		return "read_only", ""
	case answered(err):
		return "error_reply", ""
	case errors.Is(err, context.DeadlineExceeded) || isTimeout(err):
		return "timeout", ""
	}
	return "unreachable", ""
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// jitter returns d less up to a quarter of it, at random: no check comes
// later than its nominal time.
func jitter(d time.Duration) time.Duration { return d - rand.N(d/4+1) }

// policyLoop reads maxmemory-policy every policy.every while Redis is up
// (a recovery reads it too).
func (l *Limiter) policyLoop() {
	defer l.wg.Done()
	t := time.NewTicker(l.policy.every)
	defer t.Stop()
	for {
		select {
		case <-l.bg.Done():
			return
		case <-t.C:
		}
		if !l.healthy.Load() {
			continue
		}
		ctx, cancel := context.WithTimeout(l.bg, policyTimeout)
		l.checkPolicy(ctx)
		cancel()
	}
}

// checkPolicy reads maxmemory-policy (every master of a Cluster), sets
// deskgate_ratelimit_store_evicting, and logs the policy when it differs
// from the last one logged: a warning for allkeys-*, which may evict any
// key (SPEC §4 wants noeviction or volatile-*).
func (l *Limiter) checkPolicy(ctx context.Context) {
	ps, err := l.redis.EvictionPolicies(ctx)
	st := &l.policy
	st.mu.Lock()
	defer st.mu.Unlock()
	if err != nil {
		reason, _ := classify(err)
		switch {
		case !answered(err) || reason == "credentials":
			// Redis is down or refuses us: that is logged as such, and
			// the policy is read again when it is back.
			l.log.Debug("could not read redis maxmemory-policy", "error", err.Error())
		case !st.unread:
			st.unread = true
			l.log.Warn("could not read redis maxmemory-policy (CONFIG GET and INFO memory refused); check by hand that it is noeviction or volatile-* (SPEC §4)",
				"error", err.Error())
		}
		if len(ps) == 0 {
			return
		}
	} else {
		st.unread = false
	}
	evicting := false
	desc := make([]string, len(ps))
	for i, p := range ps {
		evicting = evicting || p.Evicts()
		desc[i] = p.String()
	}
	if evicting {
		l.evicting.Set(1)
	} else {
		l.evicting.Set(0)
	}
	summary := strings.Join(desc, " ")
	if summary == st.last {
		return
	}
	st.last = summary
	if evicting {
		l.log.Warn("redis maxmemory-policy may evict any key: rate-limit budgets (and key-store records) can vanish under memory pressure; set noeviction or volatile-* (SPEC §4)",
			"maxmemory_policy", summary)
		return
	}
	l.log.Info("rate-limit store eviction policy", "maxmemory_policy", summary)
}
