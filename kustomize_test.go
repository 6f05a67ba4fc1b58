package main

// Tests of what `kubectl apply -k` applies (issue 20 items 1 and 2): every
// kustomization and component under deploy/kubernetes is rendered with
// kustomize's own Go API and validated strictly against the Kubernetes API
// types, by deploy/kubecheck, a module of its own so that kustomize and
// k8s.io/api stay out of the gateway's go.mod. Its go.mod also pins the
// kustomize CLI that README.md's Deploying steps run.

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
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
// written to the copy's redis.env as the README says.
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
