// Command report turns the raw figures bench/run records (one
// "target<TAB>rep<TAB>metric<TAB>value" line per figure) into the markdown
// tables of bench/results/latest.md: per target, the median over the
// repetitions and the spread (min–max). Ratios and differences against a
// baseline (the upstream alone, the bare Go proxy, nginx) are computed
// within each repetition first, then summarised, so that drift between
// repetitions on a noisy machine does not leak into them.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"log"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
)

type data map[string]map[int]map[string]float64 // target → rep → metric → value

func (d data) get(t string, rep int, m string) (float64, bool) {
	v, ok := d[t][rep][m]
	return v, ok
}

func (d data) reps() []int {
	seen := map[int]bool{}
	for _, r := range d {
		for rep := range r {
			seen[rep] = true
		}
	}
	var out []int
	for rep := range seen {
		out = append(out, rep)
	}
	slices.Sort(out)
	return out
}

// series returns f over the repetitions where it is defined.
func (d data) series(f func(rep int) (float64, bool)) []float64 {
	var out []float64
	for _, rep := range d.reps() {
		if v, ok := f(rep); ok && !math.IsNaN(v) && !math.IsInf(v, 0) {
			out = append(out, v)
		}
	}
	return out
}

func (d data) metric(t, m string) []float64 {
	return d.series(func(rep int) (float64, bool) { return d.get(t, rep, m) })
}

func (d data) sum(t string, ms ...string) []float64 {
	return d.series(func(rep int) (float64, bool) {
		s := 0.0
		for _, m := range ms {
			v, ok := d.get(t, rep, m)
			if !ok {
				return 0, false
			}
			s += v
		}
		return s, true
	})
}

func (d data) ratio(t, m, base, bm string) []float64 {
	return d.series(func(rep int) (float64, bool) {
		a, ok1 := d.get(t, rep, m)
		b, ok2 := d.get(base, rep, bm)
		return a / b, ok1 && ok2 && b != 0
	})
}

func (d data) diff(t, m, base string) []float64 {
	return d.series(func(rep int) (float64, bool) {
		a, ok1 := d.get(t, rep, m)
		b, ok2 := d.get(base, rep, m)
		return a - b, ok1 && ok2
	})
}

// quiet reports whether every target of ts had a quiet open-loop run in
// rep (a run without the flag counts as quiet).
func (d data) quiet(rep int, ts ...string) bool {
	for _, t := range ts {
		if v, ok := d.get(t, rep, "ol_clean"); ok && v == 0 {
			return false
		}
	}
	return true
}

// quietOnly restricts f to the repetitions where ts were all quiet; when
// there is none, it falls back to every repetition and says so.
func (d data) quietOnly(f func(rep int) (float64, bool), ts ...string) ([]float64, bool) {
	v := d.series(func(rep int) (float64, bool) {
		if !d.quiet(rep, ts...) {
			return 0, false
		}
		return f(rep)
	})
	if len(v) > 0 {
		return v, true
	}
	return d.series(f), false
}

func (d data) nQuiet(ts ...string) int {
	n := 0
	for _, rep := range d.reps() {
		if d.quiet(rep, ts...) {
			n++
		}
	}
	return n
}

// lat formats a latency figure over the quiet repetitions of ts.
func (d data) lat(f func(rep int) (float64, bool), ts ...string) string {
	v, ok := d.quietOnly(f, ts...)
	s := format(v, "int")
	if !ok && len(v) > 0 {
		s += " †"
	}
	return s
}

func (d data) fm(t, m string) func(rep int) (float64, bool) {
	return func(rep int) (float64, bool) { return d.get(t, rep, m) }
}

func (d data) fdiff(t, m, base string, k float64) func(rep int) (float64, bool) {
	return func(rep int) (float64, bool) {
		a, ok1 := d.get(t, rep, m)
		b, ok2 := d.get(base, rep, m)
		return a - k*b, ok1 && ok2
	}
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func group(n float64) string {
	neg := n < 0
	s := strconv.FormatInt(int64(math.Round(math.Abs(n))), 10)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "−" + b.String()
	}
	return b.String()
}

// format renders one figure: "med (min–max)" with the given number style.
func format(v []float64, style string) string {
	if len(v) == 0 {
		return "—"
	}
	f := func(x float64) string {
		switch style {
		case "int":
			return group(x)
		case "x":
			return fmt.Sprintf("%.2fx", x)
		case "1":
			return strings.Replace(fmt.Sprintf("%.1f", x), "-", "−", 1)
		case "2":
			return strings.Replace(fmt.Sprintf("%.2f", x), "-", "−", 1)
		}
		return fmt.Sprint(x)
	}
	med := f(median(v))
	if len(v) == 1 {
		return med
	}
	return fmt.Sprintf("%s (%s–%s)", med, f(slices.Min(v)), f(slices.Max(v)))
}

func total(v []float64) float64 {
	s := 0.0
	for _, x := range v {
		s += x
	}
	return s
}

var names = map[string]string{
	"upstream":  "upstream alone (physical limit)",
	"nginx":     "nginx `proxy_pass`",
	"nginx-key": "nginx + key check + `limit_req`",
	"bareproxy": "bare Go `httputil.ReverseProxy`",
	"deskgate":  "**deskgate** (file keys, Redis limits, metrics, log)",
	// A diagnostic twin, not a product configuration: what the Redis hop
	// costs, measured in the same run.
	"deskgate-local": "deskgate, limits in process (diagnostic: no Redis hop)",
}

func main() {
	in := flag.String("in", "", "raw figures (TSV)")
	flag.Parse()
	f, err := os.Open(*in)
	if err != nil {
		log.Fatal(err)
	}
	d := data{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Split(sc.Text(), "\t")
		if len(fs) != 4 {
			continue
		}
		rep, err1 := strconv.Atoi(fs[1])
		v, err2 := strconv.ParseFloat(fs[3], 64)
		if err1 != nil || err2 != nil {
			continue
		}
		if d[fs[0]] == nil {
			d[fs[0]] = map[int]map[string]float64{}
		}
		if d[fs[0]][rep] == nil {
			d[fs[0]][rep] = map[string]float64{}
		}
		d[fs[0]][rep][fs[2]] = v
	}
	f.Close()
	reps := d.reps()
	fmt.Printf("Medians of %d repetitions, spread (min–max) in parentheses. Ratios and added latencies are computed within each repetition, then summarised.\n\n", len(reps))

	fmt.Println("### Proxied path (all 2xx expected)")
	fmt.Println()
	fmt.Println("| target | req/s (wrk, closed loop) | × upstream alone | server CPU µs/req | + redis-server µs/req | = total µs/req | upstream CPU µs/req | p50 µs @open loop | p99 µs | added p50 µs | added p99 µs | quiet reps | Redis cmds/req | non-2xx |")
	fmt.Println("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, t := range []string{"upstream", "nginx", "nginx-key", "bareproxy", "deskgate", "deskgate-local"} {
		if d[t] == nil {
			continue
		}
		redisCPU, tot, calls := "—", format(d.metric(t, "cpu_us"), "1"), "—"
		if t == "deskgate" {
			redisCPU = format(d.metric(t, "redis_cpu_us"), "1")
			tot = format(d.sum(t, "cpu_us", "redis_cpu_us"), "1")
			calls = format(d.metric(t, "redis_calls"), "2")
		}
		upCPU := format(d.metric(t, "up_cpu_us"), "1")
		addP50 := d.lat(d.fdiff(t, "ol_p50", "upstream", 1), t, "upstream")
		addP99 := d.lat(d.fdiff(t, "ol_p99", "upstream", 1), t, "upstream")
		if t == "upstream" {
			upCPU, addP50, addP99 = "(same)", "0", "0"
		}
		non2xx := group(total(d.metric(t, "non2xx")) + total(d.metric(t, "ol_non2xx")) + total(d.metric(t, "ol_errors")) + total(d.metric(t, "errors")))
		fmt.Printf("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %d of %d | %s | %s |\n",
			names[t], format(d.metric(t, "rps"), "int"), format(d.ratio(t, "rps", "upstream", "rps"), "x"),
			format(d.metric(t, "cpu_us"), "1"), redisCPU, tot, upCPU,
			d.lat(d.fm(t, "ol_p50"), t), d.lat(d.fm(t, "ol_p99"), t), addP50, addP99,
			d.nQuiet(t, "upstream"), len(reps), calls, non2xx)
	}
	fmt.Println()
	fmt.Println("Latency columns use the repetitions whose open-loop runs (the target's and, for \"added\", the upstream's) were quiet: under the foreign-CPU and generator-lateness thresholds; † marks a figure from noisy repetitions only.")
	fmt.Println()
	fmt.Println("Open-loop latency details (µs), every repetition, quiet or not:")
	fmt.Println()
	fmt.Println("| target | p50 | p90 | p99 | p99.9 | max | dispatcher late (max) | achieved rate | server CPU µs/req at this rate | errors | non-2xx |")
	fmt.Println("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, t := range []string{"upstream", "nginx", "nginx-key", "bareproxy", "deskgate", "deskgate-local"} {
		if d[t] == nil {
			continue
		}
		cpu := format(d.metric(t, "ol_cpu_us"), "1")
		if t == "deskgate" {
			cpu += " + Redis " + format(d.metric(t, "ol_redis_cpu_us"), "1")
		}
		fmt.Printf("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", t,
			format(d.metric(t, "ol_p50"), "int"), format(d.metric(t, "ol_p90"), "int"), format(d.metric(t, "ol_p99"), "int"),
			format(d.metric(t, "ol_p999"), "int"), format(d.metric(t, "ol_max"), "int"), format(d.metric(t, "ol_late"), "int"),
			format(d.metric(t, "ol_rate"), "int"), cpu, group(total(d.metric(t, "ol_errors"))), group(total(d.metric(t, "ol_non2xx"))))
	}

	fmt.Println()
	fmt.Println("Noise: foreign CPU (other jobs) on the server core / the load core during the kept measurement, % of the run (median, max), and re-runs:")
	fmt.Println()
	fmt.Println("| target | wrk: server core | wrk: load core | wrk re-runs | open loop: server core | open loop: load core | open-loop re-runs |")
	fmt.Println("|---|---:|---:|---:|---:|---:|---:|")
	for _, t := range []string{"upstream", "nginx", "nginx-key", "bareproxy", "deskgate", "deskgate-local", "deskgate-reject", "deskgate-noauth"} {
		if d[t] == nil {
			continue
		}
		nm := func(m string) string {
			v := d.metric(t, m)
			if len(v) == 0 {
				return "—"
			}
			return fmt.Sprintf("%.1f (%.1f)", median(v), slices.Max(v))
		}
		rr := func(m string) string {
			if len(d.metric(t, m)) == 0 {
				return "—"
			}
			return group(total(d.metric(t, m)))
		}
		fmt.Printf("| %s | %s | %s | %s | %s | %s | %s |\n", t, nm("noise0"), nm("noise1"), rr("retries"), nm("ol_noise0"), nm("ol_noise1"), rr("ol_retries"))
	}

	if d["deskgate"] != nil {
		fmt.Println()
		fmt.Println("### deskgate only")
		fmt.Println()
		fmt.Println("| run | req/s | × deskgate proxied | deskgate CPU µs/req | heap allocs/req | heap B/req | + redis-server µs/req | Redis round trips (EVALSHA) | statuses |")
		fmt.Println("|---|---:|---:|---:|---:|---:|---:|---:|---|")
		al := func(t string) string {
			return format(d.metric(t, "allocs_req"), "1") + " | " + format(d.metric(t, "bytes_req"), "int")
		}
		fmt.Printf("| proxied, 10,000 keys rotated | %s | 1.00x | %s | %s | %s | %s per request | 429s: %s in all runs (wrk + open loop); rate-limit store errors: %s; local-fallback decisions: %s |\n",
			format(d.metric("deskgate", "rps"), "int"), format(d.metric("deskgate", "cpu_us"), "1"), al("deskgate"),
			format(d.metric("deskgate", "redis_cpu_us"), "1"), format(d.metric("deskgate", "redis_calls"), "2"),
			group(total(d.metric("deskgate", "n429"))), group(total(d.metric("deskgate", "store_errors"))),
			group(total(d.metric("deskgate", "fallback_decisions"))))
		if d["bareproxy"] != nil {
			fmt.Printf("| (reference) bare Go proxy, same load | %s | %s | %s | %s | — | — | — |\n",
				format(d.metric("bareproxy", "rps"), "int"), format(d.ratio("bareproxy", "rps", "deskgate", "rps"), "x"),
				format(d.metric("bareproxy", "cpu_us"), "1"), al("bareproxy"))
		}
		if d["deskgate-local"] != nil {
			t := "deskgate-local"
			fmt.Printf("| (diagnostic) deskgate with its limits in process, same load | %s | %s | %s | %s | — | — | 429s: %s in all runs |\n",
				format(d.metric(t, "rps"), "int"), format(d.ratio(t, "rps", "deskgate", "rps"), "x"),
				format(d.metric(t, "cpu_us"), "1"), al(t), group(total(d.metric(t, "n429"))))
		}
		if d["deskgate-reject"] != nil {
			t := "deskgate-reject"
			fmt.Printf("| reject: one key flooded (429) | %s | %s | %s | %s | %s | %s per run after the first denial (of which admissions: %s; Redis denials: %s) | 429 from the deny cache: %s per run; 2xx: %s per run |\n",
				format(d.metric(t, "rps"), "int"), format(d.ratio(t, "rps", "deskgate", "rps"), "x"),
				format(d.metric(t, "cpu_us"), "1"), al(t), format(d.metric(t, "redis_cpu_us"), "2"),
				format(d.metric(t, "redis_evalsha"), "int"), format(d.metric(t, "redis_allowed"), "int"),
				format(d.metric(t, "redis_denied"), "int"), format(d.metric(t, "deny_cache"), "int"), format(d.metric(t, "ok"), "int"))
		}
		if d["deskgate-noauth"] != nil {
			t := "deskgate-noauth"
			fmt.Printf("| auth failure: no key (401) | %s | %s | %s | %s | %s | %s per run | non-401: %s |\n",
				format(d.metric(t, "rps"), "int"), format(d.ratio(t, "rps", "deskgate", "rps"), "x"),
				format(d.metric(t, "cpu_us"), "1"), al(t), format(d.metric(t, "redis_cpu_us"), "2"),
				format(d.metric(t, "redis_evalsha"), "int"), group(total(d.metric(t, "non401"))))
		}
		fmt.Println()
		fmt.Println("### Issue 7 targets")
		fmt.Println()
		fmt.Println("| target | goal | measured (median, spread) | met? |")
		fmt.Println("|---|---|---|---|")
		verdict := func(v []float64, ok func(float64) bool) string {
			if len(v) == 0 {
				return "not measured"
			}
			all := true
			for _, x := range v {
				all = all && ok(x)
			}
			switch {
			case all:
				return "yes (every repetition)"
			case ok(median(v)):
				return "yes at the median, not in every repetition"
			}
			return "**no**"
		}
		r := d.ratio("deskgate", "rps", "bareproxy", "rps")
		fmt.Printf("| req/s vs bare Go proxy | ≥ 0.90x | %s | %s |\n", format(r, "x"), verdict(r, func(x float64) bool { return x >= 0.9 }))
		if d["deskgate-local"] != nil {
			rl := d.ratio("deskgate-local", "rps", "bareproxy", "rps")
			fmt.Printf("| (diagnostic) the same for deskgate with its limits in process | ≥ 0.90x | %s | %s |\n", format(rl, "x"), verdict(rl, func(x float64) bool { return x >= 0.9 }))
		}
		c := d.sum("deskgate", "cpu_us", "redis_cpu_us")
		fmt.Printf("| server CPU per request incl. Redis | ≤ 60 µs | %s µs | %s |\n", format(c, "1"), verdict(c, func(x float64) bool { return x <= 60 }))
		qs := []string{"deskgate", "nginx-key", "upstream"}
		p, allQuiet := d.quietOnly(func(rep int) (float64, bool) {
			a, ok1 := d.get("deskgate", rep, "ol_p99")
			n, ok2 := d.get("nginx-key", rep, "ol_p99")
			u, ok3 := d.get("upstream", rep, "ol_p99")
			return (a - u) - 2*(n-u), ok1 && ok2 && ok3
		}, qs...)
		note := fmt.Sprintf("%d quiet repetition(s)", d.nQuiet(qs...))
		if !allQuiet {
			note = "no repetition quiet for all three: every repetition"
		}
		fmt.Printf("| p99 added latency @ open loop | ≤ 2 × nginx-with-key's | deskgate %s µs vs 2 × %s µs; margin (deskgate − 2×nginx) %s µs (%s) | %s |\n",
			d.lat(d.fdiff("deskgate", "ol_p99", "upstream", 1), qs...), d.lat(d.fdiff("nginx-key", "ol_p99", "upstream", 1), qs...),
			format(p, "int"), note, verdict(p, func(x float64) bool { return x <= 0 }))
		ex := d.series(func(rep int) (float64, bool) {
			a, ok1 := d.get("deskgate", rep, "allocs_req")
			b, ok2 := d.get("bareproxy", rep, "allocs_req")
			return a - b, ok1 && ok2
		})
		fmt.Printf("| heap allocations per request beyond the bare proxy's (under load; the issue pins this with a test) | 0 | deskgate %s − bare proxy %s = %s | %s |\n",
			format(d.metric("deskgate", "allocs_req"), "1"), format(d.metric("bareproxy", "allocs_req"), "1"), format(ex, "1"),
			verdict(ex, func(x float64) bool { return x <= 0.5 }))
		rr := d.ratio("deskgate-reject", "rps", "deskgate", "rps")
		fmt.Printf("| reject path req/s | ≥ 4x proxied | %s | %s |\n", format(rr, "x"), verdict(rr, func(x float64) bool { return x >= 4 }))
		z := d.series(func(rep int) (float64, bool) {
			c, ok1 := d.get("deskgate-reject", rep, "redis_evalsha")
			a, ok2 := d.get("deskgate-reject", rep, "redis_allowed")
			return c - a, ok1 && ok2
		})
		fmt.Printf("| Redis calls after the first denial | 0 | %s EVALSHA per flood run, of which %s decided a denial (the rest admitted a request when the budget reopened) | %s |\n",
			format(d.metric("deskgate-reject", "redis_evalsha"), "int"), format(z, "int"), verdict(z, func(x float64) bool { return x == 0 }))
	}
}
