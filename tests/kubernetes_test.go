package tests

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/mqtt-sticky/mqtt-sticky/internal/envoyproc"
)

// The Envoy bootstrap in deploy/kubernetes/envoy.yaml's ConfigMap passes
// the real Envoy's own validation. (deploy/kubernetes_test.go, in the
// deploy module, checks the manifests against the Kubernetes API types
// and against each other.)
func TestKubernetesBootstrapValidates(t *testing.T) {
	root, err := envoyproc.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(root, "deploy", "kubernetes", "envoy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var bootstrap string
	for _, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(data), -1) {
		var cm struct {
			Kind     string `json:"kind"`
			Metadata struct{ Name string }
			Data     map[string]string `json:"data"`
		}
		if err := yaml.Unmarshal([]byte(doc), &cm); err != nil {
			t.Fatal(err)
		}
		if cm.Kind == "ConfigMap" && cm.Metadata.Name == "mqtt-sticky-envoy" {
			bootstrap = cm.Data["envoy.yaml"]
		}
	}
	if bootstrap == "" {
		t.Fatal("deploy/kubernetes/envoy.yaml: no ConfigMap mqtt-sticky-envoy with envoy.yaml")
	}
	path := filepath.Join(t.TempDir(), "envoy.yaml")
	if err := os.WriteFile(path, []byte(bootstrap), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(envoyBinary(t), "--mode", "validate", "-c", path, "--service-node", "mqtt-sticky-envoy-0").CombinedOutput()
	if err != nil {
		t.Fatalf("envoy --mode validate: %v\n%s", err, lastLines(string(out), 20))
	}
}
