// Command bareproxy is the floor of any Go gateway: a stdlib
// httputil.ReverseProxy with a keep-alive pool of 256 idle connections to
// the upstream and nothing else (no auth, no limits, no metrics, no log).
//
// With -admin, a second listener answers GET /memstats with the process'
// cumulative heap allocations ("<mallocs> <bytes>"), so that bench/run can
// count the allocations per request of the floor itself; it is off the
// proxied path.
package main

import (
	"flag"
	"fmt"
	"log"
	"net/http"
	"net/http/httputil"
	"net/url"
	"runtime"
	"time"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:18084", "address to listen on")
	upstream := flag.String("upstream", "http://127.0.0.1:18081", "upstream URL")
	admin := flag.String("admin", "", "address of the /memstats listener (empty: none)")
	flag.Parse()
	if *admin != "" {
		go func() {
			log.Fatal(http.ListenAndServe(*admin, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				var m runtime.MemStats
				runtime.ReadMemStats(&m)
				fmt.Fprintf(w, "%d %d\n", m.Mallocs, m.TotalAlloc)
			})))
		}()
	}
	u, err := url.Parse(*upstream)
	if err != nil {
		log.Fatal(err)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConns = 256
	tr.MaxIdleConnsPerHost = 256
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(u)
			pr.SetXForwarded()
		},
		Transport: tr,
	}
	srv := &http.Server{
		Addr:              *listen,
		Handler:           rp,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
	}
	log.Fatal(srv.ListenAndServe())
}
