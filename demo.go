package main

// `deskgate demo`: the example SupportDesk upstream in the same process,
// and the demo's end with the process that started it.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"time"

	"github.com/innovartx/deskgate/internal/supportdesk"
)

// errParentExited ends the demo when the process that started it is gone.
var errParentExited = errors.New("parent process exited")

// watchParent calls stop when the process's parent changes from ppid (the
// kernel re-parents an orphan to init or a subreaper), checking every
// interval. Polling getppid works on every Unix, needs no thread-bound
// prctl(PR_SET_PDEATHSIG) and costs one system call a second. A process
// started by init (ppid 1) or from outside its PID namespace (0) has no
// parent to watch.
func watchParent(ctx context.Context, ppid int, every time.Duration, stop context.CancelCauseFunc) {
	if ppid <= 1 {
		return
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if os.Getppid() != ppid {
			stop(errParentExited)
			return
		}
	}
}

// startDemoUpstream serves the example SupportDesk API on the host and
// port of upstream (quick start only).
func startDemoUpstream(upstream string, log *slog.Logger) (*http.Server, error) {
	u, err := url.Parse(upstream)
	if err != nil || u.Scheme != "http" {
		return nil, fmt.Errorf("demo: upstream.url must be an http:// URL to serve the example upstream on, got %q", upstream)
	}
	ln, err := net.Listen("tcp", u.Host)
	if err != nil {
		return nil, fmt.Errorf("demo: serving the example upstream on %s: %w", u.Host, err)
	}
	srv := &http.Server{Handler: supportdesk.New(), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	log.Info("example SupportDesk upstream started", "listen", ln.Addr().String())
	return srv, nil
}
