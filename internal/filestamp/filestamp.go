// Package filestamp tells whether a file changed since it was last read,
// by polling: the config file and the key file (watch_config) and the TLS
// certificate files use it.
package filestamp

import (
	"os"
	"syscall"
	"time"
)

// Stamp identifies a version of a file: a Kubernetes ConfigMap or Secret
// update swaps a symlink (new inode), an editor renames a new file in
// place (new inode), a plain write changes size or mtime. Stamps compare
// with ==; a file that cannot be read has the zero-value's Err set.
type Stamp struct {
	mod   time.Time
	size  int64
	inode uint64
	Err   bool
}

// Of returns the stamp of the file at path, following symlinks.
func Of(path string) Stamp {
	fi, err := os.Stat(path)
	if err != nil {
		return Stamp{Err: true}
	}
	st := Stamp{mod: fi.ModTime(), size: fi.Size()}
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		st.inode = sys.Ino
	}
	return st
}
