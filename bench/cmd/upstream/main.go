// Command upstream is the benchmark's fast upstream: it answers every
// request with the 11 bytes {"ok":true}, a Content-Length and keep-alive,
// so that what is measured in front of it is the proxy, not the upstream.
package main

import (
	"flag"
	"io"
	"log"
	"net/http"
	"time"
)

var body = []byte(`{"ok":true}`)

func main() {
	listen := flag.String("listen", "127.0.0.1:18081", "address to listen on")
	flag.Parse()
	srv := &http.Server{
		Addr:              *listen,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Body != nil {
				_, _ = io.Copy(io.Discard, r.Body)
			}
			h := w.Header()
			h["Content-Type"] = []string{"application/json"}
			h["Content-Length"] = []string{"11"}
			_, _ = w.Write(body)
		}),
	}
	log.Fatal(srv.ListenAndServe())
}
