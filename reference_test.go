package main

import (
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/innovartx/deskgate/apierror"
	"github.com/innovartx/deskgate/config"
	"github.com/innovartx/deskgate/metrics"
)

// TestReferenceComplete keeps docs/reference.md, the users' copy of the
// contract, in step with the code: every configuration key (as `key:` in
// its YAML), every error code and every deskgate_ metric must appear
// there. A new key, code or metric without its line fails here.
func TestReferenceComplete(t *testing.T) {
	b, err := os.ReadFile("docs/reference.md")
	if err != nil {
		t.Fatal(err)
	}
	ref := string(b)

	var keys []string
	var walk func(reflect.Type, string)
	walk = func(rt reflect.Type, path string) {
		for rt.Kind() == reflect.Pointer || rt.Kind() == reflect.Slice || rt.Kind() == reflect.Map {
			rt = rt.Elem()
		}
		if rt.Kind() != reflect.Struct {
			return
		}
		for i := range rt.NumField() {
			f := rt.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if name == "" || name == "-" || !f.IsExported() {
				continue
			}
			keys = append(keys, path+name)
			walk(f.Type, path+name+".")
		}
	}
	walk(reflect.TypeFor[config.Config](), "")
	if len(keys) < 50 {
		t.Fatalf("only %d config keys found by reflection: the walk is broken", len(keys))
	}
	for _, k := range keys {
		leaf := k[strings.LastIndexByte(k, '.')+1:]
		if !strings.Contains(ref, leaf+":") {
			t.Errorf("config key %s is not in docs/reference.md", k)
		}
	}

	for _, c := range apierror.Codes() {
		if !strings.Contains(ref, "`"+string(c)+"`") {
			t.Errorf("error code %s is not in docs/reference.md", c)
		}
	}

	// Every collector of metrics.Metrics, by its descriptor (a vector
	// with no child yet is not gathered, but it describes itself).
	names := map[string]bool{}
	mv := reflect.ValueOf(metrics.New(prometheus.NewRegistry(), "test")).Elem()
	for i := range mv.NumField() {
		if c, ok := mv.Field(i).Interface().(prometheus.Collector); ok {
			ch := make(chan *prometheus.Desc, 8)
			c.Describe(ch)
			close(ch)
			for d := range ch {
				s := d.String()
				if j := strings.Index(s, `fqName: "`); j >= 0 {
					n := s[j+len(`fqName: "`):]
					if n = n[:strings.IndexByte(n, '"')]; strings.HasPrefix(n, "deskgate_") {
						names[n] = true
					}
				}
			}
		}
	}
	if len(names) < 15 {
		t.Fatalf("only %d deskgate_ metrics found", len(names))
	}
	for n := range names {
		if !strings.Contains(ref, "`"+n+"`") {
			t.Errorf("metric %s is not in docs/reference.md", n)
		}
	}
}
