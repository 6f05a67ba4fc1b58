package proxy

import (
	"encoding/binary"
	"runtime"
	"testing"
	"time"

	"github.com/innovartx/deskgate/ratelimit"
)

// TestUpstreamLimitsMillionIdentities is issue 19's memory bound for the
// upstream 429 waits: a million identities told to wait by the upstream
// within a minute leave at most the default 100,000 waits (a few MB), and
// once those expire new waits take their room. Skipped under -race (CI's
// -race run skips it) and with -short.
func TestUpstreamLimitsMillionIdentities(t *testing.T) {
	if raceEnabled || testing.Short() {
		t.Skip("a million identities: skipped under -race and with -short")
	}
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	before := heap()
	u := NewUpstreamLimits(0) // the default size, 100,000
	now := time.Now()
	u.now = func() time.Time { return now }
	var k ratelimit.Key
	for i := range 1_000_000 {
		binary.LittleEndian.PutUint64(k[:8], uint64(i)*0x9e3779b97f4a7c15)
		binary.LittleEndian.PutUint64(k[8:], uint64(i))
		if i%100_000 == 0 {
			now = now.Add(time.Second)
		}
		u.put("global", k, 30*time.Second, now)
	}
	full := heap()
	t.Logf("%d waits held; heap %d MiB before, %d MiB after a million", u.Len(), before>>20, full>>20)
	if n := u.Len(); n > 100_000 {
		t.Fatalf("%d waits held, more than the default size 100,000", n)
	}
	if grew := int64(full) - int64(before); grew > 40<<20 {
		t.Errorf("the waits took %d MiB for %d entries", grew>>20, u.Len())
	}
	now = now.Add(time.Minute)
	k = ratelimit.KeyFromApp("late")
	u.put("global", k, time.Minute, now)
	if _, ok := u.get("global", k); !ok {
		t.Error("expired waits did not make room")
	}
	runtime.KeepAlive(u)
}
