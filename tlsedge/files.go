package tlsedge

import (
	"crypto/tls"
	"sync"
	"sync/atomic"

	"github.com/innovartx/deskgate/config"
	"github.com/innovartx/deskgate/internal/filestamp"
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
	seen [2]filestamp.Stamp
}

// load reads the pair for the first time: an error is fatal at start-up.
func (f *fileCerts) load(e *Edge) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seen = [2]filestamp.Stamp{filestamp.Of(f.certPath), filestamp.Of(f.keyPath)}
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
	now := [2]filestamp.Stamp{filestamp.Of(f.certPath), filestamp.Of(f.keyPath)}
	return now != f.seen && !now[0].Err && !now[1].Err
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
	f.seen = [2]filestamp.Stamp{filestamp.Of(f.certPath), filestamp.Of(f.keyPath)}
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
