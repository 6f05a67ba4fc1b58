package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/innovartx/deskgate/internal/tlstest"
)

// TestLoadCertificateErrors guards SPEC §12 with §5: at start-up (and in
// -check-config) an unreadable, mismatched or expired pair is a config
// error naming its field; a good pair, relative to the config's
// directory, loads.
func TestLoadCertificateErrors(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t)
	good := ca.Issue(t, time.Now().Add(time.Hour), "localhost", "127.0.0.1")
	other := ca.Issue(t, time.Now().Add(time.Hour), "localhost")
	expired := ca.Issue(t, time.Now().Add(-time.Minute), "localhost")
	write := func(name string, data []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("good.pem", good.CertPEM)
	write("good.key", good.KeyPEM)
	write("other.key", other.KeyPEM)
	write("expired.pem", expired.CertPEM)
	write("expired.key", expired.KeyPEM)
	write("junk.pem", []byte("not a certificate\n"))
	for _, tc := range []struct {
		name, cert, key string
		want            string // "" for success
	}{
		{"good pair", "good.pem", "good.key", ""},
		{"missing cert", "nope.pem", "good.key", "server.tls.cert_file: reading the certificate: open "},
		{"missing key", "good.pem", "nope.key", "server.tls.key_file: reading the private key: open "},
		{"not PEM", "junk.pem", "good.key", "server.tls.cert_file: " + filepath.Join(dir, "junk.pem") + " holds no PEM CERTIFICATE block"},
		{"mismatched", "good.pem", "other.key", "server.tls.key_file: " + filepath.Join(dir, "other.key") + " does not make a pair with " + filepath.Join(dir, "good.pem") + ": tls: private key does not match public key"},
		{"expired", "expired.pem", "expired.key", "server.tls.cert_file: " + filepath.Join(dir, "expired.pem") + " expired at "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, "config.yaml")
			write("config.yaml", []byte("server:\n  tls: {cert_file: "+tc.cert+", key_file: "+tc.key+"}\n"+
				"upstream: {url: \"http://127.0.0.1:8081\"}\nroutes: [{pattern: \"/\", auth: none}]\n"))
			cfg, err := Load(path)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Load: %v", err)
				}
				if cfg.Server.TLS.CertPath != filepath.Join(dir, tc.cert) || !cfg.Server.TLS.Enabled() {
					t.Errorf("CertPath %q, enabled %v", cfg.Server.TLS.CertPath, cfg.Server.TLS.Enabled())
				}
				return
			}
			var errs Errors
			if !errors.As(err, &errs) || len(errs) != 1 {
				t.Fatalf("Load error %v, want one field error", err)
			}
			if got := errs[0].Error(); !strings.HasPrefix(got, tc.want) {
				t.Errorf("error %q\nwant prefix %q", got, tc.want)
			}
		})
	}
}
