// Package tlsedge is HTTPS and HTTP/2 on deskgate's public listener
// (SPEC §12): the certificate, from files that are reloaded when they
// change or from an ACME CA that renews it, the TLS settings, a listener
// that completes each handshake before net/http sees the connection, the
// HTTP/2 limits, the plain listener's redirect to https, and the TLS
// metrics.
//
// It knows nothing of the request path: main hands it the wrappers of
// package proxy that shape raw error answers and apply write deadlines,
// so every rule of the gateway holds over HTTPS the same as over HTTP.
package tlsedge

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"golang.org/x/crypto/acme"
	"golang.org/x/crypto/acme/autocert"

	"github.com/innovartx/deskgate/config"
	"github.com/innovartx/deskgate/metrics"
)

// Options are what [New] needs besides the config.
type Options struct {
	Metrics *metrics.Metrics
	Logger  *slog.Logger
	// ACMEClient talks to the ACME CA; nil is an ordinary client that
	// trusts the system roots (SSL_CERT_FILE adds a private CA's). Tests
	// give one that trusts their local CA.
	ACMEClient *http.Client
	// FilePoll is how often the certificate files are checked for a
	// change; 0 is every second.
	FilePoll time.Duration
	// ACMEPoll is how often ACME certificates are looked at again (for
	// the expiry metric; autocert renews on its own timers); 0 is every
	// minute.
	ACMEPoll time.Duration
}

// Edge is the TLS side of the public listener, built once at start-up:
// server.tls does not change on reload (the certificate does).
type Edge struct {
	log   *slog.Logger
	m     *metrics.Metrics
	cfg   config.TLS
	files *fileCerts
	acme  *autocert.Manager
	tls   *tls.Config
	opt   Options
}

// New returns the Edge of cfg, which must be enabled and valid. With
// files, the pair is read now: an error names its field. With ACME,
// nothing is asked of the CA until [Edge.Run] or the first handshake.
func New(cfg config.TLS, o Options) (*Edge, error) {
	if o.FilePoll <= 0 {
		o.FilePoll = time.Second
	}
	if o.ACMEPoll <= 0 {
		o.ACMEPoll = time.Minute
	}
	e := &Edge{log: o.Logger, m: o.Metrics, cfg: cfg, opt: o}
	e.tls = &tls.Config{
		MinVersion:   tls.VersionTLS12,
		CipherSuites: cipherSuites,
		// h2 first: a client that offers both gets HTTP/2. No h2c: a
		// plain connection never speaks HTTP/2 (SPEC §12).
		NextProtos:     []string{"h2", "http/1.1"},
		GetCertificate: e.getCertificate,
	}
	if cfg.MinVersion == config.TLS13 {
		e.tls.MinVersion = tls.VersionTLS13
	}
	if cfg.ACME.Enabled() {
		dir := cfg.ACME.DirectoryURL
		if dir == "" {
			dir = config.LetsEncryptDirectory
		}
		storage := cfg.StoragePath
		if storage == "" {
			storage = cfg.ACME.Storage
		}
		e.acme = &autocert.Manager{
			Prompt:     autocert.AcceptTOS,
			Cache:      autocert.DirCache(storage),
			HostPolicy: autocert.HostWhitelist(cfg.ACME.Domains...),
			Email:      cfg.ACME.Email,
			Client:     &acme.Client{DirectoryURL: dir, HTTPClient: o.ACMEClient, UserAgent: "deskgate"},
		}
		// TLS-ALPN-01: the CA's validation handshakes ask for this
		// protocol, and GetCertificate answers them.
		e.tls.NextProtos = append(e.tls.NextProtos, acme.ALPNProto)
		return e, nil
	}
	certPath, keyPath := cfg.CertPath, cfg.KeyPath
	if certPath == "" {
		certPath, keyPath = cfg.CertFile, cfg.KeyFile
	}
	e.files = &fileCerts{certPath: certPath, keyPath: keyPath}
	if err := e.files.load(e); err != nil {
		return nil, err
	}
	return e, nil
}

// cipherSuites are the TLS 1.2 suites offered: ECDHE with an AEAD only,
// those HTTP/2 accepts (RFC 9113 §9.2.2) and that Mozilla's
// "intermediate" profile lists. TLS 1.3 suites are not configurable.
var cipherSuites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

// TLSConfig returns the server's TLS settings: min_version, the AEAD
// suites, ALPN (h2, http/1.1, and acme-tls/1 with ACME) and the
// certificate of the moment. [Edge.Listener] uses it.
func (e *Edge) TLSConfig() *tls.Config { return e.tls }

func (e *Edge) getCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	if e.files != nil {
		return e.files.cur.Load(), nil
	}
	if hello.ServerName == "" {
		// A client without SNI (an IP address, an old client) gets the
		// first domain's certificate rather than a failed handshake.
		h := *hello
		h.ServerName = e.cfg.ACME.Domains[0]
		hello = &h
	}
	return e.acme.GetCertificate(hello)
}

// Reload reads the certificate files again now, as on SIGHUP: a good new
// pair is served to new connections at once; a bad one is refused and
// logged, and the old one keeps serving. Without files it does nothing.
func (e *Edge) Reload() {
	if e.files != nil {
		e.files.reload(e, "SIGHUP")
	}
}

// Run keeps the certificates current until ctx ends: with files it polls
// them for a change (cert-manager swaps a Secret's files in place); with
// ACME it obtains each domain's certificate at once, rather than at the
// first client's handshake, then looks at them every ACMEPoll to keep
// the expiry metric true after autocert's renewals.
func (e *Edge) Run(ctx context.Context) {
	every := e.opt.FilePoll
	if e.acme != nil {
		every = e.opt.ACMEPoll
		e.refreshACME(ctx)
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if e.files != nil {
			if e.files.changed() {
				e.files.reload(e, "files changed")
			}
			continue
		}
		e.refreshACME(ctx)
	}
}

// refreshACME asks autocert for each domain's certificate, as a client
// would (an ECDSA-capable hello), and sets its expiry metric. The first
// call obtains the certificates; later ones find them in memory, or in
// the shared storage after another replica renewed them.
func (e *Edge) refreshACME(ctx context.Context) {
	for _, d := range e.cfg.ACME.Domains {
		if ctx.Err() != nil {
			return
		}
		cert, err := e.acme.GetCertificate(&tls.ClientHelloInfo{
			ServerName:        d,
			SignatureSchemes:  []tls.SignatureScheme{tls.ECDSAWithP256AndSHA256},
			SupportedCurves:   []tls.CurveID{tls.CurveP256},
			CipherSuites:      []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256},
			SupportedVersions: []uint16{tls.VersionTLS13, tls.VersionTLS12},
		})
		if err != nil {
			e.log.Warn("ACME certificate not available", "domain", d, "error", err.Error())
			continue
		}
		if leaf := leafOf(cert); leaf != nil {
			e.m.TLSCertExpiry.WithLabelValues(d).Set(float64(leaf.NotAfter.Unix()))
		}
	}
}

// leafOf returns the parsed leaf of a certificate.
func leafOf(c *tls.Certificate) *x509.Certificate {
	if c == nil {
		return nil
	}
	if c.Leaf != nil {
		return c.Leaf
	}
	if len(c.Certificate) == 0 {
		return nil
	}
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		return nil
	}
	return leaf
}

// certName names a certificate in the expiry metric: its first DNS name,
// else its first IP address, else its subject's common name.
func certName(leaf *x509.Certificate) string {
	switch {
	case len(leaf.DNSNames) > 0:
		return leaf.DNSNames[0]
	case len(leaf.IPAddresses) > 0:
		return leaf.IPAddresses[0].String()
	case leaf.Subject.CommonName != "":
		return leaf.Subject.CommonName
	}
	return "unnamed"
}

// HTTP2 returns the HTTP/2 settings of the public server. Each is set on
// purpose rather than left to net/http's defaults:
//
//   - MaxConcurrentStreams 100 (Go's default is 250): each stream may
//     hold an upstream connection of upstream.max_conns_per_host, so one
//     client connection should not take a quarter of the default 1024;
//     100 is what RFC 9113 §6.5.2 recommends as a floor and what most
//     edges (Envoy, nginx's 128) use.
//   - MaxReadFrameSize 64 KiB (Go's default is 1 MiB): the frame reader's
//     buffer grows to the largest frame a client sends and stays with its
//     connection; 64 KiB caps that at a sixteenth, and uploads still move
//     in frames four times the protocol's 16 KiB default.
//   - MaxReceiveBufferPerConnection 1 MiB and MaxReceiveBufferPerStream
//     256 KiB: the flow-control windows, so a connection buffers at most
//     1 MiB of request bodies, however many streams it opens.
//   - Header tables at the protocol's 4 KiB. The decoded header list is
//     capped by http.Server.MaxHeaderBytes (server.max_header_bytes; Go
//     adds 320 bytes for HPACK's per-field overhead), the same limit as
//     HTTP/1.1.
//   - Rapid reset (CVE-2023-44487) needs no setting: the server runs at
//     most MaxConcurrentStreams handlers per connection, queues the
//     streams beyond them, and closes a connection whose queue grows too
//     long.
//   - No SendPingTimeout or WriteByteTimeout: server.write_timeout is
//     applied to the connection beneath TLS and to each stream (package
//     proxy), and idle connections close at server.idle_timeout.
func HTTP2() *http.HTTP2Config {
	return &http.HTTP2Config{
		MaxConcurrentStreams:          100,
		MaxReadFrameSize:              64 << 10,
		MaxReceiveBufferPerConnection: 1 << 20,
		MaxReceiveBufferPerStream:     256 << 10,
		MaxDecoderHeaderTableSize:     4096,
		MaxEncoderHeaderTableSize:     4096,
	}
}

// Protocols returns HTTP/1.1 and HTTP/2 over TLS, and no unencrypted
// HTTP/2 (h2c).
func Protocols() *http.Protocols {
	p := new(http.Protocols)
	p.SetHTTP1(true)
	p.SetHTTP2(true)
	return p
}

// describe is a one-line summary of a certificate for the log.
func describe(leaf *x509.Certificate) string {
	return fmt.Sprintf("%s (serial %s, until %s)", certName(leaf), leaf.SerialNumber.Text(16), leaf.NotAfter.UTC().Format(time.RFC3339))
}
