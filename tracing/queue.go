package tracing

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// queue is the Provider's span processor: the SDK's BatchSpanProcessor,
// bounded the same way (a queue of MaxQueue spans, exports of MaxBatch
// every Interval, each within ExportTimeout), but counting what it drops.
// The SDK's processor drops silently when its queue is full, and a batch
// its exporter fails is gone without a trace; SPEC §11 wants both counted
// in deskgate_trace_spans_dropped_total. Wrapping the exporter would see
// the failed batches only, never the queue overflowing in front of it.
//
// A span that ends is appended under a mutex, never waited for: when the
// queue is full it is dropped and counted, so a slow or dead collector
// costs a request nothing. One goroutine exports.
type queue struct {
	exp      sdktrace.SpanExporter
	counter  Counter
	log      *slog.Logger
	max      int
	batch    int
	interval time.Duration
	timeout  time.Duration

	mu     sync.Mutex
	spans  []sdktrace.ReadOnlySpan
	closed bool

	kick  chan struct{} // a full batch is waiting
	flush chan chan struct{}
	stop  chan struct{}
	done  chan struct{}
	// stopCtx is Shutdown's context, set before stop is closed.
	stopCtx context.Context
	// ctx bounds the exports made before Shutdown; cancel ends one in
	// flight when Shutdown's context ends first.
	ctx    context.Context
	cancel context.CancelFunc

	dropped atomic.Int64
	// lastLog is when a drop or failure was last logged (unix ns), so
	// that a dead collector makes one line a minute, not one a batch.
	lastLog atomic.Int64
}

var _ sdktrace.SpanProcessor = (*queue)(nil)

func newQueue(exp sdktrace.SpanExporter, o Options) *queue {
	q := &queue{
		exp:      exp,
		counter:  o.Dropped,
		log:      o.Logger,
		max:      o.MaxQueue,
		batch:    o.MaxBatch,
		interval: o.Interval,
		timeout:  o.ExportTimeout,
		spans:    make([]sdktrace.ReadOnlySpan, 0, o.MaxQueue),
		kick:     make(chan struct{}, 1),
		flush:    make(chan chan struct{}),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	q.ctx, q.cancel = context.WithCancel(context.Background())
	go q.run()
	return q
}

// OnStart does nothing: spans are queued when they end.
func (q *queue) OnStart(context.Context, sdktrace.ReadWriteSpan) {}

// OnEnd queues s for export, or drops it when the queue is full or shut
// down. It never blocks on the exporter.
func (q *queue) OnEnd(s sdktrace.ReadOnlySpan) {
	if !s.SpanContext().IsSampled() {
		return
	}
	q.mu.Lock()
	if q.closed || len(q.spans) >= q.max {
		closed := q.closed
		q.mu.Unlock()
		reason := "export queue full"
		if closed {
			reason = "ended after shutdown"
		}
		q.drop(1, reason, nil)
		return
	}
	q.spans = append(q.spans, s)
	full := len(q.spans) >= q.batch
	q.mu.Unlock()
	if full {
		select {
		case q.kick <- struct{}{}:
		default:
		}
	}
}

// run exports the queue every interval, when a batch is full, and on
// ForceFlush; on Shutdown it exports what is left within Shutdown's
// context and counts the rest as dropped.
func (q *queue) run() {
	defer close(q.done)
	t := time.NewTicker(q.interval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			q.exportAll(q.ctx, true)
		case <-q.kick:
			q.exportAll(q.ctx, true)
		case f := <-q.flush:
			q.exportAll(q.ctx, true)
			close(f)
		case <-q.stop:
			q.exportAll(q.stopCtx, false)
			q.mu.Lock()
			left := len(q.spans)
			clear(q.spans)
			q.spans = q.spans[:0]
			q.mu.Unlock()
			if left > 0 {
				q.drop(left, "not exported by shutdown", q.stopCtx.Err())
			}
			return
		}
	}
}

// exportAll exports the queue a batch at a time until it is empty or ctx
// ends, or (stoppable) Shutdown starts. Spans that end meanwhile join it.
func (q *queue) exportAll(ctx context.Context, stoppable bool) {
	var batch []sdktrace.ReadOnlySpan
	for ctx.Err() == nil {
		if stoppable {
			select {
			case <-q.stop:
				return
			default:
			}
		}
		q.mu.Lock()
		n := min(len(q.spans), q.batch)
		batch = append(batch[:0], q.spans[:n]...)
		rest := copy(q.spans, q.spans[n:])
		clear(q.spans[rest:])
		q.spans = q.spans[:rest]
		q.mu.Unlock()
		if n == 0 {
			return
		}
		ectx, cancel := context.WithTimeout(ctx, q.timeout)
		err := q.exp.ExportSpans(ectx, batch)
		cancel()
		if err != nil {
			q.drop(n, "export failed", err)
		}
		clear(batch)
	}
}

// drop counts n dropped spans and logs it, at most once a minute.
func (q *queue) drop(n int, reason string, err error) {
	total := q.dropped.Add(int64(n))
	if q.counter != nil {
		q.counter.Add(float64(n))
	}
	now := time.Now().UnixNano()
	last := q.lastLog.Load()
	if now-last < int64(time.Minute) || !q.lastLog.CompareAndSwap(last, now) {
		return
	}
	attrs := []any{"reason", reason, "spans", n, "dropped_total", total}
	if err != nil {
		attrs = append(attrs, "error", err.Error())
	}
	q.log.Warn("trace spans dropped", attrs...)
}

// ForceFlush exports every span queued so far, within ctx.
func (q *queue) ForceFlush(ctx context.Context) error {
	f := make(chan struct{})
	select {
	case q.flush <- f:
	case <-q.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-f:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Shutdown exports what is queued within ctx, then stops the exporter.
// Spans ending later are dropped and counted.
func (q *queue) Shutdown(ctx context.Context) error {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return nil
	}
	q.closed = true
	q.mu.Unlock()
	q.stopCtx = ctx
	close(q.stop)
	select {
	case <-q.done:
	case <-ctx.Done():
		// run stops soon: an export in flight is cut, the drain uses
		// ctx too.
		q.cancel()
	}
	q.cancel()
	return q.exp.Shutdown(ctx)
}
