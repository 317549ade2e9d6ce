package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

const (
	manifestDir = "../../deploy/kubernetes"
	dockerfile  = "../../Dockerfile"
)

// readManifests reads the committed manifests, by file name.
func readManifests(t *testing.T) map[string]string {
	t.Helper()
	entries, err := os.ReadDir(manifestDir)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{}
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(manifestDir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		files[e.Name()] = string(data)
	}
	return files
}

// writeManifests writes files into a new temporary directory.
func writeManifests(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// inDoc replaces old with new in the document of kind `kind` of a
// multi-document file, at its first occurrence after `after`; both must be
// there.
func inDoc(t *testing.T, text, kind, after, old, new string) string {
	t.Helper()
	docs := strings.Split(text, "\n---\n")
	for i, doc := range docs {
		if !strings.Contains(doc, "\nkind: "+kind+"\n") {
			continue
		}
		at := strings.Index(doc, after)
		if at < 0 || !strings.Contains(doc[at:], old) {
			t.Fatalf("the %s document does not contain %q after %q", kind, old, after)
		}
		docs[i] = doc[:at] + strings.Replace(doc[at:], old, new, 1)
		return strings.Join(docs, "\n---\n")
	}
	t.Fatalf("no %s document", kind)
	return ""
}

func replaceOnce(t *testing.T, text, old, new string) string {
	t.Helper()
	if !strings.Contains(text, old) {
		t.Fatalf("%q not found", old)
	}
	return strings.Replace(text, old, new, 1)
}

func TestCommittedManifestsAreValid(t *testing.T) {
	summary, problems := check(manifestDir, dockerfile)
	if len(problems) > 0 {
		t.Fatalf("deploy/kubernetes should be valid:\n  %s", strings.Join(problems, "\n  "))
	}
	for _, want := range []string{
		"Deployment/command-service", "Service/command-service", "PodDisruptionBudget/command-service",
		"Deployment/query-service", "Service/query-service", "PodDisruptionBudget/query-service",
		"ConfigMap/books-config", "Secret/books-secrets",
	} {
		if !strings.Contains(summary, want) {
			t.Errorf("summary %q lacks %s", summary, want)
		}
	}
}

// Each case breaks the committed manifests in one way and names what the
// check must then say.
func TestBrokenManifestsAreRejected(t *testing.T) {
	cases := []struct {
		name   string
		break_ func(t *testing.T, f map[string]string)
		want   []string
	}{
		{
			name: "PodDisruptionBudget selector matches no Deployment",
			break_: func(t *testing.T, f map[string]string) {
				f["query-service.yaml"] = inDoc(t, f["query-service.yaml"], "PodDisruptionBudget", "selector:",
					"app.kubernetes.io/name: query-service", "app.kubernetes.io/name: query")
			},
			want: []string{
				"PodDisruptionBudget/query-service: selector app.kubernetes.io/name=query,app.kubernetes.io/part-of=books selects the pods of neither",
				"no PodDisruptionBudget selects the pods of Deployment query-service",
			},
		},
		{
			name: "PodDisruptionBudget that blocks every eviction",
			break_: func(t *testing.T, f map[string]string) {
				f["command-service.yaml"] = inDoc(t, f["command-service.yaml"], "PodDisruptionBudget", "spec:",
					"minAvailable: 1", "minAvailable: 2")
			},
			want: []string{"minAvailable 2 of 2 replicas lets no pod be evicted"},
		},
		{
			name: "Service selecting the other service's pods",
			break_: func(t *testing.T, f map[string]string) {
				f["command-service.yaml"] = inDoc(t, f["command-service.yaml"], "Service", "selector:",
					"app.kubernetes.io/name: command-service", "app.kubernetes.io/name: query-service")
			},
			want: []string{"Service/command-service: selector", "does not select the pods of Deployment command-service"},
		},
		{
			name: "readiness probe missing",
			break_: func(t *testing.T, f map[string]string) {
				re := regexp.MustCompile(`(?s)\n {10}readinessProbe:.*?\n( {10}lifecycle:)`)
				if !re.MatchString(f["command-service.yaml"]) {
					t.Fatal("no readinessProbe block")
				}
				f["command-service.yaml"] = re.ReplaceAllString(f["command-service.yaml"], "\n$1")
			},
			want: []string{"Deployment/command-service: container command-service: readinessProbe is missing (want httpGet /readyz on port 5000)"},
		},
		{
			name: "liveness probe on the readiness path",
			break_: func(t *testing.T, f map[string]string) {
				f["query-service.yaml"] = replaceOnce(t, f["query-service.yaml"],
					"livenessProbe:\n            httpGet:\n              path: /healthz",
					"livenessProbe:\n            httpGet:\n              path: /readyz")
			},
			want: []string{`livenessProbe: path "/readyz", want /healthz`},
		},
		{
			name: "misspelt field",
			break_: func(t *testing.T, f map[string]string) {
				f["command-service.yaml"] = replaceOnce(t, f["command-service.yaml"], "livenessProbe:", "livenesProbe:")
			},
			want: []string{
				`command-service.yaml: document 1: unknown field "spec.template.spec.containers[0].livenesProbe"`,
				"livenessProbe is missing",
			},
		},
		{
			name: "key given twice",
			break_: func(t *testing.T, f map[string]string) {
				f["config.yaml"] = replaceOnce(t, f["config.yaml"], `EVENTS_PARTITIONS: "1"`, "EVENTS_PARTITIONS: \"1\"\n  EVENTS_PARTITIONS: \"2\"")
			},
			want: []string{`key "EVENTS_PARTITIONS" already set in map`},
		},
		{
			name: "drain shorter than the readiness probe needs",
			break_: func(t *testing.T, f map[string]string) {
				f["config.yaml"] = replaceOnce(t, f["config.yaml"], `SHUTDOWN_DRAIN_MS: "10000"`, `SHUTDOWN_DRAIN_MS: "3000"`)
			},
			want: []string{"SHUTDOWN_DRAIN_MS=3000 is shorter than the readiness probe takes to see /readyz fail (periodSeconds 5 x failureThreshold 2 = 10000 ms)"},
		},
		{
			name: "grace period shorter than preStop, drain and timeout",
			break_: func(t *testing.T, f map[string]string) {
				f["command-service.yaml"] = replaceOnce(t, f["command-service.yaml"], "terminationGracePeriodSeconds: 30", "terminationGracePeriodSeconds: 25")
			},
			want: []string{"terminationGracePeriodSeconds 25 must exceed preStop sleep 5000 ms + SHUTDOWN_DRAIN_MS 10000 + SHUTDOWN_TIMEOUT_MS 10000 = 25000 ms"},
		},
		{
			name: "preStop through a shell instead of the sleep action",
			break_: func(t *testing.T, f map[string]string) {
				f["query-service.yaml"] = replaceOnce(t, f["query-service.yaml"],
					"preStop:\n              sleep:\n                seconds: 5",
					"preStop:\n              exec:\n                command: [sleep, \"5\"]")
			},
			want: []string{"lifecycle.preStop must be the native sleep action"},
		},
		{
			name: "Secret key that the Secret does not define",
			break_: func(t *testing.T, f map[string]string) {
				f["command-service.yaml"] = replaceOnce(t, f["command-service.yaml"], "key: API_TOKENS", "key: API_TOKEN")
			},
			want: []string{`API_TOKENS reads key "API_TOKEN" of Secret books-secrets, which has no such key (keys: API_TOKENS, MONGO_URL, REDIS_URL)`},
		},
		{
			name: "ConfigMap that no manifest defines",
			break_: func(t *testing.T, f map[string]string) {
				f["query-service.yaml"] = replaceOnce(t, f["query-service.yaml"], "name: books-config", "name: book-config")
			},
			want: []string{`envFrom names ConfigMap "book-config", which no manifest defines`, "EVENTS_STREAM is not set"},
		},
		{
			name: "partitions differ between the services",
			break_: func(t *testing.T, f map[string]string) {
				f["query-service.yaml"] = replaceOnce(t, f["query-service.yaml"],
					"- name: PORT\n              value: \"5001\"",
					"- name: PORT\n              value: \"5001\"\n            - name: EVENTS_PARTITIONS\n              value: \"2\"")
			},
			want: []string{`EVENTS_PARTITIONS differs: command-service gets "1", query-service "2"`},
		},
		{
			name: "consumer name shared by every replica",
			break_: func(t *testing.T, f map[string]string) {
				f["query-service.yaml"] = replaceOnce(t, f["query-service.yaml"],
					"valueFrom:\n                fieldRef:\n                  fieldPath: metadata.name",
					"value: query-service-1")
			},
			want: []string{`CONSUMER_NAME must be the pod's name (valueFrom.fieldRef.fieldPath: metadata.name), unique per replica and stable across its restarts; here it is value "query-service-1"`},
		},
		{
			name: "credentials written into the Deployment",
			break_: func(t *testing.T, f map[string]string) {
				f["command-service.yaml"] = replaceOnce(t, f["command-service.yaml"],
					"- name: MONGO_URL\n              valueFrom:\n                secretKeyRef:\n                  name: books-secrets\n                  key: MONGO_URL",
					"- name: MONGO_URL\n              value: mongodb://books:secret@mongo:27017")
			},
			want: []string{"MONGO_URL must come from a Secret"},
		},
		{
			name: "resources missing",
			break_: func(t *testing.T, f map[string]string) {
				re := regexp.MustCompile(`(?s)\n {10}resources:.*?\n( {10}# The listener)`)
				if !re.MatchString(f["command-service.yaml"]) {
					t.Fatal("no resources block")
				}
				f["command-service.yaml"] = re.ReplaceAllString(f["command-service.yaml"], "\n$1")
			},
			want: []string{"resources.requests.memory is not set", "resources.limits.memory is not set", "resources.limits.cpu is not set"},
		},
		{
			name: "running as root",
			break_: func(t *testing.T, f map[string]string) {
				f["query-service.yaml"] = replaceOnce(t, f["query-service.yaml"], "runAsNonRoot: true", "runAsNonRoot: false")
				f["query-service.yaml"] = replaceOnce(t, f["query-service.yaml"], "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false")
			},
			want: []string{"securityContext: runAsNonRoot must be true", "securityContext: readOnlyRootFilesystem must be true"},
		},
		{
			name: "the other service's image",
			break_: func(t *testing.T, f map[string]string) {
				f["command-service.yaml"] = replaceOnce(t, f["command-service.yaml"], "image: books-command-service:0.1.0", "image: books-query-service:latest")
			},
			want: []string{`image "books-query-service:latest" is not the command-service image`, "not latest"},
		},
		{
			name: "example Secret renamed into a real one",
			break_: func(t *testing.T, f map[string]string) {
				f["secret.yaml"] = f["secret.example.yaml"]
				delete(f, "secret.example.yaml")
			},
			want: []string{"secret.yaml: Secret/books-secrets holds values", "secret.yaml is not listed in resources"},
		},
		{
			name: "example Secret with a real-looking value",
			break_: func(t *testing.T, f map[string]string) {
				f["secret.example.yaml"] = replaceOnce(t, f["secret.example.yaml"], `API_TOKENS: "CHANGE-ME"`, `API_TOKENS: "3f9a1c"`)
			},
			want: []string{"secret.example.yaml: Secret/books-secrets: example value of API_TOKENS has no CHANGE-ME placeholder"},
		},
		{
			name: "kustomization listing the example Secret",
			break_: func(t *testing.T, f map[string]string) {
				f["kustomization.yaml"] = replaceOnce(t, f["kustomization.yaml"], "  - config.yaml\n", "  - config.yaml\n  - secret.example.yaml\n")
			},
			want: []string{"kustomization.yaml: resource secret.example.yaml is an example with placeholder values"},
		},
		{
			name: "Deployment missing",
			break_: func(t *testing.T, f map[string]string) {
				delete(f, "query-service.yaml")
				f["kustomization.yaml"] = replaceOnce(t, f["kustomization.yaml"], "  - query-service.yaml\n", "")
			},
			want: []string{"Deployment query-service is missing", "Service query-service is missing"},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			files := readManifests(t)
			c.break_(t, files)
			_, problems := check(writeManifests(t, files), dockerfile)
			if len(problems) == 0 {
				t.Fatal("the broken manifests passed the check")
			}
			for _, want := range c.want {
				found := false
				for _, p := range problems {
					if strings.Contains(p, want) {
						found = true
						break
					}
				}
				if !found {
					t.Errorf("no problem says %q; got:\n  %s", want, strings.Join(problems, "\n  "))
				}
			}
		})
	}
}
