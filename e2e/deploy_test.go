package e2e

// Tests of the deployment artefacts (issue 9): the Dockerfile, every
// manifest under deploy/, and their wiring against the code. No Docker
// engine runs in CI, so the image's build stages are mirrored here: the
// build context is copied as .dockerignore filters it, and the RUN lines of
// the Dockerfile are executed by a small interpreter that knows exactly the
// commands they use (go build, sed, grep, a built binary). A flag changed in
// the Dockerfile is therefore the flag these tests build with; a command
// the interpreter does not know fails the tests instead of being skipped.

import (
	"bufio"
	"bytes"
	"debug/elf"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
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

	"go.yaml.in/yaml/v3"

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

// TestDeployYAMLParses guards that every YAML file under deploy/ is valid
// YAML in every document, so that kubectl, compose, Prometheus and Grafana
// are not the first to find a typo.
func TestDeployYAMLParses(t *testing.T) {
	n := 0
	err := filepath.WalkDir("deploy", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || (path.Ext(p) != ".yaml" && path.Ext(p) != ".yml") {
			return err
		}
		docs, err := yamlDocs(p)
		if err != nil {
			t.Errorf("%s: %v", p, err)
		}
		for i, d := range docs {
			if len(d.Content) == 0 || d.Content[0].Kind != yaml.MappingNode {
				t.Errorf("%s: document %d is not a mapping", p, i)
			}
		}
		n++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 10 {
		t.Fatalf("only %d YAML files under deploy/", n)
	}
}

// TestKubernetesManifests guards issue 9's deploy/kubernetes wiring against
// the code and SPEC §5/§6, on the objects `kubectl apply -k` would send
// (the kustomization with every component, rendered): the ConfigMap is a valid deskgate config with the
// repository's policy, mounted (as a directory, so that watch_config sees
// updates) where the container's -config names it; every ${VAR} it reads
// is in the Deployment's env; the container ports are the config's
// listeners, the probes hit /healthz and /readyz on the admin one; the
// Service, ServiceMonitor, PDB and HPA select and name what exists; the
// drain fits in terminationGracePeriodSeconds; the container is non-root
// and read-only; Redis runs noeviction with the shared password.
func TestKubernetesManifests(t *testing.T) {
	m := renderedManifests(t)
	for _, o := range m.objects {
		if o.Metadata.Namespace != "" {
			t.Errorf("%s %s (%s) sets a namespace: the manifests are namespace-less", o.Kind, o.Metadata.Name, o.file)
		}
		if o.Metadata.Name == "" {
			t.Errorf("%s in %s has no name", o.Kind, o.file)
		}
	}
	dep := m.deployment(t, "deskgate")
	pod := dep.Spec.Template.Spec
	c := pod.container(t, "deskgate")
	if !labelsMatch(dep.Spec.Selector.MatchLabels, dep.Spec.Template.Metadata.Labels) {
		t.Fatalf("deployment selector %v does not select its pods %v", dep.Spec.Selector.MatchLabels, dep.Spec.Template.Metadata.Labels)
	}

	// The config: mounted ConfigMap, at the path of -config.
	if len(c.Args) != 2 || c.Args[0] != "-config" || len(c.Command) != 0 {
		t.Fatalf("container args %q command %q: want args [-config <path>] and the image's ENTRYPOINT", c.Args, c.Command)
	}
	cfgPath := c.Args[1]
	if cfgPath != "/etc/deskgate/config.yaml" {
		t.Errorf("-config %s, want the documented /etc/deskgate/config.yaml", cfgPath)
	}
	var cmName string
	for _, vm := range c.VolumeMounts {
		if vm.MountPath != path.Dir(cfgPath) {
			continue
		}
		if vm.SubPath != "" {
			t.Errorf("volume %s is mounted with subPath: ConfigMap updates never reach a subPath mount", vm.Name)
		}
		for _, v := range pod.Volumes {
			if v.Name == vm.Name && v.ConfigMap != nil {
				cmName = v.ConfigMap.Name
			}
		}
	}
	if cmName == "" {
		t.Fatalf("no ConfigMap volume is mounted at %s", path.Dir(cfgPath))
	}
	var cm kConfigMap
	m.decode(t, "ConfigMap", cmName, &cm)
	cfgText, ok := cm.Data[path.Base(cfgPath)]
	if !ok {
		t.Fatalf("ConfigMap %s has no key %s", cmName, path.Base(cfgPath))
	}

	// Every ${VAR} comes from the container's env.
	env := m.envOf(t, c)
	for _, ref := range envRefs(cfgText) {
		if _, ok := env[ref.name]; !ok && !ref.hasDefault {
			t.Errorf("the config reads ${%s}, which the deskgate container's env does not set", ref.name)
		}
	}
	cfg, err := config.Parse([]byte(cfgText), func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	if err != nil {
		t.Fatalf("ConfigMap %s is not a valid deskgate config:\n%v", cmName, err)
	}
	if !cfg.WatchConfig {
		t.Error("the ConfigMap's config needs watch_config: true, or ConfigMap updates never apply")
	}
	if cfg.Redis.Password != env["REDIS_PASSWORD"] || !cfg.Redis.Enabled() {
		t.Error(`redis.password is not "${REDIS_PASSWORD}" from the Secret`)
	}
	repoCfg, err := config.Load("config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(cfg.Routes, repoCfg.Routes) || !reflect.DeepEqual(cfg.RateLimit, repoCfg.RateLimit) {
		t.Error("the ConfigMap's routes or rate_limit differ from the repository's config.yaml")
	}

	// Ports and probes.
	_, httpPort := splitListen(t, cfg.Server.Listen)
	adminHost, adminPort := splitListen(t, cfg.Admin.Listen)
	if adminHost != "" && adminHost != "0.0.0.0" && adminHost != "::" {
		t.Errorf("admin.listen %q: the kubelet's probes and Prometheus reach the pod IP, not %s", cfg.Admin.Listen, adminHost)
	}
	if got := c.portNumber(t, "http"); got != httpPort {
		t.Errorf("container port http is %d, server.listen is %s", got, cfg.Server.Listen)
	}
	if got := c.portNumber(t, "admin"); got != adminPort {
		t.Errorf("container port admin is %d, admin.listen is %s", got, cfg.Admin.Listen)
	}
	for _, p := range []struct {
		name  string
		probe *kProbe
		path  string
	}{{"liveness", c.LivenessProbe, "/healthz"}, {"readiness", c.ReadinessProbe, "/readyz"}} {
		if p.probe == nil || p.probe.HTTPGet == nil {
			t.Errorf("no HTTP %s probe", p.name)
			continue
		}
		if p.probe.HTTPGet.Path != p.path || c.resolvePort(t, p.probe.HTTPGet.Port) != adminPort {
			t.Errorf("%s probe GET %s on port %v, want %s on the admin port %d", p.name, p.probe.HTTPGet.Path, p.probe.HTTPGet.Port, p.path, adminPort)
		}
	}

	// Rollout and drain.
	if dep.Spec.Replicas == nil || *dep.Spec.Replicas < 2 {
		t.Errorf("replicas %v, want at least 2", dep.Spec.Replicas)
	}
	ru := dep.Spec.Strategy.RollingUpdate
	if dep.Spec.Strategy.Type != "RollingUpdate" || fmt.Sprint(ru.MaxUnavailable) != "0" {
		t.Errorf("strategy %s maxUnavailable %v, want RollingUpdate with maxUnavailable 0", dep.Spec.Strategy.Type, ru.MaxUnavailable)
	}
	drain := cfg.Server.ShutdownDelay.D() + cfg.Server.ShutdownTimeout.D() + c.preStopSleep(t)
	if pod.TerminationGracePeriodSeconds == nil {
		t.Error("terminationGracePeriodSeconds unset (default 30s)")
	} else if grace := time.Duration(*pod.TerminationGracePeriodSeconds) * time.Second; grace <= drain {
		t.Errorf("terminationGracePeriodSeconds %s <= shutdown_delay + shutdown_timeout + preStop (%s): the kubelet kills a draining pod", grace, drain)
	}
	if cfg.Server.ShutdownDelay == 0 && c.preStopSleep(t) == 0 {
		t.Error("neither server.shutdown_delay nor a preStop pause: the pod stops accepting before the endpoint is removed")
	}

	// Resources and security.
	for _, r := range []string{"cpu", "memory"} {
		if c.Resources.Requests[r] == "" {
			t.Errorf("no %s request (the HPA's CPU target is relative to it)", r)
		}
	}
	if c.Resources.Limits["memory"] == "" {
		t.Error("no memory limit")
	}
	sc := c.SecurityContext.merge(pod.SecurityContext)
	if sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.RunAsUser == nil || *sc.RunAsUser != 65532 {
		t.Errorf("runAsNonRoot %v runAsUser %v, want true and 65532 (the image's USER)", sc.RunAsNonRoot, sc.RunAsUser)
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("readOnlyRootFilesystem is not true")
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("allowPrivilegeEscalation is not false")
	}
	if !slices.Equal(sc.Capabilities.Drop, []string{"ALL"}) {
		t.Errorf("capabilities drop %v, want [ALL]", sc.Capabilities.Drop)
	}
	if sc.SeccompProfile.Type != "RuntimeDefault" {
		t.Errorf("seccompProfile %q, want RuntimeDefault", sc.SeccompProfile.Type)
	}

	// The Service and ServiceMonitor.
	var svc kService
	m.decode(t, "Service", "deskgate", &svc)
	if !labelsMatch(svc.Spec.Selector, dep.Spec.Template.Metadata.Labels) {
		t.Errorf("Service selector %v does not select the deskgate pods", svc.Spec.Selector)
	}
	svcPorts := map[string]kServicePort{}
	for _, p := range svc.Spec.Ports {
		svcPorts[p.Name] = p
	}
	if p := svcPorts["http"]; p.Port != 80 || c.resolvePort(t, p.TargetPort) != httpPort {
		t.Errorf("Service port http: %d -> %v, want 80 -> %d", p.Port, p.TargetPort, httpPort)
	}
	if p, ok := svcPorts["metrics"]; !ok || c.resolvePort(t, p.TargetPort) != adminPort {
		t.Errorf("Service port metrics -> %v, want the admin port %d", p.TargetPort, adminPort)
	}
	var sm kServiceMonitor
	m.decode(t, "ServiceMonitor", "deskgate", &sm)
	if !labelsMatch(sm.Spec.Selector.MatchLabels, m.labels(t, "Service", "deskgate")) {
		t.Errorf("ServiceMonitor selector %v does not select the deskgate Service", sm.Spec.Selector.MatchLabels)
	}
	if len(sm.Spec.Endpoints) != 1 || sm.Spec.Endpoints[0].Port != "metrics" || sm.Spec.Endpoints[0].Path != "/metrics" {
		t.Errorf("ServiceMonitor endpoints %+v, want port metrics path /metrics", sm.Spec.Endpoints)
	}

	// Disruptions and scaling.
	var pdb kPDB
	m.decode(t, "PodDisruptionBudget", "deskgate", &pdb)
	if !labelsMatch(pdb.Spec.Selector.MatchLabels, dep.Spec.Template.Metadata.Labels) {
		t.Error("the PodDisruptionBudget does not select the deskgate pods")
	}
	var hpa kHPA
	m.decode(t, "HorizontalPodAutoscaler", "deskgate", &hpa)
	ref := hpa.Spec.ScaleTargetRef
	if ref.Kind != "Deployment" || ref.Name != "deskgate" || m.find("HorizontalPodAutoscaler", "deskgate").APIVersion != "autoscaling/v2" {
		t.Errorf("HPA targets %s %s: want the autoscaling/v2 HPA of Deployment deskgate", ref.Kind, ref.Name)
	}
	if hpa.Spec.MinReplicas == nil || *hpa.Spec.MinReplicas < *dep.Spec.Replicas || hpa.Spec.MaxReplicas < *hpa.Spec.MinReplicas {
		t.Errorf("HPA min %v max %d, want min >= the Deployment's %d replicas <= max", hpa.Spec.MinReplicas, hpa.Spec.MaxReplicas, *dep.Spec.Replicas)
	}
	if len(hpa.Spec.Metrics) == 0 || hpa.Spec.Metrics[0].Resource == nil || hpa.Spec.Metrics[0].Resource.Name != "cpu" {
		t.Errorf("HPA metrics %+v, want CPU", hpa.Spec.Metrics)
	}
	minPods := *dep.Spec.Replicas
	if hpa.Spec.MinReplicas != nil {
		minPods = *hpa.Spec.MinReplicas
	}
	switch {
	case pdb.Spec.MinAvailable != nil:
		n, ok := pdb.Spec.MinAvailable.(int)
		if !ok || n < 1 || n >= minPods {
			t.Errorf("PDB minAvailable %v: want 1..%d, or no drain can ever evict a pod", pdb.Spec.MinAvailable, minPods-1)
		}
	case fmt.Sprint(pdb.Spec.MaxUnavailable) != "1":
		t.Errorf("PDB needs minAvailable or maxUnavailable 1, got %v", pdb.Spec.MaxUnavailable)
	}

	// Redis: the Service the config names, noeviction, the same password.
	host, portStr, err := net.SplitHostPort(cfg.Redis.Addrs[0])
	if err != nil {
		t.Fatal(err)
	}
	var rsvc kService
	m.decode(t, "Service", host, &rsvc)
	rdep := m.deploymentSelectedBy(t, rsvc.Spec.Selector)
	rc := rdep.Spec.Template.Spec.Containers[0]
	if len(rsvc.Spec.Ports) != 1 || strconv.Itoa(rsvc.Spec.Ports[0].Port) != portStr || strconv.Itoa(rc.resolvePort(t, rsvc.Spec.Ports[0].TargetPort)) != portStr {
		t.Errorf("Service %s ports %+v do not lead to Redis on %s", host, rsvc.Spec.Ports, portStr)
	}
	if !strings.HasPrefix(rc.Image, "redis:7") {
		t.Errorf("Redis image %s, want redis:7", rc.Image)
	}
	args := strings.Join(append(slices.Clone(rc.Command), rc.Args...), " ")
	if !strings.Contains(args, "--maxmemory-policy noeviction") {
		t.Errorf("Redis args %q lack --maxmemory-policy noeviction", args)
	}
	// --requirepass: TestKustomizeRedisRefusesWeakPassword runs the command.
	if renv := m.envOf(t, rc); renv["REDIS_PASSWORD"] != env["REDIS_PASSWORD"] {
		t.Error("Redis and deskgate do not read REDIS_PASSWORD from the same Secret key")
	}
}

// TestKustomization guards that deploy/kubernetes/kustomization.yaml
// applies every manifest beside it, and each component every manifest of
// its directory (and nothing else); that its image override names the
// image the Deployment runs; and that the Redis password Secret is
// generated from redis.env.
func TestKustomization(t *testing.T) {
	type kustomization struct {
		Resources []string `yaml:"resources"`
		Images    []struct {
			Name    string `yaml:"name"`
			NewName string `yaml:"newName"`
			NewTag  string `yaml:"newTag"`
		} `yaml:"images"`
		SecretGenerator []struct {
			Name  string   `yaml:"name"`
			Envs  []string `yaml:"envs"`
			Files []string `yaml:"files"`
		} `yaml:"secretGenerator"`
	}
	var base kustomization
	for dir := range kustomizations(t) {
		var k kustomization
		docs, err := yamlDocs(filepath.Join(dir, "kustomization.yaml"))
		if err != nil || len(docs) != 1 {
			t.Fatalf("%s/kustomization.yaml: %v (%d documents)", dir, err, len(docs))
		}
		if err := docs[0].Decode(&k); err != nil {
			t.Fatal(err)
		}
		files, _ := filepath.Glob(filepath.Join(dir, "*.yaml"))
		var want []string
		for _, f := range files {
			if b := filepath.Base(f); b != "kustomization.yaml" {
				want = append(want, b)
			}
		}
		got := slices.Sorted(slices.Values(k.Resources))
		if !slices.Equal(got, want) {
			t.Errorf("%s: resources %v, want every manifest beside it %v", dir, got, want)
		}
		if dir == "deploy/kubernetes" {
			base = k
		}
	}
	m := renderedManifests(t)
	c := m.deployment(t, "deskgate").Spec.Template.Spec.container(t, "deskgate")
	name := imageName(c.Image)
	if len(base.Images) != 1 || base.Images[0].Name != name || base.Images[0].NewTag == "" {
		t.Errorf("kustomization images %+v: want one entry for %s with a newTag", base.Images, name)
	}
	if g := base.SecretGenerator; len(g) != 1 || g[0].Name != "deskgate-redis" || !slices.Equal(g[0].Envs, []string{"redis.env"}) || len(g[0].Files) != 0 {
		t.Errorf("secretGenerator %+v: want deskgate-redis from envs [redis.env]", g)
	}
}

// TestComposeWiring guards deploy/docker-compose.yml: it builds deskgate
// and the example upstream from Dockerfile stages that exist, mounts files
// that exist, gives deskgate a valid config whose upstream, Redis and admin
// listener are the compose services and published ports, lets deskgate
// drain within stop_grace_period, runs Redis noeviction, points Prometheus
// at deskgate's admin listener with its rule files mounted, provisions
// Grafana with the Prometheus data source and the dashboard, and wires
// traces from deskgate to Jaeger and from Grafana's exemplars to them
// (checkComposeTracing).
func TestComposeWiring(t *testing.T) {
	docs, err := yamlDocs("deploy/docker-compose.yml")
	if err != nil || len(docs) != 1 {
		t.Fatalf("docker-compose.yml: %v (%d documents)", err, len(docs))
	}
	var compose struct {
		Services map[string]composeService `yaml:"services"`
	}
	if err := docs[0].Decode(&compose); err != nil {
		t.Fatal(err)
	}
	svc := compose.Services
	for _, name := range []string{"deskgate", "supportdesk", "redis", "prometheus", "grafana"} {
		if _, ok := svc[name]; !ok {
			t.Fatalf("no %s service", name)
		}
	}
	stages := parseDockerfile(t)
	for name, s := range svc {
		if s.Build != nil {
			if filepath.Clean(filepath.Join("deploy", s.Build.Context)) != "." {
				t.Errorf("%s builds from %s, not the repository root", name, s.Build.Context)
			}
			if s.Build.Target != "" && findStage(stages, s.Build.Target) == nil {
				t.Errorf("%s builds Dockerfile target %q, which does not exist", name, s.Build.Target)
			}
		}
		for _, v := range s.Volumes {
			if src, _ := s.bind(v); src != "" {
				if _, err := os.Stat(filepath.Join("deploy", src)); err != nil {
					t.Errorf("service %s mounts %s: %v", name, v, err)
				}
			}
		}
	}

	// deskgate's config: the file under the -config path.
	dg := svc["deskgate"]
	args := dg.Command
	if args == nil {
		args = findStage(stages, dg.Build.Target).execForm(t, "CMD")
	}
	i := slices.Index(args, "-config")
	if i < 0 || i+1 >= len(args) {
		t.Fatalf("deskgate command %q has no -config", args)
	}
	host := dg.hostFile(t, args[i+1])
	data, err := os.ReadFile(host)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse(data, func(k string) (string, bool) { v, ok := dg.Environment[k]; return v, ok })
	if err != nil {
		t.Fatalf("%s is not a valid deskgate config:\n%v", host, err)
	}
	repoCfg, err := config.Load("config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(cfg.Routes, repoCfg.Routes) || !reflect.DeepEqual(cfg.RateLimit, repoCfg.RateLimit) {
		t.Errorf("%s: routes or rate_limit differ from the repository's config.yaml", host)
	}
	_, httpPort := splitListen(t, cfg.Server.Listen)
	adminHost, adminPort := splitListen(t, cfg.Admin.Listen)
	if adminHost != "" {
		t.Errorf("admin.listen %s: Prometheus's container cannot reach it", cfg.Admin.Listen)
	}
	for _, p := range []int{httpPort, adminPort} {
		if !slices.Contains(dg.containerPorts(t), p) {
			t.Errorf("deskgate publishes %v, not %d", dg.Ports, p)
		}
	}
	if grace, err := time.ParseDuration(dg.StopGracePeriod); err != nil || grace <= cfg.Server.ShutdownDelay.D()+cfg.Server.ShutdownTimeout.D() {
		t.Errorf("stop_grace_period %q (%v) is not longer than shutdown_delay + shutdown_timeout", dg.StopGracePeriod, err)
	}

	// Upstream: the supportdesk service on the port it listens on.
	up, err := config.ParseUpstream(cfg.Upstream.URL)
	if err != nil {
		t.Fatal(err)
	}
	sd := svc["supportdesk"]
	sdArgs := sd.Command
	if sdArgs == nil {
		sdArgs = findStage(stages, sd.Build.Target).execForm(t, "CMD")
	}
	listen := ":8081" // cmd/supportdesk's default
	if i := slices.Index(sdArgs, "-listen"); i >= 0 && i+1 < len(sdArgs) {
		listen = sdArgs[i+1]
	}
	if _, p := splitListen(t, listen); up.Hostname() != "supportdesk" || up.Port() != strconv.Itoa(p) {
		t.Errorf("upstream.url %s, but supportdesk listens on %s", cfg.Upstream.URL, listen)
	}

	// Redis: the redis service, noeviction.
	if !strings.HasPrefix(cfg.Redis.URL, "redis://redis:6379") {
		t.Errorf("redis.url %q, want the compose service redis://redis:6379", cfg.Redis.URL)
	}
	if rc := strings.Join(svc["redis"].Command, " "); !strings.Contains(rc, "--maxmemory-policy noeviction") || !strings.HasPrefix(svc["redis"].Image, "redis:7") {
		t.Errorf("redis: image %s command %q, want redis:7 with --maxmemory-policy noeviction", svc["redis"].Image, rc)
	}

	// Prometheus: its config and rules mounted, scraping deskgate's admin port.
	prom := svc["prometheus"]
	promCfgPath := "/etc/prometheus/prometheus.yml"
	for _, a := range prom.Command {
		if v, ok := strings.CutPrefix(a, "--config.file="); ok {
			promCfgPath = v
		}
	}
	pdocs, err := yamlDocs(prom.hostFile(t, promCfgPath))
	if err != nil {
		t.Fatal(err)
	}
	var pc struct {
		RuleFiles     []string `yaml:"rule_files"`
		ScrapeConfigs []struct {
			MetricsPath   string `yaml:"metrics_path"`
			StaticConfigs []struct {
				Targets []string `yaml:"targets"`
			} `yaml:"static_configs"`
		} `yaml:"scrape_configs"`
	}
	if err := pdocs[0].Decode(&pc); err != nil {
		t.Fatal(err)
	}
	if len(pc.RuleFiles) == 0 {
		t.Error("prometheus.yml loads no rule file")
	}
	for _, rf := range pc.RuleFiles {
		if !path.IsAbs(rf) {
			rf = path.Join(path.Dir(promCfgPath), rf)
		}
		if _, err := yamlDocs(prom.hostFile(t, rf)); err != nil {
			t.Errorf("rule file %s: %v", rf, err)
		}
	}
	want := net.JoinHostPort("deskgate", strconv.Itoa(adminPort))
	scraped := false
	for _, sc := range pc.ScrapeConfigs {
		for _, st := range sc.StaticConfigs {
			if slices.Contains(st.Targets, want) && (sc.MetricsPath == "" || sc.MetricsPath == "/metrics") {
				scraped = true
			}
		}
	}
	if !scraped {
		t.Errorf("prometheus.yml does not scrape %s/metrics", want)
	}

	// Grafana: data source and dashboard provisioned.
	gf := svc["grafana"]
	var ds struct {
		Datasources []struct {
			UID      string `yaml:"uid"`
			Type     string `yaml:"type"`
			URL      string `yaml:"url"`
			JSONData struct {
				ExemplarTraceIDDestinations []struct {
					Name          string `yaml:"name"`
					DatasourceUID string `yaml:"datasourceUid"`
				} `yaml:"exemplarTraceIdDestinations"`
			} `yaml:"jsonData"`
		} `yaml:"datasources"`
	}
	var dash struct {
		Providers []struct {
			Options struct {
				Path string `yaml:"path"`
			} `yaml:"options"`
		} `yaml:"providers"`
	}
	decodeAll := func(dir string, v any) {
		files, _ := filepath.Glob(filepath.Join(gf.hostFile(t, dir), "*.yaml"))
		if len(files) == 0 {
			t.Fatalf("nothing provisioned under %s", dir)
		}
		for _, f := range files {
			docs, err := yamlDocs(f)
			if err != nil {
				t.Fatal(err)
			}
			if err := docs[0].Decode(v); err != nil {
				t.Fatal(err)
			}
		}
	}
	decodeAll("/etc/grafana/provisioning/datasources", &ds)
	decodeAll("/etc/grafana/provisioning/dashboards", &dash)
	byUID := map[string]int{}
	promDS := -1
	for i, d := range ds.Datasources {
		byUID[d.UID] = i
		if d.Type == "prometheus" {
			if promDS >= 0 || d.URL != "http://prometheus:9090" {
				t.Errorf("Grafana data sources %+v, want one prometheus, the prometheus service", ds.Datasources)
			}
			promDS = i
		}
	}
	if promDS < 0 {
		t.Fatalf("Grafana data sources %+v, want the prometheus service", ds.Datasources)
	}
	checkComposeTracing(t, svc, cfg, ds.Datasources[promDS].JSONData.ExemplarTraceIDDestinations, func(uid string) (typ, url string, ok bool) {
		i, ok := byUID[uid]
		if !ok {
			return "", "", false
		}
		return ds.Datasources[i].Type, ds.Datasources[i].URL, true
	})
	if len(dash.Providers) != 1 {
		t.Fatalf("dashboard providers %+v", dash.Providers)
	}
	dashFile := gf.hostFile(t, path.Join(dash.Providers[0].Options.Path, "deskgate.json"))
	var d struct {
		Title  string `json:"title"`
		Panels []any  `json:"panels"`
	}
	if b, err := os.ReadFile(dashFile); err != nil || json.Unmarshal(b, &d) != nil || len(d.Panels) == 0 {
		t.Errorf("the provisioned dashboard %s is not a dashboard with panels (%v)", dashFile, err)
	}
}

// checkComposeTracing guards SPEC §11's wiring in docker compose: deskgate
// exports to the jaeger service's OTLP/HTTP receiver, which listens on
// every interface of its container on that port; Prometheus keeps
// exemplars; Grafana's Prometheus data source links an exemplar's
// trace_id (the label metrics.Route.ObserveTraced sets) to a Jaeger data
// source on the jaeger service, whose UI is published; and the dashboard
// asks for the exemplars of the duration histograms.
func checkComposeTracing(t *testing.T, svc map[string]composeService, cfg *config.Config, dests []struct {
	Name          string `yaml:"name"`
	DatasourceUID string `yaml:"datasourceUid"`
}, datasource func(uid string) (typ, url string, ok bool)) {
	t.Helper()
	jaeger, ok := svc["jaeger"]
	if !ok {
		t.Fatal("no jaeger service to receive deskgate's spans")
	}
	if !cfg.Tracing.Enabled() || cfg.Tracing.SampleRatio <= 0 {
		t.Fatalf("compose config: tracing %+v, want an endpoint and a sample ratio", cfg.Tracing)
	}
	u, err := config.ParseOTLPEndpoint(cfg.Tracing.OTLPEndpoint)
	if err != nil {
		t.Fatal(err)
	}
	want := "receivers.otlp.protocols.http.endpoint=0.0.0.0:" + u.Port()
	if u.Hostname() != "jaeger" || u.Port() != "4318" || u.Path != "/v1/traces" || !slices.Contains(jaeger.Command, want) {
		t.Errorf("tracing.otlp_endpoint %s (traces at %s), jaeger command %q: want jaeger:4318, received on 0.0.0.0 (%s)", cfg.Tracing.OTLPEndpoint, u, jaeger.Command, want)
	}
	if !slices.Contains(jaeger.containerPorts(t), 16686) {
		t.Errorf("jaeger publishes %v, not its UI (16686)", jaeger.Ports)
	}
	if !slices.ContainsFunc(svc["prometheus"].Command, func(a string) bool {
		v, ok := strings.CutPrefix(a, "--enable-feature=")
		return ok && slices.Contains(strings.Split(v, ","), "exemplar-storage")
	}) {
		t.Errorf("prometheus command %q: exemplars are dropped without --enable-feature=exemplar-storage", svc["prometheus"].Command)
	}
	linked := false
	for _, d := range dests {
		typ, url, ok := datasource(d.DatasourceUID)
		if d.Name == "trace_id" && ok && typ == "jaeger" && url == "http://jaeger:16686" {
			linked = true
		}
	}
	if !linked {
		t.Errorf("the Prometheus data source's exemplarTraceIdDestinations %+v link no trace_id to a jaeger data source on http://jaeger:16686", dests)
	}
	var dash struct {
		Panels []struct {
			Targets []struct {
				Expr     string `json:"expr"`
				Exemplar bool   `json:"exemplar"`
			} `json:"targets"`
		} `json:"panels"`
	}
	b, err := os.ReadFile("deploy/grafana/deskgate.json")
	if err != nil || json.Unmarshal(b, &dash) != nil {
		t.Fatalf("dashboard: %v", err)
	}
	for _, h := range []string{"deskgate_request_duration_seconds_bucket", "deskgate_upstream_duration_seconds_bucket"} {
		asked := false
		for _, p := range dash.Panels {
			for _, tg := range p.Targets {
				asked = asked || tg.Exemplar && strings.Contains(tg.Expr, h)
			}
		}
		if !asked {
			t.Errorf("no dashboard query of %s asks for exemplars", h)
		}
	}
}

// ---- manifests ----

// yamlDocs decodes every document of the YAML file at p.
func yamlDocs(p string) ([]*yaml.Node, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	dec := yaml.NewDecoder(f)
	var docs []*yaml.Node
	for {
		var n yaml.Node
		err := dec.Decode(&n)
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return docs, fmt.Errorf("document %d: %w", len(docs), err)
		}
		docs = append(docs, &n)
	}
}

type kMeta struct {
	Name      string            `yaml:"name"`
	Namespace string            `yaml:"namespace"`
	Labels    map[string]string `yaml:"labels"`
}

type kObject struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Metadata   kMeta  `yaml:"metadata"`
	file       string
	node       *yaml.Node
}

type kSelector struct {
	MatchLabels map[string]string `yaml:"matchLabels"`
}

type kDeployment struct {
	Spec struct {
		Replicas *int      `yaml:"replicas"`
		Selector kSelector `yaml:"selector"`
		Strategy struct {
			Type          string `yaml:"type"`
			RollingUpdate struct {
				MaxUnavailable any `yaml:"maxUnavailable"`
			} `yaml:"rollingUpdate"`
		} `yaml:"strategy"`
		Template struct {
			Metadata kMeta    `yaml:"metadata"`
			Spec     kPodSpec `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

type kPodSpec struct {
	TerminationGracePeriodSeconds *int             `yaml:"terminationGracePeriodSeconds"`
	SecurityContext               kSecurityContext `yaml:"securityContext"`
	Containers                    []kContainer     `yaml:"containers"`
	Volumes                       []struct {
		Name      string `yaml:"name"`
		ConfigMap *struct {
			Name string `yaml:"name"`
		} `yaml:"configMap"`
	} `yaml:"volumes"`
}

func (p kPodSpec) container(t *testing.T, name string) kContainer {
	t.Helper()
	for _, c := range p.Containers {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no container %s", name)
	return kContainer{}
}

type kSecurityContext struct {
	RunAsNonRoot             *bool  `yaml:"runAsNonRoot"`
	RunAsUser                *int64 `yaml:"runAsUser"`
	ReadOnlyRootFilesystem   *bool  `yaml:"readOnlyRootFilesystem"`
	AllowPrivilegeEscalation *bool  `yaml:"allowPrivilegeEscalation"`
	Capabilities             struct {
		Drop []string `yaml:"drop"`
	} `yaml:"capabilities"`
	SeccompProfile struct {
		Type string `yaml:"type"`
	} `yaml:"seccompProfile"`
}

// merge returns the container's security context with the pod's as the
// default of each field, as the kubelet applies them.
func (c kSecurityContext) merge(pod kSecurityContext) kSecurityContext {
	if c.RunAsNonRoot == nil {
		c.RunAsNonRoot = pod.RunAsNonRoot
	}
	if c.RunAsUser == nil {
		c.RunAsUser = pod.RunAsUser
	}
	if c.SeccompProfile.Type == "" {
		c.SeccompProfile = pod.SeccompProfile
	}
	return c
}

type kProbe struct {
	HTTPGet *struct {
		Path string `yaml:"path"`
		Port any    `yaml:"port"`
	} `yaml:"httpGet"`
}

type kEnv struct {
	Name      string `yaml:"name"`
	Value     string `yaml:"value"`
	ValueFrom *struct {
		SecretKeyRef *struct {
			Name string `yaml:"name"`
			Key  string `yaml:"key"`
		} `yaml:"secretKeyRef"`
	} `yaml:"valueFrom"`
}

type kContainer struct {
	Name    string   `yaml:"name"`
	Image   string   `yaml:"image"`
	Command []string `yaml:"command"`
	Args    []string `yaml:"args"`
	Ports   []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
	} `yaml:"ports"`
	Env            []kEnv  `yaml:"env"`
	LivenessProbe  *kProbe `yaml:"livenessProbe"`
	ReadinessProbe *kProbe `yaml:"readinessProbe"`
	Resources      struct {
		Requests map[string]string `yaml:"requests"`
		Limits   map[string]string `yaml:"limits"`
	} `yaml:"resources"`
	SecurityContext kSecurityContext `yaml:"securityContext"`
	VolumeMounts    []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
		SubPath   string `yaml:"subPath"`
	} `yaml:"volumeMounts"`
	Lifecycle struct {
		PreStop *struct {
			Exec *struct {
				Command []string `yaml:"command"`
			} `yaml:"exec"`
			Sleep *struct {
				Seconds int `yaml:"seconds"`
			} `yaml:"sleep"`
		} `yaml:"preStop"`
	} `yaml:"lifecycle"`
}

func (c kContainer) portNumber(t *testing.T, name string) int {
	t.Helper()
	for _, p := range c.Ports {
		if p.Name == name {
			return p.ContainerPort
		}
	}
	t.Errorf("container %s has no port named %s", c.Name, name)
	return -1
}

// resolvePort returns the number of a port given by number or by name.
func (c kContainer) resolvePort(t *testing.T, p any) int {
	t.Helper()
	switch v := p.(type) {
	case int:
		return v
	case string:
		return c.portNumber(t, v)
	}
	t.Errorf("port %v is neither a number nor a name", p)
	return -1
}

// preStopSleep is the pause of a preStop hook: a sleep action, or an exec
// of `sleep N`.
func (c kContainer) preStopSleep(t *testing.T) time.Duration {
	t.Helper()
	ps := c.Lifecycle.PreStop
	switch {
	case ps == nil:
		return 0
	case ps.Sleep != nil:
		return time.Duration(ps.Sleep.Seconds) * time.Second
	case ps.Exec != nil && len(ps.Exec.Command) > 0:
		cmd := ps.Exec.Command
		if m := regexp.MustCompile(`sleep (\d+)`).FindStringSubmatch(strings.Join(cmd, " ")); m != nil {
			n, _ := strconv.Atoi(m[1])
			return time.Duration(n) * time.Second
		}
	}
	t.Errorf("preStop hook %+v: the test cannot tell how long it pauses", ps)
	return 0
}

type kServicePort struct {
	Name       string `yaml:"name"`
	Port       int    `yaml:"port"`
	TargetPort any    `yaml:"targetPort"`
}

type kService struct {
	Spec struct {
		Selector map[string]string `yaml:"selector"`
		Ports    []kServicePort    `yaml:"ports"`
	} `yaml:"spec"`
}

type kConfigMap struct {
	Data map[string]string `yaml:"data"`
}

type kSecret struct {
	Data       map[string]string `yaml:"data"`
	StringData map[string]string `yaml:"stringData"`
}

type kPDB struct {
	Spec struct {
		MinAvailable   any       `yaml:"minAvailable"`
		MaxUnavailable any       `yaml:"maxUnavailable"`
		Selector       kSelector `yaml:"selector"`
	} `yaml:"spec"`
}

type kHPA struct {
	Spec struct {
		ScaleTargetRef struct {
			Kind string `yaml:"kind"`
			Name string `yaml:"name"`
		} `yaml:"scaleTargetRef"`
		MinReplicas *int `yaml:"minReplicas"`
		MaxReplicas int  `yaml:"maxReplicas"`
		Metrics     []struct {
			Resource *struct {
				Name string `yaml:"name"`
			} `yaml:"resource"`
		} `yaml:"metrics"`
	} `yaml:"spec"`
}

type kServiceMonitor struct {
	Spec struct {
		Selector  kSelector `yaml:"selector"`
		Endpoints []struct {
			Port string `yaml:"port"`
			Path string `yaml:"path"`
		} `yaml:"endpoints"`
	} `yaml:"spec"`
}

// manifests are Kubernetes objects, as kubecheck renders them
// (parseManifests).
type manifests struct {
	objects []kObject
}

func (m *manifests) find(kind, name string) *kObject {
	for i, o := range m.objects {
		if o.Kind == kind && o.Metadata.Name == name {
			return &m.objects[i]
		}
	}
	return nil
}

func (m *manifests) decode(t *testing.T, kind, name string, v any) {
	t.Helper()
	o := m.find(kind, name)
	if o == nil {
		t.Fatalf("no %s named %s in deploy/kubernetes", kind, name)
	}
	if err := o.node.Decode(v); err != nil {
		t.Fatalf("%s %s: %v", kind, name, err)
	}
}

func (m *manifests) labels(t *testing.T, kind, name string) map[string]string {
	t.Helper()
	if o := m.find(kind, name); o != nil {
		return o.Metadata.Labels
	}
	t.Fatalf("no %s named %s", kind, name)
	return nil
}

func (m *manifests) deployment(t *testing.T, name string) *kDeployment {
	t.Helper()
	var d kDeployment
	m.decode(t, "Deployment", name, &d)
	return &d
}

func (m *manifests) deploymentSelectedBy(t *testing.T, sel map[string]string) *kDeployment {
	t.Helper()
	var found *kDeployment
	for _, o := range m.objects {
		if o.Kind != "Deployment" {
			continue
		}
		d := m.deployment(t, o.Metadata.Name)
		if labelsMatch(sel, d.Spec.Template.Metadata.Labels) {
			if found != nil {
				t.Fatalf("selector %v matches the pods of two Deployments", sel)
			}
			found = d
		}
	}
	if found == nil {
		t.Fatalf("selector %v matches no Deployment's pods", sel)
	}
	return found
}

// envOf returns the environment of container c: literal values, and the
// values of the Secrets it references (which must exist in the manifests).
func (m *manifests) envOf(t *testing.T, c kContainer) map[string]string {
	t.Helper()
	env := map[string]string{}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			env[e.Name] = e.Value
		case e.ValueFrom.SecretKeyRef != nil:
			ref := e.ValueFrom.SecretKeyRef
			var s kSecret
			m.decode(t, "Secret", ref.Name, &s)
			v, ok := s.StringData[ref.Key]
			if !ok {
				b, err := base64.StdEncoding.DecodeString(s.Data[ref.Key])
				if err != nil || s.Data[ref.Key] == "" {
					t.Fatalf("Secret %s has no key %s (env %s of %s)", ref.Name, ref.Key, e.Name, c.Name)
				}
				v = string(b)
			}
			env[e.Name] = v
		default:
			env[e.Name] = "from-" + e.Name
		}
	}
	return env
}

// labelsMatch reports whether the selector sel selects labels.
func labelsMatch(sel, labels map[string]string) bool {
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// imageName is an image reference without its tag or digest.
func imageName(ref string) string {
	ref, _, _ = strings.Cut(ref, "@")
	if i := strings.LastIndexByte(ref, ':'); i > strings.LastIndexByte(ref, '/') {
		ref = ref[:i]
	}
	return ref
}

type envRef struct {
	name       string
	hasDefault bool
}

// envRefs lists the ${NAME} and ${NAME:-default} references of a config.
func envRefs(s string) []envRef {
	var out []envRef
	for _, m := range regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}`).FindAllStringSubmatch(s, -1) {
		out = append(out, envRef{m[1], m[2] != ""})
	}
	return out
}

// noEnv is an empty environment for config.Parse.
func noEnv(string) (string, bool) { return "", false }

// splitListen splits a listen address into host and port number.
func splitListen(t *testing.T, addr string) (string, int) {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	n, err2 := strconv.Atoi(port)
	if err != nil || err2 != nil {
		t.Fatalf("listen address %q: %v", addr, err)
	}
	return host, n
}

// ---- docker compose ----

type composeService struct {
	Image string `yaml:"image"`
	Build *struct {
		Context string `yaml:"context"`
		Target  string `yaml:"target"`
	} `yaml:"build"`
	Command         []string          `yaml:"command"`
	Volumes         []string          `yaml:"volumes"`
	Ports           []string          `yaml:"ports"`
	Environment     map[string]string `yaml:"environment"`
	StopGracePeriod string            `yaml:"stop_grace_period"`
}

// bind splits a short-syntax bind mount into its host source (relative to
// deploy/) and container target; source is "" for a named volume.
func (s composeService) bind(v string) (src, dst string) {
	parts := strings.Split(v, ":")
	if len(parts) < 2 || !(strings.HasPrefix(parts[0], ".") || strings.HasPrefix(parts[0], "/")) {
		return "", ""
	}
	return parts[0], parts[1]
}

// hostFile maps a path in the service's container to the repository file
// mounted there.
func (s composeService) hostFile(t *testing.T, p string) string {
	t.Helper()
	for _, v := range s.Volumes {
		src, dst := s.bind(v)
		if src == "" {
			continue
		}
		if rel, err := filepath.Rel(dst, p); err == nil && !strings.HasPrefix(rel, "..") {
			return filepath.Join("deploy", src, rel)
		}
	}
	t.Fatalf("nothing is mounted at %s (volumes %q)", p, s.Volumes)
	return ""
}

// containerPorts lists the container side of the published ports.
func (s composeService) containerPorts(t *testing.T) []int {
	t.Helper()
	var out []int
	for _, p := range s.Ports {
		i := strings.LastIndexByte(p, ':')
		n, err := strconv.Atoi(strings.TrimSuffix(p[i+1:], "/tcp"))
		if err != nil {
			t.Fatalf("port %q", p)
		}
		out = append(out, n)
	}
	return out
}

// ---- the Dockerfile and its build ----

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
				return fmt.Errorf("Dockerfile:%d: deploy_test.go maps WORKDIR /src to the build context, not %s", in.line, in.args)
			}
		case "COPY":
			if in.args != ". ." && in.args != "go.mod go.sum ./" {
				return fmt.Errorf("Dockerfile:%d: deploy_test.go cannot mirror COPY %s in a build stage", in.line, in.args)
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
			return fmt.Errorf("Dockerfile:%d: deploy_test.go cannot mirror %s in build stage %s", in.line, in.cmd, name)
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
		return fmt.Errorf("deploy_test.go cannot mirror the command %q: teach imageBuild.command", argv[0])
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
			return nil, fmt.Errorf("shell syntax %q is not mirrored by deploy_test.go", c)
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
