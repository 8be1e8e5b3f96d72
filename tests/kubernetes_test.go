package tests

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/mqtt-sticky/mqtt-sticky/internal/envoyproc"
)

// The Envoy bootstrap in deploy/kubernetes/envoy.yaml's ConfigMap, with the
// Envoy Deployment's arguments (the pod's name and IP filled in), passes
// the real Envoy's own validation. (deploy/kubernetes_test.go, in the
// deploy module, checks the manifests against the Kubernetes API types and
// against each other.)
func TestKubernetesBootstrapValidates(t *testing.T) {
	bootstrap, args := kubernetesEnvoy(t)
	var cfg map[string]any
	if err := yaml.Unmarshal([]byte(bootstrap), &cfg); err != nil {
		t.Fatal(err)
	}
	certs := t.TempDir()
	xdsCerts(t, certs)
	tlsEnvoyBootstrap(t, certs)(cfg) // the Secret's files, issued here
	out, _ := yaml.Marshal(cfg)
	path := filepath.Join(t.TempDir(), "envoy.yaml")
	if err := os.WriteFile(path, out, 0o644); err != nil {
		t.Fatal(err)
	}
	args = podArgs(args, path, "mqtt-sticky-envoy-7d9f-x2k4p", "10.244.1.17")
	out, err := exec.Command(envoyBinary(t), append([]string{"--mode", "validate"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("envoy --mode validate %v: %v\n%s", args, err, lastLines(string(out), 20))
	}
}

// The Kubernetes Envoy, run: its stats listener serves /ready,
// /stats/prometheus and /clusters from the admin interface and nothing
// else (no config dump, no POST that stops Envoy), and the control plane
// reads each broker's health and connections through it, at the address
// the Deployment's --config-yaml advertises. xDS runs over mutual TLS, the
// Envoy checking the control plane's Service name. Only the addresses
// (and the certificate files) are moved.
func TestKubernetesEnvoyStatsListener(t *testing.T) {
	bootstrap, args := kubernetesEnvoy(t)
	var cfg map[string]any
	if err := yaml.Unmarshal([]byte(bootstrap), &cfg); err != nil {
		t.Fatal(err)
	}
	certs := t.TempDir()
	xdsCerts(t, certs)
	tlsEnvoyBootstrap(t, certs)(cfg)
	brokers := startBrokers(t, 3)
	listenPort := freePort(t)
	cp := startControlPlane(t, fleetConfig(t, listenPort, brokers, healthOpts), filepath.Join(t.TempDir(), "state.json"), xdsTLSFlags(certs)...)
	adminPort, statsPort := freePort(t), freePort(t)
	_, xdsPort := splitHostPort(t, cp.xdsAddr)
	endpoint := func(cluster int) []any {
		return []any{"static_resources", "clusters", cluster, "load_assignment", "endpoints", 0, "lb_endpoints", 0, "endpoint", "address", "socket_address"}
	}
	set(t, cfg, "127.0.0.1", append(endpoint(0), "address")...)
	set(t, cfg, xdsPort, append(endpoint(0), "port_value")...)
	set(t, cfg, adminPort, "admin", "address", "socket_address", "port_value")
	set(t, cfg, adminPort, append(endpoint(1), "port_value")...)
	set(t, cfg, "127.0.0.1", "static_resources", "listeners", 0, "address", "socket_address", "address")
	set(t, cfg, statsPort, "static_resources", "listeners", 0, "address", "socket_address", "port_value")
	out, _ := yaml.Marshal(cfg)
	dir := t.TempDir()
	path := filepath.Join(dir, "envoy.yaml")
	if err := os.WriteFile(path, out, 0o644); err != nil {
		t.Fatal(err)
	}
	args = podArgs(args, path, "mqtt-sticky-envoy-0", "127.0.0.1")
	for i, a := range args {
		args[i] = strings.ReplaceAll(a, "127.0.0.1:9902", fmt.Sprintf("127.0.0.1:%d", statsPort))
	}
	envoy := startEnvoy(t, envoyproc.Options{
		ConfigPath: path,
		AdminAddr:  fmt.Sprintf("127.0.0.1:%d", adminPort),
		LogPath:    filepath.Join(dir, "envoy.log"),
		ExtraArgs:  args[2:], // after -c path
	})
	(&xdsEnvoy{Process: envoy, nodeID: "mqtt-sticky-envoy-0"}).waitHosts(t, cp, brokers, 20*time.Second)

	stats := fmt.Sprintf("http://127.0.0.1:%d", statsPort)
	for _, c := range []struct {
		method, path string
		code         int
		body         string
	}{
		{"GET", "/ready", 200, "LIVE"},
		{"GET", "/stats/prometheus", 200, "envoy_cluster_endpoint_healthy"},
		{"GET", "/clusters?format=json", 200, "cluster_statuses"},
		{"GET", "/config_dump", 404, ""},
		{"GET", "/stats", 404, ""},
		{"POST", "/quitquitquit", 404, ""},
		{"POST", "/healthcheck/fail", 404, ""},
	} {
		req, _ := http.NewRequest(c.method, stats+c.path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != c.code || !strings.Contains(string(body), c.body) {
			t.Errorf("%s %s on the stats port: %d, want %d with %q", c.method, c.path, resp.StatusCode, c.code, c.body)
		}
	}
	select {
	case <-envoy.Exited():
		t.Fatal("Envoy exited: the stats port let a request stop it")
	default:
	}

	// The control plane reads the node's view through the stats port.
	waitFor(t, 15*time.Second, "the control plane to read every broker as healthy through the stats port", func() bool {
		st, err := cp.client.Status(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range st.Nodes {
			if n.ID == "mqtt-sticky-envoy-0" && n.AdminAddress != fmt.Sprintf("127.0.0.1:%d", statsPort) {
				t.Fatalf("the node advertises %q, not its stats port", n.AdminAddress)
			}
		}
		healthy := 0
		for _, c := range st.Clusters {
			for _, b := range c.Brokers {
				if b.Nodes["mqtt-sticky-envoy-0"].Healthy {
					healthy++
				}
			}
		}
		return healthy == len(brokers)
	})
}

// kubernetesEnvoy returns the Envoy bootstrap of deploy/kubernetes/envoy.yaml's
// ConfigMap and the arguments of its Deployment's envoy container.
func kubernetesEnvoy(t *testing.T) (string, []string) {
	t.Helper()
	root, err := envoyproc.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(root, "deploy", "kubernetes", "envoy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var bootstrap string
	var args []string
	for _, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(data), -1) {
		var obj struct {
			Kind     string `yaml:"kind"`
			Metadata struct{ Name string }
			Data     map[string]string `yaml:"data"`
			Spec     struct {
				Template struct {
					Spec struct {
						Containers []struct {
							Name string
							Args []string
						}
					}
				}
			}
		}
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			t.Fatal(err)
		}
		switch {
		case obj.Kind == "ConfigMap" && obj.Metadata.Name == "mqtt-sticky-envoy":
			bootstrap = obj.Data["envoy.yaml"]
		case obj.Kind == "Deployment" && obj.Metadata.Name == "mqtt-sticky-envoy":
			for _, c := range obj.Spec.Template.Spec.Containers {
				if c.Name == "envoy" {
					args = c.Args
				}
			}
		}
	}
	if bootstrap == "" || len(args) < 2 || args[0] != "-c" {
		t.Fatal("deploy/kubernetes/envoy.yaml: no ConfigMap mqtt-sticky-envoy with envoy.yaml, or no Deployment mqtt-sticky-envoy whose envoy container starts with -c")
	}
	return bootstrap, args
}

// podArgs fills in what Kubernetes would (the pod's name and IP) and
// points -c at a local file.
func podArgs(args []string, config, podName, podIP string) []string {
	pod := strings.NewReplacer("$(POD_NAME)", podName, "$(POD_IP)", podIP)
	out := make([]string, len(args))
	for i, a := range args {
		if i > 0 && args[i-1] == "-c" {
			a = config
		}
		out[i] = pod.Replace(a)
	}
	return out
}
