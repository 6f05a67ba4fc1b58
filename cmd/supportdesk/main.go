// Command supportdesk serves the example SupportDesk REST API (package
// supportdesk) on its own: the upstream that deploy/docker-compose.yml puts
// behind deskgate. `deskgate demo` runs the same API in process; this binary
// is for setups where the upstream is a separate container.
//
// Usage:
//
//	supportdesk [-listen :8081] [-shutdown-timeout 10s]
//
// SIGTERM or SIGINT stops accepting and lets requests in flight finish
// within -shutdown-timeout, then exits 0.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/innovartx/deskgate/internal/supportdesk"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run is main with its exit code returned: 0 after a clean shutdown, 1 when
// serving fails, 2 for bad flags.
func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("supportdesk", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", ":8081", "address to serve the example SupportDesk API on")
	drain := fs.Duration("shutdown-timeout", 10*time.Second, "how long requests in flight may take to finish on SIGTERM")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "supportdesk: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	log := slog.New(slog.NewJSONHandler(stdout, nil))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintf(stderr, "supportdesk: %v\n", err)
		return 1
	}
	srv := &http.Server{
		Handler:           supportdesk.New(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	log.Info("supportdesk started", "listen", ln.Addr().String())

	select {
	case err := <-errc:
		fmt.Fprintf(stderr, "supportdesk: %v\n", err)
		return 1
	case <-ctx.Done():
	}
	log.Info("shutting down", "timeout", drain.String())
	sctx, cancel := context.WithTimeout(context.Background(), *drain)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("shutdown timed out; remaining connections closed", "error", err.Error())
		_ = srv.Close()
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		fmt.Fprintf(stderr, "supportdesk: %v\n", err)
		return 1
	}
	log.Info("stopped")
	return 0
}
