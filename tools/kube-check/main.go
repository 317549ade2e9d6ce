// Command kube-check validates the Kubernetes manifests of deploy/kubernetes
// without a cluster. Every document is decoded strictly into the official
// API types (k8s.io/api), as the API server's strict field validation would:
// an unknown or misspelt field, a duplicate key or a value of the wrong type
// is an error. It then checks the rules this project relies on (see
// checkObjects): the probes, the stop sequence, the resources, the security
// context, the selectors, the settings both services must share, and that
// every ConfigMap and Secret a container reads is defined.
//
//	kube-check [-dockerfile FILE] DIR
//
// DIR holds the manifests (*.yaml, *.yml) and optionally a
// kustomization.yaml. Files named *.example.yaml (such as the Secret with
// placeholder values) are checked and their objects count as defined, but a
// kustomization must not list them. With -dockerfile, the image's build
// stages and USER are read from that Dockerfile.
//
// Exit status: 0 valid, 1 invalid, 2 usage error.
package main

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	serializerjson "k8s.io/apimachinery/pkg/runtime/serializer/json"
	"k8s.io/apimachinery/pkg/util/intstr"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// app is one of the services this repository ships: its Deployment,
// Service and container share the name, which is also the Dockerfile's
// build target.
type app struct {
	name string
	port int32
}

var (
	commandService = app{"command-service", 5000}
	queryService   = app{"query-service", 5001}
	apps           = []app{commandService, queryService}
)

// The image's user (the Dockerfile's USER), unless -dockerfile says otherwise.
const defaultImageUser = 10001

// Settings both services must read with the same value.
var sharedSettings = []string{"EVENTS_STREAM", "EVENTS_PARTITIONS", "WRITE_DB_NAME", "REDIS_URL"}

// Settings that carry credentials: they come from a Secret, never from a
// value written in a manifest or a ConfigMap.
var secretSettings = map[string][]string{
	commandService.name: {"MONGO_URL", "REDIS_URL", "API_TOKENS"},
	queryService.name:   {"MONGO_URL", "REDIS_URL"},
}

// Settings each service must be given.
var requiredSettings = []string{
	"MONGO_URL", "REDIS_URL", "EVENTS_STREAM", "EVENTS_PARTITIONS", "WRITE_DB_NAME",
	"SHUTDOWN_DRAIN_MS", "SHUTDOWN_TIMEOUT_MS",
}

func main() {
	dockerfile := flag.String("dockerfile", "", "Dockerfile whose build stages and USER the images must match")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: kube-check [-dockerfile FILE] DIR\n\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	dir := flag.Arg(0)

	summary, problems := check(dir, *dockerfile)
	if len(problems) > 0 {
		fmt.Fprintf(os.Stderr, "%s: INVALID\n", dir)
		for _, p := range problems {
			fmt.Fprintf(os.Stderr, "  - %s\n", p)
		}
		os.Exit(1)
	}
	fmt.Printf("%s: valid (%s)\n", dir, summary)
}

// object is one decoded document and where it came from.
type object struct {
	file string // base name, for messages
	obj  runtime.Object
	meta metav1.Object
	kind string
}

func (o object) String() string { return fmt.Sprintf("%s: %s/%s", o.file, o.kind, o.meta.GetName()) }

// manifests is everything read from a directory.
type manifests struct {
	objects       []object
	kustomization *kustomization
	kustFile      string
	files         []string // manifest files (not the kustomization), base names
}

// check reads and checks one directory; it returns a one-line summary of a
// valid directory, or the problems found.
func check(dir, dockerfile string) (string, []string) {
	m, problems := load(dir)
	if m == nil {
		return "", problems
	}
	img := imageFacts{user: defaultImageUser}
	if dockerfile != "" {
		var err error
		if img, err = readDockerfile(dockerfile); err != nil {
			problems = append(problems, err.Error())
		}
	}
	problems = append(problems, checkKustomization(m)...)
	problems = append(problems, checkObjects(m, img)...)
	if len(problems) > 0 {
		return "", problems
	}
	var names []string
	for _, o := range m.objects {
		names = append(names, o.kind+"/"+o.meta.GetName())
	}
	return strings.Join(names, ", "), nil
}

// ---- reading ---------------------------------------------------------------

// scheme knows the API groups a deployment of this project may use; a kind
// outside them is an error (and a reason to add its group here).
var scheme = func() *runtime.Scheme {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		corev1.AddToScheme, appsv1.AddToScheme, policyv1.AddToScheme,
		networkingv1.AddToScheme, autoscalingv2.AddToScheme, batchv1.AddToScheme,
		rbacv1.AddToScheme,
	} {
		if err := add(s); err != nil {
			panic(err)
		}
	}
	return s
}()

// decoder decodes YAML into the typed objects, strictly: unknown fields,
// duplicate fields and case-insensitive matches are errors.
var decoder = serializerjson.NewSerializerWithOptions(serializerjson.DefaultMetaFactory, scheme, scheme,
	serializerjson.SerializerOptions{Yaml: true, Strict: true})

func isKustomization(name string) bool {
	return name == "kustomization.yaml" || name == "kustomization.yml" || name == "Kustomization"
}

func isExample(name string) bool {
	return strings.HasSuffix(name, ".example.yaml") || strings.HasSuffix(name, ".example.yml")
}

func load(dir string) (*manifests, []string) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, []string{fmt.Sprintf("cannot read %s: %v", dir, err)}
	}
	m := &manifests{}
	var problems []string
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || !(strings.HasSuffix(name, ".yaml") || strings.HasSuffix(name, ".yml") || name == "Kustomization") {
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			problems = append(problems, fmt.Sprintf("cannot read %s: %v", name, err))
			continue
		}
		if isKustomization(name) {
			if m.kustomization != nil {
				problems = append(problems, fmt.Sprintf("%s: a second kustomization file beside %s", name, m.kustFile))
				continue
			}
			k, err := decodeKustomization(data)
			if err != nil {
				problems = append(problems, fmt.Sprintf("%s: %v", name, err))
				continue
			}
			m.kustomization, m.kustFile = k, name
			continue
		}
		m.files = append(m.files, name)
		objs, errs := decodeFile(name, data)
		m.objects = append(m.objects, objs...)
		problems = append(problems, errs...)
	}
	if len(m.files) == 0 && len(problems) == 0 {
		problems = append(problems, fmt.Sprintf("%s holds no manifest (*.yaml)", dir))
	}
	return m, problems
}

// decodeFile decodes every document of a multi-document YAML file.
func decodeFile(name string, data []byte) ([]object, []string) {
	var objs []object
	var problems []string
	reader := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for n := 1; ; n++ {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: document %d: %v", name, n, err))
			break
		}
		if isBlank(doc) {
			n--
			continue
		}
		obj, gvk, err := decoder.Decode(doc, nil, nil)
		if err != nil {
			for _, msg := range explain(err) {
				problems = append(problems, fmt.Sprintf("%s: document %d: %s", name, n, msg))
			}
			// A strict decoding error still decodes the rest of the
			// object: check it too, rather than report it missing.
			if obj == nil || !runtime.IsStrictDecodingError(err) {
				continue
			}
		}
		meta, ok := obj.(metav1.Object)
		if !ok {
			problems = append(problems, fmt.Sprintf("%s: document %d: %s is not an object with metadata", name, n, gvk.Kind))
			continue
		}
		if meta.GetName() == "" {
			problems = append(problems, fmt.Sprintf("%s: document %d: %s has no metadata.name", name, n, gvk.Kind))
			continue
		}
		objs = append(objs, object{file: name, obj: obj, meta: meta, kind: gvk.Kind})
	}
	return objs, problems
}

// isBlank says whether a YAML document holds only comments and blank lines.
func isBlank(doc []byte) bool {
	for _, line := range strings.Split(string(doc), "\n") {
		line = strings.TrimSpace(line)
		if line != "" && !strings.HasPrefix(line, "#") && line != "---" {
			return false
		}
	}
	return true
}

// explain turns the decoder's answer into sentences, one per problem.
func explain(err error) []string {
	if strict, ok := runtime.AsStrictDecodingError(err); ok {
		var out []string
		for _, e := range strict.Errors() {
			msg := strings.Join(strings.Fields(e.Error()), " ")
			switch {
			case strings.HasPrefix(msg, "unknown field"):
				msg += ": the Kubernetes API has no such field there (misspelt or misplaced?)"
			case strings.HasPrefix(msg, "duplicate field"), strings.Contains(msg, "already set in map"):
				msg += ": a key given twice, of which the API server would keep one"
			}
			out = append(out, msg)
		}
		return out
	}
	msg := err.Error()
	if runtime.IsNotRegisteredError(err) {
		msg += " (kube-check knows the core, apps, policy, networking, autoscaling, batch and rbac groups)"
	}
	return []string{msg}
}

// kustomization is the part of kustomize's Kustomization this project uses;
// any other field is reported, so that a misspelt one is not ignored.
type kustomization struct {
	APIVersion string           `json:"apiVersion"`
	Kind       string           `json:"kind"`
	Namespace  string           `json:"namespace,omitempty"`
	Resources  []string         `json:"resources,omitempty"`
	Images     []kustomizeImage `json:"images,omitempty"`
}

type kustomizeImage struct {
	Name    string `json:"name"`
	NewName string `json:"newName,omitempty"`
	NewTag  string `json:"newTag,omitempty"`
	Digest  string `json:"digest,omitempty"`
}

func decodeKustomization(data []byte) (*kustomization, error) {
	var k kustomization
	if err := yaml.UnmarshalStrict(data, &k); err != nil {
		return nil, fmt.Errorf("%v (kube-check reads apiVersion, kind, namespace, resources and images of a Kustomization)", err)
	}
	if k.Kind != "Kustomization" || !strings.HasPrefix(k.APIVersion, "kustomize.config.k8s.io/") {
		return nil, fmt.Errorf("want apiVersion kustomize.config.k8s.io/v1beta1 and kind Kustomization, got %q %q", k.APIVersion, k.Kind)
	}
	return &k, nil
}

// imageFacts is what the Dockerfile says about the images.
type imageFacts struct {
	stages []string // build targets; nil when not read
	user   int64
}

var (
	fromAs   = regexp.MustCompile(`(?im)^[ \t]*FROM[ \t]+(?:--\S+[ \t]+)*\S+[ \t]+AS[ \t]+(\S+)[ \t]*$`)
	userLine = regexp.MustCompile(`(?im)^[ \t]*USER[ \t]+(\S+)[ \t]*$`)
)

func readDockerfile(path string) (imageFacts, error) {
	content, err := os.ReadFile(path)
	if err != nil {
		return imageFacts{user: defaultImageUser}, fmt.Errorf("cannot read the Dockerfile: %v", err)
	}
	facts := imageFacts{user: -1}
	for _, m := range fromAs.FindAllSubmatch(content, -1) {
		facts.stages = append(facts.stages, strings.ToLower(string(m[1])))
	}
	// The last USER of the file; the runtime stages inherit it.
	if users := userLine.FindAllSubmatch(content, -1); len(users) > 0 {
		uid, _, _ := strings.Cut(string(users[len(users)-1][1]), ":")
		if n, err := strconv.ParseInt(uid, 10, 64); err == nil {
			facts.user = n
		}
	}
	if facts.user < 0 {
		return facts, fmt.Errorf("%s: no numeric USER, so runAsNonRoot cannot be verified against the image", path)
	}
	return facts, nil
}

// ---- the kustomization -----------------------------------------------------

func checkKustomization(m *manifests) []string {
	k := m.kustomization
	if k == nil {
		return nil
	}
	var problems []string
	add := func(format string, args ...any) {
		problems = append(problems, m.kustFile+": "+fmt.Sprintf(format, args...))
	}
	listed := map[string]bool{}
	for _, r := range k.Resources {
		if listed[r] {
			add("resource %s is listed twice", r)
		}
		listed[r] = true
		switch {
		case strings.Contains(r, "/") || strings.Contains(r, "://"):
			add("resource %s is outside this directory, so it is not checked here", r)
		case isExample(r):
			add("resource %s is an example with placeholder values; create the real object instead (see the file)", r)
		case !slices.Contains(m.files, r):
			add("resource %s does not exist", r)
		}
	}
	for _, f := range m.files {
		if !isExample(f) && !listed[f] {
			add("%s is not listed in resources, so `kubectl apply -k` leaves it out", f)
		}
	}
	for _, img := range k.Images {
		if img.Name == "" {
			add("an images entry has no name")
		}
	}
	return problems
}

// ---- the objects -----------------------------------------------------------

// index finds objects by kind and name.
type index struct {
	deployments map[string]*appsv1.Deployment
	services    []*corev1.Service
	pdbs        []*policyv1.PodDisruptionBudget
	configMaps  map[string]*corev1.ConfigMap
	secrets     map[string]*corev1.Secret
	where       map[runtime.Object]object
}

func checkObjects(m *manifests, img imageFacts) []string {
	var problems []string
	add := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

	idx := index{
		deployments: map[string]*appsv1.Deployment{},
		configMaps:  map[string]*corev1.ConfigMap{},
		secrets:     map[string]*corev1.Secret{},
		where:       map[runtime.Object]object{},
	}
	seen := map[string]object{}
	for _, o := range m.objects {
		key := o.kind + "/" + o.meta.GetName()
		if first, dup := seen[key]; dup {
			add("%s is defined twice (also in %s)", o, first.file)
			continue
		}
		seen[key] = o
		idx.where[o.obj] = o
		switch v := o.obj.(type) {
		case *appsv1.Deployment:
			idx.deployments[v.Name] = v
		case *corev1.Service:
			idx.services = append(idx.services, v)
		case *policyv1.PodDisruptionBudget:
			idx.pdbs = append(idx.pdbs, v)
		case *corev1.ConfigMap:
			idx.configMaps[v.Name] = v
			problems = append(problems, checkConfigMap(o, v)...)
		case *corev1.Secret:
			idx.secrets[v.Name] = v
			if !isExample(o.file) && (len(v.Data) > 0 || len(v.StringData) > 0) {
				add("%s holds values: secrets do not belong in the repository; keep placeholders in a *.example.yaml file and create the Secret in the cluster", o)
			}
			if isExample(o.file) {
				problems = append(problems, checkExampleSecret(o, v)...)
			}
		}
	}

	envs := map[string]map[string]envSource{}
	for _, a := range apps {
		d, ok := idx.deployments[a.name]
		if !ok {
			add("Deployment %s is missing", a.name)
			continue
		}
		env, ps := checkDeployment(idx.where[d], d, a, idx, img, m.kustomization)
		problems = append(problems, ps...)
		envs[a.name] = env
	}
	problems = append(problems, checkShared(envs, idx)...)
	problems = append(problems, checkServices(idx)...)
	problems = append(problems, checkPDBs(idx)...)
	return problems
}

var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

func checkConfigMap(o object, cm *corev1.ConfigMap) []string {
	var problems []string
	for key := range cm.Data {
		if !envName.MatchString(key) {
			problems = append(problems, fmt.Sprintf("%s: key %q is not a valid environment variable name, so envFrom would skip it", o, key))
		}
	}
	return problems
}

// placeholder marks what an example Secret's reader must replace.
const placeholder = "CHANGE-ME"

// checkExampleSecret wants every value of an example Secret to carry the
// placeholder, so that no working credential is committed as an example.
func checkExampleSecret(o object, s *corev1.Secret) []string {
	var problems []string
	values := map[string]string{}
	for k, v := range s.Data {
		values[k] = string(v)
	}
	for k, v := range s.StringData {
		values[k] = v
	}
	for _, k := range slices.Sorted(maps.Keys(values)) {
		if !strings.Contains(values[k], placeholder) {
			problems = append(problems, fmt.Sprintf("%s: example value of %s has no %s placeholder: is it a real credential?", o, k, placeholder))
		}
	}
	return problems
}

// envSource is where a container's environment variable comes from, after
// envFrom and env were merged as the kubelet merges them (env wins, later
// entries win).
type envSource struct {
	literal   *string
	configMap *corev1.ConfigMapKeySelector
	secret    *corev1.SecretKeySelector
	fieldPath string
	other     bool // resourceFieldRef, or a key of an envFrom Secret/ConfigMap not defined here
}

// describe says where a variable comes from, for messages.
func (s envSource) describe() string {
	switch {
	case s.literal != nil:
		return fmt.Sprintf("value %q", *s.literal)
	case s.configMap != nil:
		return fmt.Sprintf("ConfigMap %s key %s", s.configMap.Name, s.configMap.Key)
	case s.secret != nil:
		return fmt.Sprintf("Secret %s key %s", s.secret.Name, s.secret.Key)
	case s.fieldPath != "":
		return "field " + s.fieldPath
	}
	return "a source kube-check does not resolve"
}

// value resolves a variable to its text when the manifests say it.
func (s envSource) value(idx index) (string, bool) {
	switch {
	case s.literal != nil:
		return *s.literal, true
	case s.configMap != nil:
		if cm, ok := idx.configMaps[s.configMap.Name]; ok {
			v, ok := cm.Data[s.configMap.Key]
			return v, ok
		}
	case s.secret != nil:
		if sec, ok := idx.secrets[s.secret.Name]; ok {
			if v, ok := sec.StringData[s.secret.Key]; ok {
				return v, true
			}
			v, ok := sec.Data[s.secret.Key]
			return string(v), ok
		}
	}
	return "", false
}

// resolveEnv merges a container's envFrom and env, and reports references
// to ConfigMaps, Secrets and keys the manifests do not define.
func resolveEnv(where string, c *corev1.Container, idx index) (map[string]envSource, []string) {
	var problems []string
	add := func(format string, args ...any) { problems = append(problems, where+": "+fmt.Sprintf(format, args...)) }
	env := map[string]envSource{}

	for _, from := range c.EnvFrom {
		switch {
		case from.ConfigMapRef != nil:
			cm, ok := idx.configMaps[from.ConfigMapRef.Name]
			if !ok {
				add("envFrom names ConfigMap %q, which no manifest defines", from.ConfigMapRef.Name)
				continue
			}
			for key := range cm.Data {
				sel := &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: cm.Name}, Key: key}
				env[from.Prefix+key] = envSource{configMap: sel}
			}
		case from.SecretRef != nil:
			sec, ok := idx.secrets[from.SecretRef.Name]
			if !ok {
				add("envFrom names Secret %q, which no manifest (not even an example) defines", from.SecretRef.Name)
				continue
			}
			keys := map[string]bool{}
			for k := range sec.Data {
				keys[k] = true
			}
			for k := range sec.StringData {
				keys[k] = true
			}
			for key := range keys {
				sel := &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: sec.Name}, Key: key}
				env[from.Prefix+key] = envSource{secret: sel}
			}
		}
	}
	for i := range c.Env {
		e := c.Env[i]
		switch {
		case e.ValueFrom == nil:
			v := e.Value
			env[e.Name] = envSource{literal: &v}
		case e.ValueFrom.ConfigMapKeyRef != nil:
			ref := e.ValueFrom.ConfigMapKeyRef
			env[e.Name] = envSource{configMap: ref}
			if cm, ok := idx.configMaps[ref.Name]; !ok {
				add("%s reads ConfigMap %q, which no manifest defines", e.Name, ref.Name)
			} else if _, ok := cm.Data[ref.Key]; !ok {
				add("%s reads key %q of ConfigMap %s, which has no such key (keys: %s)", e.Name, ref.Key, ref.Name, keysOf(cm.Data))
			}
		case e.ValueFrom.SecretKeyRef != nil:
			ref := e.ValueFrom.SecretKeyRef
			env[e.Name] = envSource{secret: ref}
			if sec, ok := idx.secrets[ref.Name]; !ok {
				add("%s reads Secret %q, which no manifest (not even an example) defines", e.Name, ref.Name)
			} else if _, ok := sec.StringData[ref.Key]; !ok {
				if _, ok := sec.Data[ref.Key]; !ok {
					add("%s reads key %q of Secret %s, which has no such key (keys: %s)", e.Name, ref.Key, ref.Name, secretKeys(sec))
				}
			}
		case e.ValueFrom.FieldRef != nil:
			env[e.Name] = envSource{fieldPath: e.ValueFrom.FieldRef.FieldPath}
		default:
			env[e.Name] = envSource{other: true}
		}
	}
	return env, problems
}

func keysOf(m map[string]string) string {
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return strings.Join(keys, ", ")
}

func secretKeys(s *corev1.Secret) string {
	all := map[string]string{}
	for k := range s.Data {
		all[k] = ""
	}
	for k := range s.StringData {
		all[k] = ""
	}
	return keysOf(all)
}

// checkDeployment checks one application Deployment and returns its
// container's resolved environment.
func checkDeployment(o object, d *appsv1.Deployment, a app, idx index, img imageFacts, k *kustomization) (map[string]envSource, []string) {
	var problems []string
	add := func(format string, args ...any) {
		problems = append(problems, o.String()+": "+fmt.Sprintf(format, args...))
	}

	if d.Spec.Replicas == nil || *d.Spec.Replicas < 2 {
		add("replicas must be 2 or more, so that one replica serves while another restarts (replicas: %s)", int32Ptr(d.Spec.Replicas, "unset, i.e. 1"))
	}
	podLabels := labels.Set(d.Spec.Template.Labels)
	if d.Spec.Selector == nil {
		add("spec.selector is missing")
	} else if sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector); err != nil {
		add("spec.selector: %v", err)
	} else if sel.Empty() || !sel.Matches(podLabels) {
		add("spec.selector %s does not select the pod template's labels %s", sel, podLabels)
	}

	pod := &d.Spec.Template.Spec
	var c *corev1.Container
	for i := range pod.Containers {
		if pod.Containers[i].Name == a.name {
			c = &pod.Containers[i]
		}
	}
	if c == nil {
		add("no container named %s", a.name)
		return nil, problems
	}
	where := fmt.Sprintf("%s: container %s", o, c.Name)
	cadd := func(format string, args ...any) { problems = append(problems, where+": "+fmt.Sprintf(format, args...)) }

	// The image.
	problems = append(problems, checkImage(where, c.Image, a, img, k)...)

	// The port.
	if !slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool {
		return p.ContainerPort == a.port && (p.Protocol == "" || p.Protocol == corev1.ProtocolTCP)
	}) {
		cadd("must declare containerPort %d (TCP)", a.port)
	}

	// The environment.
	env, ps := resolveEnv(where, c, idx)
	problems = append(problems, ps...)
	value := func(name string) (string, bool) {
		s, ok := env[name]
		if !ok {
			return "", false
		}
		return s.value(idx)
	}
	for _, name := range requiredSettings {
		if _, ok := env[name]; !ok {
			cadd("%s is not set", name)
		}
	}
	if a == commandService {
		if _, ok := env["API_TOKENS"]; !ok {
			cadd("API_TOKENS is not set, so every command would be refused with 401")
		}
	}
	for _, name := range secretSettings[a.name] {
		if s, ok := env[name]; ok && s.secret == nil {
			cadd("%s must come from a Secret (secretKeyRef or envFrom secretRef): it may carry credentials, but here it is %s", name, s.describe())
		}
	}
	if v, ok := value("PORT"); ok && v != strconv.Itoa(int(a.port)) {
		cadd("PORT=%q, but the container port, the probes and the Service use %d", v, a.port)
	}
	if v, ok := value("HOST"); ok {
		if ip := net.ParseIP(v); v == "localhost" || (ip != nil && ip.IsLoopback()) {
			cadd("HOST=%q: the probes and the Service reach the pod's own address, not its loopback", v)
		}
	}
	if v, ok := value("MONGO_URL"); ok {
		problems = append(problems, checkURL(where, "MONGO_URL", v, "mongodb", "mongodb+srv")...)
	}
	if v, ok := value("REDIS_URL"); ok {
		problems = append(problems, checkURL(where, "REDIS_URL", v, "redis", "rediss", "redis+cluster")...)
	}
	if v, ok := value("EVENTS_PARTITIONS"); ok {
		if n, err := strconv.Atoi(v); err != nil || n < 1 {
			cadd("EVENTS_PARTITIONS=%q must be a whole number, 1 or more", v)
		}
	}
	if a == queryService {
		s, ok := env["CONSUMER_NAME"]
		if !ok || s.fieldPath != "metadata.name" {
			got := "unset"
			if ok {
				got = s.describe()
			}
			cadd("CONSUMER_NAME must be the pod's name (valueFrom.fieldRef.fieldPath: metadata.name), unique per replica and stable across its restarts; here it is %s", got)
		}
	}

	// Probes.
	problems = append(problems, checkProbe(where, "livenessProbe", c.LivenessProbe, c, a, "/healthz")...)
	problems = append(problems, checkProbe(where, "readinessProbe", c.ReadinessProbe, c, a, "/readyz")...)
	if c.StartupProbe != nil {
		problems = append(problems, checkProbe(where, "startupProbe", c.StartupProbe, c, a, "/healthz", "/readyz")...)
	}

	// Stopping: preStop sleep, then SHUTDOWN_DRAIN_MS serving with /readyz
	// 503, then at most SHUTDOWN_TIMEOUT_MS, all within the grace period.
	problems = append(problems, checkStop(where, pod, c, value)...)

	// Resources.
	problems = append(problems, checkResources(where, c.Resources)...)

	// Security context.
	problems = append(problems, checkSecurity(where, pod.SecurityContext, c.SecurityContext, img.user)...)

	return env, problems
}

func int32Ptr(p *int32, unset string) string {
	if p == nil {
		return unset
	}
	return strconv.Itoa(int(*p))
}

// checkImage wants the image of the service's own build target (its name
// ends with the service's name, e.g. books-command-service), pinned to a
// tag or digest other than latest. kustomization.yaml's images apply first.
func checkImage(where, image string, a app, img imageFacts, k *kustomization) []string {
	var problems []string
	add := func(format string, args ...any) { problems = append(problems, where+": "+fmt.Sprintf(format, args...)) }
	if image == "" {
		return []string{where + ": image is empty"}
	}
	repo, tag, digest := splitImage(image)
	if k != nil {
		for _, o := range k.Images {
			if o.Name == repo {
				if o.NewName != "" {
					repo = o.NewName
				}
				if o.NewTag != "" {
					tag = o.NewTag
				}
				if o.Digest != "" {
					digest = o.Digest
				}
			}
		}
	}
	last := repo[strings.LastIndex(repo, "/")+1:]
	if !strings.HasSuffix(last, a.name) {
		add("image %q is not the %s image (its name should end with %q, e.g. books-%s: the Dockerfile's target %s)", image, a.name, a.name, a.name, a.name)
	}
	if digest == "" && (tag == "" || tag == "latest") {
		add("image %q: pin a version tag or a digest, not latest (with imagePullPolicy IfNotPresent a node keeps whatever latest was)", image)
	}
	if img.stages != nil && !slices.Contains(img.stages, a.name) {
		add("the Dockerfile has no build target %s (stages: %s)", a.name, strings.Join(img.stages, ", "))
	}
	return problems
}

// splitImage splits [registry/]repo[:tag][@digest].
func splitImage(image string) (repo, tag, digest string) {
	repo, digest, _ = strings.Cut(image, "@")
	if i := strings.LastIndex(repo, ":"); i > strings.LastIndex(repo, "/") {
		repo, tag = repo[:i], repo[i+1:]
	}
	return repo, tag, digest
}

// checkURL wants one of the schemes and no loopback host: in a pod,
// 127.0.0.1 is the pod itself.
func checkURL(where, key, value string, schemes ...string) []string {
	scheme, rest, ok := strings.Cut(value, "://")
	if !ok || !slices.Contains(schemes, strings.ToLower(scheme)) {
		return []string{fmt.Sprintf("%s: %s should start with %s://", where, key, strings.Join(schemes, ":// or "))}
	}
	if i := strings.LastIndex(rest, "@"); i >= 0 {
		rest = rest[i+1:]
	}
	if i := strings.IndexAny(rest, "/?"); i >= 0 {
		rest = rest[:i]
	}
	for _, hostport := range strings.Split(rest, ",") {
		host := hostport
		if h, _, err := net.SplitHostPort(hostport); err == nil {
			host = h
		}
		host = strings.Trim(host, "[]")
		ip := net.ParseIP(host)
		if host == "" {
			return []string{fmt.Sprintf("%s: %s names no host", where, key)}
		}
		if strings.EqualFold(host, "localhost") || (ip != nil && (ip.IsLoopback() || ip.IsUnspecified())) {
			return []string{fmt.Sprintf("%s: %s points at %s, which in a pod is the pod itself", where, key, host)}
		}
	}
	return nil
}

// portOf resolves a probe's or Service's port (a number or a container
// port's name) against the container.
func portOf(p intstr.IntOrString, c *corev1.Container) (int32, bool) {
	if p.Type == intstr.Int {
		return p.IntVal, true
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return cp.ContainerPort, true
		}
	}
	return 0, false
}

func checkProbe(where, field string, p *corev1.Probe, c *corev1.Container, a app, paths ...string) []string {
	want := fmt.Sprintf("httpGet %s on port %d", paths[0], a.port)
	if p == nil {
		return []string{fmt.Sprintf("%s: %s is missing (want %s)", where, field, want)}
	}
	if p.HTTPGet == nil {
		return []string{fmt.Sprintf("%s: %s must be an httpGet probe (want %s)", where, field, want)}
	}
	var problems []string
	add := func(format string, args ...any) {
		problems = append(problems, where+": "+field+": "+fmt.Sprintf(format, args...))
	}
	if !slices.Contains(paths, p.HTTPGet.Path) {
		add("path %q, want %s", p.HTTPGet.Path, strings.Join(paths, " or "))
	}
	if port, ok := portOf(p.HTTPGet.Port, c); !ok {
		add("port %q names no port of the container", p.HTTPGet.Port.String())
	} else if port != a.port {
		add("port %d, but the service listens on %d", port, a.port)
	}
	if p.HTTPGet.Scheme != "" && p.HTTPGet.Scheme != corev1.URISchemeHTTP {
		add("scheme %s, but the service speaks plain HTTP", p.HTTPGet.Scheme)
	}
	return problems
}

// Kubernetes' defaults for what a manifest leaves unset.
const (
	defaultGraceSeconds     = 30
	defaultPeriodSeconds    = 10
	defaultFailureThreshold = 3
)

func orDefault(v, def int32) int64 {
	if v == 0 {
		return int64(def)
	}
	return int64(v)
}

// checkStop checks the stop sequence: the kubelet runs the preStop sleep
// (the pod already leaves the Services' endpoints), then sends SIGTERM; the
// process serves SHUTDOWN_DRAIN_MS more with /readyz answering 503, long
// enough for the readiness probe to see it (periodSeconds x
// failureThreshold), then stops within SHUTDOWN_TIMEOUT_MS. All of it must
// end before terminationGracePeriodSeconds, the SIGKILL.
func checkStop(where string, pod *corev1.PodSpec, c *corev1.Container, value func(string) (string, bool)) []string {
	var problems []string
	add := func(format string, args ...any) { problems = append(problems, where+": "+fmt.Sprintf(format, args...)) }

	var sleepMs int64 = -1
	switch {
	case c.Lifecycle == nil || c.Lifecycle.PreStop == nil:
		add("lifecycle.preStop is missing: want `sleep: {seconds: N}`, so that load balancers stop sending before the process hears SIGTERM")
	case c.Lifecycle.PreStop.Sleep == nil:
		add("lifecycle.preStop must be the native sleep action (`sleep: {seconds: N}`, Kubernetes 1.30+), which needs nothing in the image")
	case c.Lifecycle.PreStop.Sleep.Seconds < 1:
		add("lifecycle.preStop.sleep.seconds is %d; want 1 or more", c.Lifecycle.PreStop.Sleep.Seconds)
	default:
		sleepMs = c.Lifecycle.PreStop.Sleep.Seconds * 1000
	}

	millis := func(name string) int64 {
		v, ok := value(name)
		if !ok {
			return -1
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			add("%s=%q is not a number of milliseconds", name, v)
			return -1
		}
		return n
	}
	drainMs, timeoutMs := millis("SHUTDOWN_DRAIN_MS"), millis("SHUTDOWN_TIMEOUT_MS")

	if r := c.ReadinessProbe; r != nil && drainMs >= 0 {
		period, failures := orDefault(r.PeriodSeconds, defaultPeriodSeconds), orDefault(r.FailureThreshold, defaultFailureThreshold)
		if need := period * failures * 1000; drainMs < need {
			add("SHUTDOWN_DRAIN_MS=%d is shorter than the readiness probe takes to see /readyz fail (periodSeconds %d x failureThreshold %d = %d ms): the pod would refuse connections while still marked serving", drainMs, period, failures, need)
		}
	}

	grace := int64(defaultGraceSeconds)
	if pod.TerminationGracePeriodSeconds != nil {
		grace = *pod.TerminationGracePeriodSeconds
	}
	if sleepMs >= 0 && drainMs >= 0 && timeoutMs >= 0 {
		if total := sleepMs + drainMs + timeoutMs; grace*1000 <= total {
			add("terminationGracePeriodSeconds %d must exceed preStop sleep %d ms + SHUTDOWN_DRAIN_MS %d + SHUTDOWN_TIMEOUT_MS %d = %d ms, or a graceful stop ends in SIGKILL", grace, sleepMs, drainMs, timeoutMs, total)
		}
	}
	return problems
}

func checkResources(where string, r corev1.ResourceRequirements) []string {
	var problems []string
	for _, res := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		req, hasReq := r.Requests[res]
		lim, hasLim := r.Limits[res]
		if !hasReq {
			problems = append(problems, fmt.Sprintf("%s: resources.requests.%s is not set", where, res))
		}
		if !hasLim {
			problems = append(problems, fmt.Sprintf("%s: resources.limits.%s is not set", where, res))
		}
		if hasReq && hasLim && req.Cmp(lim) > 0 {
			problems = append(problems, fmt.Sprintf("%s: resources.requests.%s %s exceeds its limit %s", where, res, req.String(), lim.String()))
		}
	}
	return problems
}

// checkSecurity checks the container's effective security context (the
// container's fields win over the pod's).
func checkSecurity(where string, pod *corev1.PodSecurityContext, c *corev1.SecurityContext, user int64) []string {
	var problems []string
	add := func(format string, args ...any) {
		problems = append(problems, where+": securityContext: "+fmt.Sprintf(format, args...))
	}
	if pod == nil {
		pod = &corev1.PodSecurityContext{}
	}
	if c == nil {
		c = &corev1.SecurityContext{}
	}
	runAsNonRoot, runAsUser := pod.RunAsNonRoot, pod.RunAsUser
	if c.RunAsNonRoot != nil {
		runAsNonRoot = c.RunAsNonRoot
	}
	if c.RunAsUser != nil {
		runAsUser = c.RunAsUser
	}
	if runAsNonRoot == nil || !*runAsNonRoot {
		add("runAsNonRoot must be true")
	}
	if runAsUser == nil || *runAsUser != user {
		add("runAsUser must be %d, the image's USER (got %s)", user, int64Ptr(runAsUser))
	}
	if c.ReadOnlyRootFilesystem == nil || !*c.ReadOnlyRootFilesystem {
		add("readOnlyRootFilesystem must be true")
	}
	if c.AllowPrivilegeEscalation == nil || *c.AllowPrivilegeEscalation {
		add("allowPrivilegeEscalation must be false")
	}
	if c.Privileged != nil && *c.Privileged {
		add("privileged must not be true")
	}
	if c.Capabilities == nil || !slices.Contains(c.Capabilities.Drop, "ALL") {
		add("capabilities.drop must include ALL")
	} else if len(c.Capabilities.Add) > 0 {
		add("capabilities.add must be empty (the services bind ports above 1024 and need no capability)")
	}
	return problems
}

func int64Ptr(p *int64) string {
	if p == nil {
		return "unset"
	}
	return strconv.FormatInt(*p, 10)
}

// checkShared wants both services to read the same stream, partitions,
// write model and Redis.
func checkShared(envs map[string]map[string]envSource, idx index) []string {
	cmd, qry := envs[commandService.name], envs[queryService.name]
	if cmd == nil || qry == nil {
		return nil
	}
	var problems []string
	for _, name := range sharedSettings {
		a, okA := cmd[name]
		b, okB := qry[name]
		if !okA || !okB {
			continue // reported as missing already
		}
		va, resolvedA := a.value(idx)
		vb, resolvedB := b.value(idx)
		same := a.describe() == b.describe() || (resolvedA && resolvedB && va == vb)
		if same {
			continue
		}
		if resolvedA && resolvedB && a.secret == nil && b.secret == nil {
			problems = append(problems, fmt.Sprintf("%s differs: command-service gets %q, query-service %q; both services must use the same", name, va, vb))
		} else {
			problems = append(problems, fmt.Sprintf("%s differs: command-service reads %s, query-service %s; both services must use the same", name, a.describe(), b.describe()))
		}
	}
	return problems
}

// selects returns the application Deployments whose pods a selector selects.
func selects(sel labels.Selector, idx index) []string {
	var out []string
	for _, a := range apps {
		if d, ok := idx.deployments[a.name]; ok && sel.Matches(labels.Set(d.Spec.Template.Labels)) {
			out = append(out, a.name)
		}
	}
	return out
}

func checkServices(idx index) []string {
	var problems []string
	byName := map[string]*corev1.Service{}
	for _, s := range idx.services {
		byName[s.Name] = s
		o := idx.where[s]
		if len(s.Spec.Selector) == 0 {
			problems = append(problems, fmt.Sprintf("%s: spec.selector is empty, so its endpoints are not managed", o))
			continue
		}
		sel := labels.SelectorFromSet(s.Spec.Selector)
		switch got := selects(sel, idx); {
		case len(got) > 1:
			problems = append(problems, fmt.Sprintf("%s: selector %s selects the pods of %s at once", o, sel, strings.Join(got, " and ")))
		case slices.Contains([]string{commandService.name, queryService.name}, s.Name) && (len(got) == 0 || got[0] != s.Name):
			if d, ok := idx.deployments[s.Name]; ok {
				instead := ""
				if len(got) == 1 {
					instead = ", but those of " + got[0]
				}
				problems = append(problems, fmt.Sprintf("%s: selector %s does not select the pods of Deployment %s (labels %s)%s", o, sel, s.Name, labels.Set(d.Spec.Template.Labels), instead))
			}
		}
	}
	for _, a := range apps {
		s, ok := byName[a.name]
		if !ok {
			problems = append(problems, fmt.Sprintf("Service %s is missing", a.name))
			continue
		}
		o := idx.where[s]
		if s.Spec.Type != "" && s.Spec.Type != corev1.ServiceTypeClusterIP {
			problems = append(problems, fmt.Sprintf("%s: type %s; want ClusterIP (expose it through an Ingress or Gateway)", o, s.Spec.Type))
		}
		d, ok := idx.deployments[a.name]
		var c *corev1.Container
		if ok {
			for i := range d.Spec.Template.Spec.Containers {
				if d.Spec.Template.Spec.Containers[i].Name == a.name {
					c = &d.Spec.Template.Spec.Containers[i]
				}
			}
		}
		found := false
		for _, p := range s.Spec.Ports {
			if p.Port != a.port {
				continue
			}
			found = true
			if p.Protocol != "" && p.Protocol != corev1.ProtocolTCP {
				problems = append(problems, fmt.Sprintf("%s: port %d has protocol %s; want TCP", o, p.Port, p.Protocol))
			}
			target := p.TargetPort
			if target.Type == intstr.Int && target.IntVal == 0 {
				target = intstr.FromInt32(p.Port)
			}
			if c == nil {
				continue
			}
			if port, ok := portOf(target, c); !ok {
				problems = append(problems, fmt.Sprintf("%s: targetPort %q names no port of container %s", o, target.String(), a.name))
			} else if port != a.port {
				problems = append(problems, fmt.Sprintf("%s: targetPort resolves to %d, but %s listens on %d", o, port, a.name, a.port))
			}
		}
		if !found {
			problems = append(problems, fmt.Sprintf("%s: no port %d", o, a.port))
		}
	}
	return problems
}

func checkPDBs(idx index) []string {
	var problems []string
	covering := map[string][]string{}
	for _, p := range idx.pdbs {
		o := idx.where[p]
		if p.Spec.Selector == nil {
			problems = append(problems, fmt.Sprintf("%s: spec.selector is missing", o))
			continue
		}
		sel, err := metav1.LabelSelectorAsSelector(p.Spec.Selector)
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: spec.selector: %v", o, err))
			continue
		}
		got := selects(sel, idx)
		switch {
		case sel.Empty():
			problems = append(problems, fmt.Sprintf("%s: spec.selector is empty; it must select one Deployment's pods", o))
			continue
		case len(got) == 0:
			problems = append(problems, fmt.Sprintf("%s: selector %s selects the pods of neither %s nor %s", o, sel, commandService.name, queryService.name))
			continue
		case len(got) > 1:
			problems = append(problems, fmt.Sprintf("%s: selector %s selects the pods of %s at once; give each Deployment its own budget", o, sel, strings.Join(got, " and ")))
		}
		for _, name := range got {
			covering[name] = append(covering[name], p.Name)
			d := idx.deployments[name]
			replicas := int32(1)
			if d.Spec.Replicas != nil {
				replicas = *d.Spec.Replicas
			}
			problems = append(problems, checkBudget(o, p, replicas)...)
		}
	}
	for _, a := range apps {
		if _, ok := idx.deployments[a.name]; !ok {
			continue
		}
		switch n := len(covering[a.name]); {
		case n == 0:
			problems = append(problems, fmt.Sprintf("no PodDisruptionBudget selects the pods of Deployment %s", a.name))
		case n > 1:
			problems = append(problems, fmt.Sprintf("PodDisruptionBudgets %s all select the pods of Deployment %s; an eviction refuses a pod under more than one", strings.Join(covering[a.name], ", "), a.name))
		}
	}
	return problems
}

// checkBudget wants a budget that keeps a replica and still lets one go.
func checkBudget(o object, p *policyv1.PodDisruptionBudget, replicas int32) []string {
	minA, maxU := p.Spec.MinAvailable, p.Spec.MaxUnavailable
	switch {
	case (minA == nil) == (maxU == nil):
		return []string{fmt.Sprintf("%s: set exactly one of minAvailable and maxUnavailable", o)}
	case minA != nil:
		n, err := intstr.GetScaledValueFromIntOrPercent(minA, int(replicas), true)
		if err != nil {
			return []string{fmt.Sprintf("%s: minAvailable: %v", o, err)}
		}
		if n < 1 {
			return []string{fmt.Sprintf("%s: minAvailable %s keeps no replica available", o, minA.String())}
		}
		if n >= int(replicas) {
			return []string{fmt.Sprintf("%s: minAvailable %s of %d replicas lets no pod be evicted, so a node drain would block", o, minA.String(), replicas)}
		}
	default:
		n, err := intstr.GetScaledValueFromIntOrPercent(maxU, int(replicas), true)
		if err != nil {
			return []string{fmt.Sprintf("%s: maxUnavailable: %v", o, err)}
		}
		if n < 1 {
			return []string{fmt.Sprintf("%s: maxUnavailable %s lets no pod be evicted, so a node drain would block", o, maxU.String())}
		}
		if n >= int(replicas) {
			return []string{fmt.Sprintf("%s: maxUnavailable %s of %d replicas may take every replica down at once", o, maxU.String(), replicas)}
		}
	}
	return nil
}
