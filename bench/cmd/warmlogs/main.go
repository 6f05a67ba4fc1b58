// Command warmlogs writes, as Redis protocol on stdout for `redis-cli
// --pipe`, the sliding-log state deskgate's Redis store holds for each API
// key of a file right after that key's request(s): one
//
//	SET deskgate:rl:{<hex of the first 16 bytes of SHA-256(key)>}:global <stamps> PX <ttl>
//
// per key, so that bench/scale can hold 1,000,000 identities active at
// once without sending 1,000,000 requests through one core of gateway.
//
// Everything that names or encodes the state is the product's own code or
// a copy of a documented constant, so that the warm-up is the real format:
//
//   - the identity: auth.ParseKey (SHA-256 of the whole key string) and
//     ratelimit.KeyFromHash, as proxy/limitops.go does for a key without
//     an app (auth.store: none);
//   - the key name: ratelimit.RedisKey with ratelimit.KeyPrefix and the
//     policy id ("global" for the default tiers, proxy/build.go);
//   - the value: the sliding log of ratelimit/lua/sliding_log.lua, 13
//     lowercase hex characters per admitted request, the Redis TIME of
//     the request in microseconds, oldest first (string.format('%013x'));
//   - the TTL: what slidingLogArgs gives the script, the longest window
//     in milliseconds (60,000 for the default tiers 3/1s, 20/10s, 100/1m).
//
// -stamp is the newest stamp (µs, take it from `redis-cli TIME`); with
// -stamps k each log holds k stamps, 1 µs apart, ending at -stamp.
// bench/scale checks the result through deskgate (a request sees the
// pre-written stamps in its RateLimit header and extends the same log).
package main

import (
	"bufio"
	"flag"
	"fmt"
	"log"
	"os"
	"strconv"
	"strings"

	"github.com/innovartx/deskgate/auth"
	"github.com/innovartx/deskgate/ratelimit"
)

func main() {
	keysPath := flag.String("keys", "", "file of API keys, one a line")
	n := flag.Int("n", 0, "use the first n keys only (0: all)")
	skip := flag.Int("skip", 0, "skip the first keys")
	stamp := flag.Int64("stamp", 0, "newest stamp, Redis TIME in µs (required)")
	stamps := flag.Int("stamps", 1, "stamps per log (requests admitted)")
	ttl := flag.Int64("ttl", 60000, "key TTL in ms: the longest window (slidingLogArgs)")
	policy := flag.String("policy", "global", "policy id in the key name")
	flag.Parse()
	if *keysPath == "" || *stamp <= 0 || *stamps < 1 || *ttl <= 0 {
		log.Fatal("warmlogs: -keys, a positive -stamp, -stamps >= 1 and -ttl > 0 are required")
	}
	f, err := os.Open(*keysPath)
	if err != nil {
		log.Fatal(err)
	}
	defer f.Close()
	out := bufio.NewWriterSize(os.Stdout, 1<<20)
	ttlArg := strconv.FormatInt(*ttl, 10)
	var val []byte
	for i := 0; i < *stamps; i++ {
		val = fmt.Appendf(val, "%013x", *stamp-int64(*stamps-1-i))
	}
	sc := bufio.NewScanner(f)
	line, written := 0, 0
	for sc.Scan() {
		s := strings.TrimSpace(sc.Text())
		if s == "" {
			continue
		}
		line++
		if line <= *skip {
			continue
		}
		if *n > 0 && written >= *n {
			break
		}
		k, ok := auth.ParseKey(s)
		if !ok {
			log.Fatalf("warmlogs: line %d is not a well-formed API key", line)
		}
		rk := ratelimit.RedisKey(ratelimit.KeyPrefix, *policy, ratelimit.KeyFromHash(k.Hash))
		bulk(out, "*5\r\n", "SET", rk, string(val), "PX", ttlArg)
		written++
	}
	if err := sc.Err(); err != nil {
		log.Fatal(err)
	}
	if err := out.Flush(); err != nil {
		log.Fatal(err)
	}
	fmt.Fprintf(os.Stderr, "warmlogs: %d logs of %d stamp(s), newest %d µs, TTL %s ms\n", written, *stamps, *stamp, ttlArg)
}

// bulk writes a RESP array header then each argument as a bulk string.
func bulk(w *bufio.Writer, head string, args ...string) {
	w.WriteString(head)
	for _, a := range args {
		w.WriteString("$")
		w.WriteString(strconv.Itoa(len(a)))
		w.WriteString("\r\n")
		w.WriteString(a)
		w.WriteString("\r\n")
	}
}
