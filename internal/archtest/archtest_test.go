package archtest

import (
	"encoding/json"
	"go/parser"
	"go/token"
	"io"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/innovartx/deskgate"

// pkg is what `go list -json` says of one package.
type pkg struct {
	ImportPath string
	Dir        string
	Name       string
	Doc        string
	Standard   bool
	GoFiles    []string
	Imports    []string
	Deps       []string
}

// listPackages runs `go list -deps -json` on the module's packages.
func listPackages(t *testing.T) map[string]*pkg {
	t.Helper()
	cmd := exec.Command("go", "list", "-json", "-deps", module+"/...")
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	pkgs := map[string]*pkg{}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("go list output: %v", err)
		}
		pkgs[p.ImportPath] = &p
	}
	return pkgs
}

// rule says what one of the module's packages may import directly, and
// why. An import is allowed when it is in the standard library (unless
// noStd names it) or starts with one of allow's prefixes; "." stands
// for the module itself.
type rule struct {
	allow []string
	noStd []string
	why   string
}

var rules = map[string]rule{
	"apierror": {why: "the error shape is the bottom of the graph: every layer renders it, it depends on nothing of ours"},
	"config": {
		allow: []string{"go.yaml.in/yaml/v3", "./apierror"},
		why:   "config is parsed before anything runs; it only needs the code list of apierror to check messages:",
	},
	"metrics": {
		allow: []string{"github.com/prometheus/"},
		why:   "collectors only; every layer above counts into them",
	},
	"auth": {
		allow: []string{"github.com/redis/go-redis/v9", "go.opentelemetry.io/otel/attribute", "go.opentelemetry.io/otel/codes", "go.opentelemetry.io/otel/trace", "./apierror", "./config", "./metrics"},
		noStd: []string{"net/http"},
		why:   "auth judges keys, not HTTP requests: the proxy hands it header values; it never reaches up to proxy or ratelimit (its Redis lookups are spans through the OpenTelemetry API alone, never the SDK or ./tracing)",
	},
	"ratelimit": {
		allow: []string{"github.com/redis/go-redis/v9", "github.com/go-redis/redis_rate/v10", "github.com/prometheus/client_golang/prometheus", "go.opentelemetry.io/otel/attribute", "go.opentelemetry.io/otel/codes", "go.opentelemetry.io/otel/trace", "./config", "./metrics"},
		noStd: []string{"net/http"},
		why:   "rate limits are decisions on identities, with no HTTP: the proxy maps a decision to headers and a 429 (its Redis calls are spans through the OpenTelemetry API alone, never the SDK or ./tracing)",
	},
	"proxy": {
		allow: []string{"./apierror", "./auth", "./config", "./metrics", "./ratelimit", "./tracing", "github.com/rs/cors"},
		why:   "the request path composes the layers below it; it builds no Redis client and reaches no example or test code",
	},
	"redisclient": {
		allow: []string{"github.com/redis/go-redis/v9", "./config"},
		why:   "one builder of the go-redis client for the limiter and the key store, wired by main; it knows nothing of budgets or keys",
	},
	"tlsedge": {
		allow: []string{"./config", "./metrics", "./internal/filestamp", "golang.org/x/crypto/acme", "golang.org/x/crypto/acme/autocert"},
		why:   "the TLS side of the public listener: certificates (files, ACME through autocert), handshakes, HTTP/2 limits; the request path's wrappers are handed in by main, so it never reaches up to proxy, auth or ratelimit",
	},
	"tracing": {
		allow: []string{"go.opentelemetry.io/otel", "go.opentelemetry.io/otel/", "./config"},
		why:   "W3C trace context and the OpenTelemetry SDK and exporter live here alone: proxy calls its small hooks, main builds its provider; auth and ratelimit see only the OpenTelemetry API through their contexts",
	},
	"internal/supportdesk": {
		why: "the example upstream stands alone: it is SupportDesk, not part of the gateway",
	},
}

// TestImports pins the package table of shared/STYLE.md §1: each rule says
// why. A new import that breaks one is a design change to discuss, not a
// line to add here without a reason.
func TestImports(t *testing.T) {
	pkgs := listPackages(t)
	for name, r := range rules {
		p := pkgs[module+"/"+name]
		if p == nil {
			t.Errorf("package %s not found", name)
			continue
		}
		for _, imp := range p.Imports {
			if pkgs[imp] != nil && pkgs[imp].Standard {
				if slices.Contains(r.noStd, imp) {
					t.Errorf("%s imports %s: %s", name, imp, r.why)
				}
				continue
			}
			ok := false
			for _, a := range r.allow {
				if strings.HasPrefix(a, "./") {
					a = module + a[1:]
				}
				if imp == a || strings.HasPrefix(imp, a) && strings.HasSuffix(a, "/") {
					ok = true
				}
			}
			if !ok {
				t.Errorf("%s imports %s: %s", name, imp, r.why)
			}
		}
	}
}

// TestBinaryCarriesNoHarness: the gateway binary depends on no test
// harness (internal/redistest, internal/faultproxy, internal/tlstest,
// internal/otlptest), and none of our packages in it imports package
// testing.
func TestBinaryCarriesNoHarness(t *testing.T) {
	pkgs := listPackages(t)
	root := pkgs[module]
	if root == nil {
		t.Fatal("the root package is missing")
	}
	for _, d := range append(root.Deps, module) {
		if strings.HasPrefix(d, module+"/internal/redistest") || strings.HasPrefix(d, module+"/internal/faultproxy") ||
			strings.HasPrefix(d, module+"/internal/tlstest") || strings.HasPrefix(d, module+"/internal/otlptest") {
			t.Errorf("the deskgate binary depends on %s", d)
		}
		if p := pkgs[d]; p != nil && strings.HasPrefix(d, module) && slices.Contains(p.Imports, "testing") {
			t.Errorf("%s, in the deskgate binary, imports testing", d)
		}
	}
}

// TestPackageDocs: every package of the module has exactly one package
// doc comment ("Package x ..." or, for a command, "Command x ..."), in a
// non-test file (shared/STYLE.md §8).
func TestPackageDocs(t *testing.T) {
	for _, p := range listPackages(t) {
		if !strings.HasPrefix(p.ImportPath, module) {
			continue
		}
		var withDoc []string
		fset := token.NewFileSet()
		for _, f := range p.GoFiles {
			af, err := parser.ParseFile(fset, filepath.Join(p.Dir, f), nil, parser.PackageClauseOnly|parser.ParseComments)
			if err != nil {
				t.Fatal(err)
			}
			if af.Doc != nil {
				withDoc = append(withDoc, f)
			}
		}
		want := "Package " + p.Name + " "
		if p.Name == "main" {
			want = "Command "
		}
		switch {
		case len(withDoc) == 0:
			t.Errorf("%s has no package doc comment", p.ImportPath)
		case len(withDoc) > 1:
			t.Errorf("%s has a package doc comment in %d files: %v", p.ImportPath, len(withDoc), withDoc)
		case !strings.HasPrefix(p.Doc, strings.TrimSpace(want)):
			t.Errorf("%s: package doc starts %q, want %q", p.ImportPath, p.Doc, want+"...")
		}
	}
}
