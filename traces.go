package main

import (
	"context"
	"sync"
	"time"

	"github.com/innovartx/deskgate/config"
	"github.com/innovartx/deskgate/tracing"
)

// minRetireGrace is the least time a trace provider replaced by a reload
// keeps exporting, for the requests still in flight on the old gateway.
const minRetireGrace = time.Minute

// traces owns the trace providers of the running process (SPEC §11): the
// current one, shared by every config with the same endpoint and service
// name, and those a reload replaced, which keep exporting the spans of
// the requests still in flight on the old gateway for a grace period,
// then flush and stop.
type traces struct {
	opts tracing.Options

	// cur and curCfg are only used by the goroutine that builds and
	// swaps gateways (start-up, then runUntilDone).
	cur    *tracing.Provider
	curCfg config.Tracing

	mu      sync.Mutex
	retired map[*tracing.Provider]*time.Timer
}

// forConfig returns the provider for cfg: nil with export off, the current
// one when cfg exports to the same endpoint under the same name (the
// sample ratio is the gateway's, not the provider's), else a new one,
// which [traces.adopt] makes current or [traces.discard] drops.
func (t *traces) forConfig(cfg config.Tracing) (*tracing.Provider, error) {
	if !cfg.Enabled() {
		return nil, nil
	}
	if t.cur != nil && t.curCfg.OTLPEndpoint == cfg.OTLPEndpoint && t.curCfg.ServiceName == cfg.ServiceName {
		return t.cur, nil
	}
	return tracing.NewProvider(cfg, t.opts)
}

// discard stops p, built by forConfig for a config that was refused.
func (t *traces) discard(p *tracing.Provider) {
	if p != nil && p != t.cur {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = p.Shutdown(ctx)
	}
}

// adopt makes p, of cfg, current once its gateway is swapped in. The one
// it replaces is shut down after grace (at least minRetireGrace), within
// flush; until then the requests in flight on the old gateway end their
// spans on it. It reports whether the provider changed.
func (t *traces) adopt(p *tracing.Provider, cfg config.Tracing, grace, flush time.Duration) bool {
	old := t.cur
	t.cur, t.curCfg = p, cfg
	if old == p {
		return false
	}
	if old != nil {
		t.mu.Lock()
		if t.retired == nil {
			t.retired = map[*tracing.Provider]*time.Timer{}
		}
		t.retired[old] = time.AfterFunc(max(grace, minRetireGrace), func() {
			t.mu.Lock()
			delete(t.retired, old)
			t.mu.Unlock()
			ctx, cancel := context.WithTimeout(context.Background(), flush)
			defer cancel()
			_ = old.Shutdown(ctx)
		})
		t.mu.Unlock()
	}
	return true
}

// shutdown flushes and stops every provider, current and retired, within
// ctx (what is left of server.shutdown_timeout): spans not exported by
// then are counted as dropped.
func (t *traces) shutdown(ctx context.Context) {
	t.mu.Lock()
	ps := make([]*tracing.Provider, 0, len(t.retired)+1)
	for p, timer := range t.retired {
		timer.Stop()
		ps = append(ps, p)
	}
	t.retired = nil
	t.mu.Unlock()
	if t.cur != nil {
		ps = append(ps, t.cur)
	}
	var wg sync.WaitGroup
	for _, p := range ps {
		wg.Go(func() { _ = p.Shutdown(ctx) })
	}
	wg.Wait()
}

// longestTimeout is the longest upstream timeout of cfg: how long a
// request may wait on its upstream, the grace a retired provider gets
// when that is over a minute.
func longestTimeout(cfg *config.Config) time.Duration {
	d := cfg.Upstream.Timeout.D()
	for _, r := range cfg.Routes {
		d = max(d, r.Timeout.D())
	}
	return d
}
