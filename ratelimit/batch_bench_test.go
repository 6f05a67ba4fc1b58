package ratelimit

import (
	"context"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/innovartx/deskgate/internal/redistest"
)

// redisCPU returns redis-server's own CPU time (user + system), from INFO
// cpu: unlike commandstats, it includes the reads, writes and wake-ups that
// batching saves.
func redisCPU(b *testing.B, c *redis.Client) time.Duration {
	info, err := c.Info(context.Background(), "cpu").Result()
	if err != nil {
		b.Fatal(err)
	}
	var total float64
	for _, line := range strings.Split(info, "\r\n") {
		for _, f := range []string{"used_cpu_sys:", "used_cpu_user:"} {
			if v, ok := strings.CutPrefix(line, f); ok {
				x, _ := strconv.ParseFloat(v, 64)
				total += x
			}
		}
	}
	return time.Duration(total * float64(time.Second))
}

// selfCPU returns this process' CPU time: the client side of the decisions.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkRealRedisConcurrent decides from 32 goroutines at once (a
// gateway under load) over 100,000 identities, without batching (every
// request its own call: maxInflight unbounded) and with 1, 2 or 4 calls
// out at once (the default is one per core, four at most). Besides ns/op, it reports
// the CPU per decision of this process (client-µs/op) and of redis-server
// (redis-µs/op), and the decisions per script call; floor_get_set is
// batched_inflight_1 with a script that does only the read and write every
// decision needs (bench/lua/floor_getset.lua).
func BenchmarkRealRedisConcurrent(b *testing.B) {
	srv := redistest.Start(b)
	client := srv.Client(b)
	p := defaultPolicy(b)
	many := make([]Key, 100_000)
	for i := range many {
		many[i] = KeyFromApp(strconv.Itoa(i))
	}
	for _, mode := range []struct {
		name     string
		inflight int
		floor    bool
	}{{"unbatched", 1 << 30, false}, {"batched_inflight_1", 1, false}, {"batched_inflight_2", 2, false}, {"batched_inflight_4", 4, false}, {"floor_get_set", 1, true}} {
		b.Run(mode.name, func(b *testing.B) {
			if mode.floor {
				// bench/lua/floor_getset.lua: the script's read and write
				// of each log, and nothing else.
				lua, err := os.ReadFile("../bench/lua/floor_getset.lua")
				if err != nil {
					b.Fatal(err)
				}
				sha, src := argSHA, argSource
				argSHA, argSource = redis.NewScript(string(lua)).Hash(), string(lua)
				b.Cleanup(func() { argSHA, argSource = sha, src })
			}
			store := NewRedis(client)
			store.batch.maxInflight = mode.inflight
			if err := store.Load(context.Background()); err != nil {
				b.Fatal(err)
			}
			client.ConfigResetStat(context.Background())
			var next atomic.Int64
			b.SetParallelism(16) // 32 goroutines on 2 cores
			b.ReportAllocs()
			r0, c0 := redisCPU(b, client), selfCPU()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					k := many[next.Add(1)%int64(len(many))]
					if _, err := store.Allow(context.Background(), p, k); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			n := float64(b.N)
			b.ReportMetric(float64(redisCPU(b, client)-r0)/1e3/n, "redis-µs/op")
			b.ReportMetric(float64(selfCPU()-c0)/1e3/n, "client-µs/op")
			b.ReportMetric(n/float64(max(1, scriptCalls(b, client))), "decisions/call")
		})
	}
}
