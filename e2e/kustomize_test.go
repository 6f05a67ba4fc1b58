package e2e

// Tests of what `kubectl apply -k` applies (issue 20 items 1 and 2): every
// kustomization and component under deploy/kubernetes is rendered with
// kustomize's own Go API and validated strictly against the Kubernetes API
// types, by deploy/kubecheck, a module of its own so that kustomize and
// k8s.io/api stay out of the gateway's go.mod. Its go.mod also pins the
// kustomize CLI that the Kubernetes steps of docs/deploying.md run.

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	"go.yaml.in/yaml/v3"
)

const kubecheckDir = "deploy/kubecheck"

var (
	kubeOnce                 sync.Once
	kubecheckBin, kustomizeB string
	kubeErr                  error
	kubeOffline              bool
)

// kubeTools builds deploy/kubecheck and the kustomize CLI of its go.mod
// once per test run. Without the module proxy (an offline laptop) the
// tests that need them skip loudly; in CI (CI=true) they fail.
func kubeTools(t *testing.T) (kubecheck, kustomize string) {
	t.Helper()
	kubeOnce.Do(func() {
		dir, err := os.MkdirTemp("", "deskgate-kube-")
		if err != nil {
			kubeErr = err
			return
		}
		atExit(func() { os.RemoveAll(dir) })
		gocmd := func(args ...string) error {
			cmd := exec.Command("go", args...)
			cmd.Dir = kubecheckDir
			cmd.Env = append(os.Environ(), "GOFLAGS=-mod=readonly")
			if out, err := cmd.CombinedOutput(); err != nil {
				return fmt.Errorf("go %s (in %s): %v\n%s", strings.Join(args, " "), kubecheckDir, err, out)
			}
			return nil
		}
		if err := gocmd("mod", "download"); err != nil {
			kubeErr, kubeOffline = err, true
			return
		}
		kubecheckBin, kustomizeB = filepath.Join(dir, "kubecheck"), filepath.Join(dir, "kustomize")
		if kubeErr = gocmd("build", "-o", kubecheckBin, "."); kubeErr != nil {
			return
		}
		kubeErr = gocmd("build", "-o", kustomizeB, "sigs.k8s.io/kustomize/kustomize/v5")
	})
	if kubeOffline && os.Getenv("CI") != "true" {
		t.Skipf("SKIPPED: the modules of %s cannot be downloaded (offline?); CI=true makes this a failure:\n%v", kubecheckDir, kubeErr)
	}
	if kubeErr != nil {
		t.Fatalf("building %s: %v", kubecheckDir, kubeErr)
	}
	return kubecheckBin, kustomizeB
}

// kubeTree copies deploy/kubernetes, as committed, to a temporary
// directory and returns the copy's path (…/deploy/kubernetes). A local
// redis.env, which git ignores, is left out; password, if not "", is
// written to the copy's redis.env as docs/deploying.md says.
func kubeTree(t *testing.T, password string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "deploy", "kubernetes")
	err := filepath.WalkDir("deploy/kubernetes", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel("deploy/kubernetes", p)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		if rel == "redis.env" {
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), data, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	if password != "" {
		writeRedisEnv(t, dst, password)
	}
	return dst
}

func writeRedisEnv(t *testing.T, dir, password string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "redis.env"), []byte("password="+password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

// randomPassword is what `openssl rand -hex 32` prints.
func randomPassword() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// kubecheck renders and validates the kustomization in dir.
func kubecheck(t *testing.T, dir string) (out []byte, stderr string, err error) {
	t.Helper()
	bin, _ := kubeTools(t)
	cmd := exec.Command(bin, dir)
	var errb bytes.Buffer
	cmd.Stderr = &errb
	out, err = cmd.Output()
	return out, errb.String(), err
}

// render is kubecheck that must succeed.
func render(t *testing.T, dir string) *manifests {
	t.Helper()
	out, stderr, err := kubecheck(t, dir)
	if err != nil {
		t.Fatalf("kubecheck %s: %v\n%s", dir, err, stderr)
	}
	return parseManifests(t, out, dir)
}

// parseManifests reads a rendered YAML stream.
func parseManifests(t *testing.T, data []byte, source string) *manifests {
	t.Helper()
	m := &manifests{}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var n yaml.Node
		err := dec.Decode(&n)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", source, err)
		}
		var o kObject
		if err := n.Decode(&o); err != nil {
			t.Fatalf("%s: %v", source, err)
		}
		o.file, o.node = source, &n
		m.objects = append(m.objects, o)
	}
	if len(m.objects) == 0 {
		t.Fatalf("%s renders no object", source)
	}
	return m
}

// kustomizations lists every directory under deploy/kubernetes with a
// kustomization.yaml, and whether it is a Component.
func kustomizations(t *testing.T) map[string]bool {
	t.Helper()
	found := map[string]bool{}
	err := filepath.WalkDir("deploy/kubernetes", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		switch d.Name() {
		case "kustomization.yml", "Kustomization":
			t.Errorf("%s: name it kustomization.yaml", p)
		case "kustomization.yaml":
			var k struct {
				Kind string `yaml:"kind"`
			}
			docs, err := yamlDocs(p)
			if err != nil || len(docs) != 1 || docs[0].Decode(&k) != nil {
				t.Fatalf("%s: %v", p, err)
			}
			found[filepath.Dir(p)] = k.Kind == "Component"
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}

// withComponents writes, beside the tree copy whose base is base, an
// overlay of base with the given components (paths relative to base), as
// a user's own overlay would, and returns its directory.
func withComponents(t *testing.T, base string, components ...string) string {
	t.Helper()
	dir, err := os.MkdirTemp(filepath.Dir(filepath.Dir(base)), "overlay-")
	if err != nil {
		t.Fatal(err)
	}
	rel := func(p string) string {
		r, err := filepath.Rel(dir, filepath.Join(base, p))
		if err != nil {
			t.Fatal(err)
		}
		return filepath.ToSlash(r)
	}
	k := "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [" + rel(".") + "]\ncomponents:\n"
	for _, c := range components {
		k += "- " + rel(c) + "\n"
	}
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(k), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// renderedManifests is what TestKubernetesManifests checks: the
// kustomization with every component, as rendered for a cluster.
func renderedManifests(t *testing.T) *manifests {
	t.Helper()
	base := kubeTree(t, randomPassword())
	var comps []string
	for dir, isComponent := range kustomizations(t) {
		if isComponent {
			rel, _ := filepath.Rel("deploy/kubernetes", dir)
			comps = append(comps, rel)
		}
	}
	slices.Sort(comps)
	return render(t, withComponents(t, base, comps...))
}

// coreAPIVersions are built into every cluster: a kustomization that uses
// only these applies without any operator or CRD.
var coreAPIVersions = []string{"v1", "apps/v1", "policy/v1", "autoscaling/v2"}

// TestKustomizeOverlays guards issue 20 item 2: every kustomization and
// every component under deploy/kubernetes renders, and every object it
// outputs passes kubecheck's strict validation; the default kustomization
// uses only core kinds, so `kubectl apply -k deploy/kubernetes` works on a
// cluster without the Prometheus Operator, whose ServiceMonitor is an
// opt-in component.
func TestKustomizeOverlays(t *testing.T) {
	base := kubeTree(t, randomPassword())
	all := kustomizations(t)
	if isComponent, ok := all["deploy/kubernetes"]; !ok || isComponent {
		t.Fatal("deploy/kubernetes/kustomization.yaml must be a Kustomization")
	}
	sawMonitor := false
	for dir, isComponent := range all {
		rel, _ := filepath.Rel("deploy/kubernetes", dir)
		target := filepath.Join(base, rel)
		if isComponent {
			target = withComponents(t, base, rel)
		}
		m := render(t, target)
		t.Logf("%s: %d objects, valid", dir, len(m.objects))
		if rel == "." {
			for _, o := range m.objects {
				if !slices.Contains(coreAPIVersions, o.APIVersion) {
					t.Errorf("deploy/kubernetes renders %s %s (%s): not a core kind, `kubectl apply -k` fails on a cluster without its CRD; make it an opt-in component", o.Kind, o.Metadata.Name, o.APIVersion)
				}
			}
			continue
		}
		if isComponent && m.find("ServiceMonitor", "deskgate") != nil {
			sawMonitor = true
		}
	}
	if !sawMonitor {
		t.Error("no component adds the deskgate ServiceMonitor")
	}
}

// TestKubecheckRejects guards the validator itself: a misspelt field, a
// value of the wrong type, a bad quantity, a bad name and an unknown kind
// are each refused with the object and the field named.
func TestKubecheckRejects(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		"kustomization.yaml": "resources: [dep.yaml, svc.yaml, pdb.yaml, pod.yaml, x.yaml]\n",
		"dep.yaml": `apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replica: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: nginx}]}
`,
		"svc.yaml": "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: eighty}]}\n",
		"pdb.yaml": "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: Web_PDB}\nspec: {minAvailable: 1}\n",
		"pod.yaml": "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, image: x, resources: {limits: {memory: 256mb}}}]}\n",
		"x.yaml":   "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n",
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out, stderr, err := kubecheck(t, dir)
	if err == nil || len(out) != 0 {
		t.Fatalf("kubecheck accepted invalid objects:\n%s", out)
	}
	for _, want := range []string{
		`Deployment web: strict decoding error: unknown field "spec.replica"`,
		`Service web: `, `ServicePort.spec.ports.port of type int32`,
		`PodDisruptionBudget Web_PDB: metadata.name: Invalid value: "Web_PDB"`,
		`Pod p: quantities must match`,
		`Widget w: no kind "Widget" is registered`,
	} {
		if !strings.Contains(stderr, want) {
			t.Errorf("kubecheck's errors lack %q:\n%s", want, stderr)
		}
	}
}

// TestKustomizeSecret guards issue 20 item 1: no committed file holds a
// Secret's value; the Redis password Secret is generated from redis.env,
// which git ignores and the user writes; without it the render fails
// instead of falling back to anything committed; with it, the only Secret
// rendered holds exactly that password and is the one both Deployments
// read.
func TestKustomizeSecret(t *testing.T) {
	err := filepath.WalkDir("deploy", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || (filepath.Ext(p) != ".yaml" && filepath.Ext(p) != ".yml") {
			return err
		}
		docs, err := yamlDocs(p)
		if err != nil {
			return err
		}
		for _, d := range docs {
			var o struct {
				Kind       string         `yaml:"kind"`
				Data       map[string]any `yaml:"data"`
				StringData map[string]any `yaml:"stringData"`
			}
			_ = d.Decode(&o)
			if o.Kind == "Secret" && (len(o.Data) > 0 || len(o.StringData) > 0) {
				t.Errorf("%s: a committed Secret with a value: anyone who reads the repository knows it", p)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("git", "check-ignore", "-q", "deploy/kubernetes/redis.env").CombinedOutput(); err != nil {
		t.Errorf("git does not ignore deploy/kubernetes/redis.env (%v %s): the password would be committed", err, out)
	}

	// Without redis.env: a loud failure.
	_, stderr, err := kubecheck(t, kubeTree(t, ""))
	if err == nil || !strings.Contains(stderr, "redis.env") {
		t.Errorf("rendering without redis.env: %v, stderr %q; want a failure naming redis.env", err, stderr)
	}

	password := randomPassword()
	m := render(t, kubeTree(t, password))
	var secrets []string
	for _, o := range m.objects {
		if o.Kind != "Secret" {
			continue
		}
		secrets = append(secrets, o.Metadata.Name)
		var s kSecret
		m.decode(t, "Secret", o.Metadata.Name, &s)
		if len(s.StringData) > 0 {
			t.Errorf("Secret %s has stringData %v", o.Metadata.Name, s.StringData)
		}
		for k, v := range s.Data {
			if b, err := base64.StdEncoding.DecodeString(v); err != nil || k != "password" || string(b) != password {
				t.Errorf("Secret %s key %s holds %q, not the password of redis.env", o.Metadata.Name, k, b)
			}
		}
	}
	if len(secrets) != 1 || !regexp.MustCompile(`^deskgate-redis-[a-z0-9]{10}$`).MatchString(secrets[0]) {
		t.Fatalf("rendered Secrets %v, want one deskgate-redis-<hash> generated from redis.env", secrets)
	}
	for _, name := range []string{"deskgate", "redis"} {
		c := m.deployment(t, name).Spec.Template.Spec.Containers[0]
		if env := m.envOf(t, c); env["REDIS_PASSWORD"] != password {
			t.Errorf("Deployment %s: REDIS_PASSWORD is not the password of redis.env", name)
		}
	}
}

// TestKustomizeRedisRefusesWeakPassword guards the other half of item 1:
// a Secret that still holds the public placeholder of the old secret.yaml
// (kept in clusters that applied it), or an empty or short password, makes
// the Redis container exit with the reason instead of serving. The
// container's command is run here as the kubelet runs it, with a stand-in
// redis-server that prints its arguments.
func TestKustomizeRedisRefusesWeakPassword(t *testing.T) {
	m := render(t, kubeTree(t, randomPassword()))
	var rsvc kService
	m.decode(t, "Service", "redis", &rsvc)
	c := m.deploymentSelectedBy(t, rsvc.Spec.Selector).Spec.Template.Spec.Containers[0]
	argv := append(slices.Clone(c.Command), c.Args...)
	if len(argv) == 0 {
		t.Fatal("the Redis container has no command: nothing checks the password before redis-server starts")
	}
	if _, err := exec.LookPath(argv[0]); err != nil {
		t.Fatalf("Redis command %q: %v", argv[0], err)
	}
	// The kubelet expands $(NAME) of the container's env in command and args.
	env := m.envOf(t, c)
	for i, a := range argv {
		argv[i] = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`).ReplaceAllStringFunc(a, func(ref string) string {
			if v, ok := env[ref[2:len(ref)-1]]; ok {
				return v
			}
			return ref
		})
	}
	bin := t.TempDir()
	if err := os.WriteFile(filepath.Join(bin, "redis-server"), []byte("#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	runRedis := func(password string) (string, string, error) {
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Env = []string{"PATH=" + bin + string(os.PathListSeparator) + os.Getenv("PATH"), "REDIS_PASSWORD=" + password}
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		return out.String(), errb.String(), err
	}
	for _, bad := range []struct{ password, says string }{
		{"CHANGE-ME-generate-with-openssl-rand-base64-32", "placeholder"},
		{"", "0 characters"},
		{"hunter2", "7 characters"},
	} {
		out, stderr, err := runRedis(bad.password)
		if err == nil || out != "" || !strings.Contains(stderr, bad.says) || !strings.Contains(stderr, "redis.env") {
			t.Errorf("password %q: exit %v, redis-server got %q, stderr %q; want a refusal that says %q and names redis.env", bad.password, err, out, stderr, bad.says)
		}
		// The refusal sends the operator to a page: it must exist.
		docs := regexp.MustCompile(`[\w./-]+\.md\b`).FindAllString(stderr, -1)
		if len(docs) == 0 {
			t.Errorf("password %q: stderr %q names no page that says what to do", bad.password, stderr)
		}
		for _, d := range docs {
			if _, err := os.Stat(d); err != nil {
				t.Errorf("password %q: stderr names %s: %v", bad.password, d, err)
			}
		}
	}
	good := randomPassword()
	out, stderr, err := runRedis(good)
	if err != nil {
		t.Fatalf("a random password: %v\n%s", err, stderr)
	}
	args := strings.Join(strings.Split(strings.TrimSuffix(out, "\n"), "\n"), " ")
	for _, want := range []string{"--maxmemory-policy noeviction", "--requirepass " + good, "--appendonly no", `--save  --`} {
		if !strings.Contains(args+" --", want) {
			t.Errorf("redis-server arguments %q lack %q", args, want)
		}
	}
}

// deployingDoc is the page whose Kubernetes steps TestDeployingSteps runs.
const deployingDoc = "docs/deploying.md"

// docSection returns the text of the Markdown file doc from the heading
// line head to the next heading of the same or a higher level, outside
// code blocks. A missing file or heading fails the test.
func docSection(t *testing.T, doc, head string) string {
	t.Helper()
	b, err := os.ReadFile(doc)
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	i := strings.Index(s, "\n"+head+"\n")
	if i < 0 {
		t.Fatalf("%s has no %q section", doc, head)
	}
	s = s[i+1+len(head)+1:]
	level := strings.Index(head, " ")
	fenced, off := false, 0
	for _, line := range strings.SplitAfter(s, "\n") {
		if strings.HasPrefix(line, "```") {
			fenced = !fenced
		}
		if n := len(line) - len(strings.TrimLeft(line, "#")); !fenced && n > 0 && n <= level && strings.HasPrefix(line[n:], " ") {
			return s[:off]
		}
		off += len(line)
	}
	return s
}

// shBlocks returns the ```sh code blocks of text.
func shBlocks(text string) []string {
	var blocks []string
	for _, m := range regexp.MustCompile("(?ms)^```sh\n(.*?)^```\n").FindAllStringSubmatch(text, -1) {
		blocks = append(blocks, m[1])
	}
	return blocks
}

// TestDeployingSteps runs docs/deploying.md's Kubernetes steps as written,
// in one shell, in a copy of deploy/kubernetes: docker and kubectl are
// stand-ins (no engine, no cluster) that record what they were asked and,
// for `kubectl apply -k DIR`, render DIR with kubecheck as kubectl would;
// kustomize is the CLI that deploy/kubecheck/go.mod pins, and openssl the
// real one. The image built is the image pushed and the image the
// Deployment runs; the password file is private and is the Secret's only
// source; the first apply has no ServiceMonitor, the opt-in one has.
func TestDeployingSteps(t *testing.T) {
	kubecheckBin, kustomize := kubeTools(t)
	section := docSection(t, deployingDoc, "## Kubernetes")
	blocks := shBlocks(section)
	script := strings.Join(blocks, "\n")
	for _, want := range []string{"docker build", "docker push", "kustomize edit set image", "redis.env", "kubectl apply -k", "kustomize edit add component"} {
		if !strings.Contains(script, want) {
			t.Errorf("%s's Kubernetes steps lack %q", deployingDoc, want)
		}
	}
	gomod, err := os.ReadFile(filepath.Join(kubecheckDir, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	pinned := regexp.MustCompile(`sigs\.k8s\.io/kustomize/kustomize/v5 (v\S+)`).FindSubmatch(gomod)
	if pinned == nil || !strings.Contains(section, "go install sigs.k8s.io/kustomize/kustomize/v5@"+string(pinned[1])) {
		t.Errorf("%s's kustomize install line does not name the version deploy/kubecheck/go.mod pins (%s)", deployingDoc, pinned)
	}

	root := filepath.Dir(filepath.Dir(kubeTree(t, "")))
	stubs, out := t.TempDir(), t.TempDir()
	stub := func(name, body string) {
		if err := os.WriteFile(filepath.Join(stubs, name), []byte("#!/bin/sh\n"+body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	stub("docker", `echo "docker $*" >> "$OUT/log"`+"\n")
	stub("kubectl", `set -e
[ "$1 $2" = "apply -k" ] && [ $# -eq 3 ] || { echo "kubectl stand-in: only apply -k DIR, got: $*" >&2; exit 1; }
n=$(ls "$OUT" | grep -c '^apply-' || true)
"$KUBECHECK" "$3" > "$OUT/apply-$((n+1)).yaml"
echo "kubectl apply -k $3" >> "$OUT/log"
`)
	if err := os.Symlink(kustomize, filepath.Join(stubs, "kustomize")); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("bash", "-euo", "pipefail", "-c", script)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "PATH="+stubs+string(os.PathListSeparator)+os.Getenv("PATH"), "OUT="+out, "KUBECHECK="+kubecheckBin)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s's Kubernetes steps failed: %v\n%s\nscript:\n%s", deployingDoc, err, b, script)
	}
	logb, _ := os.ReadFile(filepath.Join(out, "log"))
	log := strings.Split(strings.TrimSpace(string(logb)), "\n")
	t.Logf("the steps ran: %q", log)

	// The image: built with a VERSION the Dockerfile takes, pushed, set.
	var built, pushed string
	for _, l := range log {
		f := strings.Fields(l)
		switch {
		case len(f) > 2 && f[1] == "build":
			if i := slices.Index(f, "-t"); i > 0 && i+1 < len(f) {
				built = f[i+1]
			}
			if !slices.ContainsFunc(f, func(a string) bool { return strings.HasPrefix(a, "VERSION=") }) || f[len(f)-1] != "." {
				t.Errorf("%q: want --build-arg VERSION=... and the repository as context", l)
			}
		case len(f) == 3 && f[1] == "push":
			pushed = f[2]
		}
	}
	if built == "" || built != pushed {
		t.Errorf("image built %q, pushed %q: want the same", built, pushed)
	}
	dockerfile, _ := os.ReadFile("Dockerfile")
	if !regexp.MustCompile(`(?m)^ARG VERSION\b`).Match(dockerfile) {
		t.Error("the Dockerfile has no ARG VERSION for --build-arg VERSION")
	}

	// The password file.
	envFile := filepath.Join(root, "deploy", "kubernetes", "redis.env")
	fi, err := os.Stat(envFile)
	if err != nil {
		t.Fatalf("the steps wrote no deploy/kubernetes/redis.env: %v", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		t.Errorf("redis.env mode %v: others can read the password", fi.Mode().Perm())
	}
	envData, _ := os.ReadFile(envFile)
	password, ok := strings.CutPrefix(strings.TrimSpace(string(envData)), "password=")
	if !ok || len(password) < 32 || strings.Contains(password, "\n") {
		t.Errorf("redis.env %q: want one line password=<at least 32 random characters>", envData)
	}

	// What each apply sent.
	applies, _ := filepath.Glob(filepath.Join(out, "apply-*.yaml"))
	if len(applies) != 2 {
		t.Fatalf("%d applies, want 2 (the steps, then the ServiceMonitor component)", len(applies))
	}
	for i, p := range applies {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		m := parseManifests(t, data, fmt.Sprintf("apply %d", i+1))
		if img := m.deployment(t, "deskgate").Spec.Template.Spec.container(t, "deskgate").Image; img != pushed {
			t.Errorf("apply %d: the deskgate Deployment runs %q, want the pushed %q", i+1, img, pushed)
		}
		c := m.deployment(t, "redis").Spec.Template.Spec.Containers[0]
		if env := m.envOf(t, c); env["REDIS_PASSWORD"] != password {
			t.Errorf("apply %d: Redis's password is not the one of redis.env", i+1)
		}
		if monitor := m.find("ServiceMonitor", "deskgate") != nil; monitor != (i == 1) {
			t.Errorf("apply %d: ServiceMonitor present %t, want %t", i+1, monitor, i == 1)
		}
	}
}
