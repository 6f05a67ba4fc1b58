package e2e

// Tests of the deployment artefacts under deploy/ (issue 9): every
// manifest (Kubernetes, Compose, Prometheus, Grafana) and its wiring
// against the code, the repository's config.yaml and the Dockerfile's
// stages (parsed by dockerfile_test.go).

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/innovartx/deskgate/config"
)

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
