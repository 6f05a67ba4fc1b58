package tlsedge

import (
	"crypto/tls"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/innovartx/deskgate/config"
)

// fileCerts is the certificate of server.tls.cert_file and key_file. The
// handshake reads cur, an atomically swapped pointer: a reload never
// blocks or tears a handshake, and connections already open keep the
// certificate they were made with.
type fileCerts struct {
	certPath, keyPath string
	cur               atomic.Pointer[tls.Certificate]

	mu sync.Mutex // one reload at a time; guards seen
	// seen are the versions of the two files last read, good or bad, so
	// that a bad pair is logged once, not every poll.
	seen [2]fileStamp
}

// load reads the pair for the first time: an error is fatal at start-up.
func (f *fileCerts) load(e *Edge) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seen = [2]fileStamp{stampOf(f.certPath), stampOf(f.keyPath)}
	cert, ferr := config.LoadCertificate(f.certPath, f.keyPath)
	if ferr != nil {
		return config.Errors{*ferr}
	}
	f.swap(e, cert)
	return nil
}

// changed reports whether either file differs from the version last read.
func (f *fileCerts) changed() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := [2]fileStamp{stampOf(f.certPath), stampOf(f.keyPath)}
	return now != f.seen && !now[0].err && !now[1].err
}

// reload reads the pair again. A pair that cannot be read, does not match
// or has expired is refused and logged with the field at fault; the
// certificate being served stays. A writer that replaces the two files
// one after the other may be seen halfway (new certificate, old key):
// that is refused, and the next poll, after the second file changes,
// loads the pair.
func (f *fileCerts) reload(e *Edge, why string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seen = [2]fileStamp{stampOf(f.certPath), stampOf(f.keyPath)}
	cert, ferr := config.LoadCertificate(f.certPath, f.keyPath)
	if ferr != nil {
		e.log.Error("certificate reload refused; the current certificate keeps serving",
			"reason", why, "field", ferr.Path, "error", ferr.Msg,
			"serving", describe(leafOf(f.cur.Load())))
		return
	}
	old := leafOf(f.cur.Load())
	if old != nil && old.Equal(leafOf(cert)) {
		e.log.Debug("certificate files read again; certificate unchanged", "reason", why)
		return
	}
	f.swap(e, cert)
	e.log.Info("certificate reloaded", "reason", why, "certificate", describe(leafOf(cert)))
}

// swap serves cert from now on and sets the expiry metric to it alone.
func (f *fileCerts) swap(e *Edge, cert *tls.Certificate) {
	f.cur.Store(cert)
	leaf := leafOf(cert)
	e.m.TLSCertExpiry.Reset()
	e.m.TLSCertExpiry.WithLabelValues(certName(leaf)).Set(float64(leaf.NotAfter.Unix()))
}

// fileStamp identifies a version of a file: a Kubernetes Secret update
// swaps a symlink (new inode), a rename gives a new inode, a plain write
// changes size or mtime.
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
