package tests

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/google/go-cmp/cmp"

	"github.com/mqtt-sticky/mqtt-sticky/api"
	"github.com/mqtt-sticky/mqtt-sticky/contract"
	"github.com/mqtt-sticky/mqtt-sticky/internal/certs"
	"github.com/mqtt-sticky/mqtt-sticky/internal/envoyproc"
	"github.com/mqtt-sticky/mqtt-sticky/xds/model"
)

// composeProject is the part of `docker compose config --format json` the
// checks below read.
type composeProject struct {
	Services map[string]struct {
		Image       string                   `json:"image"`
		Build       *struct{ Target string } `json:"build"`
		Command     []string                 `json:"command"`
		Environment map[string]string        `json:"environment"`
		NetworkMode string                   `json:"network_mode"`
		Networks    map[string]*struct {
			IPv4Address string `json:"ipv4_address"`
		} `json:"networks"`
		Ports []struct {
			Target    int    `json:"target"`
			Published string `json:"published"`
		} `json:"ports"`
		Volumes []struct {
			Source, Target string
		} `json:"volumes"`
		Healthcheck *struct{ Test []string }              `json:"healthcheck"`
		DependsOn   map[string]struct{ Condition string } `json:"depends_on"`
		Secrets     []struct{ Source, Target string }     `json:"secrets"`
	} `json:"services"`
	Secrets map[string]struct {
		Environment string `json:"environment"`
	} `json:"secrets"`
}

// composeToken is the token the compose checks run with.
const composeToken = "compose-test-token-0123456789"

// docker-compose.yaml, envoy/bootstrap.yaml, compose/mqtt-sticky.yaml and
// the Dockerfile must agree: ports, addresses, the PROXY protocol on both
// sides, the module's name and path. Docker cannot run here, so this is
// what the suite verifies of the compose setup; `docker compose config`
// (the v2 plugin `make compose-tool` installs) checks the file itself.
func TestComposeFilesAgree(t *testing.T) {
	root, err := envoyproc.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	p := composeConfig(t, root, "docker-compose.yaml")
	cp, err := model.LoadFile(filepath.Join(root, "compose", "mqtt-sticky.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	boot := readYAML(t, filepath.Join(root, "envoy", "bootstrap-mtls.yaml"))
	dockerfile, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}

	// EMQX nodes: official 5.x image, PROXY protocol required, clustered,
	// and exactly the control plane's endpoints.
	cluster := cp.Cluster("brokers")
	if cluster == nil {
		t.Fatal(`compose/mqtt-sticky.yaml has no cluster "brokers"`)
	}
	if cluster.ProxyProtocol == model.ProxyOff {
		t.Error("the control plane sends no PROXY header, but the EMQX listeners require one")
	}
	var emqxAddrs, nodeNames []string
	for _, name := range []string{"emqx1", "emqx2", "emqx3"} {
		s, ok := p.Services[name]
		if !ok {
			t.Fatalf("service %s missing", name)
		}
		if !strings.HasPrefix(s.Image, "emqx/emqx:5.") {
			t.Errorf("%s: image %s, want the official emqx/emqx 5.x", name, s.Image)
		}
		if s.Environment["EMQX_LISTENERS__TCP__DEFAULT__PROXY_PROTOCOL"] != "true" {
			t.Errorf("%s: PROXY protocol is not enabled on the TCP listener", name)
		}
		ip := s.Networks["mqtt"].IPv4Address
		if s.Environment["EMQX_NODE_NAME"] != "emqx@"+ip {
			t.Errorf("%s: node name %q, want emqx@%s", name, s.Environment["EMQX_NODE_NAME"], ip)
		}
		nodeNames = append(nodeNames, "emqx@"+ip)
		emqxAddrs = append(emqxAddrs, net.JoinHostPort(ip, "1883"))
		if s.Healthcheck == nil {
			t.Errorf("%s: no health check", name)
		}
	}
	for _, s := range []string{"emqx1", "emqx2", "emqx3"} {
		seeds := p.Services[s].Environment["EMQX_CLUSTER__STATIC__SEEDS"]
		for _, n := range nodeNames {
			if !strings.Contains(seeds, n) {
				t.Errorf("%s: cluster seeds %s lack %s", s, seeds, n)
			}
		}
	}
	var endpoints []string
	for _, e := range cluster.Endpoints {
		endpoints = append(endpoints, net.JoinHostPort(e.Address, fmt.Sprint(e.Port)))
	}
	slices.Sort(endpoints)
	slices.Sort(emqxAddrs)
	if !slices.Equal(endpoints, emqxAddrs) {
		t.Errorf("control-plane endpoints %v, EMQX nodes %v", endpoints, emqxAddrs)
	}

	// The control plane: xDS where the bootstrap looks for it, the API and
	// MQTT ports published, a token because the API is not on loopback.
	xds := p.Services["xds"]
	if xds.Build == nil || xds.Build.Target != "control-plane" {
		t.Errorf("xds: not built from the Dockerfile's control-plane target")
	}
	bootXDS := get(t, boot, "static_resources", "clusters", 0, "load_assignment", "endpoints", 0, "lb_endpoints", 0,
		"endpoint", "address", "socket_address").(map[string]any)
	if want := net.JoinHostPort(fmt.Sprint(bootXDS["address"]), fmt.Sprint(bootXDS["port_value"])); cp.XDSListen != want {
		t.Errorf("control plane serves xDS on %s, the bootstrap expects %s", cp.XDSListen, want)
	}
	published := map[int]bool{}
	for _, port := range xds.Ports {
		if port.Published == fmt.Sprint(port.Target) {
			published[port.Target] = true
		}
	}
	_, apiPort := splitHostPort(t, cp.APIListen)
	for _, l := range cp.Listeners {
		if !published[l.Port] {
			t.Errorf("MQTT listener port %d is not published", l.Port)
		}
		if l.ModuleName != contract.ModuleName {
			t.Errorf("listener %s loads module %q", l.Name, l.ModuleName)
		}
	}
	if !published[apiPort] {
		t.Errorf("API port %d is not published", apiPort)
	}
	checkComposeToken(t, p, cp)
	mountsConfig := false
	for _, v := range xds.Volumes {
		if strings.HasSuffix(v.Source, filepath.Join("compose", "mqtt-sticky.yaml")) && slices.Contains(xds.Command, v.Target) {
			mountsConfig = true
		}
	}
	if !mountsConfig {
		t.Error("xds does not serve the mounted compose/mqtt-sticky.yaml")
	}
	if xds.Healthcheck == nil || len(xds.DependsOn) != 4 {
		t.Errorf("xds: health check %v, depends on %v", xds.Healthcheck, xds.DependsOn)
	}

	// Envoy: the official 1.40 image with the module, in the control
	// plane's network namespace, on envoy/bootstrap.yaml.
	envoy := p.Services["envoy"]
	if envoy.NetworkMode != "service:xds" {
		t.Errorf("envoy network_mode %q: the bootstrap reaches xDS on %s only inside the control plane's namespace", envoy.NetworkMode, cp.XDSListen)
	}
	if envoy.Build == nil || envoy.Build.Target != "envoy" {
		t.Error("envoy: not built from the Dockerfile's envoy target")
	}
	if m := regexp.MustCompile(`(?m)^ARG ENVOY_IMAGE=envoyproxy/envoy:v1\.40\.\d+$`).Find(dockerfile); m == nil {
		t.Error("Dockerfile: ENVOY_IMAGE is not envoyproxy/envoy:v1.40.x")
	}
	copyLine := regexp.MustCompile(`(?m)^COPY --from=module /out/libmqtt_sticky\.so (\S+)/libmqtt_sticky\.so$`).FindSubmatch(dockerfile)
	if copyLine == nil {
		t.Fatal("Dockerfile: no COPY of libmqtt_sticky.so into the Envoy image")
	}
	if dir := envoy.Environment["ENVOY_DYNAMIC_MODULES_SEARCH_PATH"]; dir != string(copyLine[1]) {
		t.Errorf("envoy searches modules in %q, the Dockerfile installs it in %q", dir, copyLine[1])
	}
	mountsBootstrap := false
	for _, v := range envoy.Volumes {
		if strings.HasSuffix(v.Source, filepath.Join("envoy", "bootstrap-mtls.yaml")) && slices.Contains(envoy.Command, v.Target) {
			mountsBootstrap = true
		}
	}
	if !mountsBootstrap {
		t.Error("envoy does not run the mounted envoy/bootstrap-mtls.yaml")
	}
	checkComposeTLS(t, root, cp, envoy.Volumes)
	checkComposeXDSTLS(t, p, cp, boot)
	admin := get(t, boot, "admin", "address", "socket_address").(map[string]any)
	if envoy.Healthcheck == nil || !strings.Contains(strings.Join(envoy.Healthcheck.Test, " "), fmt.Sprintf("127.0.0.1/%v", admin["port_value"])) {
		t.Errorf("envoy health check does not ask the admin port %v", admin["port_value"])
	}
	if envoy.DependsOn["xds"].Condition != "service_healthy" {
		t.Error("envoy does not wait for a healthy control plane")
	}
}

// checkComposeTLS: the compose setup has a TLS listener, and every file it
// names is in a directory mounted into Envoy as a directory (so a file
// replaced on the host by a rename reaches the container, and Envoy's
// directory watch reloads it), from where `make tls-example` writes.
func checkComposeTLS(t *testing.T, root string, cp *model.File, volumes []struct{ Source, Target string }) {
	t.Helper()
	makefile, err := os.ReadFile(filepath.Join(root, "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^\tenvoy/tls/example-certs\.sh (\S+)$`).FindSubmatch(makefile)
	if m == nil {
		t.Fatal("Makefile: no tls-example recipe running envoy/tls/example-certs.sh")
	}
	certDir := filepath.Join(root, string(m[1]))
	tlsListeners := 0
	for _, l := range cp.Listeners {
		if l.TLS == nil {
			continue
		}
		tlsListeners++
		for _, f := range []string{l.TLS.CertFile, l.TLS.KeyFile, l.TLS.ClientCAFile} {
			if f == "" {
				continue
			}
			mounted := false
			for _, v := range volumes {
				if v.Target == filepath.Dir(f) && v.Source == certDir {
					mounted = true
				}
			}
			if !mounted {
				t.Errorf("listener %s: %s is not in a directory mounted from %s (where `make tls-example` writes) into Envoy", l.Name, f, certDir)
			}
		}
		for _, want := range []string{"server.crt", "server.key", "ca.crt"} {
			if !slices.ContainsFunc([]string{l.TLS.CertFile, l.TLS.KeyFile, l.TLS.ClientCAFile}, func(f string) bool { return filepath.Base(f) == want }) {
				t.Errorf("listener %s does not use %s, which `make tls-example` makes", l.Name, want)
			}
		}
	}
	if tlsListeners == 0 {
		t.Error("compose/mqtt-sticky.yaml has no TLS listener")
	}
}

// The compose file has no token of its own: without MQTT_STICKY_API_TOKEN
// it does not start (it fell back to "change-me"). The token reaches the
// control plane as a secret file, never as an environment variable that
// `docker inspect` shows, and the health check reads the same file.
func checkComposeToken(t *testing.T, p composeProject, cp *model.File) {
	t.Helper()
	root, _ := envoyproc.RepoRoot()
	cmd := exec.Command("docker", "compose", "-f", filepath.Join(root, "docker-compose.yaml"), "config", "--format", "json")
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, api.TokenEnv+"=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), api.TokenEnv) {
		t.Errorf("docker compose config without %s: %v\n%s", api.TokenEnv, err, out)
	}
	xds := p.Services["xds"]
	for name, s := range p.Services {
		for k, v := range s.Environment {
			if k == api.TokenEnv || v == composeToken {
				t.Errorf("service %s has the API token in its environment (%s)", name, k)
			}
		}
	}
	var target string
	for _, sec := range xds.Secrets {
		if p.Secrets[sec.Source].Environment == api.TokenEnv {
			target = sec.Target
		}
	}
	if target == "" || cp.APITokenFile != target {
		t.Errorf("the control plane reads its token from %q; the secret from %s is mounted at %q", cp.APITokenFile, api.TokenEnv, target)
	}
	if !slices.Contains(xds.Healthcheck.Test, target) {
		t.Errorf("the health check %v does not use the token file %s", xds.Healthcheck.Test, target)
	}
}

// checkComposeXDSTLS: xDS runs over mutual TLS: the certs service writes the files into a
// volume that both the control plane and Envoy mount; the control plane's
// config and Envoy's bootstrap name those files; Envoy expects a server
// name the server certificate carries; the client key is Envoy's to read.
// And envoy/bootstrap-mtls.yaml is envoy/bootstrap.yaml plus that TLS.
func checkComposeXDSTLS(t *testing.T, p composeProject, cp *model.File, boot map[string]any) {
	t.Helper()
	job, xds, envoy := p.Services["certs"], p.Services["xds"], p.Services["envoy"]
	if job.Build == nil || job.Build.Target != "control-plane" || len(job.Command) < 3 || job.Command[0] != "certs" {
		t.Fatalf("certs service: %+v", job)
	}
	flag := func(name string) string {
		i := slices.Index(job.Command, name)
		if i < 0 || i+1 >= len(job.Command) {
			t.Fatalf("certs command %v lacks %s", job.Command, name)
		}
		return job.Command[i+1]
	}
	certDir := flag("--dir")
	var volume string
	for _, v := range job.Volumes {
		if v.Target == certDir {
			volume = v.Source
		}
	}
	if volume == "" {
		t.Fatalf("the certs service writes to %s, which is not a volume", certDir)
	}
	// mountOf returns where svc mounts the certificate volume.
	mountOf := func(svc string) string {
		for _, v := range p.Services[svc].Volumes {
			if v.Source == volume {
				return v.Target
			}
		}
		t.Fatalf("%s does not mount the certificate volume %s", svc, volume)
		return ""
	}
	xdsDir, envoyDir := mountOf("xds"), mountOf("envoy")

	// The control plane: its certificate and key, and the CA for clients.
	tlsCfg := cp.XDSTLS
	for file, want := range map[string]string{tlsCfg.CertFile: certs.ServerFile, tlsCfg.KeyFile: certs.ServerKeyFile, tlsCfg.ClientCAFile: certs.CAFile} {
		if file != filepath.Join(xdsDir, want) {
			t.Errorf("compose/mqtt-sticky.yaml names %s, the certs service writes %s", file, filepath.Join(xdsDir, want))
		}
	}
	if !tlsCfg.RequireClientCert {
		t.Error("compose/mqtt-sticky.yaml does not require client certificates")
	}
	if xds.DependsOn["certs"].Condition != "service_completed_successfully" {
		t.Error("xds does not wait for the certificates")
	}

	// Envoy: the same CA, its client certificate, and a server name the
	// server certificate has.
	sock := get(t, boot, "static_resources", "clusters", 0, "transport_socket").(map[string]any)
	ctx := get(t, sock, "typed_config").(map[string]any)
	if sock["name"] != "envoy.transport_sockets.tls" || !strings.HasSuffix(fmt.Sprint(ctx["@type"]), ".UpstreamTlsContext") {
		t.Fatalf("the xds cluster's transport socket is %v", sock)
	}
	common := ctx["common_tls_context"]
	for path, want := range map[string]string{
		fmt.Sprint(get(t, common, "tls_certificates", 0, "certificate_chain", "filename")): certs.ClientFile,
		fmt.Sprint(get(t, common, "tls_certificates", 0, "private_key", "filename")):       certs.ClientKeyFile,
		fmt.Sprint(get(t, common, "validation_context", "trusted_ca", "filename")):         certs.CAFile,
	} {
		if path != filepath.Join(envoyDir, want) {
			t.Errorf("the bootstrap names %s, the certs service writes %s", path, filepath.Join(envoyDir, want))
		}
	}
	serverNames := strings.Split(flag("--server-names"), ",")
	sni := fmt.Sprint(ctx["sni"])
	san := fmt.Sprint(get(t, common, "validation_context", "match_typed_subject_alt_names", 0, "matcher", "exact"))
	if !slices.Contains(serverNames, sni) || !slices.Contains(serverNames, san) {
		t.Errorf("Envoy asks for %s and checks the name %s; the server certificate has %v", sni, san, serverNames)
	}
	if host, _, _ := net.SplitHostPort(cp.XDSListen); !slices.Contains(serverNames, host) {
		t.Errorf("the server certificate %v lacks the xDS address %s", serverNames, host)
	}
	if flag("--client-key-uid") != "101" {
		t.Error("the client key is not readable by Envoy's user (uid 101 in its image)")
	}
	if flag("--client") != envoy.Command[slices.Index(envoy.Command, "--service-node")+1] {
		t.Errorf("the client certificate is for %s, Envoy's node is another", flag("--client"))
	}

	// The two bootstraps differ only in that transport socket.
	root, _ := envoyproc.RepoRoot()
	plain := readYAML(t, filepath.Join(root, "envoy", "bootstrap.yaml"))
	withoutTLS := readYAML(t, filepath.Join(root, "envoy", "bootstrap-mtls.yaml"))
	delete(get(t, withoutTLS, "static_resources", "clusters", 0).(map[string]any), "transport_socket")
	if diff := cmp.Diff(plain, withoutTLS); diff != "" {
		t.Errorf("envoy/bootstrap-mtls.yaml is not envoy/bootstrap.yaml plus TLS (-plain +mtls):\n%s", diff)
	}
}

func readYAML(t *testing.T, path string) map[string]any {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	return doc
}
