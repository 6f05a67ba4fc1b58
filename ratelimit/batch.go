package ratelimit

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Sliding-log decisions that reach Redis together go in one script call:
// one write, one TIME and one reply for the lot instead of one of each per
// request. This is auto-pipelining as rueidis does it, with no wait added
// to a lone request's path: a request that finds no call waiting to be
// sent and a free slot makes its own call at once, in its own goroutine,
// after one yield that lets the requests already ready to run join it; the
// requests that arrive while maxInflight calls are out queue, and the next
// call takes all of them (up to maxBatch) when a slot frees. No timer is
// involved: a batch is whatever queued during the previous round trip, so
// it is one request at low load and grows with the load.
//
// On a core shared with Redis, a round trip's cost is mostly fixed (the
// writes, reads and wake-ups on both sides: bench/floor, BENCHMARKS.md), so
// requests per call is what the gateway's CPU per request depends on; the
// yield took it from 8.6 to 12 under bench/floor's load.
//
// A batch is decided in arrival order by one script run, so it is exactly
// as if its requests had reached Redis one after another at that instant:
// two requests of one identity in a batch see each other.
//
// In a Cluster, the requests of a batch are spread over slots, which one
// script cannot span; they go as one pipeline of single-request calls
// instead (go-redis sends one write per master).

// maxBatch bounds a call: Redis runs a script to its end, so a batch is
// kept short (about 10 µs of Redis time per request here: a full batch
// holds Redis for well under a millisecond).
const maxBatch = 64

// defaultInflight is how many calls may be out at once: one per core the
// process may use, four at most. One call out makes the largest batches
// (the least CPU per decision, on both sides); with more cores, a second
// call out shortens the wait of a request that arrives while one is out,
// for the same CPU (BenchmarkRealRedisConcurrent, BENCHMARKS.md).
func defaultInflight() int { return min(runtime.GOMAXPROCS(0), 4) }

// pending is one request's decision on its way through a batch.
type pending struct {
	ctx      context.Context
	deadline time.Time // zero: none
	p        *Policy
	key      []byte
	// asks are the quota reservations to make if the request is
	// admitted (a copy: the batch may outlive the caller), and qkeys
	// their keys.
	asks  []QuotaAsk
	qkeys []string
	d     Decision
	err   error
	done  chan struct{} // one send when d and err are set, for a queued request
}

// MarshalBinary is how go-redis writes the key of a pending request: as
// its bytes, with no string made for it.
func (it *pending) MarshalBinary() ([]byte, error) { return it.key, nil }

var pendingPool = sync.Pool{New: func() any { return &pending{done: make(chan struct{}, 1)} }}

// call is one script call's buffers, reused.
type call struct {
	items   []*pending
	args    []any
	pols    []*Policy
	settles []settlement // the queued settlements it carries (settle.go)
	marks   []any        // per quota of its requests, the marks it folds
}

var callPool = sync.Pool{New: func() any { return &call{} }}

// batcher queues the requests waiting for a call slot.
type batcher struct {
	mu          sync.Mutex
	queue       []*pending
	inflight    int // calls out, or about to be, including starting flushers
	starting    int // flushers started that have not taken from the queue yet
	maxInflight int
}

// Scripts' argument values, boxed once.
var (
	argEvalSHA any = "evalsha"
	argEval    any = "eval"
	argSHA     any = slidingLogScript.Hash()
	argSource  any = slidingLogLua
)

// allow decides one sliding-log request, batched with the concurrent ones.
// It returns when Redis answered, at deadline (when not zero) or when ctx
// ends.
func (r *Redis) allow(ctx context.Context, deadline time.Time, p *Policy, k Key) (Decision, error) {
	return r.allowQuotas(ctx, deadline, p, k, nil)
}

// allowQuotas is allow, and reserves asks' quotas in the same call when it
// admits the request (setting their Done and Decision).
func (r *Redis) allowQuotas(ctx context.Context, deadline time.Time, p *Policy, k Key, asks []QuotaAsk) (Decision, error) {
	it := pendingPool.Get().(*pending)
	it.ctx, it.deadline, it.p = ctx, deadline, p
	it.key = appendRedisKey(it.key[:0], r.prefix, p.ID, k)
	if len(asks) > 0 {
		it.asks = append(it.asks[:0], asks...)
		for _, a := range asks {
			it.qkeys = append(it.qkeys, r.quotaKey(a.Quota, k))
		}
	}
	b := &r.batch

	b.mu.Lock()
	if len(b.queue) == 0 && b.inflight < b.maxInflight {
		// A free slot and nobody waiting: this request goes now, with
		// the requests that are ready to run and reach the queue first
		// (none at low load, when the yield costs nothing).
		b.inflight++
		b.mu.Unlock()
		runtime.Gosched()
		c := callPool.Get().(*call)
		c.items = append(c.items[:0], it)
		b.mu.Lock()
		c.items = b.take(c.items, maxBatch-1)
		b.mu.Unlock()
		r.run(c)
		for _, other := range c.items[1:] {
			other.done <- struct{}{}
		}
		clear(c.items)
		callPool.Put(c)
		r.handOver()
		return it.release(asks)
	}
	b.queue = append(b.queue, it)
	if b.inflight < b.maxInflight && b.starting == 0 {
		b.inflight++
		b.starting++
		go r.flush()
	}
	b.mu.Unlock()

	select {
	case <-it.done:
		return it.release(asks)
	case <-ctx.Done():
		// it stays with its batch, which will still write to it: it is
		// left to the garbage collector instead of the pool.
		return Decision{}, ctx.Err()
	}
}

// release returns it to the pool with its outcome, the quotas' into asks.
func (it *pending) release(asks []QuotaAsk) (Decision, error) {
	d, err := it.d, it.err
	if err == nil {
		for i := range asks {
			asks[i].Done, asks[i].Decision = it.asks[i].Done, it.asks[i].Decision
		}
	}
	clear(it.asks)
	clear(it.qkeys)
	it.asks, it.qkeys = it.asks[:0], it.qkeys[:0]
	it.ctx, it.p, it.d, it.err = nil, nil, Decision{}, nil
	pendingPool.Put(it)
	return d, err
}

// appendKeys appends it's keys to args: its log, then its quotas'.
func (it *pending) appendKeys(args []any) []any {
	args = append(args, it)
	for _, k := range it.qkeys {
		args = append(args, k)
	}
	return args
}

// numKeys is how many keys it has.
func (it *pending) numKeys() int { return 1 + len(it.qkeys) }

// appendArgs appends it's own ARGV: its policy's index, its number of
// quotas and each one's limit, ttl (ms), stop flag and settlement marks
// (marks[i] for its i-th quota; none when marks is nil).
func (it *pending) appendArgs(args []any, pol int, marks []any) []any {
	args = append(args, pol, len(it.asks))
	for i, a := range it.asks {
		stop := 0
		if a.Stop {
			stop = 1
		}
		m := argNoMarks
		if marks != nil {
			m = marks[i]
		}
		args = append(args, a.Limit, max(int64(a.TTL/time.Millisecond), 1), stop, m)
	}
	return args
}

// argNoMarks is a quota's marks when no settlement goes with it.
var argNoMarks any = ""

// claimMarks hands each settlement of c whose key a quota of its requests
// reads to that quota (the first to read it), in c.marks: the script then
// folds it into the value it writes, with no command of its own. It
// returns the settlements left, to append by key. c.settles is reordered.
func (c *call) claimMarks(items []*pending) (rest []settlement) {
	c.marks = c.marks[:0]
	left := c.settles
	for _, it := range items {
		for _, key := range it.qkeys {
			var joined string
			for i := 0; i < len(left); {
				if left[i].key != key {
					i++
					continue
				}
				joined += left[i].mark
				// Claimed: moved out of the left part, in place.
				last := len(left) - 1
				left[i], left[last] = left[last], left[i]
				left = left[:last]
			}
			m := argNoMarks
			if joined != "" {
				m = joined
			}
			c.marks = append(c.marks, m)
		}
	}
	return left
}

// handOver ends a call made by a request's own goroutine: its slot goes to
// a flusher when requests queued meanwhile and none is starting.
func (r *Redis) handOver() {
	b := &r.batch
	b.mu.Lock()
	if len(b.queue) > 0 && b.starting == 0 {
		b.starting++
		b.mu.Unlock()
		go r.flush()
		return
	}
	b.inflight--
	b.mu.Unlock()
}

// take moves up to n requests from the head of the queue to items. b.mu
// is held.
func (b *batcher) take(items []*pending, n int) []*pending {
	n = min(len(b.queue), n)
	items = append(items, b.queue[:n]...)
	rest := copy(b.queue, b.queue[n:])
	clear(b.queue[rest:])
	b.queue = b.queue[:rest]
	return items
}

// flush sends the queue, a batch per call, until it is empty.
func (r *Redis) flush() {
	// The requests that are ready to run reach the queue before this call
	// is sent (at no cost when there are none).
	runtime.Gosched()
	b := &r.batch
	b.mu.Lock()
	b.starting--
	for {
		if len(b.queue) == 0 {
			b.inflight--
			b.mu.Unlock()
			return
		}
		c := callPool.Get().(*call)
		c.items = b.take(c.items[:0], maxBatch)
		if len(b.queue) > 0 && b.inflight < b.maxInflight && b.starting == 0 {
			b.inflight++
			b.starting++
			go r.flush()
		}
		b.mu.Unlock()

		r.run(c)
		for _, it := range c.items {
			it.done <- struct{}{}
		}
		clear(c.items)
		callPool.Put(c)
		b.mu.Lock()
	}
}

// run decides c's requests, setting each one's d or err. Requests whose
// deadline passed or whose client left are not sent.
func (r *Redis) run(c *call) {
	now := time.Now()
	var deadline time.Time
	live := 0
	for i, it := range c.items {
		switch {
		case it.ctx.Err() != nil:
			it.err = it.ctx.Err()
			continue
		case !it.deadline.IsZero() && !now.Before(it.deadline):
			it.err = context.DeadlineExceeded
			continue
		}
		// The call ends at the earliest deadline of its requests: no
		// request waits on Redis longer than it was allowed to.
		if !it.deadline.IsZero() && (deadline.IsZero() || it.deadline.Before(deadline)) {
			deadline = it.deadline
		}
		// The requests to send go first; the others stay in c.items, to
		// be told.
		c.items[live], c.items[i] = it, c.items[live]
		live++
	}
	ctx := context.Background()
	if !deadline.IsZero() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, deadline)
		defer cancel()
	}
	items := c.items[:live]
	if len(items) == 0 {
		return
	}
	if sctx, span := startCallSpan(ctx, items); span != nil {
		ctx = sctx
		defer endCallSpan(span, items)
	}
	// The settlements queued so far go first (settle.go).
	c.settles = r.settles.take(c.settles[:0])
	defer func() {
		clear(c.settles)
		c.settles = c.settles[:0]
	}()
	if cc, ok := r.client.(*redis.ClusterClient); ok {
		r.runPipeline(ctx, cc, items, c.settles)
		return
	}
	rest := c.settles
	if len(rest) > 0 {
		rest = c.claimMarks(items)
	}
	nkeys := len(rest)
	for _, it := range items {
		nkeys += it.numKeys()
	}
	args := append(c.args[:0], argEvalSHA, argSHA, nkeys)
	for _, st := range rest {
		args = append(args, st.key)
	}
	for _, it := range items {
		args = it.appendKeys(args)
	}
	args = appendMarks(args, rest)
	// Each policy of the call once (a call usually has one), then each
	// request's policy by index.
	pols := c.pols[:0]
	for _, it := range items {
		if !slices.Contains(pols, it.p) {
			pols = append(pols, it.p)
		}
	}
	args = append(args, len(pols))
	for _, p := range pols {
		args = append(args, p.scriptArgs...)
	}
	marks := c.marks
	for _, it := range items {
		var m []any
		if len(c.settles) > 0 {
			m, marks = marks[:len(it.asks)], marks[len(it.asks):]
		}
		args = it.appendArgs(args, slices.Index(pols, it.p)+1, m)
	}
	clear(c.marks)
	clear(pols)
	c.pols = pols[:0]
	cmd := evalAgain(ctx, r.client, r.client.Do(ctx, args...))
	clear(args)
	c.args = args[:0]
	reply, err := cmd.Text()
	if err != nil && len(c.settles) > 0 {
		r.settles.retry(c.settles, fmt.Errorf("quota settlements: %w", err), false)
	}
	if err == nil {
		err = parseReply(reply, items)
	}
	if err != nil {
		for _, it := range items {
			it.err = fmt.Errorf("rate-limit script: %w", err)
		}
	}
}

// runPipeline decides items in a Cluster: one single-request call each,
// pipelined, after one call per settlement (a call spans one slot).
func (r *Redis) runPipeline(ctx context.Context, cc *redis.ClusterClient, items []*pending, settles []settlement) {
	cmds := make([]*redis.Cmd, len(items))
	scmds := make([]*redis.Cmd, len(settles))
	_, _ = cc.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for i, st := range settles {
			scmds[i] = pipe.Do(ctx, settleOnly(st)...)
		}
		for i, it := range items {
			args := make([]any, 0, 9+len(it.qkeys)+len(it.p.scriptArgs)+4*len(it.asks))
			args = append(args, argEvalSHA, argSHA, it.numKeys(), string(it.key))
			for _, k := range it.qkeys {
				args = append(args, k)
			}
			args = append(args, 0, 1)
			args = append(args, it.p.scriptArgs...)
			args = it.appendArgs(args, 1, nil)
			cmds[i] = pipe.Do(ctx, args...)
		}
		return nil
	})
	_ = r.settledInCluster(ctx, cc, settles, scmds, false)
	for i, it := range items {
		reply, err := evalAgain(ctx, cc, cmds[i]).Text()
		if err == nil {
			err = parseReply(reply, items[i:i+1])
		}
		if err != nil {
			it.err = fmt.Errorf("rate-limit script: %w", err)
		}
	}
}

// evalAgain returns cmd, a call of the rate-limit script by its SHA, or,
// when Redis no longer has the script (it restarted or was flushed), the
// same call made again with EVAL, which loads it.
func evalAgain(ctx context.Context, c interface {
	Do(context.Context, ...any) *redis.Cmd
}, cmd *redis.Cmd) *redis.Cmd {
	if !redis.HasErrorPrefix(cmd.Err(), "NOSCRIPT") {
		return cmd
	}
	args := cmd.Args()
	args[0], args[1] = argEval, argSource
	return c.Do(ctx, args...)
}

// replyError is an error reply of a command the script ran (OOM, READONLY,
// WRONGTYPE, ...): an answer of Redis, like go-redis' own error replies.
type replyError string

func (e replyError) Error() string { return string(e) }

// RedisError marks replyError as a [redis.Error].
func (replyError) RedisError() {}

// parseReply reads the script's reply into items.
func parseReply(reply string, items []*pending) error {
	rest, failure, _ := strings.Cut(reply, "|")
	for _, it := range items {
		var f [4]int64
		errItem := false
		for i := range f {
			var tok string
			tok, rest, _ = strings.Cut(rest, " ")
			if tok == "e" && i == 0 {
				errItem = true
				continue
			}
			v, err := strconv.ParseInt(tok, 10, 64)
			if err != nil {
				return fmt.Errorf("unexpected reply %q", reply)
			}
			f[i] = v
		}
		switch {
		case errItem:
			it.err = fmt.Errorf("rate-limit script: %w", replyError(failure))
		case f[0] > 1 || f[0] < 0 || f[1] < 0 || int(f[1]) >= len(it.p.Tiers):
			return fmt.Errorf("unexpected reply %q", reply)
		default:
			it.d = Decision{
				Allowed:   f[0] == 1,
				Tier:      int(f[1]),
				Remaining: f[2],
				Reset:     time.Duration(f[3]) * time.Microsecond,
			}
		}
		for i := range it.asks {
			a := &it.asks[i]
			a.Done, a.Decision = false, QuotaDecision{}
			var tok string
			tok, rest, _ = strings.Cut(rest, " ")
			if tok == "x" {
				continue
			}
			var q [7]int64
			for j := range q {
				if j > 0 {
					tok, rest, _ = strings.Cut(rest, " ")
				}
				v, err := strconv.ParseInt(tok, 10, 64)
				if err != nil {
					return fmt.Errorf("unexpected reply %q", reply)
				}
				q[j] = v
			}
			if errItem || !it.d.Allowed || q[0] < 0 || q[0] > 1 {
				return fmt.Errorf("unexpected reply %q", reply)
			}
			a.Done, a.Decision = true, quotaDecision(a.Limit, q)
		}
	}
	if rest != "" {
		return fmt.Errorf("unexpected reply %q", reply)
	}
	return nil
}
