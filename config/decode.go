package config

import (
	"math"
	"reflect"
	"slices"
	"strconv"
	"strings"

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

// pos is where a field is written in a file: the line and column of its
// key (or of a list element).
type pos struct{ line, col int }

// nowhere is the position of a field the file does not write (a missing
// required value): such errors come after those that have a place.
var nowhere = pos{line: math.MaxInt}

func (p pos) before(q pos) bool {
	return p.line < q.line || p.line == q.line && p.col < q.col
}

// checker walks a YAML tree next to the Go type it will be decoded into
// (see [checker.check]) and gathers what it finds.
type checker struct {
	lookup func(string) (string, bool)
	errs   Errors
	// errAt is where each error of errs is written.
	errAt []pos
	// at is where each field path is written, for placing the errors
	// found later by validation.
	at map[string]pos
}

func newChecker(lookup func(string) (string, bool)) *checker {
	return &checker{lookup: lookup, at: map[string]pos{}}
}

func (c *checker) add(at pos, path, format string, args ...any) {
	c.errs.add(path, format, args...)
	c.errAt = append(c.errAt, at)
}

// check walks n next to t. On the way it expands `${VAR}` in scalars and
// records, with the field's path, every unknown key, every value of the
// wrong kind and every bad duration, so that the user sees all of them at
// once and by name rather than yaml's first error by line number.
//
// Every value it reports is then taken out of the tree, so that decoding
// the rest cannot fail on it and the field keeps its default: a bad entry
// of a mapping is removed, a bad element of a list is replaced by an empty
// one (see [placeholder]). check itself reports whether n as a whole is
// bad, for its parent to take out. Validation then runs on what is left,
// and [checker.merge] puts both lists together.
func (c *checker) check(n *yaml.Node, t reflect.Type, path string, at pos) (bad bool) {
	switch n.Kind {
	case yaml.DocumentNode:
		if len(n.Content) > 0 {
			return c.check(n.Content[0], t, path, at)
		}
		return false
	case yaml.AliasNode:
		// The alias goes if its target does not fit here; the target
		// itself may fit where it is written.
		return c.check(n.Alias, t, path, at)
	case yaml.ScalarNode:
		if !c.expand(n, path, at) {
			return true // reported; checking the unexpanded text would mislead
		}
		if n.ShortTag() == "!!null" {
			// An empty value keeps a scalar's default and empties a
			// list or mapping, as yaml decodes it.
			return false
		}
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t {
	case typeOfDuration, typeOfWindow:
		return c.duration(n, path, at)
	case typeOfRouteRateLimit:
		if n.Kind == yaml.ScalarNode {
			if n.ShortTag() != "!!bool" {
				c.add(at, path, "want false, true or a block with bucket and tiers, got %q", n.Value)
				return true
			}
			return false
		}
		t = typeOfRouteBlock
	}
	switch t.Kind() {
	case reflect.Struct:
		return c.fields(n, t, path, at)
	case reflect.Slice:
		return c.list(n, t, path, at)
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			c.add(at, path, "want a mapping, got %s", kindName(n))
			return true
		}
		c.mapping(n, path, func(string, pos) (reflect.Type, bool) { return t.Elem(), true })
		return false
	}
	return c.scalar(n, t.Kind(), path, at)
}

// duration checks a [Duration] or [Window]: a Go duration, not negative.
func (c *checker) duration(n *yaml.Node, path string, at pos) (bad bool) {
	if n.Kind != yaml.ScalarNode {
		c.add(at, path, "want a duration such as 10s")
		return true
	}
	d, err := parseDuration(n.Value)
	switch {
	case err != nil:
		c.add(at, path, "%v", err)
		return true
	case d < 0:
		c.add(at, path, "must not be negative")
		return true
	}
	return false
}

// fields checks a mapping decoded into the struct t: each key must be one
// of its fields (an unknown one is reported with the valid keys, and the
// nearest as "did you mean" when it looks like a typo).
func (c *checker) fields(n *yaml.Node, t reflect.Type, path string, at pos) (bad bool) {
	if n.Kind != yaml.MappingNode {
		c.add(at, path, "want a mapping of keys, got %s", kindName(n))
		return true
	}
	c.mapping(n, path, func(key string, kat pos) (reflect.Type, bool) {
		f, ok := fieldByTag(t, key)
		if !ok {
			names := tagNames(t)
			if s := closest(key, names); s != "" {
				c.add(kat, join(path, key), "unknown key; did you mean %q? (valid keys: %s)", s, strings.Join(names, ", "))
			} else {
				c.add(kat, join(path, key), "unknown key (valid keys: %s)", strings.Join(names, ", "))
			}
			return nil, false
		}
		return f.Type, true
	})
	return false
}

// list checks a sequence decoded into the slice t, element by element.
func (c *checker) list(n *yaml.Node, t reflect.Type, path string, at pos) (bad bool) {
	if n.Kind != yaml.SequenceNode {
		c.add(at, path, "want a list, got %s", kindName(n))
		return true
	}
	for i, e := range n.Content {
		p := path + "[" + strconv.Itoa(i) + "]"
		eat := pos{e.Line, e.Column}
		c.at[p] = eat
		if c.check(e, t.Elem(), p, eat) || isNull(e) {
			// yaml drops a null element, which would shift the
			// index of every later one away from what the file
			// and the error paths say: the element becomes an
			// empty one instead.
			n.Content[i] = placeholder(t.Elem(), e)
		}
	}
	return false
}

// scalar checks a value decoded into a boolean, an integer, a number or a
// string (of kind k).
func (c *checker) scalar(n *yaml.Node, k reflect.Kind, path string, at pos) (bad bool) {
	switch k {
	case reflect.Bool:
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!bool" {
			c.add(at, path, "want true or false, got %s", kindName(n))
			return true
		}
	case reflect.Int, reflect.Int64:
		var v int64
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" {
			c.add(at, path, "want an integer, got %s", kindName(n))
			return true
		} else if err := n.Decode(&v); err != nil {
			c.add(at, path, "integer %s out of range", n.Value)
			return true
		}
	case reflect.Float64:
		var v float64
		if n.Kind != yaml.ScalarNode || (n.ShortTag() != "!!float" && n.ShortTag() != "!!int") || n.Decode(&v) != nil {
			c.add(at, path, "want a number, got %s", kindName(n))
			return true
		}
	case reflect.String:
		if n.Kind != yaml.ScalarNode {
			c.add(at, path, "want a string, got %s", kindName(n))
			return true
		}
	}
	return false
}

// isNull reports whether n is (an alias of) a null scalar.
func isNull(n *yaml.Node) bool {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// placeholder returns a node that decodes into the zero value of t, to
// stand where a list element was taken out.
func placeholder(t reflect.Type, at *yaml.Node) *yaml.Node {
	n := &yaml.Node{Kind: yaml.ScalarNode, Line: at.Line, Column: at.Column}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch {
	case t == typeOfDuration || t == typeOfWindow:
		n.Tag, n.Value = "!!str", "0s"
	case t.Kind() == reflect.Struct || t.Kind() == reflect.Map:
		n.Kind, n.Tag = yaml.MappingNode, "!!map"
	case t.Kind() == reflect.Slice:
		n.Kind, n.Tag = yaml.SequenceNode, "!!seq"
	case t.Kind() == reflect.Bool:
		n.Tag, n.Value = "!!bool", "false"
	case t.Kind() == reflect.Int || t.Kind() == reflect.Int64:
		n.Tag, n.Value = "!!int", "0"
	case t.Kind() == reflect.Float64:
		n.Tag, n.Value = "!!float", "0"
	default:
		n.Tag, n.Value = "!!str", ""
	}
	return n
}

// mapping checks the entries of the mapping n, each value against the
// type that field returns for its key (false: the key is reported and
// the entry goes). A key given twice is reported and its second entry
// goes; so does any entry whose value is bad.
func (c *checker) mapping(n *yaml.Node, path string, field func(key string, at pos) (reflect.Type, bool)) {
	seen := make(map[string]bool, len(n.Content)/2)
	kept := n.Content[:0]
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		p, kat := join(path, k.Value), pos{k.Line, k.Column}
		if seen[k.Value] {
			c.add(kat, p, "key given twice")
			continue
		}
		seen[k.Value] = true
		c.at[p] = kat
		t, ok := field(k.Value, kat)
		if !ok || c.check(v, t, p, kat) {
			continue
		}
		kept = append(kept, k, v)
	}
	n.Content = kept
}

// merge returns the checker's errors and then those of validation (verrs),
// in the order they are written in the file (errors about fields the file
// does not write come last, in the order found). A validation error about
// a field that check already reported, or about something inside it, is
// left out: the field was taken out and holds its default, and the user
// has been told what is wrong with what they wrote.
func (c *checker) merge(verrs Errors) Errors {
	type located struct {
		e  FieldError
		at pos
	}
	all := make([]located, 0, len(c.errs)+len(verrs))
	for i, e := range c.errs {
		all = append(all, located{e, c.errAt[i]})
	}
	for _, e := range verrs {
		if !c.reported(e.Path) {
			all = append(all, located{e, c.where(e.Path)})
		}
	}
	slices.SortStableFunc(all, func(a, b located) int {
		switch {
		case a.at.before(b.at):
			return -1
		case b.at.before(a.at):
			return 1
		}
		return 0
	})
	out := make(Errors, len(all))
	for i, l := range all {
		out[i] = l.e
	}
	return out
}

// reported reports whether check reported path or a field that holds it.
func (c *checker) reported(path string) bool {
	for _, e := range c.errs {
		if within(path, e.Path) {
			return true
		}
	}
	return false
}

// within reports whether path is field or inside it.
func within(path, field string) bool {
	if field == "" || path == field {
		return true
	}
	return strings.HasPrefix(path, field) && (path[len(field)] == '.' || path[len(field)] == '[')
}

// where returns where path, or the nearest field that holds it, is
// written.
func (c *checker) where(path string) pos {
	for path != "" {
		if p, ok := c.at[path]; ok {
			return p
		}
		i := strings.LastIndexAny(path, ".[")
		if i < 0 {
			break
		}
		path = path[:i]
	}
	return nowhere
}

// closest returns the name among names nearest to key, when one is near
// enough to be a typo (at most 2 edits, and at most a third of the name):
// the "did you mean" of an unknown key. Case differences count as edits.
func closest(key string, names []string) string {
	best, bestD := "", 3
	for _, n := range names {
		d := editDistance(key, n)
		if d < bestD && 3*d <= len(n) {
			best, bestD = n, d
		}
	}
	return best
}

// editDistance is the optimal string alignment distance between a and b:
// insertions, deletions, substitutions and transpositions of adjacent
// bytes each cost 1 ("listne" is 1 from "listen").
func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 64 // no key is that long; not a typo of one
	}
	prev2 := make([]int, len(b)+1)
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(b)]
}

// expand replaces `${NAME}` and `${NAME:-default}` in a scalar with the
// environment's value; as in a shell, the default also replaces a variable
// that is set but empty. A plain scalar is re-typed after expansion, so
// that `limit: ${LIMIT}` is an integer; a quoted one stays a string. A `$`
// not followed by `{` is kept, so passwords with `$` need no escaping. It
// reports whether expansion succeeded.
func (c *checker) expand(n *yaml.Node, path string, at pos) bool {
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
			c.add(at, path, "unterminated ${ in %q", n.Value)
			return false
		}
		expr := s[i+2 : i+end]
		name, def, hasDef := strings.Cut(expr, ":-")
		if !validEnvName(name) {
			c.add(at, path, "invalid environment variable name %q", name)
			return false
		}
		v, ok := c.lookup(name)
		switch {
		case ok && (v != "" || !hasDef):
			b.WriteString(v)
		case hasDef:
			b.WriteString(def)
		default:
			c.add(at, path, "environment variable %s is not set (use ${%s:-default} for a default)", name, name)
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
