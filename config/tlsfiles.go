package config

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"time"
)

// LoadCertificate reads the PEM certificate chain at certPath and the PEM
// private key at keyPath and checks that they make a pair whose leaf has
// not expired. The error names the field at fault: server.tls.cert_file
// for an unreadable or unparsable chain or an expired leaf,
// server.tls.key_file for an unreadable key or one that does not match.
// [Load] uses it at start-up; the TLS layer uses it again on every reload
// of the files, where a bad pair is refused and the old one kept.
func LoadCertificate(certPath, keyPath string) (*tls.Certificate, *FieldError) {
	const certField, keyField = "server.tls.cert_file", "server.tls.key_file"
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, &FieldError{certField, fmt.Sprintf("reading the certificate: %v", err)}
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, &FieldError{keyField, fmt.Sprintf("reading the private key: %v", err)}
	}
	if b, _ := pem.Decode(certPEM); b == nil || b.Type != "CERTIFICATE" {
		return nil, &FieldError{certField, fmt.Sprintf("%s holds no PEM CERTIFICATE block", certPath)}
	}
	leaf, err := firstCertificate(certPEM)
	if err != nil {
		return nil, &FieldError{certField, fmt.Sprintf("%s: %v", certPath, err)}
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, &FieldError{keyField, fmt.Sprintf("%s does not make a pair with %s: %v", keyPath, certPath, err)}
	}
	if pair.Leaf == nil {
		pair.Leaf = leaf
	}
	if now := time.Now(); now.After(leaf.NotAfter) {
		return nil, &FieldError{certField, fmt.Sprintf("%s expired at %s", certPath, leaf.NotAfter.UTC().Format(time.RFC3339))}
	}
	return &pair, nil
}

// firstCertificate parses the first CERTIFICATE block of a PEM chain.
func firstCertificate(chain []byte) (*x509.Certificate, error) {
	for {
		var b *pem.Block
		b, chain = pem.Decode(chain)
		if b == nil {
			return nil, errors.New("no PEM CERTIFICATE block")
		}
		if b.Type == "CERTIFICATE" {
			return x509.ParseCertificate(b.Bytes)
		}
	}
}
