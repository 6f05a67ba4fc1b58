package config

import (
	"reflect"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

var (
	typeOfConfig         = reflect.TypeFor[Config]()
	typeOfDuration       = reflect.TypeFor[Duration]()
	typeOfWindow         = reflect.TypeFor[Window]()
	typeOfRouteRateLimit = reflect.TypeFor[RouteRateLimit]()
	typeOfRouteBlock     = reflect.TypeFor[routeRateLimitBlock]()
	typeOfKeyFile        = reflect.TypeFor[KeyFile]()
)

// check walks the YAML tree next to the Go type it will be decoded into. On
// the way it expands `${VAR}` in scalars and records, with the field's
// path, every unknown key, every value of the wrong kind and every bad
// duration, so that the user sees all of them at once and by name rather
// than yaml's first error by line number.
func check(n *yaml.Node, t reflect.Type, path string, lookup func(string) (string, bool), errs *Errors) {
	switch n.Kind {
	case yaml.DocumentNode:
		if len(n.Content) > 0 {
			check(n.Content[0], t, path, lookup, errs)
		}
		return
	case yaml.AliasNode:
		check(n.Alias, t, path, lookup, errs)
		return
	}
	if n.Kind == yaml.ScalarNode {
		if !expand(n, path, lookup, errs) {
			return // reported; checking the unexpanded text would mislead
		}
		if n.ShortTag() == "!!null" {
			// An empty value keeps a scalar's default and empties a
			// list or mapping, as yaml decodes it.
			return
		}
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t {
	case typeOfDuration, typeOfWindow:
		if n.Kind != yaml.ScalarNode {
			errs.add(path, "want a duration such as 10s")
			return
		}
		d, err := time.ParseDuration(n.Value)
		if err != nil {
			errs.add(path, "invalid duration %q (want e.g. 50ms, 10s, 1m)", n.Value)
		} else if d < 0 {
			errs.add(path, "must not be negative")
		}
		return
	case typeOfRouteRateLimit:
		if n.Kind == yaml.ScalarNode {
			if n.ShortTag() != "!!bool" {
				errs.add(path, "want false, true or a block with bucket and tiers, got %q", n.Value)
			}
			return
		}
		t = typeOfRouteBlock
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			errs.add(path, "want a mapping of keys, got %s", kindName(n))
			return
		}
		seen := make(map[string]bool, len(n.Content)/2)
		for i := 0; i+1 < len(n.Content); i += 2 {
			key := n.Content[i].Value
			if seen[key] {
				errs.add(join(path, key), "key given twice")
				continue
			}
			seen[key] = true
			f, ok := fieldByTag(t, key)
			if !ok {
				errs.add(join(path, key), "unknown key (valid keys: %s)", strings.Join(tagNames(t), ", "))
				continue
			}
			check(n.Content[i+1], f.Type, join(path, key), lookup, errs)
		}
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			errs.add(path, "want a list, got %s", kindName(n))
			return
		}
		for i, c := range n.Content {
			check(c, t.Elem(), path+"["+strconv.Itoa(i)+"]", lookup, errs)
		}
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			errs.add(path, "want a mapping, got %s", kindName(n))
			return
		}
		seen := make(map[string]bool, len(n.Content)/2)
		for i := 0; i+1 < len(n.Content); i += 2 {
			key := n.Content[i].Value
			if seen[key] {
				errs.add(join(path, key), "key given twice")
				continue
			}
			seen[key] = true
			check(n.Content[i+1], t.Elem(), join(path, key), lookup, errs)
		}
	case reflect.Bool:
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!bool" {
			errs.add(path, "want true or false, got %s", kindName(n))
		}
	case reflect.Int, reflect.Int64:
		var v int64
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" {
			errs.add(path, "want an integer, got %s", kindName(n))
		} else if err := n.Decode(&v); err != nil {
			errs.add(path, "integer %s out of range", n.Value)
		}
	case reflect.String:
		if n.Kind != yaml.ScalarNode {
			errs.add(path, "want a string, got %s", kindName(n))
		}
	}
}

// expand replaces `${NAME}` and `${NAME:-default}` in a scalar with the
// environment's value; as in a shell, the default also replaces a variable
// that is set but empty. A plain scalar is re-typed after expansion, so
// that `limit: ${LIMIT}` is an integer; a quoted one stays a string. A `$`
// not followed by `{` is kept, so passwords with `$` need no escaping. It
// reports whether expansion succeeded.
func expand(n *yaml.Node, path string, lookup func(string) (string, bool), errs *Errors) bool {
	if !strings.Contains(n.Value, "${") {
		return true
	}
	var b strings.Builder
	s := n.Value
	for {
		i := strings.Index(s, "${")
		if i < 0 {
			b.WriteString(s)
			break
		}
		b.WriteString(s[:i])
		end := strings.IndexByte(s[i:], '}')
		if end < 0 {
			errs.add(path, "unterminated ${ in %q", n.Value)
			return false
		}
		expr := s[i+2 : i+end]
		name, def, hasDef := strings.Cut(expr, ":-")
		if !validEnvName(name) {
			errs.add(path, "invalid environment variable name %q", name)
			return false
		}
		v, ok := lookup(name)
		switch {
		case ok && (v != "" || !hasDef):
			b.WriteString(v)
		case hasDef:
			b.WriteString(def)
		default:
			errs.add(path, "environment variable %s is not set (use ${%s:-default} for a default)", name, name)
			return false
		}
		s = s[i+end+1:]
	}
	n.Value = b.String()
	if n.Style == 0 {
		n.Tag = "" // let yaml resolve the type of the expanded text
	}
	return true
}

func validEnvName(s string) bool {
	if s == "" {
		return false
	}
	for i, c := range s {
		if c == '_' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || i > 0 && c >= '0' && c <= '9' {
			continue
		}
		return false
	}
	return true
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	default:
		return strconv.Quote(n.Value)
	}
}

func yamlName(f reflect.StructField) string {
	name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
	return name
}

func fieldByTag(t reflect.Type, key string) (reflect.StructField, bool) {
	for i := range t.NumField() {
		f := t.Field(i)
		if n := yamlName(f); n != "" && n != "-" && n == key {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

func tagNames(t reflect.Type) []string {
	var out []string
	for i := range t.NumField() {
		if n := yamlName(t.Field(i)); n != "" && n != "-" {
			out = append(out, n)
		}
	}
	return out
}
