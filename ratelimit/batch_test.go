package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/innovartx/deskgate/internal/redistest"
)

// batchOf builds one call deciding keys in order, as the batcher would.
func batchOf(r *Redis, p *Policy, keys ...Key) *call {
	c := &call{}
	for _, k := range keys {
		it := &pending{ctx: context.Background(), p: p, done: make(chan struct{}, 1)}
		it.key = appendRedisKey(nil, r.prefix, p.ID, k)
		c.items = append(c.items, it)
	}
	return c
}

// scriptCalls counts EVALSHA and EVAL calls since the last RESETSTAT.
func scriptCalls(t testing.TB, c *redis.Client) int64 {
	t.Helper()
	info, err := c.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, line := range strings.Split(info, "\r\n") {
		for _, cmd := range []string{"cmdstat_evalsha:calls=", "cmdstat_eval:calls="} {
			if rest, ok := strings.CutPrefix(line, cmd); ok {
				v, _, _ := strings.Cut(rest, ",")
				x, _ := strconv.ParseInt(v, 10, 64)
				n += x
			}
		}
	}
	return n
}

// TestBatchDecidesInOrder: one call with five requests of one identity and
// one of another decides them as if they had come one after another — the
// first three of the identity pass with 2, 1, 0 left, the rest are denied
// — on a real Redis and on miniredis.
func TestBatchDecidesInOrder(t *testing.T) {
	p := defaultPolicy(t)
	a, b := KeyFromApp("a"), KeyFromApp("b")
	for _, name := range []string{"miniredis", "redis-server"} {
		t.Run(name, func(t *testing.T) {
			var client redis.UniversalClient
			if name == "miniredis" {
				mr := miniredis.RunT(t)
				mc := redis.NewClient(&redis.Options{Addr: mr.Addr()})
				t.Cleanup(func() { mc.Close() })
				client = mc
			} else {
				client = redistest.Start(t).Client(t)
			}
			r := NewRedis(client)
			c := batchOf(r, p, a, a, b, a, a, a)
			r.run(c)
			want := []struct {
				allowed bool
				rem     int64
			}{{true, 2}, {true, 1}, {true, 2}, {true, 0}, {false, 0}, {false, 0}}
			for i, it := range c.items {
				if it.err != nil {
					t.Fatalf("request %d: %v", i, it.err)
				}
				if it.d.Allowed != want[i].allowed || it.d.Remaining != want[i].rem {
					t.Errorf("request %d: %v, want allowed=%v remaining=%d", i, it.d, want[i].allowed, want[i].rem)
				}
			}
			if d := c.items[4].d; d.Tier != 0 || d.Reset <= 0 || d.Reset > time.Second {
				t.Errorf("denial %v: want tier 0 (1s) and a reset within 1s", d)
			}
		})
	}
}

// TestBatchKeyOfWrongType: a request whose key Redis refuses fails alone;
// the other requests of its call are decided.
func TestBatchKeyOfWrongType(t *testing.T) {
	srv := redistest.Start(t)
	client := srv.Client(t)
	r := NewRedis(client)
	p := defaultPolicy(t)
	bad := KeyFromApp("bad")
	if err := client.HSet(context.Background(), RedisKey(KeyPrefix, p.ID, bad), "f", "v").Err(); err != nil {
		t.Fatal(err)
	}
	c := batchOf(r, p, KeyFromApp("x"), bad, KeyFromApp("y"))
	r.run(c)
	if err := c.items[1].err; err == nil || !strings.Contains(err.Error(), "WRONGTYPE") {
		t.Errorf("key of the wrong type: err %v, want WRONGTYPE", err)
	}
	for _, i := range []int{0, 2} {
		if it := c.items[i]; it.err != nil || !it.d.Allowed {
			t.Errorf("request %d beside it: %v %v", i, it.d, it.err)
		}
	}
}

// TestBatchAfterScriptFlush: a Redis that lost its scripts (restart,
// SCRIPT FLUSH) gets the script again by EVAL, for a batch as for one
// request.
func TestBatchAfterScriptFlush(t *testing.T) {
	srv := redistest.Start(t)
	client := srv.Client(t)
	r := NewRedis(client)
	p := defaultPolicy(t)
	if err := r.Load(context.Background()); err != nil {
		t.Fatal(err)
	}
	for round := range 2 {
		if err := client.ScriptFlush(context.Background()).Err(); err != nil {
			t.Fatal(err)
		}
		c := batchOf(r, p, KeyFromApp("f"+strconv.Itoa(round)), KeyFromApp("g"+strconv.Itoa(round)))
		r.run(c)
		for i, it := range c.items {
			if it.err != nil || !it.d.Allowed {
				t.Fatalf("round %d request %d after SCRIPT FLUSH: %v %v", round, i, it.d, it.err)
			}
		}
	}
}

// admitConcurrently sends per requests for each of ids identities (named
// prefix+index) through r at once, from workers goroutines, and checks that
// every identity got exactly 3 (the default 1s tier). It skips when the run
// took so long that the 1s tier may have freed slots.
func admitConcurrently(t *testing.T, r *Redis, prefix string, ids, per, workers int) {
	t.Helper()
	p := defaultPolicy(t)
	admitted := make([]atomic.Int64, ids)
	var next atomic.Int64
	var wg sync.WaitGroup
	start := make(chan struct{})
	for range workers {
		wg.Go(func() {
			<-start
			for {
				n := next.Add(1) - 1
				if n >= int64(ids*per) {
					return
				}
				id := int(n) % ids
				d, err := r.Allow(context.Background(), p, KeyFromApp(prefix+strconv.Itoa(id)))
				if err != nil {
					t.Error(err)
					return
				}
				if d.Allowed {
					admitted[id].Add(1)
				}
			}
		})
	}
	t0 := time.Now()
	close(start)
	wg.Wait()
	if el := time.Since(t0); el > 900*time.Millisecond {
		t.Skipf("the run took %s: the 1s tier may have freed slots, counts not exact (machine too busy)", el)
	}
	for id := range admitted {
		if got := admitted[id].Load(); got != 3 {
			t.Errorf("identity %d: %d admitted of %d, want 3", id, got, per)
		}
	}
}

// TestBatchConcurrentExact: 64 goroutines send 6 requests for each of 150
// identities at once through one store with one call out at a time, so
// that calls carry many requests; every identity gets exactly 3 (the 1s
// tier), and Redis ran fewer scripts than there were requests.
func TestBatchConcurrentExact(t *testing.T) {
	srv := redistest.Start(t)
	client := srv.Client(t)
	r := NewRedis(client)
	r.batch.maxInflight = 1
	if err := r.Load(context.Background()); err != nil {
		t.Fatal(err)
	}
	client.ConfigResetStat(context.Background())
	const ids, per, workers = 150, 6, 64
	admitConcurrently(t, r, "id", ids, per, workers)
	calls := scriptCalls(t, client)
	t.Logf("%d requests in %d script calls", ids*per, calls)
	if calls >= ids*per {
		t.Errorf("%d script calls for %d concurrent requests: nothing was batched", calls, ids*per)
	}
	// The last flusher may still be on its way out after its answers.
	for wait := time.Now().Add(time.Second); ; time.Sleep(time.Millisecond) {
		r.batch.mu.Lock()
		inflight, starting, queued := r.batch.inflight, r.batch.starting, len(r.batch.queue)
		r.batch.mu.Unlock()
		if inflight == 0 && starting == 0 && queued == 0 {
			break
		}
		if time.Now().After(wait) {
			t.Fatalf("batcher not idle 1s after the run: inflight %d, starting %d, queued %d", inflight, starting, queued)
		}
	}
}

// TestLoneCallTakesReadyRequests: a request that finds the slot free takes
// along, in its one call, the requests that were ready to run when it
// started (on one P: goroutines started just before it) — one script call
// for eight requests, where going alone at once made two. The scheduler
// runs a yielded goroutine early now and then (it looks at the global run
// queue every 61st time), so the test asks it of most of 20 rounds: the
// old batcher made 40 calls, this one 20 and rarely a few more.
func TestLoneCallTakesReadyRequests(t *testing.T) {
	srv := redistest.Start(t)
	client := srv.Client(t)
	r := NewRedis(client)
	r.batch.maxInflight = 1
	p := defaultPolicy(t)
	if err := r.Load(context.Background()); err != nil {
		t.Fatal(err)
	}
	client.ConfigResetStat(context.Background())
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	const rounds = 20
	for round := range rounds {
		var wg sync.WaitGroup
		for i := range 7 {
			wg.Go(func() {
				if _, err := r.Allow(context.Background(), p, KeyFromApp(fmt.Sprintf("ready-%d-%d", round, i))); err != nil {
					t.Error(err)
				}
			})
		}
		if _, err := r.Allow(context.Background(), p, KeyFromApp(fmt.Sprintf("lone-%d", round))); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
	}
	calls := scriptCalls(t, client)
	t.Logf("%d script calls for %d rounds of 8 requests ready at once", calls, rounds)
	if calls > rounds*3/2 {
		t.Errorf("%d script calls for %d rounds of 8 requests ready at once, want about %d", calls, rounds, rounds)
	}
}

// TestBatchClusterConcurrent: in a Cluster, concurrent requests of many
// identities (many slots) go as pipelines; limits stay exact, also when
// the masters lost the script.
func TestBatchClusterConcurrent(t *testing.T) {
	r := NewRedis(clusterClient(t, redistest.StartCluster(t, 3)))
	r.batch.maxInflight = 1
	// No Load: the first calls meet NOSCRIPT on every master.
	const ids, per = 40, 5
	admitConcurrently(t, r, "c", ids, per, ids*per)
}

// TestBatchDeadlines: with Redis silent and one call out at a time, a
// queued request still returns by its own deadline (it is never sent once
// it passed), and a request whose client leaves returns at once.
func TestBatchDeadlines(t *testing.T) {
	client := silentRedis(t)
	r := NewRedis(client)
	r.batch.maxInflight = 1
	p := defaultPolicy(t)

	type result struct {
		err error
		el  time.Duration
	}
	decide := func(ctx context.Context, timeout time.Duration, k Key) chan result {
		ch := make(chan result, 1)
		go func() {
			t0 := time.Now()
			_, err := r.allow(ctx, t0.Add(timeout), p, k)
			ch <- result{err, time.Since(t0)}
		}()
		return ch
	}
	first := decide(context.Background(), 300*time.Millisecond, Key{1})
	time.Sleep(20 * time.Millisecond) // first is out
	queued := decide(context.Background(), 100*time.Millisecond, Key{2})
	ctx, cancel := context.WithCancel(context.Background())
	gone := decide(ctx, time.Hour, Key{3})
	time.Sleep(20 * time.Millisecond)
	cancel()
	if res := <-gone; !errors.Is(res.err, context.Canceled) || res.el > 200*time.Millisecond {
		t.Errorf("request whose client left: %v after %s, want context.Canceled at once", res.err, res.el)
	}
	if res := <-first; res.err == nil || res.el > 600*time.Millisecond {
		t.Errorf("first request: %v after %s, want an error by its 300ms deadline", res.err, res.el)
	}
	// The queued request waited for the first call's slot (300ms), past its
	// own 100ms deadline: it must come back then, not be sent.
	if res := <-queued; res.err == nil || res.el > 600*time.Millisecond {
		t.Errorf("queued request: %v after %s, want an error without a call of its own", res.err, res.el)
	}
}

// TestParseReply: a reply that does not match the requests is an error,
// never a panic or a made-up decision.
func TestParseReply(t *testing.T) {
	p := defaultPolicy(t)
	items := func(n int) []*pending {
		var s []*pending
		for range n {
			s = append(s, &pending{p: p})
		}
		return s
	}
	good := map[string]int{
		"1 0 2 1000000":                    1,
		"1 0 2 1000000 0 2 0 59000000":     2,
		"e 0 0 0 1 1 19 9000000|WRONGTYPE": 2,
	}
	for reply, n := range good {
		if err := parseReply(reply, items(n)); err != nil {
			t.Errorf("%q: %v", reply, err)
		}
	}
	for _, reply := range []string{"", "1 0 2", "1 0 2 1000000 1", "1 3 0 0", "2 0 0 0", "1 -1 0 0", "x 0 0 0", "1 0 2 1e6", "1 0 2 99999999999999999999"} {
		if err := parseReply(reply, items(1)); err == nil {
			t.Errorf("%q: no error", reply)
		}
	}
	it := items(2)
	if err := parseReply("e 0 0 0 1 1 19 9000000|WRONGTYPE Operation", it); err != nil || it[0].err == nil || it[1].err != nil || !it[1].d.Allowed {
		t.Errorf("error item: %v, items %v %v / %v %v", err, it[0].d, it[0].err, it[1].d, it[1].err)
	}
}
