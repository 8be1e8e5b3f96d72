package deploy

import (
	"fmt"
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

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	k8sjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"github.com/mqtt-sticky/mqtt-sticky/contract"
	"github.com/mqtt-sticky/mqtt-sticky/xds/model"
)

// namespace is where every manifest puts its objects.
const namespace = "mqtt"

// manifests is every object of kubernetes/*.yaml, decoded.
type manifests struct {
	namespaces   map[string]*corev1.Namespace
	configMaps   map[string]*corev1.ConfigMap
	secrets      map[string]*corev1.Secret
	services     map[string]*corev1.Service
	pvcs         map[string]*corev1.PersistentVolumeClaim
	deployments  map[string]*appsv1.Deployment
	disruptions  map[string]*policyv1.PodDisruptionBudget
	objectsCount int
}

// Every document in kubernetes/*.yaml decodes strictly into its
// Kubernetes API type: case-sensitive field names, no unknown or
// duplicate field, as the API server's strict field validation reads them.
// An apiVersion and kind this test does not know fails too.
func TestManifestsDecodeStrictly(t *testing.T) {
	m := readManifests(t)
	if m.objectsCount == 0 {
		t.Fatal("no objects in kubernetes/*.yaml")
	}
	t.Logf("%d objects decoded strictly", m.objectsCount)
}

// strictDecode must refuse what the API server refuses; if it did not,
// TestManifestsDecodeStrictly could not fail.
func TestStrictDecodeRefusesMistakes(t *testing.T) {
	good := "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  replicas: 1\n"
	if err := strictDecode([]byte(good), &appsv1.Deployment{}); err != nil {
		t.Fatalf("a valid Deployment: %v", err)
	}
	for name, doc := range map[string]string{
		"unknown field":  strings.Replace(good, "replicas:", "replica:", 1),
		"wrong case":     strings.Replace(good, "replicas:", "Replicas:", 1),
		"duplicate key":  good + "kind: Deployment\n",
		"wrong type":     strings.Replace(good, "replicas: 1", "replicas: one", 1),
		"nested unknown": good + "  strategy: {type: Recreate, maxSurge: 1}\n",
	} {
		if err := strictDecode([]byte(doc), &appsv1.Deployment{}); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// The manifests agree with each other, with the control-plane config and
// Envoy bootstrap they carry, with envoy/bootstrap.yaml and with the
// Dockerfile: ports, addresses, the API token, the module's path, the
// node ID, probes, and the store. They ship the production shape: several
// control-plane replicas on etcd.
func TestManifestsAgree(t *testing.T) {
	m := readManifests(t)
	if m.namespaces[namespace] == nil {
		t.Errorf("no Namespace %s", namespace)
	}
	cp := checkControlPlane(t, m)
	d := mustGet(t, m.deployments, "mqtt-sticky-control-plane")
	if cp.Store.Type != model.StoreEtcd || d.Spec.Replicas == nil || *d.Spec.Replicas < 2 {
		t.Errorf("the control plane runs %v replicas on store %q; ship at least 2 on etcd", d.Spec.Replicas, cp.Store.Type)
	}
	checkEnvoy(t, m, cp)
	checkEMQX(t, m, cp)
	checkScrapeConfig(t, m)
}

// The README's single-replica shape (the file store on a claimed volume,
// no etcd), made from the manifests by the edits the README lists, passes
// the same checks. So the list of edits is complete, and the checks of
// the file store can fail and pass.
func TestSingleReplicaShapeAgrees(t *testing.T) {
	m := readManifests(t)
	d := mustGet(t, m.deployments, "mqtt-sticky-control-plane")
	c := container(t, d, "control-plane")

	// 1. The config: state_file in place of the store section.
	cm, key := mountedConfigMap(t, m, d, c, argAfter(t, c.Args, "--config"))
	var cfg map[string]any
	if err := yaml.Unmarshal([]byte(cm.Data[key]), &cfg); err != nil {
		t.Fatal(err)
	}
	delete(cfg, "store")
	cfg["state_file"] = "/var/lib/mqtt-sticky/state.json"
	out, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cm.Data[key] = string(out)

	// 2. One replica, strategy Recreate, no --replica-name.
	one := int32(1)
	d.Spec.Replicas = &one
	d.Spec.Strategy = appsv1.DeploymentStrategy{Type: appsv1.RecreateDeploymentStrategyType}
	i := slices.Index(c.Args, "--replica-name")
	if i < 0 || i+2 > len(c.Args) {
		t.Fatalf("control plane args %v: no --replica-name to remove", c.Args)
	}
	c.Args = slices.Delete(c.Args, i, i+2)

	// 3. The etcd client Secret's volume becomes a claimed volume for
	// the state file.
	for j := range d.Spec.Template.Spec.Volumes {
		if v := &d.Spec.Template.Spec.Volumes[j]; v.Secret != nil && v.Secret.SecretName == "mqtt-sticky-etcd-client" {
			*v = corev1.Volume{Name: "state", VolumeSource: corev1.VolumeSource{
				PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "mqtt-sticky-state"}}}
		}
	}
	for j := range c.VolumeMounts {
		if vm := &c.VolumeMounts[j]; vm.MountPath == "/etc/mqtt-sticky-etcd" {
			*vm = corev1.VolumeMount{Name: "state", MountPath: "/var/lib/mqtt-sticky"}
		}
	}
	m.pvcs["mqtt-sticky-state"] = &corev1.PersistentVolumeClaim{}
	delete(m.secrets, "mqtt-sticky-etcd-client")

	// 4. No disruption budget: with one replica it would block drains.
	delete(m.disruptions, "mqtt-sticky-control-plane")

	cp := checkControlPlane(t, m)
	if cp.Store.Type == model.StoreEtcd || cp.StateFile == "" {
		t.Errorf("the edited config has store %q, state file %q", cp.Store.Type, cp.StateFile)
	}
	checkEnvoy(t, m, cp)
}

// checkScrapeConfig checks prometheus/prometheus.yaml against the
// manifests: each job finds its pods through a headless Service of the
// manifests, on the port that serves its metrics path.
func checkScrapeConfig(t *testing.T, m *manifests) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("prometheus", "prometheus.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		ScrapeConfigs []struct {
			JobName     string `json:"job_name"`
			MetricsPath string `json:"metrics_path"`
			DNSSD       []struct {
				Names []string `json:"names"`
				Type  string   `json:"type"`
				Port  int      `json:"port"`
			} `json:"dns_sd_configs"`
		} `json:"scrape_configs"`
	}
	if err := yaml.Unmarshal(raw, &cfg); err != nil {
		t.Fatal(err)
	}
	want := map[string]struct{ deployment, container, port, path string }{
		"mqtt-sticky-envoy":         {"mqtt-sticky-envoy", "envoy", "stats", "/stats/prometheus"},
		"mqtt-sticky-control-plane": {"mqtt-sticky-control-plane", "control-plane", "api", "/metrics"},
	}
	for _, job := range cfg.ScrapeConfigs {
		w, ok := want[job.JobName]
		if !ok {
			t.Errorf("scrape job %s is not one this test knows", job.JobName)
			continue
		}
		delete(want, job.JobName)
		if job.MetricsPath != w.path || len(job.DNSSD) != 1 || len(job.DNSSD[0].Names) != 1 || job.DNSSD[0].Type != "A" {
			t.Errorf("scrape job %s: path %s, dns_sd_configs %v; want %s from one A record", job.JobName, job.MetricsPath, job.DNSSD, w.path)
			continue
		}
		name, ok := strings.CutSuffix(job.DNSSD[0].Names[0], "."+namespace+".svc.cluster.local")
		svc := m.services[name]
		if !ok || svc == nil || svc.Spec.ClusterIP != corev1.ClusterIPNone {
			t.Errorf("scrape job %s: %s is not a headless Service of the manifests", job.JobName, job.DNSSD[0].Names[0])
			continue
		}
		d := mustGet(t, m.deployments, w.deployment)
		checkSelects(t, "Service "+svc.Name, svc.Spec.Selector, d.Spec.Template.Labels)
		c := container(t, d, w.container)
		if sp := servicePort(t, svc, w.port); int(sp.Port) != job.DNSSD[0].Port || resolvePort(t, c, sp.TargetPort) != containerPort(t, c, w.port) {
			t.Errorf("scrape job %s: port %d; Service %s port %s is %d and targets %s", job.JobName, job.DNSSD[0].Port, svc.Name, w.port, sp.Port, sp.TargetPort.String())
		}
	}
	for job := range want {
		t.Errorf("prometheus.yaml has no scrape job %s", job)
	}
}

// checkControlPlane checks the control plane's Deployment, Services,
// ConfigMap, Secrets and store, and returns its config.
func checkControlPlane(t *testing.T, m *manifests) *model.File {
	t.Helper()
	d := mustGet(t, m.deployments, "mqtt-sticky-control-plane")
	c := container(t, d, "control-plane")
	if len(c.Args) == 0 || c.Args[0] != "serve" {
		t.Fatalf("control plane args %v: not serve", c.Args)
	}
	cfgPath := argAfter(t, c.Args, "--config")
	cm, key := mountedConfigMap(t, m, d, c, cfgPath)
	cfg, err := model.ParseFile([]byte(cm.Data[key]))
	if err != nil {
		t.Fatalf("ConfigMap %s key %s: %v", cm.Name, key, err)
	}
	checkStore(t, m, d, c, cfg)

	// The API listens beyond loopback, so it needs the token: a file
	// from a Secret. xDS listens beyond loopback too, so it runs over
	// mutual TLS, with files from a Secret. No secret is in the
	// environment, which only carries the downward API.
	if cfg.APITokenFile == "" {
		t.Error("the API listens beyond loopback without api_token_file")
	} else {
		secretFile(t, m, d, c, cfg.APITokenFile)
	}
	for _, e := range c.Env {
		if e.ValueFrom == nil || e.ValueFrom.FieldRef == nil {
			t.Errorf("environment variable %s: not from the downward API; give secrets as files", e.Name)
		}
	}
	if x := cfg.XDSTLS; !x.RequireClientCert {
		t.Error("xDS listens beyond loopback without mutual TLS (xds_tls.require_client_cert)")
	} else {
		sameSecret(t, m, d, c, x.CertFile, x.KeyFile, x.ClientCAFile)
	}

	// Ports: the config's listen addresses, the container's named ports,
	// the probes and the Services.
	xdsPort := portOf(t, cfg.XDSListen)
	apiPort := portOf(t, cfg.APIListen)
	if p := containerPort(t, c, "xds"); p != xdsPort {
		t.Errorf("container port xds %d, the control plane serves xDS on %d", p, xdsPort)
	}
	if p := containerPort(t, c, "api"); p != apiPort {
		t.Errorf("container port api %d, the API listens on %d", p, apiPort)
	}
	for name, probe := range map[string]*corev1.Probe{"readiness": c.ReadinessProbe, "liveness": c.LivenessProbe} {
		if probe == nil || probe.HTTPGet == nil || probe.HTTPGet.Path != "/healthz" || resolvePort(t, c, probe.HTTPGet.Port) != apiPort {
			t.Errorf("%s probe: want GET /healthz on the API port %d", name, apiPort)
		}
	}
	// The API: one Service in front of every replica. xDS: a headless
	// Service of the ready replicas, each of which the Envoys' xds
	// cluster lists (checkEnvoy checks that side).
	for _, want := range []struct {
		service, port string
		headless      bool
		target        int
	}{{"mqtt-sticky", "api", false, apiPort}, {xdsService, "xds", true, xdsPort}} {
		svc := mustGet(t, m.services, want.service)
		checkSelects(t, "Service "+svc.Name, svc.Spec.Selector, d.Spec.Template.Labels)
		if len(svc.Spec.Ports) != 1 {
			t.Errorf("Service %s has %d ports, want only %s", svc.Name, len(svc.Spec.Ports), want.port)
		}
		if sp := servicePort(t, svc, want.port); resolvePort(t, c, sp.TargetPort) != want.target {
			t.Errorf("Service %s port %s targets %v, the container serves it on %d", svc.Name, want.port, sp.TargetPort.String(), want.target)
		}
		if headless := svc.Spec.ClusterIP == corev1.ClusterIPNone; headless != want.headless {
			t.Errorf("Service %s: headless %v, want %v", svc.Name, headless, want.headless)
		}
		if svc.Spec.PublishNotReadyAddresses {
			t.Errorf("Service %s publishes replicas that are not ready", svc.Name)
		}
	}
	return cfg
}

// xdsService is the headless Service the Envoys reach the control plane's
// replicas by.
const xdsService = "mqtt-sticky-xds"

// checkStore checks where the control plane keeps its state against its
// Deployment. Several replicas need the etcd store; the file store has
// one writer.
func checkStore(t *testing.T, m *manifests, d *appsv1.Deployment, c *corev1.Container, cfg *model.File) {
	t.Helper()
	replicas := int32(1)
	if d.Spec.Replicas != nil {
		replicas = *d.Spec.Replicas
	}
	if cfg.Store.Type != model.StoreEtcd {
		// The file store: exactly one replica, which owns the state file
		// on a claimed volume; the old one stops before the new starts.
		if replicas != 1 || d.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType {
			t.Errorf("control plane on the file store: %d replicas, strategy %q; it needs exactly 1 and Recreate (several replicas need store type etcd)", replicas, d.Spec.Strategy.Type)
		}
		if cfg.StateFile == "" {
			t.Error("the control plane keeps no state file: endpoint changes would be lost on restart")
		} else if vol := volumeAt(t, d, c, path.Dir(cfg.StateFile)); vol.PersistentVolumeClaim == nil || m.pvcs[vol.PersistentVolumeClaim.ClaimName] == nil {
			t.Errorf("state file %s is not on a PersistentVolumeClaim of the manifests", cfg.StateFile)
		}
		if slices.Contains(c.Args, "--replica-name") {
			t.Error("--replica-name with the file store: the control plane refuses to start")
		}
		checkDisruptionBudget(t, m, d, replicas)
		return
	}

	// etcd, over TLS with a client certificate, and a password (if any)
	// from a file: all from one mounted Secret.
	e := cfg.Store.Etcd
	for _, u := range e.Endpoints {
		if !strings.HasPrefix(u, "https://") {
			t.Errorf("etcd endpoint %s: not over TLS", u)
		}
	}
	if e.CAFile == "" || e.CertFile == "" {
		t.Error("etcd: no CA or no client certificate")
	} else {
		files := []string{e.CAFile, e.CertFile, e.KeyFile}
		if e.PasswordFile != "" {
			files = append(files, e.PasswordFile)
		}
		sameSecret(t, m, d, c, files...)
	}
	// Each replica is named after its pod.
	if argAfter(t, c.Args, "--replica-name") != "$(POD_NAME)" || fieldRef(c, "POD_NAME") != "metadata.name" {
		t.Error("--replica-name is not $(POD_NAME) from metadata.name")
	}
	for _, v := range d.Spec.Template.Spec.Volumes {
		if v.PersistentVolumeClaim != nil {
			t.Errorf("volume %s: a claimed volume, which the etcd store does not need and which keeps replicas on one node", v.Name)
		}
	}
	// A rolling update never takes both down, voluntary disruptions
	// leave one, and the replicas prefer different nodes.
	if s := d.Spec.Strategy; s.Type != appsv1.RollingUpdateDeploymentStrategyType || s.RollingUpdate == nil ||
		s.RollingUpdate.MaxUnavailable == nil || s.RollingUpdate.MaxUnavailable.String() != "0" {
		t.Errorf("control plane strategy %+v: want RollingUpdate with maxUnavailable 0", s)
	}
	if !checkDisruptionBudget(t, m, d, replicas) {
		t.Error("no PodDisruptionBudget selects the control plane and keeps a replica up")
	}
	var terms []corev1.WeightedPodAffinityTerm
	if a := d.Spec.Template.Spec.Affinity; a != nil && a.PodAntiAffinity != nil {
		terms = a.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution
	}
	if !slices.ContainsFunc(terms, func(w corev1.WeightedPodAffinityTerm) bool {
		return w.PodAffinityTerm.TopologyKey == corev1.LabelHostname && w.PodAffinityTerm.LabelSelector != nil &&
			len(w.PodAffinityTerm.LabelSelector.MatchLabels) > 0 && isSubset(w.PodAffinityTerm.LabelSelector.MatchLabels, d.Spec.Template.Labels)
	}) {
		t.Error("the control-plane replicas have no preferred pod anti-affinity across nodes")
	}
}

// checkDisruptionBudget checks the PodDisruptionBudgets that select the
// Deployment's pods: each keeps at least one up, and lets one go (a
// budget of every replica blocks every drain). It reports whether one
// keeps at least one up.
func checkDisruptionBudget(t *testing.T, m *manifests, d *appsv1.Deployment, replicas int32) bool {
	t.Helper()
	keeps := false
	for _, pdb := range m.disruptions {
		if pdb.Spec.Selector == nil || !isSubset(pdb.Spec.Selector.MatchLabels, d.Spec.Template.Labels) {
			continue
		}
		least := pdb.Spec.MinAvailable
		if least == nil || least.Type != intstr.Int || least.IntVal < 1 || least.IntVal >= replicas {
			t.Errorf("PodDisruptionBudget %s: minAvailable %v of %d replicas; it must keep at least 1 up and let 1 go, or it blocks every node drain", pdb.Name, least, replicas)
			continue
		}
		keeps = true
	}
	return keeps
}

// sameSecret checks that the files come from one Secret the container
// mounts.
func sameSecret(t *testing.T, m *manifests, d *appsv1.Deployment, c *corev1.Container, files ...string) {
	t.Helper()
	first := secretFile(t, m, d, c, files[0])
	for _, f := range files[1:] {
		if s := secretFile(t, m, d, c, f); s != first {
			t.Errorf("%s is in Secret %s, %s in %s: want one Secret", f, s.Name, files[0], first.Name)
		}
	}
}

// checkEnvoy checks Envoy's Deployment, bootstrap, Service and
// disruption budget.
func checkEnvoy(t *testing.T, m *manifests, cp *model.File) {
	t.Helper()
	d := mustGet(t, m.deployments, "mqtt-sticky-envoy")
	c := container(t, d, "envoy")
	if !slices.Equal(c.Command, []string{"envoy"}) {
		t.Errorf("envoy command %v", c.Command)
	}
	bootPath := argAfter(t, c.Args, "-c")
	cm, key := mountedConfigMap(t, m, d, c, bootPath)
	var boot map[string]any
	if err := yaml.Unmarshal([]byte(cm.Data[key]), &boot); err != nil {
		t.Fatalf("ConfigMap %s key %s: %v", cm.Name, key, err)
	}

	// The node ID is the pod's name, from the downward API.
	if argAfter(t, c.Args, "--service-node") != "$(POD_NAME)" {
		t.Error("--service-node is not $(POD_NAME)")
	}
	if fieldRef(c, "POD_NAME") != "metadata.name" {
		t.Error("POD_NAME does not come from metadata.name")
	}

	// The module: where the Dockerfile's envoy image puts it.
	dockerfile, err := os.ReadFile(filepath.Join("..", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	copyLine := regexp.MustCompile(`(?m)^COPY --from=module /out/(libmqtt_sticky\.so) (\S+)/libmqtt_sticky\.so$`).FindSubmatch(dockerfile)
	if copyLine == nil || string(copyLine[1]) != "lib"+contract.ModuleName+".so" {
		t.Fatal("Dockerfile: no COPY of the module into the Envoy image")
	}
	if got := envValue(c, "ENVOY_DYNAMIC_MODULES_SEARCH_PATH"); got != string(copyLine[2]) {
		t.Errorf("ENVOY_DYNAMIC_MODULES_SEARCH_PATH %q, the image has the module in %q", got, copyLine[2])
	}
	envoyVersion := regexp.MustCompile(`(?m)^ARG ENVOY_IMAGE=envoyproxy/envoy:v(1\.40\.\d+)$`).FindSubmatch(dockerfile)
	if envoyVersion == nil || !strings.HasSuffix(c.Image, ":"+string(envoyVersion[1])) {
		t.Errorf("envoy image %s, the Dockerfile builds it on Envoy %s", c.Image, envoyVersion)
	}

	// The bootstrap is envoy/bootstrap-mtls.yaml but for the control
	// plane's address and name, the certificate files, and the stats
	// listener.
	raw, err := os.ReadFile(filepath.Join("..", "envoy", "bootstrap-mtls.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var ref map[string]any
	if err := yaml.Unmarshal(raw, &ref); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"dynamic_resources", "admin", "overload_manager"} {
		if !reflect.DeepEqual(boot[k], ref[k]) {
			t.Errorf("bootstrap %s differs from envoy/bootstrap.yaml's:\n%v\n%v", k, boot[k], ref[k])
		}
	}
	if get(t, boot, "node", "cluster") != get(t, ref, "node", "cluster") {
		t.Error("bootstrap node.cluster differs from envoy/bootstrap.yaml's")
	}
	if argAfter(t, c.Args, "--service-cluster") != get(t, ref, "node", "cluster") {
		t.Error("--service-cluster differs from the bootstrap's node.cluster")
	}
	xds := clusterNamed(t, boot, "xds")
	refXDS := clusterNamed(t, ref, "xds")
	addr := get(t, xds, "load_assignment", "endpoints", 0, "lb_endpoints", 0, "endpoint", "address", "socket_address").(map[string]any)
	// The xds cluster resolves the control plane's headless Service, and
	// makes every address (every ready replica) a host: when the stream
	// to one breaks, the ADS retry policy tries the next.
	svc := mustGet(t, m.services, xdsService)
	wantHost := fmt.Sprintf("%s.%s.svc.cluster.local", svc.Name, svc.Namespace)
	if xds["type"] != "STRICT_DNS" {
		t.Errorf("bootstrap xds cluster type %v: only STRICT_DNS makes each replica a host", xds["type"])
	}
	if addr["address"] != wantHost || toInt(t, addr["port_value"]) != int(servicePort(t, svc, "xds").Port) {
		t.Errorf("bootstrap xDS address %v:%v, want Service %s port %d", addr["address"], addr["port_value"], wantHost, servicePort(t, svc, "xds").Port)
	}
	delete(get(t, xds, "load_assignment", "endpoints", 0, "lb_endpoints", 0, "endpoint", "address").(map[string]any), "socket_address")
	delete(get(t, refXDS, "load_assignment", "endpoints", 0, "lb_endpoints", 0, "endpoint", "address").(map[string]any), "socket_address")
	checkEnvoyTLS(t, m, d, c, xds, wantHost)
	checkEnvoyTLS(t, m, nil, nil, refXDS, "")
	if !reflect.DeepEqual(xds, refXDS) {
		t.Errorf("bootstrap xds cluster differs from envoy/bootstrap-mtls.yaml's beyond its address, name and files:\n%v\n%v", xds, refXDS)
	}

	// The stats listener proxies only /clusters, /ready and
	// /stats/prometheus to the admin address; the probes use it, and the
	// node tells the control plane to read /clusters there.
	statsPort, routes := statsListener(t, boot)
	if !slices.Equal(routes, []string{"/clusters", "/ready", "/stats/prometheus"}) {
		t.Errorf("stats listener routes %v, want only /clusters, /ready and /stats/prometheus", routes)
	}
	var extra map[string]any
	if err := yaml.UnmarshalStrict([]byte(argAfter(t, c.Args, "--config-yaml")), &extra); err != nil {
		t.Fatalf("--config-yaml: %v", err)
	}
	if got, want := get(t, extra, "node", "metadata", "admin_address"), fmt.Sprintf("$(POD_IP):%d", statsPort); got != want {
		t.Errorf("--config-yaml sets admin_address %v, want %s (the stats listener on the pod's IP)", got, want)
	}
	if fieldRef(c, "POD_IP") != "status.podIP" {
		t.Error("POD_IP does not come from status.podIP")
	}
	if get(t, boot, "node", "metadata") != nil {
		t.Error("the bootstrap sets node.metadata, which --config-yaml replaces")
	}
	adminAddr := get(t, boot, "admin", "address", "socket_address").(map[string]any)
	adminEP := get(t, clusterNamed(t, boot, "admin"), "load_assignment", "endpoints", 0, "lb_endpoints", 0, "endpoint", "address", "socket_address").(map[string]any)
	if !reflect.DeepEqual(adminAddr, adminEP) {
		t.Errorf("admin cluster %v, admin listens on %v", adminEP, adminAddr)
	}
	if p := containerPort(t, c, "stats"); p != statsPort {
		t.Errorf("container port stats %d, the stats listener is on %d", p, statsPort)
	}
	for name, probe := range map[string]*corev1.Probe{"readiness": c.ReadinessProbe, "liveness": c.LivenessProbe} {
		if probe == nil || probe.HTTPGet == nil || probe.HTTPGet.Path != "/ready" || resolvePort(t, c, probe.HTTPGet.Port) != statsPort {
			t.Errorf("%s probe: want GET /ready on the stats port %d", name, statsPort)
		}
	}

	// MQTT: the control plane's listener port, published by Service mqtt
	// with the client's address kept.
	if len(cp.Listeners) != 1 {
		t.Fatalf("the control plane serves %d listeners; the manifests publish one", len(cp.Listeners))
	}
	l := cp.Listeners[0]
	if p := containerPort(t, c, "mqtt"); p != l.Port {
		t.Errorf("container port mqtt %d, the control plane's listener is on %d", p, l.Port)
	}
	if l.ModuleName != contract.ModuleName {
		t.Errorf("listener %s loads module %q", l.Name, l.ModuleName)
	}
	mqttSvc := mustGet(t, m.services, "mqtt")
	checkSelects(t, "Service mqtt", mqttSvc.Spec.Selector, d.Spec.Template.Labels)
	if resolvePort(t, c, servicePort(t, mqttSvc, "mqtt").TargetPort) != l.Port {
		t.Error("Service mqtt does not target the MQTT listener")
	}
	if mqttSvc.Spec.ExternalTrafficPolicy != corev1.ServiceExternalTrafficPolicyLocal {
		t.Error("Service mqtt: externalTrafficPolicy is not Local, so brokers would see a node's address in the PROXY header")
	}
	pdb := mustGet(t, m.disruptions, "mqtt-sticky-envoy")
	checkSelects(t, "PodDisruptionBudget", pdb.Spec.Selector.MatchLabels, d.Spec.Template.Labels)
}

// checkEnvoyTLS checks the xds cluster's TLS: the server name it asks for
// and checks is the control plane's Service, and its certificate, key and
// CA are files of one Secret the container mounts. It then removes these,
// so the rest of the cluster can be compared with envoy/bootstrap-mtls.yaml's.
// With d nil (that reference file), it only removes them.
func checkEnvoyTLS(t *testing.T, m *manifests, d *appsv1.Deployment, c *corev1.Container, xds map[string]any, host string) {
	t.Helper()
	tlsCtx := get(t, xds, "transport_socket", "typed_config").(map[string]any)
	common := tlsCtx["common_tls_context"]
	files := []map[string]any{
		get(t, common, "tls_certificates", 0, "certificate_chain").(map[string]any),
		get(t, common, "tls_certificates", 0, "private_key").(map[string]any),
		get(t, common, "validation_context", "trusted_ca").(map[string]any),
	}
	san := get(t, common, "validation_context", "match_typed_subject_alt_names", 0, "matcher").(map[string]any)
	if d != nil {
		if tlsCtx["sni"] != host || san["exact"] != host {
			t.Errorf("Envoy asks for %v and checks the name %v; the control plane is %s", tlsCtx["sni"], san["exact"], host)
		}
		client := secretFile(t, m, d, c, files[0]["filename"].(string))
		for _, f := range files[1:] {
			if s := secretFile(t, m, d, c, f["filename"].(string)); s != client {
				t.Errorf("%s is not in the client certificate's Secret %s", f["filename"], client.Name)
			}
		}
	}
	delete(tlsCtx, "sni")
	delete(san, "exact")
	for _, f := range files {
		delete(f, "filename")
	}
}

// secretFile returns the Secret of the manifests that the container
// mounts file from, and checks the Secret has the file's key.
func secretFile(t *testing.T, m *manifests, d *appsv1.Deployment, c *corev1.Container, file string) *corev1.Secret {
	t.Helper()
	vol := volumeAt(t, d, c, path.Dir(file))
	if vol.Secret == nil {
		t.Fatalf("%s is not on a Secret volume", file)
	}
	s := mustGet(t, m.secrets, vol.Secret.SecretName)
	if _, ok := s.StringData[path.Base(file)]; !ok {
		t.Errorf("Secret %s has no key %s, which %s names", s.Name, path.Base(file), file)
	}
	return s
}

// checkEMQX checks the EMQX headless Service against the control plane's
// brokers.
func checkEMQX(t *testing.T, m *manifests, cp *model.File) {
	t.Helper()
	svc := mustGet(t, m.services, "emqx-headless")
	if svc.Spec.ClusterIP != corev1.ClusterIPNone {
		t.Errorf("emqx-headless: clusterIP %q, want None (the hash must see every broker)", svc.Spec.ClusterIP)
	}
	if svc.Spec.PublishNotReadyAddresses {
		t.Error("emqx-headless publishes pods that are not ready")
	}
	brokers := cp.Cluster(cp.Listeners[0].Cluster)
	if brokers == nil {
		t.Fatalf("no cluster %s", cp.Listeners[0].Cluster)
	}
	if brokers.ProxyProtocol == model.ProxyOff {
		t.Error("the control plane sends no PROXY header; EMQX's listener requires one")
	}
	// The brokers are the SRV records of the headless Service's MQTT port.
	mqttPort := servicePort(t, svc, "mqtt")
	want := fmt.Sprintf("_%s._%s.%s.%s.svc.cluster.local", mqttPort.Name, strings.ToLower(string(mqttPort.Protocol)), svc.Name, svc.Namespace)
	if d := brokers.Discovery; d == nil || d.DNS == nil || d.DNS.Name != want || d.DNS.Record != model.RecordSRV {
		t.Errorf("cluster %s: discovery %+v, want the SRV records %s", brokers.Name, brokers.Discovery, want)
	}
}

// fieldRef returns the downward-API field an environment variable comes
// from.
func fieldRef(c *corev1.Container, name string) string {
	for _, e := range c.Env {
		if e.Name == name && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			return e.ValueFrom.FieldRef.FieldPath
		}
	}
	return ""
}

// readManifests decodes every document of kubernetes/*.yaml strictly,
// and the Secrets' shapes in kubernetes/secrets/*.yaml, which are not
// applied with the rest.
func readManifests(t *testing.T) *manifests {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join("kubernetes", "*.yaml"))
	secrets, _ := filepath.Glob(filepath.Join("kubernetes", "secrets", "*.yaml"))
	if len(files) == 0 || len(secrets) == 0 {
		t.Fatal("no kubernetes/*.yaml or kubernetes/secrets/*.yaml")
	}
	files = append(files, secrets...)
	m := &manifests{
		namespaces: map[string]*corev1.Namespace{}, configMaps: map[string]*corev1.ConfigMap{},
		secrets: map[string]*corev1.Secret{}, services: map[string]*corev1.Service{},
		pvcs: map[string]*corev1.PersistentVolumeClaim{}, deployments: map[string]*appsv1.Deployment{},
		disruptions: map[string]*policyv1.PodDisruptionBudget{},
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range splitDocuments(data) {
			where := fmt.Sprintf("%s document %d", f, i+1)
			var tm struct{ APIVersion, Kind string }
			if err := yaml.Unmarshal(doc, &tm); err != nil {
				t.Fatalf("%s: %v", where, err)
			}
			var obj interface{ GetName() string }
			var add func()
			switch tm.APIVersion + " " + tm.Kind {
			case "v1 Namespace":
				o := &corev1.Namespace{}
				obj, add = o, func() { m.namespaces[o.Name] = o }
			case "v1 ConfigMap":
				o := &corev1.ConfigMap{}
				obj, add = o, func() { m.configMaps[o.Name] = o }
			case "v1 Secret":
				// Applied with the rest, a placeholder Secret would
				// replace the real one with empty values.
				if filepath.Base(filepath.Dir(f)) != "secrets" {
					t.Errorf("%s: Secret in a file `kubectl apply -f deploy/kubernetes/` applies; keep Secrets in kubernetes/secrets/", where)
				}
				o := &corev1.Secret{}
				obj, add = o, func() { m.secrets[o.Name] = o }
			case "v1 Service":
				o := &corev1.Service{}
				obj, add = o, func() { m.services[o.Name] = o }
			case "v1 PersistentVolumeClaim":
				o := &corev1.PersistentVolumeClaim{}
				obj, add = o, func() { m.pvcs[o.Name] = o }
			case "apps/v1 Deployment":
				o := &appsv1.Deployment{}
				obj, add = o, func() { m.deployments[o.Name] = o }
			case "policy/v1 PodDisruptionBudget":
				o := &policyv1.PodDisruptionBudget{}
				obj, add = o, func() { m.disruptions[o.Name] = o }
			default:
				t.Fatalf("%s: %s %s is not a kind this test decodes", where, tm.APIVersion, tm.Kind)
			}
			if err := strictDecode(doc, obj); err != nil {
				t.Fatalf("%s (%s): %v", where, tm.Kind, err)
			}
			ns := reflect.ValueOf(obj).Elem().FieldByName("Namespace").String()
			if tm.Kind != "Namespace" && ns != namespace {
				t.Errorf("%s %s: namespace %q, want %q", tm.Kind, obj.GetName(), ns, namespace)
			}
			add()
			m.objectsCount++
		}
	}
	return m
}

// splitDocuments splits a YAML stream at its "---" lines, dropping empty
// documents.
func splitDocuments(data []byte) [][]byte {
	var out [][]byte
	for _, d := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(data), -1) {
		if strings.TrimSpace(regexp.MustCompile(`(?m)^\s*#.*$`).ReplaceAllString(d, "")) != "" {
			out = append(out, []byte(d))
		}
	}
	return out
}

// strictDecode reads YAML as the API server's strict field validation
// does: duplicate keys, unknown fields and fields in the wrong case fail.
func strictDecode(doc []byte, into any) error {
	js, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return err
	}
	strict, err := k8sjson.UnmarshalStrict(js, into)
	if err != nil {
		return err
	}
	return errorsJoin(strict)
}

func errorsJoin(errs []error) error {
	if len(errs) == 0 {
		return nil
	}
	var msgs []string
	for _, e := range errs {
		msgs = append(msgs, e.Error())
	}
	return fmt.Errorf("%s", strings.Join(msgs, "; "))
}

func mustGet[T any](t *testing.T, m map[string]*T, name string) *T {
	t.Helper()
	v := m[name]
	if v == nil {
		t.Fatalf("%T %s is not in the manifests", v, name)
	}
	return v
}

func container(t *testing.T, d *appsv1.Deployment, name string) *corev1.Container {
	t.Helper()
	for i := range d.Spec.Template.Spec.Containers {
		if c := &d.Spec.Template.Spec.Containers[i]; c.Name == name {
			return c
		}
	}
	t.Fatalf("Deployment %s has no container %s", d.Name, name)
	return nil
}

// argAfter returns the argument that follows flag.
func argAfter(t *testing.T, args []string, flag string) string {
	t.Helper()
	i := slices.Index(args, flag)
	if i < 0 || i+1 >= len(args) {
		t.Fatalf("args %v: no %s", args, flag)
	}
	return args[i+1]
}

// volumeAt returns the volume mounted at dir in container c.
func volumeAt(t *testing.T, d *appsv1.Deployment, c *corev1.Container, dir string) *corev1.Volume {
	t.Helper()
	for _, vm := range c.VolumeMounts {
		if vm.MountPath == dir {
			for i := range d.Spec.Template.Spec.Volumes {
				if v := &d.Spec.Template.Spec.Volumes[i]; v.Name == vm.Name {
					return v
				}
			}
			t.Fatalf("Deployment %s mounts volume %s, which it does not define", d.Name, vm.Name)
		}
	}
	t.Fatalf("Deployment %s: container %s mounts nothing at %s", d.Name, c.Name, dir)
	return nil
}

// mountedConfigMap returns the ConfigMap and key a file path in the
// container comes from.
func mountedConfigMap(t *testing.T, m *manifests, d *appsv1.Deployment, c *corev1.Container, file string) (*corev1.ConfigMap, string) {
	t.Helper()
	v := volumeAt(t, d, c, path.Dir(file))
	if v.ConfigMap == nil {
		t.Fatalf("%s is not from a ConfigMap", file)
	}
	cm := mustGet(t, m.configMaps, v.ConfigMap.Name)
	key := path.Base(file)
	if _, ok := cm.Data[key]; !ok {
		t.Fatalf("ConfigMap %s has no key %s for %s", cm.Name, key, file)
	}
	return cm, key
}

func containerPort(t *testing.T, c *corev1.Container, name string) int {
	t.Helper()
	for _, p := range c.Ports {
		if p.Name == name {
			return int(p.ContainerPort)
		}
	}
	t.Fatalf("container %s has no port %s", c.Name, name)
	return 0
}

// resolvePort returns a port number, looking a name up in the container.
func resolvePort(t *testing.T, c *corev1.Container, p intstr.IntOrString) int {
	t.Helper()
	if p.Type == intstr.Int {
		return p.IntValue()
	}
	return containerPort(t, c, p.StrVal)
}

func servicePort(t *testing.T, s *corev1.Service, name string) corev1.ServicePort {
	t.Helper()
	for _, p := range s.Spec.Ports {
		if p.Name == name {
			return p
		}
	}
	t.Fatalf("Service %s has no port %s", s.Name, name)
	return corev1.ServicePort{}
}

// isSubset reports whether selector selects pods with labels.
func isSubset(selector, labels map[string]string) bool {
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return len(selector) > 0
}

func checkSelects(t *testing.T, what string, selector, labels map[string]string) {
	t.Helper()
	if len(selector) == 0 {
		t.Errorf("%s selects nothing", what)
	}
	for k, v := range selector {
		if labels[k] != v {
			t.Errorf("%s selects %s=%s, which the pods lack", what, k, v)
		}
	}
}

func envValue(c *corev1.Container, name string) string {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}

func portOf(t *testing.T, hostport string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(hostport)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// get walks decoded YAML by map keys and list indexes.
func get(t *testing.T, v any, keys ...any) any {
	t.Helper()
	for _, k := range keys {
		switch k := k.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				t.Fatalf("path %v: %q is not in a map", keys, k)
			}
			v = m[k]
		case int:
			l, ok := v.([]any)
			if !ok || k >= len(l) {
				t.Fatalf("path %v: no index %d", keys, k)
			}
			v = l[k]
		}
	}
	return v
}

func toInt(t *testing.T, v any) int {
	t.Helper()
	f, ok := v.(float64)
	if !ok {
		t.Fatalf("%v is not a number", v)
	}
	return int(f)
}

// clusterNamed returns a static cluster of a bootstrap.
func clusterNamed(t *testing.T, boot map[string]any, name string) map[string]any {
	t.Helper()
	clusters, _ := get(t, boot, "static_resources", "clusters").([]any)
	for _, c := range clusters {
		if cm, ok := c.(map[string]any); ok && cm["name"] == name {
			return cm
		}
	}
	t.Fatalf("bootstrap has no static cluster %s", name)
	return nil
}

// statsListener returns the port of the bootstrap's "stats" listener and
// the paths it routes to the admin cluster.
func statsListener(t *testing.T, boot map[string]any) (int, []string) {
	t.Helper()
	listeners, _ := get(t, boot, "static_resources", "listeners").([]any)
	for _, l := range listeners {
		lm, _ := l.(map[string]any)
		if lm["name"] != "stats" {
			continue
		}
		port := toInt(t, get(t, lm, "address", "socket_address", "port_value"))
		hcm := get(t, lm, "filter_chains", 0, "filters", 0, "typed_config")
		hosts, _ := get(t, hcm, "route_config", "virtual_hosts").([]any)
		var paths []string
		for _, h := range hosts {
			routes, _ := get(t, h, "routes").([]any)
			for _, r := range routes {
				if get(t, r, "route", "cluster") != "admin" {
					t.Errorf("stats listener route %v does not go to the admin cluster", r)
				}
				p, _ := get(t, r, "match", "path").(string)
				if p == "" {
					t.Errorf("stats listener route %v matches more than one exact path", r)
				}
				paths = append(paths, p)
			}
		}
		slices.Sort(paths)
		return port, paths
	}
	t.Fatal("bootstrap has no stats listener")
	return 0, nil
}
