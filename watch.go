package main

// Polling the config file and the key file for changes (watch_config).

import (
	"context"
	"os"
	"syscall"
	"time"
)

// fileStamp identifies a version of a file: a Kubernetes ConfigMap update
// swaps a symlink (new inode), an editor renames a new file in place (new
// inode), a plain write changes size or mtime.
type fileStamp struct {
	mod   time.Time
	size  int64
	inode uint64
	err   bool
}

func stampOf(path string) fileStamp {
	fi, err := os.Stat(path) // follows symlinks
	if err != nil {
		return fileStamp{err: true}
	}
	st := fileStamp{mod: fi.ModTime(), size: fi.Size()}
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		st.inode = sys.Ino
	}
	return st
}

// watchFile polls the file path() names every interval and signals
// changed when it differs from the last version seen, starting from
// loaded, the version the running config was read from ("" watches
// nothing). Polling a stat a second costs nothing and, unlike inotify,
// survives symlink swaps and renames without re-arming.
func watchFile(ctx context.Context, path func() string, loaded fileStamp, every time.Duration, changed chan<- struct{}) {
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
			name, last = n, stampOf(n) // a reload named another file
			continue
		}
		if name == "" {
			continue
		}
		s := stampOf(name)
		if s == last || s.err {
			continue // a missing file mid-swap is not a change yet
		}
		last = s
		select {
		case changed <- struct{}{}:
		default:
		}
	}
}
