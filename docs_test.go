package main

import (
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unicode"
)

// docFiles are the Markdown files whose relative links TestDocLinks
// checks: the README, the topic pages and the reference under docs/, and
// the benchmark and deployment notes.
func docFiles(t *testing.T) []string {
	t.Helper()
	files := []string{"README.md", "BENCHMARKS.md", "bench/README.md", "deploy/kubernetes/README.md"}
	more, err := filepath.Glob("docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	if len(more) == 0 {
		t.Fatal("docs/ holds no Markdown file")
	}
	return append(files, more...)
}

// TestDocLinks guards issue 18: the README and docs/ link to each other
// by relative paths and anchors, and a section moved or renamed must not
// leave a link behind. Every relative link of docFiles must name a file
// or directory that exists and, for a Markdown target with #anchor, a
// heading of that file by GitHub's anchor rules.
func TestDocLinks(t *testing.T) {
	problems, n := docLinkProblems(".", docFiles(t))
	for _, p := range problems {
		t.Error(p)
	}
	t.Logf("%d relative links checked in %d files", n, len(docFiles(t)))
	if n < 50 {
		t.Errorf("only %d relative links found: the link parser is broken", n)
	}
}

// TestDocLinksCatchBroken checks that docLinkProblems reports what it
// should, so that TestDocLinks cannot pass by finding nothing.
func TestDocLinksCatchBroken(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("README.md", "# Top\n\n## Rate limits\n\nSee [keys](docs/keys.md#registering-a-key), [gone](docs/gone.md),\n"+
		"[bad anchor](docs/keys.md#no-such-heading), [self](#rate-limits), [self bad](#nope),\n"+
		"[code](main.go), [web](https://example.com/x.md#y), [multi\nline](docs/keys.md#cache-store-redis).\n"+
		"```sh\necho '[in a fence](fenced.md)'\n```\n"+
		"Inline `[in code](code.md)` is not a link.\n")
	write("docs/keys.md", "# Key stores\n\n## Registering a key\n\n## Cache (store `redis`)\n\n```yaml\n# not a heading\n```\n[back](../README.md#rate-limits) [bad](../README.md#not-a-heading)\n")
	write("main.go", "package main\n")

	problems, n := docLinkProblems(dir, []string{"README.md", "docs/keys.md"})
	want := []string{
		`README.md: link "docs/gone.md": no such file`,
		`README.md: link "docs/keys.md#no-such-heading": docs/keys.md has no heading with anchor "no-such-heading"`,
		`README.md: link "#nope": README.md has no heading with anchor "nope"`,
		`docs/keys.md: link "../README.md#not-a-heading": README.md has no heading with anchor "not-a-heading"`,
	}
	if !slices.Equal(problems, want) {
		t.Errorf("problems:\n%s\nwant:\n%s", strings.Join(problems, "\n"), strings.Join(want, "\n"))
	}
	if n != 9 {
		t.Errorf("%d relative links found, want 9", n)
	}
}

func TestGitHubAnchor(t *testing.T) {
	for heading, want := range map[string]string{
		"Rate limits":           "rate-limits",
		"TLS and HTTP/2":        "tls-and-http2",
		"`algorithm: gcra`":     "algorithm-gcra",
		"Cache (store `redis`)": "cache-store-redis",
		"Inspecting a key's budgets: `GET /budget`, `deskgate budget`": "inspecting-a-keys-budgets-get-budget-deskgate-budget",
		"Scale: 1,000 to 1,000,000 active identities (issue 19)":       "scale-1000-to-1000000-active-identities-issue-19",
		"Shadow mode: judge a limit before enforcing it":               "shadow-mode-judge-a-limit-before-enforcing-it",
		"Draining, and what CI checks":                                 "draining-and-what-ci-checks",
		"See [Tracing](#tracing) and **more**":                         "see-tracing-and-more",
		"snake_case stays":                                             "snake_case-stays",
	} {
		if got := githubAnchor(heading); got != want {
			t.Errorf("githubAnchor(%q) = %q, want %q", heading, got, want)
		}
	}
}

var (
	codeSpanRE   = regexp.MustCompile("`[^`]*`")
	inlineLinkRE = regexp.MustCompile(`\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)`)
	refLinkRE    = regexp.MustCompile(`(?m)^ {0,3}\[[^\]]+\]:\s+<?(\S+?)>?(?:\s+"[^"]*")?\s*$`)
	headingRE    = regexp.MustCompile(`^ {0,3}#{1,6}\s+(.*?)(?:\s+#+)?\s*$`)
	schemeRE     = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9+.-]*:`)
	mdLinkTextRE = regexp.MustCompile(`\[([^\]]*)\]\([^)]*\)`)
)

// docLinkProblems reads each of files (paths relative to root) and
// returns one line per relative link whose target is missing, and the
// number of relative links it checked. Links inside fenced code blocks
// and code spans are not links; absolute URLs are not checked.
func docLinkProblems(root string, files []string) (problems []string, n int) {
	anchors := map[string]map[string]bool{} // by path relative to root
	anchorsOf := func(rel string) (map[string]bool, error) {
		if a, ok := anchors[rel]; ok {
			return a, nil
		}
		b, err := os.ReadFile(filepath.Join(root, rel))
		if err != nil {
			return nil, err
		}
		a := map[string]bool{}
		seen := map[string]int{}
		for _, h := range markdownHeadings(string(b)) {
			id := githubAnchor(h)
			if k := seen[id]; k > 0 {
				a[id+"-"+strconv.Itoa(k)] = true
			} else {
				a[id] = true
			}
			seen[id]++
		}
		anchors[rel] = a
		return a, nil
	}

	for _, file := range files {
		b, err := os.ReadFile(filepath.Join(root, file))
		if err != nil {
			problems = append(problems, file+": "+err.Error())
			continue
		}
		text := codeSpanRE.ReplaceAllString(stripFences(string(b)), "``")
		var targets []string
		for _, m := range inlineLinkRE.FindAllStringSubmatch(text, -1) {
			targets = append(targets, m[1])
		}
		for _, m := range refLinkRE.FindAllStringSubmatch(text, -1) {
			targets = append(targets, m[1])
		}
		for _, target := range targets {
			if schemeRE.MatchString(target) || strings.HasPrefix(target, "//") {
				continue
			}
			n++
			bad := func(why string) {
				problems = append(problems, file+": link "+strconv.Quote(target)+": "+why)
			}
			p, frag, _ := strings.Cut(target, "#")
			if dp, err := url.PathUnescape(p); err == nil {
				p = dp
			}
			rel := file
			if p != "" {
				rel = filepath.ToSlash(filepath.Join(filepath.Dir(file), p))
				if rel == ".." || strings.HasPrefix(rel, "../") {
					bad("points outside the repository")
					continue
				}
				if _, err := os.Stat(filepath.Join(root, rel)); err != nil {
					bad("no such file")
					continue
				}
			}
			if frag == "" || !strings.HasSuffix(rel, ".md") {
				continue
			}
			a, err := anchorsOf(rel)
			if err != nil {
				bad(err.Error())
				continue
			}
			if !a[strings.ToLower(frag)] {
				bad(rel + " has no heading with anchor " + strconv.Quote(frag))
			}
		}
	}
	return problems, n
}

// stripFences returns text with the lines of its fenced code blocks
// (``` or ~~~) blanked.
func stripFences(text string) string {
	lines := strings.Split(text, "\n")
	fence := ""
	for i, l := range lines {
		t := strings.TrimLeft(l, " ")
		switch {
		case fence == "" && (strings.HasPrefix(t, "```") || strings.HasPrefix(t, "~~~")):
			fence = t[:3]
			lines[i] = ""
		case fence != "":
			if strings.HasPrefix(t, fence) && strings.TrimSpace(strings.TrimLeft(t, fence[:1])) == "" {
				fence = ""
			}
			lines[i] = ""
		}
	}
	return strings.Join(lines, "\n")
}

// markdownHeadings returns the text of the ATX headings of text, outside
// fenced code blocks, in order.
func markdownHeadings(text string) []string {
	var hs []string
	for _, l := range strings.Split(stripFences(text), "\n") {
		if m := headingRE.FindStringSubmatch(l); m != nil {
			hs = append(hs, m[1])
		}
	}
	return hs
}

// githubAnchor returns the anchor GitHub gives a heading: the text as
// rendered (links by their text, no code or emphasis marks), in lower
// case, without punctuation other than '-' and '_', spaces made '-'.
func githubAnchor(heading string) string {
	s := mdLinkTextRE.ReplaceAllString(heading, "$1")
	s = strings.ToLower(s)
	var b strings.Builder
	for _, r := range s {
		switch {
		case r == ' ':
			b.WriteByte('-')
		case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r) || unicode.Is(unicode.Mn, r):
			b.WriteRune(r)
		}
	}
	return b.String()
}
