package tlsedge

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/innovartx/deskgate/config"
	"github.com/innovartx/deskgate/internal/tlstest"
	"github.com/innovartx/deskgate/metrics"
)

// needBinary returns the path of a program, or skips loudly; with
// CI=true a missing one fails instead (.ci/run installs it).
func needBinary(t *testing.T, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s not found in CI (Debian package %s, installed by .ci/run): %v", name, pkg, err)
		}
		t.Skipf("SKIPPED: %s not found (apt-get install %s); CI=true makes this a failure: %v", name, pkg, err)
	}
	return p
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// pebble is a local ACME CA (letsencrypt/pebble) with its mock DNS
// (pebble-challtestsrv, DNS only) that resolves every name to 127.0.0.1,
// so that its validation authority connects to the test's listeners on
// loopback: HTTP-01 to httpPort, TLS-ALPN-01 to tlsPort.
type pebble struct {
	dir    string // the directory URL
	client *http.Client
	roots  *x509.CertPool // pebble's issuing root, for the test's clients
	log    *lockedLog
}

type lockedLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startPebble runs pebble on loopback, issuing certificates valid for
// validity, validating HTTP-01 on httpPort and TLS-ALPN-01 on tlsPort.
func startPebble(t *testing.T, httpPort, tlsPort int, validity time.Duration) *pebble {
	t.Helper()
	bin := needBinary(t, "pebble", "pebble")
	dnsBin := needBinary(t, "pebble-challtestsrv", "pebble")
	dir := t.TempDir()
	ca := tlstest.NewCA(t)
	leaf := ca.Issue(t, time.Now().Add(time.Hour), "127.0.0.1", "localhost")
	certPath, keyPath := leaf.Write(t, dir)

	dnsAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	p := &pebble{log: &lockedLog{}}
	start := func(name string, env []string, args ...string) {
		ctx, cancel := context.WithCancel(context.Background())
		cmd := exec.CommandContext(ctx, name, args...)
		cmd.Env = append(os.Environ(), env...)
		cmd.Stdout, cmd.Stderr = p.log, p.log
		if err := cmd.Start(); err != nil {
			cancel()
			t.Fatalf("%s: %v", name, err)
		}
		t.Cleanup(func() {
			cancel()
			_ = cmd.Wait()
		})
	}
	start(dnsBin, nil, "-dns01", dnsAddr, "-http01", "", "-https01", "", "-tlsalpn01", "",
		"-management", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "")

	listen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	mgmt := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cfg := map[string]any{"pebble": map[string]any{
		"listenAddress":             listen,
		"managementListenAddress":   mgmt,
		"certificate":               certPath,
		"privateKey":                keyPath,
		"httpPort":                  httpPort,
		"tlsPort":                   tlsPort,
		"ocspResponderURL":          "",
		"certificateValidityPeriod": int(validity / time.Second),
	}}
	b, _ := json.Marshal(cfg)
	cfgPath := filepath.Join(dir, "pebble.json")
	if err := os.WriteFile(cfgPath, b, 0o600); err != nil {
		t.Fatal(err)
	}
	// No random validation delay, no rejected nonces, no reused
	// authorizations: every order validates its challenge, at once.
	start(bin, []string{"PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0", "PEBBLE_AUTHZREUSE=0"},
		"-config", cfgPath, "-dnsserver", dnsAddr)

	p.client = ca.Client(false, 10*time.Second)
	p.dir = "https://" + listen + "/dir"
	deadline := time.Now().Add(10 * time.Second)
	for {
		res, err := p.client.Get(p.dir)
		if err == nil {
			res.Body.Close()
			if res.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("pebble not answering %s after 10s: %v\n%s", p.dir, err, p.log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	res, err := p.client.Get("https://" + mgmt + "/roots/0")
	if err != nil {
		t.Fatal(err)
	}
	root, _ := io.ReadAll(res.Body)
	res.Body.Close()
	p.roots = x509.NewCertPool()
	if !p.roots.AppendCertsFromPEM(root) {
		t.Fatalf("pebble's root: %q", root)
	}
	return p
}

// TestACMEWithPebble guards SPEC §12's ACME: against a local ACME CA,
// deskgate obtains a certificate for its domain by TLS-ALPN-01 (on the
// TLS listener itself) or by HTTP-01 (on the redirect_http listener),
// stores it in acme.storage, serves requests over HTTP/2 with it, renews
// it before it expires (pebble's certificates here live 15 s; autocert
// renews when a third of the lifetime is left, and an order takes pebble
// about two seconds; checked once, with TLS-ALPN-01), and exports its
// expiry.
func TestACMEWithPebble(t *testing.T) {
	for _, challenge := range []string{"tls-alpn-01", "http-01"} {
		t.Run(challenge, func(t *testing.T) {
			const domain = "gw.deskgate.test"
			tlsLn, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			httpLn, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			// The CA validates only the challenge under test: the other
			// port is a closed one.
			tlsPort, httpPort := tlsLn.Addr().(*net.TCPAddr).Port, freePort(t)
			if challenge == "http-01" {
				tlsPort, httpPort = freePort(t), httpLn.Addr().(*net.TCPAddr).Port
			}
			pb := startPebble(t, httpPort, tlsPort, 15*time.Second)

			storage := t.TempDir()
			reg := prometheus.NewRegistry()
			m := metrics.New(reg, "test")
			logs := &lockedLog{}
			e, err := New(config.TLS{MinVersion: "1.2", ACME: config.ACME{
				Domains: []string{domain}, Email: "ops@deskgate.test", DirectoryURL: pb.dir, Storage: storage,
			}}, Options{Metrics: m, Logger: slog.New(slog.NewJSONHandler(logs, nil)), ACMEClient: pb.client, ACMEPoll: 200 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()

			srv := &http.Server{
				Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					fmt.Fprintf(w, "hello over HTTP/%d", r.ProtoMajor)
				}),
				ReadHeaderTimeout: 5 * time.Second,
				HTTP2:             HTTP2(),
				Protocols:         Protocols(),
			}
			go srv.Serve(e.Listener(tlsLn, Wrappers{HandshakeTimeout: 5 * time.Second}))
			defer srv.Close()
			var challenges atomic.Int64
			if challenge == "http-01" {
				rh := e.RedirectHandler("443")
				redirect := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					if strings.HasPrefix(r.URL.Path, "/.well-known/acme-challenge/") {
						challenges.Add(1)
					}
					rh.ServeHTTP(w, r)
				})}
				go redirect.Serve(httpLn)
				defer redirect.Close()
			} else {
				httpLn.Close()
			}
			go e.Run(ctx)

			expiry := m.TLSCertExpiry.WithLabelValues(domain)
			deadline := time.Now().Add(20 * time.Second)
			for testutil.ToFloat64(expiry) == 0 {
				if time.Now().After(deadline) {
					t.Fatalf("no certificate after 20s; deskgate log:\n%s\npebble:\n%s", logs.String(), pb.log.String())
				}
				time.Sleep(50 * time.Millisecond)
			}

			// A client that trusts pebble's root and resolves the domain
			// to the listener.
			tr := &http.Transport{
				TLSClientConfig:   &tls.Config{RootCAs: pb.roots},
				ForceAttemptHTTP2: true,
				DisableKeepAlives: true,
				DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
					return (&net.Dialer{}).DialContext(ctx, network, tlsLn.Addr().String())
				},
			}
			client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
			get := func() (string, *x509.Certificate) {
				t.Helper()
				res, err := client.Get("https://" + domain + "/api/v1/health")
				if err != nil {
					t.Fatalf("GET over the ACME certificate: %v", err)
				}
				defer res.Body.Close()
				b, _ := io.ReadAll(res.Body)
				return string(b), res.TLS.PeerCertificates[0]
			}
			body, first := get()
			if body != "hello over HTTP/2" || first.DNSNames[0] != domain {
				t.Fatalf("got %q with a certificate for %v", body, first.DNSNames)
			}
			if got := testutil.ToFloat64(expiry); got != float64(first.NotAfter.Unix()) {
				t.Errorf("expiry metric %v, want %d", got, first.NotAfter.Unix())
			}
			if challenge == "http-01" && challenges.Load() == 0 {
				t.Error("the CA never fetched an HTTP-01 challenge from the redirect listener")
			}
			if files, _ := os.ReadDir(storage); len(files) == 0 {
				t.Error("nothing kept in acme.storage")
			}

			if challenge != "tls-alpn-01" {
				return
			}
			// Renewal: a new certificate is served before the first one
			// expires.
			for {
				_, cert := get()
				if cert.SerialNumber.Cmp(first.SerialNumber) != 0 {
					if !time.Now().Before(first.NotAfter) {
						t.Errorf("renewed only after expiry (%s)", first.NotAfter)
					}
					t.Logf("%s: certificate obtained, then renewed %v before the first one's expiry",
						challenge, time.Until(first.NotAfter).Round(100*time.Millisecond))
					break
				}
				if time.Now().After(first.NotAfter.Add(-500 * time.Millisecond)) {
					t.Fatalf("not renewed before expiry; deskgate log:\n%s", logs.String())
				}
				time.Sleep(100 * time.Millisecond)
			}
		})
	}
}
