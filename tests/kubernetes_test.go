package tests

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/mqtt-sticky/mqtt-sticky/internal/certs"
	"github.com/mqtt-sticky/mqtt-sticky/internal/envoyproc"
	"github.com/mqtt-sticky/mqtt-sticky/internal/etcdproc"
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
	certs := t.TempDir()
	xdsCerts(t, certs)
	brokers := startBrokers(t, 3)
	listenPort := freePort(t)
	cp := startControlPlane(t, fleetConfig(t, listenPort, brokers, healthOpts), filepath.Join(t.TempDir(), "state.json"), xdsTLSFlags(certs)...)
	_, xdsPort := splitHostPort(t, cp.xdsAddr)
	envoy, statsPort := runKubernetesEnvoy(t, certs, func(xds map[string]any) {
		set(t, xds, "127.0.0.1", "load_assignment", "endpoints", 0, "lb_endpoints", 0, "endpoint", "address", "socket_address", "address")
		set(t, xds, xdsPort, "load_assignment", "endpoints", 0, "lb_endpoints", 0, "endpoint", "address", "socket_address", "port_value")
	})
	envoy.waitHosts(t, cp, brokers, 20*time.Second)

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
			if n.ID == envoy.nodeID && n.AdminAddress != fmt.Sprintf("127.0.0.1:%d", statsPort) {
				t.Fatalf("the node advertises %q, not its stats port", n.AdminAddress)
			}
		}
		healthy := 0
		for _, c := range st.Clusters {
			for _, b := range c.Brokers {
				if b.Nodes[envoy.nodeID].Healthy {
					healthy++
				}
			}
		}
		return healthy == len(brokers)
	})
}

// The production shape of deploy/kubernetes/, run: two control-plane
// replicas with control-plane.yaml's config and the Deployment's
// arguments (each named after its pod), on a real etcd that serves TLS
// only and requires the client certificate of Secret
// mqtt-sticky-etcd-client; and envoy.yaml's Envoy, whose xds cluster
// resolves the headless Service's name to both replicas. A real DNS server
// (dnsmasq) stands in for the cluster's: it answers that name with the two
// replicas' addresses, and the SRV records of the EMQX Service with the
// brokers. When the replica the Envoy is on dies, the Envoy moves to the
// other and keeps its brokers, and MQTT clients reach them. Moved here: the addresses, the etcd
// endpoints, the DNS server, and the Secrets' files (issued here).
func TestKubernetesReplicas(t *testing.T) {
	cpObj := kubernetesControlPlane(t)
	brokers := startBrokers(t, 3)

	// The Secrets' files, in one directory per Secret.
	secrets := map[string]string{}
	for _, name := range []string{"mqtt-sticky-xds-server", "mqtt-sticky-api-token", "mqtt-sticky-etcd-client"} {
		secrets[name] = t.TempDir()
	}
	xdsDir := t.TempDir()
	xdsCerts(t, xdsDir)
	for key, file := range map[string]string{"tls.crt": certs.ServerFile, "tls.key": certs.ServerKeyFile, "ca.crt": certs.CAFile} {
		copyFile(t, filepath.Join(xdsDir, file), filepath.Join(secrets["mqtt-sticky-xds-server"], key))
	}
	const token = "kubernetes-replicas-token-0123456789"
	writeFile(t, filepath.Join(secrets["mqtt-sticky-api-token"], "token"), token+"\n")
	etcd := startEtcdTLS(t, secrets["mqtt-sticky-etcd-client"])

	// The config: the mounts' paths become the Secrets' directories; the
	// listener, the etcd endpoints and the DNS server are local.
	var cfg map[string]any
	if err := yaml.Unmarshal([]byte(cpObj.localPaths(t, secrets)), &cfg); err != nil {
		t.Fatal(err)
	}
	listenPort := freePort(t)
	set(t, cfg, "127.0.0.1", "listeners", 0, "address")
	set(t, cfg, listenPort, "listeners", 0, "port")
	set(t, cfg, etcd.Endpoints(), "store", "etcd", "endpoints")
	srvName := get(t, cfg, "clusters", 0, "discovery", "dns", "name").(string)
	records := dnsRecords{hosts: map[string][]string{}, srv: map[string][]srvRecord{}}
	for i, b := range brokers {
		host, port := splitHostPort(t, b.Addr())
		target := fmt.Sprintf("emqx-%d.%s", i, strings.SplitN(srvName, ".", 3)[2])
		records.hosts[target] = []string{host}
		records.srv[srvName] = append(records.srv[srvName], srvRecord{target: target, port: port})
	}
	xdsHost := kubernetesXDSHost(t)
	xdsPort := freePort(t)
	replicas := make([]*controlPlane, 2)
	for i := range replicas {
		ip := fmt.Sprintf("%s.%d", brokerNet(), 201+i)
		records.hosts[xdsHost] = append(records.hosts[xdsHost], ip)
		replicas[i] = &controlPlane{
			name:    fmt.Sprintf("mqtt-sticky-control-plane-6f7d9c-%c%c2k4", 'a'+i, 'p'+i),
			xdsAddr: fmt.Sprintf("%s:%d", ip, xdsPort),
			apiAddr: fmt.Sprintf("127.0.0.1:%d", freePort(t)),
			token:   token,
		}
	}
	dns := startDNS(t, records)
	set(t, cfg, dns.Addr(), "clusters", 0, "discovery", "dns", "resolver")
	out, _ := yaml.Marshal(cfg)
	configPath := filepath.Join(t.TempDir(), "mqtt-sticky.yaml")
	writeFile(t, configPath, string(out))

	// The replicas, with the Deployment's arguments for their pods.
	for _, r := range replicas {
		r.configPath = configPath
		r.storeArgs = cpObj.serveArgs(t, r.name)
		r.start(t)
		t.Cleanup(func() { r.stop(t) })
		st, err := r.client.Status(t.Context())
		if err != nil || st.Replica != r.name {
			t.Fatalf("replica %s answers %+v, %v", r.name, st, err)
		}
	}

	// The Envoy: the xds cluster keeps the Service's name, resolved by
	// the DNS server; both replicas become its hosts.
	envoy, _ := runKubernetesEnvoy(t, xdsDir, func(xds map[string]any) {
		set(t, xds, xdsPort, "load_assignment", "endpoints", 0, "lb_endpoints", 0, "endpoint", "address", "socket_address", "port_value")
		host, port := splitHostPort(t, dns.Addr())
		xds["typed_dns_resolver_config"] = map[string]any{
			"name": "envoy.network.dns_resolver.cares",
			"typed_config": map[string]any{
				"@type":     "type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig",
				"resolvers": []any{map[string]any{"socket_address": map[string]any{"address": host, "port_value": port}}},
			},
		}
	})
	envoy.waitHosts(t, replicas[0], brokers, 20*time.Second)
	if n := envoyStats(t, envoy.Process, "cluster.xds.membership_total")["cluster.xds.membership_total"]; n != int64(len(replicas)) {
		t.Fatalf("the xds cluster has %d hosts, want one per replica (%d)", n, len(replicas))
	}

	// Both replicas share etcd: the one the Envoy is not on lists the
	// node under the other's name, read from etcd.
	on, _ := new(replicaFleet).connectedTo(t, envoy, replicas, 10*time.Second)
	other := replicas[0]
	if on == other {
		other = replicas[1]
	}
	waitFor(t, 10*time.Second, "the other replica to list the Envoy under the replica it is on", func() bool {
		st, err := other.client.Status(t.Context())
		if err != nil {
			return false
		}
		for _, n := range st.Nodes {
			if n.ID == envoy.nodeID && n.Replica == on.name {
				return true
			}
		}
		return false
	})

	// The replica the Envoy is on dies; the Envoy moves to the other,
	// which serves it the same brokers, and clients reach them.
	on.kill(t)
	moved, took := new(replicaFleet).connectedTo(t, envoy, []*controlPlane{other}, 15*time.Second)
	envoy.waitHosts(t, moved, brokers, 20*time.Second)
	t.Logf("the Envoy moved from %s to %s after %v", on.name, moved.name, took)
	connectAll(t, fmt.Sprintf("127.0.0.1:%d", listenPort), brokers, clientIDs(30, "k8s"), 0)
}

// runKubernetesEnvoy runs envoy.yaml's Envoy with its Deployment's
// arguments, as pod mqtt-sticky-envoy-0 on 127.0.0.1: its client
// certificate from the files of `mqtt-sticky certs` in certDir, its admin
// and stats listeners on free ports, and xds applied to its xds cluster
// (where the control plane is). It returns the Envoy and its stats port.
func runKubernetesEnvoy(t *testing.T, certDir string, xds func(cluster map[string]any)) (*xdsEnvoy, int) {
	t.Helper()
	bootstrap, args := kubernetesEnvoy(t)
	var cfg map[string]any
	if err := yaml.Unmarshal([]byte(bootstrap), &cfg); err != nil {
		t.Fatal(err)
	}
	tlsEnvoyBootstrap(t, certDir)(cfg)
	xds(get(t, cfg, "static_resources", "clusters", 0).(map[string]any))
	adminPort, statsPort := freePort(t), freePort(t)
	set(t, cfg, adminPort, "admin", "address", "socket_address", "port_value")
	set(t, cfg, adminPort, "static_resources", "clusters", 1, "load_assignment", "endpoints", 0, "lb_endpoints", 0, "endpoint", "address", "socket_address", "port_value")
	set(t, cfg, "127.0.0.1", "static_resources", "listeners", 0, "address", "socket_address", "address")
	set(t, cfg, statsPort, "static_resources", "listeners", 0, "address", "socket_address", "port_value")
	out, _ := yaml.Marshal(cfg)
	dir := t.TempDir()
	path := filepath.Join(dir, "envoy.yaml")
	writeFile(t, path, string(out))
	const pod = "mqtt-sticky-envoy-0"
	args = podArgs(args, path, pod, "127.0.0.1")
	for i, a := range args {
		args[i] = strings.ReplaceAll(a, "127.0.0.1:9902", fmt.Sprintf("127.0.0.1:%d", statsPort))
	}
	envoy := startEnvoy(t, envoyproc.Options{
		ConfigPath: path,
		AdminAddr:  fmt.Sprintf("127.0.0.1:%d", adminPort),
		LogPath:    filepath.Join(dir, "envoy.log"),
		ExtraArgs:  args[2:], // after -c path
	})
	return &xdsEnvoy{Process: envoy, nodeID: pod}, statsPort
}

// k8sObject is what these tests read of a manifest's object.
type k8sObject struct {
	Kind     string `yaml:"kind"`
	Metadata struct {
		Name string `yaml:"name"`
	} `yaml:"metadata"`
	Data map[string]string `yaml:"data"`
	Spec struct {
		Template struct {
			Spec struct {
				Containers []k8sContainer `yaml:"containers"`
				Volumes    []struct {
					Name      string `yaml:"name"`
					ConfigMap struct {
						Name string `yaml:"name"`
					} `yaml:"configMap"`
					Secret struct {
						SecretName string `yaml:"secretName"`
					} `yaml:"secret"`
				} `yaml:"volumes"`
			} `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

type k8sContainer struct {
	Name         string   `yaml:"name"`
	Args         []string `yaml:"args"`
	VolumeMounts []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
	} `yaml:"volumeMounts"`
}

// kubernetesObjects reads deploy/kubernetes/<file>: the object of each
// kind and name.
func kubernetesObjects(t *testing.T, file string) map[string]*k8sObject {
	t.Helper()
	root, err := envoyproc.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(root, "deploy", "kubernetes", file))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*k8sObject{}
	for _, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(data), -1) {
		obj := &k8sObject{}
		if err := yaml.Unmarshal([]byte(doc), obj); err != nil {
			t.Fatal(err)
		}
		out[obj.Kind+" "+obj.Metadata.Name] = obj
	}
	return out
}

// container returns the Deployment's container, or fails.
func (o *k8sObject) container(t *testing.T, name string) *k8sContainer {
	t.Helper()
	if o != nil {
		for i, c := range o.Spec.Template.Spec.Containers {
			if c.Name == name {
				return &o.Spec.Template.Spec.Containers[i]
			}
		}
	}
	t.Fatalf("no Deployment with a container %s", name)
	return nil
}

// kubernetesEnvoy returns the Envoy bootstrap of deploy/kubernetes/envoy.yaml's
// ConfigMap and the arguments of its Deployment's envoy container.
func kubernetesEnvoy(t *testing.T) (string, []string) {
	t.Helper()
	objs := kubernetesObjects(t, "envoy.yaml")
	bootstrap := objs["ConfigMap mqtt-sticky-envoy"].Data["envoy.yaml"]
	args := objs["Deployment mqtt-sticky-envoy"].container(t, "envoy").Args
	if bootstrap == "" || len(args) < 2 || args[0] != "-c" {
		t.Fatal("deploy/kubernetes/envoy.yaml: no ConfigMap mqtt-sticky-envoy with envoy.yaml, or no Deployment mqtt-sticky-envoy whose envoy container starts with -c")
	}
	return bootstrap, args
}

// kubernetesXDSHost is the host name the Kubernetes bootstrap's xds
// cluster resolves.
func kubernetesXDSHost(t *testing.T) string {
	t.Helper()
	bootstrap, _ := kubernetesEnvoy(t)
	var cfg map[string]any
	if err := yaml.Unmarshal([]byte(bootstrap), &cfg); err != nil {
		t.Fatal(err)
	}
	return get(t, cfg, "static_resources", "clusters", 0, "load_assignment", "endpoints", 0, "lb_endpoints", 0,
		"endpoint", "address", "socket_address", "address").(string)
}

// k8sControlPlane is deploy/kubernetes/control-plane.yaml's control
// plane: its config file and container.
type k8sControlPlane struct {
	deployment *k8sObject
	container  *k8sContainer
	config     string
}

// kubernetesControlPlane reads the control plane's Deployment and the
// config file its --config names, from the ConfigMap mounted there.
func kubernetesControlPlane(t *testing.T) *k8sControlPlane {
	t.Helper()
	objs := kubernetesObjects(t, "control-plane.yaml")
	d := objs["Deployment mqtt-sticky-control-plane"]
	c := d.container(t, "control-plane")
	if len(c.Args) < 3 || c.Args[0] != "serve" || c.Args[1] != "--config" {
		t.Fatalf("control-plane args %v: want serve --config FILE ...", c.Args)
	}
	cp := &k8sControlPlane{deployment: d, container: c}
	dir, key := path.Split(c.Args[2])
	for _, v := range cp.mounts() {
		if v.mountPath+"/" == dir && v.configMap != "" {
			cp.config = objs["ConfigMap "+v.configMap].Data[key]
		}
	}
	if cp.config == "" {
		t.Fatalf("%s is not a key of a ConfigMap the control plane mounts", c.Args[2])
	}
	return cp
}

type k8sMount struct{ mountPath, configMap, secret string }

// mounts lists the container's volumes where it mounts them.
func (cp *k8sControlPlane) mounts() []k8sMount {
	var out []k8sMount
	for _, vm := range cp.container.VolumeMounts {
		for _, v := range cp.deployment.Spec.Template.Spec.Volumes {
			if v.Name == vm.Name {
				out = append(out, k8sMount{vm.MountPath, v.ConfigMap.Name, v.Secret.SecretName})
			}
		}
	}
	return out
}

// localPaths is the config with each mounted Secret's directory replaced
// by the test's directory for that Secret.
func (cp *k8sControlPlane) localPaths(t *testing.T, secrets map[string]string) string {
	t.Helper()
	config := cp.config
	for _, m := range cp.mounts() {
		if m.secret == "" {
			continue
		}
		dir, ok := secrets[m.secret]
		if !ok {
			t.Fatalf("the control plane mounts Secret %s, for which the test has no files", m.secret)
		}
		config = strings.ReplaceAll(config, m.mountPath+"/", dir+"/")
	}
	return config
}

// serveArgs are the container's arguments after serve --config FILE, for
// pod: what the Deployment adds to the config file.
func (cp *k8sControlPlane) serveArgs(t *testing.T, pod string) []string {
	t.Helper()
	out := []string{}
	for _, a := range cp.container.Args[3:] {
		out = append(out, strings.ReplaceAll(a, "$(POD_NAME)", pod))
	}
	return out
}

// startEtcdTLS starts a one-member etcd that serves clients over TLS only
// and requires a client certificate, and writes that certificate, its
// key and the CA into dir as ca.crt, tls.crt and tls.key.
func startEtcdTLS(t *testing.T, dir string) *etcdproc.Cluster {
	t.Helper()
	ca, err := certs.NewCA("etcd test CA")
	if err != nil {
		t.Fatal(err)
	}
	member, err := ca.Issue(certs.Spec{CN: "etcd-0", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Server: true})
	if err != nil {
		t.Fatal(err)
	}
	client, err := ca.Issue(certs.Spec{CN: "mqtt-sticky"})
	if err != nil {
		t.Fatal(err)
	}
	memberDir := t.TempDir()
	memberCrt, memberKey, err := member.Write(memberDir, "member")
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(memberDir, "ca.crt"), string(ca.PEM))
	writeFile(t, filepath.Join(dir, "ca.crt"), string(ca.PEM))
	writeFile(t, filepath.Join(dir, "tls.crt"), string(client.CertPEM))
	writeFile(t, filepath.Join(dir, "tls.key"), string(client.KeyPEM))
	clientCert, err := client.TLS()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := etcdproc.StartClusterTLS(ctx, t.TempDir(), 1, &etcdproc.TLS{
		CAFile: filepath.Join(memberDir, "ca.crt"), CertFile: memberCrt, KeyFile: memberKey,
		Client: &tls.Config{RootCAs: ca.Pool(), Certificates: []tls.Certificate{clientCert}},
	})
	if err != nil {
		t.Fatalf("etcd: %v", err)
	}
	t.Cleanup(c.Stop)
	return c
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, to, string(data))
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
