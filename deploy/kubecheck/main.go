// Command kubecheck renders a kustomization as `kubectl apply -k DIR` does
// and validates every object it outputs, offline:
//
//	kubecheck DIR > rendered.yaml
//
// Rendering is kustomize's own Go API (sigs.k8s.io/kustomize/api/krusty)
// with its default options, the ones kubectl uses: the same loader, load
// restrictions, generators and transformers, no binary needed.
//
// Validation decodes each object strictly into the Kubernetes API's own Go
// types (k8s.io/api, and the Prometheus Operator's for ServiceMonitor)
// through apimachinery's strict deserializer, the one the API server uses
// for `kubectl apply --validate=strict`: an unknown or misspelt field, a
// duplicate field, a value of the wrong type, a bad quantity ("250mi") or a
// kind no scheme here knows is an error; object names, labels and
// annotations are checked with apimachinery's ObjectMeta validation. It is
// not the API server's whole validation (required fields, enum values and
// cross-field rules are not checked): schema validators such as
// kubeconform need JSON schemas downloaded from the network, which these
// machines cannot reach, whereas the typed structs come with the Go module.
//
// It lives in a module of its own so that kustomize's and the Kubernetes
// API's dependencies stay out of the gateway's go.mod and out of the image
// build. The deskgate tests build it (deploy_test.go, kustomize_test.go);
// go.mod also pins, as a tool, the kustomize CLI that the Kubernetes steps
// of docs/deploying.md use and that the tests run.
package main

import (
	"fmt"
	"io"
	"os"
	"strings"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	apivalidation "k8s.io/apimachinery/pkg/api/validation"
	metav1validation "k8s.io/apimachinery/pkg/apis/meta/v1/validation"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) != 1 || strings.HasPrefix(args[0], "-") {
		fmt.Fprintln(stderr, "usage: kubecheck DIR  (render the kustomization in DIR as kubectl apply -k does, validate every object, print the YAML)")
		return 2
	}
	out, problems, err := check(args[0])
	if err != nil {
		fmt.Fprintf(stderr, "kubecheck: %s: %v\n", args[0], err)
		return 1
	}
	for _, p := range problems {
		fmt.Fprintf(stderr, "kubecheck: %s: %s\n", args[0], p)
	}
	if len(problems) > 0 {
		return 1
	}
	_, _ = stdout.Write(out)
	return 0
}

// scheme knows every kind deskgate's manifests may use. A kind it does
// not know is an error, so that nothing reaches a cluster unchecked: add
// its group here when a manifest needs one.
func scheme() *runtime.Scheme {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		corev1.AddToScheme,
		appsv1.AddToScheme,
		policyv1.AddToScheme,
		autoscalingv2.AddToScheme,
		monitoringv1.AddToScheme,
	} {
		if err := add(s); err != nil {
			panic(err)
		}
	}
	return s
}

// check renders the kustomization in dir and validates every object; it
// returns the rendered YAML and one line per problem found.
func check(dir string) ([]byte, []string, error) {
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	m, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		return nil, nil, err
	}
	decoder := serializer.NewCodecFactory(scheme(), serializer.EnableStrict).UniversalDeserializer()
	var problems []string
	for _, r := range m.Resources() {
		id := r.GetKind() + " " + r.GetName()
		data, err := r.MarshalJSON()
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", id, err)
		}
		obj, _, err := decoder.Decode(data, nil, nil)
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", id, err))
			continue
		}
		problems = append(problems, validateMeta(id, obj)...)
	}
	out, err := m.AsYaml()
	return out, problems, err
}

// validateMeta checks the object's name, labels and annotations, and the
// labels and annotations of a Deployment's pod template, as the API server
// does.
func validateMeta(id string, obj runtime.Object) []string {
	acc, err := meta.Accessor(obj)
	if err != nil {
		return []string{fmt.Sprintf("%s: %v", id, err)}
	}
	nameFn := apivalidation.NameIsDNSSubdomain
	if _, ok := obj.(*corev1.Service); ok {
		nameFn = apivalidation.NameIsDNS1035Label
	}
	errs := apivalidation.ValidateObjectMetaAccessor(acc, false, nameFn, field.NewPath("metadata"))
	if d, ok := obj.(*appsv1.Deployment); ok {
		p := field.NewPath("spec", "template", "metadata")
		errs = append(errs, apivalidation.ValidateAnnotations(d.Spec.Template.Annotations, p.Child("annotations"))...)
		errs = append(errs, metav1validation.ValidateLabels(d.Spec.Template.Labels, p.Child("labels"))...)
	}
	var problems []string
	for _, e := range errs {
		problems = append(problems, fmt.Sprintf("%s: %v", id, e))
	}
	return problems
}
