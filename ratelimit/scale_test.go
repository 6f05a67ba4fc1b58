package ratelimit

import (
	"context"
	"encoding/binary"
	"runtime"
	"testing"
	"time"
)

// scaleIdentities is issue 19's edge scale: identities seen in the last
// minute.
const scaleIdentities = 1_000_000

// skipScale skips the million-identity tests where they would be slow:
// under -race (about ten times slower; CI's -race run skips them) and
// with -short.
func skipScale(t *testing.T) {
	t.Helper()
	if raceEnabled {
		t.Skip("a million identities under -race is too slow; run without -race")
	}
	if testing.Short() {
		t.Skip("a million identities: skipped with -short")
	}
}

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// scaleKey is the i-th identity: distinct, spread over every shard as a
// hash would be.
func scaleKey(i int) Key {
	var k Key
	binary.LittleEndian.PutUint64(k[8:], uint64(i))
	binary.LittleEndian.PutUint64(k[:8], uint64(i)*0x9e3779b97f4a7c15)
	return k
}

// TestMemoryMillionIdentitiesBounded is issue 19's memory bound for the
// in-process store (the store without Redis, and the fallback with it): a
// million identities admitted within a minute take a bounded heap per
// identity, and once they go quiet the sweep gives it back.
func TestMemoryMillionIdentitiesBounded(t *testing.T) {
	skipScale(t)
	m, c := newTestMemory(t)
	p := defaultPolicy(t)
	ctx := context.Background()
	before := heapInUse()
	for i := range scaleIdentities {
		if i%100_000 == 0 {
			c.Advance(time.Second) // a million identities over ten seconds
		}
		if d, _ := m.Allow(ctx, p, scaleKey(i)); !d.Allowed {
			t.Fatalf("identity %d denied on its first request", i)
		}
	}
	if got := m.Len(); got != scaleIdentities {
		t.Fatalf("Len = %d, want %d", got, scaleIdentities)
	}
	full := heapInUse()
	perID := float64(int64(full)-int64(before)) / scaleIdentities
	t.Logf("heap: %d MiB before, %d MiB with %d identities (%.0f B each)", before>>20, full>>20, scaleIdentities, perID)
	// An entry is its map slot (16-byte key, pointer), the entry (ring
	// header, head, n, tat, last) and a ring of 4 stamps: about 150 B
	// with the map's spare room. 400 B leaves room for map growth while
	// catching a per-identity structure added by mistake.
	if perID > 400 {
		t.Errorf("%.0f B of heap per identity, want at most 400", perID)
	}

	// A minute and a half later with no request, the sweep evicts them all
	// and remakes the shards' maps, which gives the memory back.
	c.Advance(90 * time.Second)
	m.Sweep()
	if got := m.Len(); got != 0 {
		t.Fatalf("after the sweep Len = %d, want 0", got)
	}
	after := heapInUse()
	t.Logf("heap after the sweep: %d MiB", after>>20)
	if grew, kept := int64(full)-int64(before), int64(after)-int64(before); kept > grew/20 {
		t.Errorf("after the sweep %d KiB of the %d KiB the identities took are still held", kept>>10, grew>>10)
	}
}

// TestDenyCacheMillionIdentitiesBounded floods the Redis limiter's deny
// cache and its in-flight map with a million identities: the cache never
// holds more than its size, the flights are gone once landed, and the
// heap stays that of the cache's size, not of the identities seen.
func TestDenyCacheMillionIdentitiesBounded(t *testing.T) {
	skipScale(t)
	const size = 100_000 // the default DenyCacheSize
	c := newDenyCache(size)
	fl := newFlights()
	p := defaultPolicy(t)
	before := heapInUse()
	now := time.Hour
	for i := range scaleIdentities {
		if i%100_000 == 0 {
			now += time.Second
		}
		k := scaleKey(i)
		f, leader := fl.join(p, k)
		if !leader {
			t.Fatalf("identity %d: a flight already in progress", i)
		}
		// Denied by Redis for 30 s: no denial ends during the flood, so
		// every put past the cache's size finds it full (a scan of the
		// shard per put made this test take 100 s).
		c.put(p, k, now+30*time.Second, Decision{Reset: 30 * time.Second})
		fl.land(p, k, f)
	}
	held, flights := 0, 0
	for i := range c.shards {
		held += len(c.shards[i].m)
	}
	for i := range fl.shards {
		flights += len(fl.shards[i].m)
	}
	full := heapInUse()
	runtime.KeepAlive(c)
	runtime.KeepAlive(fl)
	t.Logf("deny cache: %d entries held, %d flights; heap %d MiB before, %d MiB after %d denials",
		held, flights, before>>20, full>>20, scaleIdentities)
	if held > size {
		t.Errorf("the deny cache holds %d entries, more than its size %d", held, size)
	}
	if flights != 0 {
		t.Errorf("%d flights left after every one landed", flights)
	}
	// Once those denials end, new ones take their room.
	now += time.Minute
	late := scaleKey(scaleIdentities)
	c.put(p, late, now+time.Second, Decision{Reset: time.Second})
	if _, ok := c.get(p, late, now); !ok {
		t.Error("ended denials did not make room for a new one")
	}
	// An entry is about 100 B with its map slot: the cache's own bound,
	// whatever the identities, is a few tens of MB at most.
	if grew := int64(full) - int64(before); grew > 40<<20 {
		t.Errorf("the deny cache took %d MiB for %d entries", grew>>20, held)
	}
}
