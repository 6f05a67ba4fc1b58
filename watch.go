package main

// Polling the config file and the key file for changes (watch_config).

import (
	"context"
	"time"

	"github.com/innovartx/deskgate/internal/filestamp"
)

// watchFile polls the file path() names every interval and signals
// changed when it differs from the last version seen, starting from
// loaded, the version the running config was read from ("" watches
// nothing). Polling a stat a second costs nothing and, unlike inotify,
// survives symlink swaps and renames without re-arming.
func watchFile(ctx context.Context, path func() string, loaded filestamp.Stamp, every time.Duration, changed chan<- struct{}) {
	name := path()
	last := loaded
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if n := path(); n != name {
			name, last = n, filestamp.Of(n) // a reload named another file
			continue
		}
		if name == "" {
			continue
		}
		s := filestamp.Of(name)
		if s == last || s.Err {
			continue // a missing file mid-swap is not a change yet
		}
		last = s
		select {
		case changed <- struct{}{}:
		default:
		}
	}
}
