// Command openloop is an open-loop HTTP load generator: it sends requests
// on a fixed schedule (rate per second), whatever the server does, and
// measures each latency from the request's INTENDED send time, so that a
// stall of the server shows up in the latencies of every request that
// should have been sent meanwhile (wrk's closed loop hides it: while the
// server stalls, wrk simply sends less).
//
// The schedule is on a grid of -tick (1 ms): request i is due at i/rate
// rounded down to the tick, so at 2,000 req/s two requests are due every
// millisecond. The grid matters in Go: a sleep shorter than a millisecond
// on an idle P lasts about a millisecond (the runtime's epoll timeout is
// in whole milliseconds), so a finer schedule would charge that rounding
// to the server being measured.
//
// It is bounded: rate*(warmup+duration) requests, each with -timeout.
// Requests sent during -warmup are not recorded. With -keys, each request
// carries the next key of the file (one a line) in X-API-Key.
//
// It prints one line of key=value pairs, latencies in microseconds:
//
//	sent=10000 ok=10000 non2xx=0 errors=0 p50_us=182 p90_us=240 p99_us=611 p999_us=1490 max_us=2210 late_us=35 rate=2000.0
//
// late_us is the largest delay of the dispatcher itself behind schedule
// (included in the latencies, as it would be for a real client).
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

type job struct {
	i  int
	at time.Time
}

func main() {
	target := flag.String("url", "http://127.0.0.1:18080/api/v1/customers", "URL to GET")
	rate := flag.Float64("rate", 2000, "requests per second")
	duration := flag.Duration("duration", 5*time.Second, "measured duration")
	warmup := flag.Duration("warmup", time.Second, "unrecorded duration before the measure")
	conns := flag.Int("conns", 128, "connections (and concurrent requests) at most")
	keysPath := flag.String("keys", "", "file of API keys sent in X-API-Key, rotated; empty: no key")
	offset := flag.Int("offset", 0, "index of the first key used")
	timeout := flag.Duration("timeout", 2*time.Second, "per-request timeout (counted as an error)")
	tick := flag.Duration("tick", time.Millisecond, "schedule grid: due times are rounded down to it")
	flag.Parse()
	if *rate <= 0 || *duration <= 0 || *conns <= 0 || *tick <= 0 {
		log.Fatal("openloop: -rate, -duration, -conns and -tick must be positive")
	}

	var keys []string
	if *keysPath != "" {
		f, err := os.Open(*keysPath)
		if err != nil {
			log.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k := strings.TrimSpace(sc.Text()); k != "" {
				keys = append(keys, k)
			}
		}
		f.Close()
		if len(keys) == 0 {
			log.Fatalf("openloop: no key in %s", *keysPath)
		}
	}

	tr := &http.Transport{
		MaxIdleConns:        *conns,
		MaxIdleConnsPerHost: *conns,
		MaxConnsPerHost:     *conns,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	client := &http.Client{Transport: tr, Timeout: *timeout}

	interval := time.Duration(float64(time.Second) / *rate)
	nWarm := int(warmup.Seconds() * *rate)
	nMeas := int(duration.Seconds() * *rate)
	n := nWarm + nMeas
	lat := make([]time.Duration, n) // written by index, read after wg.Wait
	done := make([]bool, n)
	var errs, non2xx, ok atomic.Int64
	var firstErr atomic.Value

	// Hard bound on the whole run, whatever happens.
	ctx, cancel := context.WithTimeout(context.Background(), *warmup+*duration+*timeout+10*time.Second)
	defer cancel()

	jobs := make(chan job, n)
	var wg sync.WaitGroup
	for w := 0; w < *conns; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				if d := time.Until(j.at); d > 0 {
					time.Sleep(d)
				}
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, *target, nil)
				if keys != nil {
					req.Header["X-Api-Key"] = []string{keys[(*offset+j.i)%len(keys)]}
				}
				resp, err := client.Do(req)
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				d := time.Since(j.at)
				if j.i < nWarm {
					continue
				}
				if err != nil {
					errs.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				if resp.StatusCode < 200 || resp.StatusCode > 299 {
					non2xx.Add(1)
				} else {
					ok.Add(1)
				}
				lat[j.i], done[j.i] = d, true
			}
		}()
	}

	start := time.Now().Add(20 * time.Millisecond)
	var late time.Duration
	measStart := start.Add(time.Duration(nWarm) * interval)
	for i := 0; i < n && ctx.Err() == nil; i++ {
		at := start.Add((time.Duration(i) * interval).Truncate(*tick))
		if d := time.Until(at); d > 0 {
			time.Sleep(d)
		} else if i >= nWarm && -d > late {
			late = -d
		}
		jobs <- job{i, at}
	}
	close(jobs)
	wg.Wait()
	elapsed := time.Since(measStart)

	samples := make([]time.Duration, 0, nMeas)
	for i := nWarm; i < n; i++ {
		if done[i] {
			samples = append(samples, lat[i])
		}
	}
	slices.Sort(samples)
	pct := func(p float64) int64 {
		if len(samples) == 0 {
			return -1
		}
		k := int(p*float64(len(samples))+0.5) - 1
		k = max(0, min(k, len(samples)-1))
		return samples[k].Microseconds()
	}
	var maxUs int64 = -1
	if len(samples) > 0 {
		maxUs = samples[len(samples)-1].Microseconds()
	}
	fmt.Printf("sent=%d ok=%d non2xx=%d errors=%d p50_us=%d p90_us=%d p99_us=%d p999_us=%d max_us=%d late_us=%d rate=%.1f\n",
		nMeas, ok.Load(), non2xx.Load(), errs.Load(), pct(0.50), pct(0.90), pct(0.99), pct(0.999), maxUs,
		late.Microseconds(), float64(nMeas)/elapsed.Seconds())
	if e, _ := firstErr.Load().(string); e != "" {
		fmt.Fprintf(os.Stderr, "openloop: first error: %s\n", e)
	}
}
