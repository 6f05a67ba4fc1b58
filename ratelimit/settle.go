package ratelimit

import (
	"cmp"
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Quota commits in Redis take no round trip of their own. A commit (or a
// release) is one APPEND to the quota's key (quota_redis.go); a commit
// waits here for the next call the store makes — the next batch of
// rate-limit decisions (batch.go), whichever identities it is for — and
// goes in it, ahead of the decisions. When no call goes within
// settleDelay, a call of their own takes all that queued. A release does
// not wait: it is sent at once with the commits queued (Redis.Settle), so
// that its slot is free for the next request on any replica.
//
// Until it is written, a committed slot is still held: it counts against
// the limit all the same, so counts stay exact; what waits is its move
// from "held" to "used" in [Redis.QuotaUsage], which writes the queue
// first.
//
// A settlement whose call fails is queued again: writing it twice counts
// it once (a commit counts only while its slot is held). One still not
// written settleGiveUp after it was queued is dropped and reported: its
// slot expires, as a crashed replica's would. The limiter writes what is
// left when it closes.
const (
	settleDelay = 50 * time.Millisecond
	// settleRetryDelay is the wait before a flush after a failed call.
	settleRetryDelay = 500 * time.Millisecond
	settleGiveUp     = 10 * time.Second
	maxSettleBatch   = 128
	// settleTimeout bounds a call made for settlements alone.
	settleTimeout = time.Second
)

// settlement is one queued commit or release.
type settlement struct {
	key   string
	mark  string // " c<id>" or " x<id>"
	since time.Time
}

// settleQueue is a store's queued settlements.
type settleQueue struct {
	n     atomic.Int32 // len(q), read without the lock by every call
	mu    sync.Mutex
	q     []settlement
	armed bool // a timer will flush
	// stopped: the limiter closed; no timer is armed any more.
	stopped bool
	// flush writes the queue (set by NewRedis).
	flush func()
	// failed is told of a call for settlements alone that failed (own)
	// and of the settlements dropped for good (set by the limiter; nil:
	// nobody).
	failed func(err error, dropped int, own bool)
}

// add queues the commit or release of slot id of key.
func (s *settleQueue) add(key string, id int64, commit bool) {
	mark := " x"
	if commit {
		mark = " c"
	}
	mark = mark + strconv.FormatInt(id, 10)
	s.mu.Lock()
	s.q = append(s.q, settlement{key: key, mark: mark, since: time.Now()})
	s.n.Store(int32(len(s.q)))
	s.arm(settleDelay)
	s.mu.Unlock()
}

// arm makes sure a flush comes within d. s.mu is held.
func (s *settleQueue) arm(d time.Duration) {
	if !s.armed && !s.stopped && len(s.q) > 0 && s.flush != nil {
		s.armed = true
		time.AfterFunc(d, s.flush)
	}
}

// take appends up to maxSettleBatch queued settlements to dst.
func (s *settleQueue) take(dst []settlement) []settlement {
	if s.n.Load() == 0 {
		return dst
	}
	s.mu.Lock()
	n := min(len(s.q), maxSettleBatch)
	dst = append(dst, s.q[:n]...)
	rest := copy(s.q, s.q[n:])
	clear(s.q[rest:])
	s.q = s.q[:rest]
	s.n.Store(int32(rest))
	s.mu.Unlock()
	return dst
}

// retry queues again the settlements of a call that failed with err,
// ahead of the others, but those queued more than settleGiveUp ago. own:
// the call was made for settlements alone (a decision call's failure is
// counted by the limiter already).
func (s *settleQueue) retry(batch []settlement, err error, own bool) {
	now := time.Now()
	dropped := 0
	s.mu.Lock()
	keep := make([]settlement, 0, len(batch)+len(s.q))
	for _, st := range batch {
		if now.Sub(st.since) > settleGiveUp {
			dropped++
			continue
		}
		keep = append(keep, st)
	}
	s.q = append(keep, s.q...)
	s.n.Store(int32(len(s.q)))
	s.arm(settleRetryDelay)
	s.mu.Unlock()
	if s.failed != nil && (own || dropped > 0) {
		s.failed(err, dropped, own)
	}
}

// stop ends the timers: the queue is written by calls only.
func (s *settleQueue) stop() {
	s.mu.Lock()
	s.stopped = true
	s.mu.Unlock()
}

// flushTimer is the timer's flush: it writes the queue, bounded by
// settleTimeout.
func (r *Redis) flushTimer() {
	r.settles.mu.Lock()
	r.settles.armed = false
	stopped := r.settles.stopped
	r.settles.mu.Unlock()
	if stopped {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), settleTimeout)
	defer cancel()
	_ = r.flushSettlements(ctx)
}

// flushSettlements writes every queued settlement, in calls of their own.
// A call that fails puts its settlements back and ends the flush.
func (r *Redis) flushSettlements(ctx context.Context) error {
	var batch []settlement
	for {
		batch = r.settles.take(batch[:0])
		if len(batch) == 0 {
			return nil
		}
		if cc, ok := r.client.(*redis.ClusterClient); ok {
			cmds := make([]*redis.Cmd, len(batch))
			_, _ = cc.Pipelined(ctx, func(pipe redis.Pipeliner) error {
				for i, st := range batch {
					cmds[i] = pipe.Do(ctx, settleOnly(st)...)
				}
				return nil
			})
			if err := r.settledInCluster(ctx, cc, batch, cmds, true); err != nil {
				return err
			}
			continue
		}
		if err := r.settleCall(ctx, batch); err != nil {
			err = fmt.Errorf("quota settlements: %w", err)
			r.settles.retry(batch, err, true)
			return err
		}
	}
}

// settleCall writes batch in one call of the rate-limit script, with no
// decisions in it.
func (r *Redis) settleCall(ctx context.Context, batch []settlement) error {
	args := make([]any, 0, 4+2*len(batch))
	args = append(args, argEvalSHA, argSHA, len(batch))
	for _, st := range batch {
		args = append(args, st.key)
	}
	args = appendMarks(args, batch)
	args = append(args, 0) // no policies, no requests
	return evalAgain(ctx, r.client, r.client.Do(ctx, args...)).Err()
}

// settleOnly is the script call of one settlement, in a Cluster (one key
// a call).
func settleOnly(st settlement) []any {
	return []any{argEvalSHA, argSHA, 1, st.key, 1, st.mark, 0}
}

// settledInCluster reads the replies of settlements sent one call each
// in a Cluster pipeline (one that found a master without the script sent
// again with EVAL), and queues again those that failed (own: as
// for [settleQueue.retry]).
func (r *Redis) settledInCluster(ctx context.Context, cc *redis.ClusterClient, batch []settlement, cmds []*redis.Cmd, own bool) error {
	var failed []settlement
	var first error
	for i, cmd := range cmds {
		if err := evalAgain(ctx, cc, cmd).Err(); err != nil {
			failed = append(failed, batch[i])
			first = cmp.Or(first, err)
		}
	}
	if len(failed) == 0 {
		return nil
	}
	first = fmt.Errorf("quota settlements: %w", first)
	r.settles.retry(failed, first, own)
	return first
}

// appendMarks appends the settlements' ARGV: their number, then their
// marks.
func appendMarks(args []any, batch []settlement) []any {
	args = append(args, len(batch))
	for _, st := range batch {
		args = append(args, st.mark)
	}
	return args
}
