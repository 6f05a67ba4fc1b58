package e2e

// The Dockerfile's checks (issue 9). They belong next to the Dockerfile,
// or in a CI step that builds the image where a Docker engine exists; no
// Docker engine runs in this CI, so the image's build stages are mirrored
// here instead: the build context is copied as .dockerignore filters it,
// and the RUN lines of the Dockerfile are executed by a small interpreter
// that knows exactly the commands they use (go build, sed, grep, a built
// binary). A flag changed in the Dockerfile is therefore the flag these
// tests build with; a command the interpreter does not know fails the
// tests instead of being skipped. The other suites run the binary this
// build makes (deskgateBinary), the very one that ships in the image.

import (
	"bufio"
	"bytes"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/innovartx/deskgate/config"
)

// testVersion is the VERSION build argument of the mirrored image build,
// as `docker build --build-arg VERSION=...` would pass it. It differs from
// the Dockerfile's default and from buildVersion's fallback, so seeing it
// proves the -ldflags stamp.
const testVersion = "v9.8.7-deploytest"

// buildRoot is the directory of the shared image build; TestMain removes it.
var buildRoot string

var (
	imageOnce sync.Once
	imageRes  *imageBuild
	imageErr  error
)

// builtImage runs the Dockerfile's build stages for the gateway and the
// example upstream once per test run and returns the result. The ops tests
// run the very binary that ships in the image.
func builtImage(t *testing.T) *imageBuild {
	t.Helper()
	imageOnce.Do(func() {
		start := time.Now()
		imageRes, imageErr = buildImage(map[string]string{"VERSION": testVersion}, "deskgate", "supportdesk")
		if imageRes != nil {
			imageRes.took = time.Since(start)
		}
	})
	if imageErr != nil {
		t.Fatalf("mirroring the Dockerfile build: %v", imageErr)
	}
	return imageRes
}

// TestDockerfileBuild guards issue 9's image: a multi-stage build whose
// binary is static (CGO_ENABLED=0: no interpreter, no dynamic section, so
// it runs on distroless/static), carries the version given as a build
// argument (-ldflags -X main.version), and holds no path of the build
// machine (-trimpath); a non-root runtime stage that exposes the two
// listeners, runs the binary as ENTRYPOINT with the config path as CMD,
// and ships a valid default config whose admin listener is reachable from
// outside the container.
func TestDockerfileBuild(t *testing.T) {
	img := builtImage(t)
	t.Logf("image build mirrored in %s: %s", img.took.Round(time.Millisecond), strings.Join(img.ran, " | "))
	final := img.stage("deskgate")
	if final == nil || final != &img.stages[len(img.stages)-1] {
		t.Fatal(`the last stage (docker build's default target) must be "deskgate"`)
	}

	// Builder and runtime images.
	gomod, err := os.ReadFile("go.mod")
	if err != nil {
		t.Fatal(err)
	}
	goVer := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindSubmatch(gomod)
	if goVer == nil {
		t.Fatal("go.mod has no go directive")
	}
	// The builder image is pinned to the patch release go.mod's toolchain
	// line names, so the image is built with the same patched standard
	// library that CI tests and .ci/vulncheck checks.
	toolchain := regexp.MustCompile(`(?m)^toolchain go(\d+\.\d+\.\d+)\s*$`).FindSubmatch(gomod)
	if toolchain == nil {
		t.Fatal("go.mod has no toolchain line pinning a patch release")
	}
	for _, s := range img.stages {
		if img.stage(s.base) == nil && strings.HasPrefix(s.base, "golang:") {
			if !strings.HasPrefix(s.base, "golang:"+string(goVer[1])) {
				t.Errorf("stage %s builds with %s; go.mod says go %s", s.name, s.base, goVer[1])
			}
			if tag := strings.TrimPrefix(s.base, "golang:"); tag != string(toolchain[1]) && !strings.HasPrefix(tag, string(toolchain[1])+"-") {
				t.Errorf("stage %s builds with %s; go.mod pins toolchain go%s", s.name, s.base, toolchain[1])
			}
		}
	}
	for _, s := range []*dockerStage{final, img.stage("supportdesk")} {
		if s == nil {
			t.Fatal(`no "supportdesk" stage (deploy/docker-compose.yml builds it)`)
		}
		if !strings.HasPrefix(s.base, "gcr.io/distroless/static") && s.base != "scratch" {
			t.Errorf("stage %s runs on %s: want a static distroless (or scratch) image", s.name, s.base)
		}
		if u := s.last("USER"); u != "65532:65532" {
			t.Errorf("stage %s: USER %q, want 65532:65532 (numeric, so that runAsNonRoot can verify it)", s.name, u)
		}
	}

	// ENTRYPOINT is the binary, CMD the config, both copied from the build.
	entry, cmd := final.execForm(t, "ENTRYPOINT"), final.execForm(t, "CMD")
	if len(entry) != 1 {
		t.Fatalf("ENTRYPOINT %q: want the binary alone, flags in CMD", entry)
	}
	if len(cmd) != 2 || cmd[0] != "-config" || cmd[1] != "/etc/deskgate/config.yaml" {
		t.Fatalf(`CMD %q, want ["-config", "/etc/deskgate/config.yaml"] (the documented path)`, cmd)
	}
	bin := img.file(t, final, entry[0])
	cfgData, err := os.ReadFile(img.file(t, final, cmd[1]))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse(cfgData, noEnv)
	if err != nil {
		t.Fatalf("the image's default config is not valid:\n%v", err)
	}
	if host, _ := splitListen(t, cfg.Admin.Listen); host != "" && host != "0.0.0.0" && host != "::" {
		t.Errorf("the image's config has admin.listen %q: probes and Prometheus outside the container cannot reach it", cfg.Admin.Listen)
	}
	repoCfg, err := config.Load("config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(cfg.Routes, repoCfg.Routes) || !reflect.DeepEqual(cfg.RateLimit, repoCfg.RateLimit) {
		t.Error("the image's default config is not the repository's config.yaml (routes or rate_limit differ)")
	}
	exposed := final.exposed()
	for _, l := range []string{cfg.Server.Listen, cfg.Admin.Listen} {
		if _, port := splitListen(t, l); !slices.Contains(exposed, port) {
			t.Errorf("EXPOSE %v lacks %d (%s)", exposed, port, l)
		}
	}

	// The binary itself.
	checkStatic(t, bin)
	out, err := exec.Command(bin, "-version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "deskgate "+testVersion+" go") {
		t.Errorf("-version: %q (%v), want the stamped version %s", out, err, testVersion)
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	repo, _ := os.Getwd()
	modcache, _ := exec.Command("go", "env", "GOMODCACHE").Output()
	for _, p := range []string{img.ctx, repo, strings.TrimSpace(string(modcache))} {
		if p != "" && bytes.Contains(data, []byte(p)) {
			t.Errorf("the binary contains the build machine's path %s: -trimpath missing?", p)
		}
	}
	if fi, _ := os.Stat(bin); fi != nil {
		t.Logf("deskgate binary: %.1f MiB, %s", float64(fi.Size())/(1<<20), strings.TrimSpace(string(out)))
	}
	checkStatic(t, img.file(t, img.stage("supportdesk"), img.stage("supportdesk").execForm(t, "ENTRYPOINT")[0]))
}

// checkStatic fails unless the ELF file at p is statically linked: no
// program interpreter, no dynamic section, no shared library.
func checkStatic(t *testing.T, p string) {
	t.Helper()
	f, err := elf.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP || prog.Type == elf.PT_DYNAMIC {
			t.Errorf("%s has a %s program header: not static (CGO_ENABLED=0 missing?)", filepath.Base(p), prog.Type)
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("%s needs shared libraries %v", filepath.Base(p), libs)
	}
}

type dockerInstr struct {
	cmd  string // upper case
	args string
	line int
}

type dockerStage struct {
	name, base string
	instrs     []dockerInstr
}

// last returns the arguments of the stage's last instruction cmd.
func (s *dockerStage) last(cmd string) string {
	for i := len(s.instrs) - 1; i >= 0; i-- {
		if s.instrs[i].cmd == cmd {
			return s.instrs[i].args
		}
	}
	return ""
}

// execForm decodes the JSON (exec) form of the stage's last cmd.
func (s *dockerStage) execForm(t *testing.T, cmd string) []string {
	t.Helper()
	var v []string
	if err := json.Unmarshal([]byte(s.last(cmd)), &v); err != nil {
		t.Fatalf("stage %s: %s %q is not in exec form: %v", s.name, cmd, s.last(cmd), err)
	}
	return v
}

func (s *dockerStage) exposed() []int {
	var out []int
	for _, in := range s.instrs {
		if in.cmd == "EXPOSE" {
			for _, f := range strings.Fields(in.args) {
				n, _ := strconv.Atoi(strings.TrimSuffix(f, "/tcp"))
				out = append(out, n)
			}
		}
	}
	return out
}

func findStage(stages []dockerStage, name string) *dockerStage {
	for i := range stages {
		if stages[i].name == name {
			return &stages[i]
		}
	}
	return nil
}

func parseDockerfile(t *testing.T) []dockerStage {
	t.Helper()
	stages, err := readDockerfile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	return stages
}

// readDockerfile splits a Dockerfile into stages of instructions, joining
// continued lines and dropping comments as docker does.
func readDockerfile(name string) ([]dockerStage, error) {
	data, err := os.ReadFile(name)
	if err != nil {
		return nil, err
	}
	var stages []dockerStage
	var cur strings.Builder
	start := 0
	flush := func() error {
		text := strings.TrimSpace(cur.String())
		cur.Reset()
		if text == "" {
			return nil
		}
		cmd, args, _ := strings.Cut(text, " ")
		in := dockerInstr{cmd: strings.ToUpper(cmd), args: strings.TrimSpace(args), line: start}
		if in.cmd == "FROM" {
			f := strings.Fields(in.args)
			s := dockerStage{base: f[0], name: strconv.Itoa(len(stages))}
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				s.name = f[2]
			}
			stages = append(stages, s)
			return nil
		}
		if len(stages) == 0 {
			return fmt.Errorf("Dockerfile:%d: %s before FROM", start, in.cmd)
		}
		s := &stages[len(stages)-1]
		s.instrs = append(s.instrs, in)
		return nil
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") || (trimmed == "" && cur.Len() == 0) {
			continue
		}
		if cur.Len() == 0 {
			start = n
		}
		if body, ok := strings.CutSuffix(strings.TrimRight(line, " \t"), `\`); ok {
			cur.WriteString(body)
			continue
		}
		cur.WriteString(line)
		if err := flush(); err != nil {
			return nil, err
		}
	}
	return stages, flush()
}

// imageBuild is the result of mirroring the Dockerfile's build stages.
type imageBuild struct {
	stages []dockerStage
	root   string // the containers' "/"
	ctx    string // the build context (.dockerignore applied): the stages' WORKDIR
	args   map[string]string
	done   map[string]bool
	ran    []string
	took   time.Duration
}

func (b *imageBuild) stage(name string) *dockerStage { return findStage(b.stages, name) }

// file returns the host path of path p in the image of stage s: a file it
// copies from a build stage.
func (b *imageBuild) file(t *testing.T, s *dockerStage, p string) string {
	t.Helper()
	for _, in := range s.instrs {
		f := strings.Fields(in.args)
		if in.cmd != "COPY" || len(f) != 3 || !strings.HasPrefix(f[0], "--from=") {
			continue
		}
		if f[2] == p || (strings.HasSuffix(f[2], "/") && f[2]+path.Base(f[1]) == p) {
			host := filepath.Join(b.root, f[1])
			if _, err := os.Stat(host); err != nil {
				t.Fatalf("stage %s copies %s from %s, which its build did not produce", s.name, f[1], f[0])
			}
			return host
		}
	}
	t.Fatalf("stage %s has no COPY --from=... to %s", s.name, p)
	return ""
}

// buildImage copies the build context and runs the build stages that the
// given targets copy from.
func buildImage(args map[string]string, targets ...string) (*imageBuild, error) {
	stages, err := readDockerfile("Dockerfile")
	if err != nil {
		return nil, err
	}
	root, err := os.MkdirTemp("", "deskgate-image-")
	if err != nil {
		return nil, err
	}
	buildRoot = root
	b := &imageBuild{stages: stages, root: filepath.Join(root, "fs"), ctx: filepath.Join(root, "context"), args: args, done: map[string]bool{}}
	if err := copyContext(".", b.ctx); err != nil {
		return nil, fmt.Errorf("copying the build context: %w", err)
	}
	for _, target := range targets {
		s := b.stage(target)
		if s == nil {
			return nil, fmt.Errorf("no stage %q", target)
		}
		for _, in := range s.instrs {
			f := strings.Fields(in.args)
			if in.cmd == "COPY" && len(f) > 0 && strings.HasPrefix(f[0], "--from=") {
				if err := b.run(strings.TrimPrefix(f[0], "--from=")); err != nil {
					return nil, err
				}
			}
		}
	}
	return b, nil
}

// run executes the RUN lines of stage name, after those of the stage it
// is built FROM. Every build stage shares the context as its WORKDIR.
func (b *imageBuild) run(name string) error {
	if b.done[name] {
		return nil
	}
	b.done[name] = true
	s := b.stage(name)
	if s == nil {
		return fmt.Errorf("COPY --from=%s: no such stage", name)
	}
	if b.stage(s.base) != nil {
		if err := b.run(s.base); err != nil {
			return err
		}
	}
	vars := map[string]string{}
	for _, in := range s.instrs {
		switch in.cmd {
		case "WORKDIR":
			if in.args != "/src" {
				return fmt.Errorf("Dockerfile:%d: dockerfile_test.go maps WORKDIR /src to the build context, not %s", in.line, in.args)
			}
		case "COPY":
			if in.args != ". ." && in.args != "go.mod go.sum ./" {
				return fmt.Errorf("Dockerfile:%d: dockerfile_test.go cannot mirror COPY %s in a build stage", in.line, in.args)
			}
		case "ARG":
			k, def, _ := strings.Cut(in.args, "=")
			if v, ok := b.args[k]; ok {
				def = v
			}
			vars[k] = def
		case "ENV":
			k, v, _ := strings.Cut(in.args, "=")
			vars[k] = v
		case "RUN":
			if err := b.shell(in, vars); err != nil {
				return fmt.Errorf("Dockerfile:%d: RUN %s: %w", in.line, in.args, err)
			}
		default:
			return fmt.Errorf("Dockerfile:%d: dockerfile_test.go cannot mirror %s in build stage %s", in.line, in.cmd, name)
		}
	}
	return nil
}

// host maps a path of a build container to the host: relative paths and
// /src are the context, anything else is under root.
func (b *imageBuild) host(p string) string {
	if !path.IsAbs(p) {
		return filepath.Join(b.ctx, p)
	}
	if rel, ok := strings.CutPrefix(p, "/src"); ok && (rel == "" || rel[0] == '/') {
		return filepath.Join(b.ctx, rel)
	}
	return filepath.Join(b.root, p)
}

// shell runs one RUN line: commands joined by &&, each with optional
// NAME=value prefixes and a > redirection.
func (b *imageBuild) shell(in dockerInstr, vars map[string]string) error {
	words, err := shellWords(in.args, vars)
	if err != nil {
		return err
	}
	for len(words) > 0 {
		i := slices.IndexFunc(words, func(w shellWord) bool { return w.op && w.text == "&&" })
		if i < 0 {
			i = len(words)
		}
		if err := b.command(words[:i]); err != nil {
			return err
		}
		words = words[min(i+1, len(words)):]
	}
	return nil
}

func (b *imageBuild) command(words []shellWord) error {
	env := os.Environ()
	for len(words) > 0 && !words[0].op && regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*=`).MatchString(words[0].text) {
		env = append(env, words[0].text)
		words = words[1:]
	}
	var argv []string
	stdout := ""
	for i := 0; i < len(words); i++ {
		switch {
		case words[i].op && words[i].text == ">" && i+1 < len(words):
			stdout = b.host(words[i+1].text)
			i++
		case words[i].op:
			return fmt.Errorf("operator %s is not mirrored", words[i].text)
		default:
			argv = append(argv, words[i].text)
		}
	}
	if len(argv) == 0 {
		return errors.New("empty command")
	}
	b.ran = append(b.ran, strings.Join(argv, " "))
	var out []byte
	var err error
	switch {
	case len(argv) >= 3 && argv[0] == "go" && argv[1] == "mod" && argv[2] == "download":
		return nil // warms the module cache only; go build fetches what it needs
	case len(argv) >= 2 && argv[0] == "go" && argv[1] == "build":
		for i, a := range argv {
			if a == "-o" && i+1 < len(argv) {
				argv[i+1] = b.host(argv[i+1])
				if err := os.MkdirAll(filepath.Dir(argv[i+1]), 0o755); err != nil {
					return err
				}
			}
		}
		cmd := exec.Command("go", argv[1:]...)
		cmd.Dir, cmd.Env = b.ctx, env
		out, err = cmd.CombinedOutput()
	case argv[0] == "sed":
		out, err = b.sed(argv[1:])
	case argv[0] == "grep" && len(argv) == 4 && argv[1] == "-q":
		data, rerr := os.ReadFile(b.host(argv[3]))
		if rerr != nil {
			return rerr
		}
		if !regexp.MustCompile(argv[2]).Match(data) {
			return fmt.Errorf("grep -q %q %s: no match", argv[2], argv[3])
		}
		return nil
	case path.IsAbs(argv[0]):
		for i := range argv {
			if path.IsAbs(argv[i]) {
				argv[i] = b.host(argv[i])
			}
		}
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Dir, cmd.Env = b.ctx, env
		out, err = cmd.CombinedOutput()
	default:
		return fmt.Errorf("dockerfile_test.go cannot mirror the command %q: teach imageBuild.command", argv[0])
	}
	if err != nil {
		return fmt.Errorf("%s: %w\n%s", strings.Join(argv, " "), err, out)
	}
	if stdout != "" {
		if err := os.MkdirAll(filepath.Dir(stdout), 0o755); err != nil {
			return err
		}
		return os.WriteFile(stdout, out, 0o644)
	}
	return nil
}

// sed mirrors `sed [-e] s|re|repl| file`: the first match of re on each
// line is replaced (re in the syntax common to POSIX BRE and RE2).
func (b *imageBuild) sed(args []string) ([]byte, error) {
	if len(args) > 0 && args[0] == "-e" {
		args = args[1:]
	}
	if len(args) != 2 || len(args[0]) < 4 || args[0][0] != 's' {
		return nil, fmt.Errorf("sed %q: only `sed [-e] s/re/repl/ file` is mirrored", args)
	}
	parts := strings.Split(args[0][2:], args[0][1:2])
	if len(parts) != 3 || parts[2] != "" {
		return nil, fmt.Errorf("sed expression %q: want s/re/repl/ without flags", args[0])
	}
	re, err := regexp.Compile(parts[0])
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(b.host(args[1]))
	if err != nil {
		return nil, err
	}
	lines := strings.SplitAfter(string(data), "\n")
	for i, l := range lines {
		if loc := re.FindStringIndex(l); loc != nil {
			lines[i] = l[:loc[0]] + re.ReplaceAllString(l[loc[0]:loc[1]], parts[1]) + l[loc[1]:]
		}
	}
	return []byte(strings.Join(lines, "")), nil
}

type shellWord struct {
	text string
	op   bool // an unquoted operator: && or >
}

// shellWords splits a RUN line as /bin/sh would for what the Dockerfile
// uses: blanks, '...' and "..." quoting, backslash escapes, $NAME and
// ${NAME} expansion from vars, and the operators && and >.
func shellWords(s string, vars map[string]string) ([]shellWord, error) {
	var words []shellWord
	var cur strings.Builder
	inWord := false
	end := func() {
		if inWord {
			words = append(words, shellWord{text: cur.String()})
		}
		cur.Reset()
		inWord = false
	}
	expand := func(i int) (int, error) { // s[i] == '$'
		if i+1 < len(s) && s[i+1] == '{' {
			j := strings.IndexByte(s[i:], '}')
			if j < 0 {
				return 0, fmt.Errorf("unterminated ${ in %q", s)
			}
			cur.WriteString(vars[s[i+2:i+j]])
			return i + j + 1, nil
		}
		j := i + 1
		for j < len(s) && (s[j] == '_' || s[j] >= 'A' && s[j] <= 'Z' || s[j] >= 'a' && s[j] <= 'z' || j > i+1 && s[j] >= '0' && s[j] <= '9') {
			j++
		}
		if j == i+1 {
			cur.WriteByte('$')
			return j, nil
		}
		cur.WriteString(vars[s[i+1:j]])
		return j, nil
	}
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n':
			end()
			i++
		case c == '&' && i+1 < len(s) && s[i+1] == '&':
			end()
			words = append(words, shellWord{text: "&&", op: true})
			i += 2
		case c == '>':
			end()
			words = append(words, shellWord{text: ">", op: true})
			i++
		case c == '\'':
			j := strings.IndexByte(s[i+1:], '\'')
			if j < 0 {
				return nil, fmt.Errorf("unterminated ' in %q", s)
			}
			cur.WriteString(s[i+1 : i+1+j])
			inWord = true
			i += j + 2
		case c == '"':
			inWord = true
			i++
			for ; i < len(s) && s[i] != '"'; i++ {
				switch {
				case s[i] == '\\' && i+1 < len(s) && strings.IndexByte(`"\$`, s[i+1]) >= 0:
					cur.WriteByte(s[i+1])
					i++
				case s[i] == '$':
					j, err := expand(i)
					if err != nil {
						return nil, err
					}
					i = j - 1
				default:
					cur.WriteByte(s[i])
				}
			}
			if i >= len(s) {
				return nil, fmt.Errorf("unterminated \" in %q", s)
			}
			i++
		case c == '\\' && i+1 < len(s):
			cur.WriteByte(s[i+1])
			inWord = true
			i += 2
		case c == '$':
			j, err := expand(i)
			if err != nil {
				return nil, err
			}
			inWord = true
			i = j
		case c == ';' || c == '|' || c == '<' || c == '&' || c == '`' || c == '(' || c == ')':
			return nil, fmt.Errorf("shell syntax %q is not mirrored by dockerfile_test.go", c)
		default:
			cur.WriteByte(c)
			inWord = true
			i++
		}
	}
	end()
	return words, nil
}

// copyContext copies the repository at src to dst as docker would send it
// as the build context: without what .dockerignore excludes.
func copyContext(src, dst string) error {
	ignore, err := readDockerignore(filepath.Join(src, ".dockerignore"))
	if err != nil {
		return err
	}
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		rel = filepath.ToSlash(rel)
		if rel == "." {
			return os.MkdirAll(dst, 0o755)
		}
		if ignore.excludes(rel) {
			if d.IsDir() && !ignore.hasExceptions {
				return filepath.SkipDir
			}
			return nil
		}
		target := filepath.Join(dst, rel)
		switch {
		case d.IsDir():
			return os.MkdirAll(target, 0o755)
		case d.Type()&fs.ModeSymlink != 0:
			link, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(link, target)
		case d.Type().IsRegular():
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			info, err := d.Info()
			if err != nil {
				return err
			}
			return os.WriteFile(target, data, info.Mode().Perm())
		}
		return nil
	})
}

type dockerignore struct {
	patterns      []*regexp.Regexp
	exclude       []bool // false for a !exception
	hasExceptions bool
}

// readDockerignore compiles .dockerignore as docker's pattern matcher
// reads it: paths relative to the context root, `*` and `?` within one
// path element, `**` across elements, `!` re-includes, the last matching
// pattern wins, and a pattern that matches a directory matches its contents.
func readDockerignore(name string) (*dockerignore, error) {
	data, err := os.ReadFile(name)
	if errors.Is(err, fs.ErrNotExist) {
		return &dockerignore{}, nil
	} else if err != nil {
		return nil, err
	}
	di := &dockerignore{}
	for line := range strings.Lines(string(data)) {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		exclude := true
		if p, ok := strings.CutPrefix(line, "!"); ok {
			line, exclude, di.hasExceptions = strings.TrimSpace(p), false, true
		}
		line = strings.TrimPrefix(path.Clean(line), "/")
		var re strings.Builder
		re.WriteString("^")
		for i := 0; i < len(line); i++ {
			switch c := line[i]; {
			case strings.HasPrefix(line[i:], "**/"):
				re.WriteString("(.*/)?")
				i += 2
			case strings.HasPrefix(line[i:], "**"):
				re.WriteString(".*")
				i++
			case c == '*':
				re.WriteString("[^/]*")
			case c == '?':
				re.WriteString("[^/]")
			case c == '[':
				j := strings.IndexByte(line[i:], ']')
				if j < 0 {
					return nil, fmt.Errorf(".dockerignore: bad pattern %q", line)
				}
				re.WriteString(line[i : i+j+1])
				i += j
			default:
				re.WriteString(regexp.QuoteMeta(string(c)))
			}
		}
		re.WriteString("$")
		rx, err := regexp.Compile(re.String())
		if err != nil {
			return nil, fmt.Errorf(".dockerignore: pattern %q: %w", line, err)
		}
		di.patterns = append(di.patterns, rx)
		di.exclude = append(di.exclude, exclude)
	}
	return di, nil
}

// excludes reports whether the context path rel (slash-separated) is left
// out of the build context.
func (di *dockerignore) excludes(rel string) bool {
	out := false
	for i, rx := range di.patterns {
		for p := rel; ; {
			if rx.MatchString(p) {
				out = di.exclude[i]
				break
			}
			j := strings.LastIndexByte(p, '/')
			if j < 0 {
				break
			}
			p = p[:j]
		}
	}
	return out
}
