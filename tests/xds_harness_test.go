package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/mqtt-sticky/mqtt-sticky/api"
	"github.com/mqtt-sticky/mqtt-sticky/internal/broker"
	"github.com/mqtt-sticky/mqtt-sticky/internal/envoyproc"
	"github.com/mqtt-sticky/mqtt-sticky/xds/health"
	"github.com/mqtt-sticky/mqtt-sticky/xds/model"
)

// cliPath is the mqtt-sticky binary built by TestMain.
var cliPath string

// controlPlane is a running `mqtt-sticky serve`.
type controlPlane struct {
	name       string // the replica name, with --store etcd
	cmd        *exec.Cmd
	exited     chan struct{}
	xdsAddr    string
	apiAddr    string
	configPath string
	statePath  string
	// storeArgs replace --state STATEPATH: e.g. --store etcd ...
	storeArgs []string
	extraArgs []string // more serve flags
	token     string   // the API token, when the control plane has one
	logPath   string
	client    *api.Client
}

// fleetConfig writes a serve config: one listener on listenPort, cluster
// "brokers" of the given brokers, with the given cluster options (YAML
// fragment, indented for the cluster mapping).
func fleetConfig(t *testing.T, listenPort int, brokers []*broker.Broker, clusterOpts string) string {
	t.Helper()
	var eps []string
	for _, b := range brokers {
		host, port := splitHostPort(t, b.Addr())
		eps = append(eps, fmt.Sprintf("  - {address: %s, port: %d}", host, port))
	}
	cfg := fmt.Sprintf(`listeners:
- name: mqtt
  address: 127.0.0.1
  port: %d
  access_log: true
  filter: {connect_timeout_ms: 5000}
clusters:
- name: brokers
%s
  endpoints:
%s
`, listenPort, clusterOpts, strings.Join(eps, "\n"))
	path := filepath.Join(t.TempDir(), "mqtt-sticky.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// startControlPlane runs `mqtt-sticky serve` with a config file and a state
// file, and waits until its API answers.
func startControlPlane(t *testing.T, configPath, statePath string, args ...string) *controlPlane {
	t.Helper()
	cp := &controlPlane{
		configPath: configPath,
		statePath:  statePath,
		xdsAddr:    fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		apiAddr:    fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		extraArgs:  args,
	}
	cp.start(t)
	t.Cleanup(func() { cp.stop(t) })
	return cp
}

// start starts the control plane, or restarts a stopped one on the same
// addresses, and waits until its API answers.
func (cp *controlPlane) start(t *testing.T) {
	t.Helper()
	cp.logPath = filepath.Join(t.TempDir(), "serve.log")
	logf, err := os.Create(cp.logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	storeArgs := cp.storeArgs
	if storeArgs == nil {
		storeArgs = []string{"--state", cp.statePath}
	}
	args := append([]string{"serve", "--config", cp.configPath, "--xds", cp.xdsAddr, "--api", cp.apiAddr, "--log-level", "debug"}, storeArgs...)
	cp.cmd = exec.Command(cliPath, append(args, cp.extraArgs...)...)
	cp.cmd.Stdout, cp.cmd.Stderr = logf, logf
	if err := cp.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	cp.exited = make(chan struct{})
	go func() { cp.cmd.Wait(); close(cp.exited) }()
	cp.client = &api.Client{BaseURL: "http://" + cp.apiAddr, Token: cp.token}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for backoff := 5 * time.Millisecond; ; backoff = min(backoff*2, 100*time.Millisecond) {
		resp, err := http.Get("http://" + cp.apiAddr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		select {
		case <-cp.exited:
			log, _ := os.ReadFile(cp.logPath)
			t.Fatalf("mqtt-sticky serve exited:\n%s", log)
		case <-ctx.Done():
			t.Fatalf("mqtt-sticky serve not ready: %v", err)
		case <-time.After(backoff):
		}
	}
}

// kill stops the control plane at once (SIGKILL), as a crash would.
func (cp *controlPlane) kill(t *testing.T) {
	t.Helper()
	cp.cmd.Process.Kill()
	<-cp.exited
}

func (cp *controlPlane) stop(t *testing.T) {
	select {
	case <-cp.exited:
		return
	default:
	}
	cp.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-cp.exited:
	case <-time.After(10 * time.Second):
		cp.cmd.Process.Kill()
		<-cp.exited
		t.Error("mqtt-sticky serve did not stop within 10s of SIGTERM")
	}
	if t.Failed() {
		log, _ := os.ReadFile(cp.logPath)
		t.Logf("mqtt-sticky serve log:\n%s", lastLines(string(log), 40))
	}
}

// xdsEnvoy is an Envoy configured by envoy/bootstrap.yaml.
type xdsEnvoy struct {
	*envoyproc.Process
	nodeID string
	delta  bool
	log    string
}

// startXDSEnvoy starts an Envoy from envoy/bootstrap.yaml pointed at the
// control plane, with ADS state of the world, or delta when delta is set.
func startXDSEnvoy(t *testing.T, cp *controlPlane, nodeID string, delta bool, extraArgs ...string) *xdsEnvoy {
	t.Helper()
	return startXDSEnvoyWith(t, nodeID, delta, []*controlPlane{cp}, "bootstrap.yaml", nil, extraArgs)
}

// startXDSEnvoyFrom starts an Envoy from a bootstrap in envoy/, changed by
// mutate, pointed at the control plane.
func startXDSEnvoyFrom(t *testing.T, cp *controlPlane, nodeID string, delta bool, bootstrap string, mutate func(cfg map[string]any), extraArgs ...string) *xdsEnvoy {
	t.Helper()
	return startXDSEnvoyWith(t, nodeID, delta, []*controlPlane{cp}, bootstrap, mutate, extraArgs)
}

// startXDSEnvoyTo is startXDSEnvoy with every control plane of cps as an
// endpoint of the bootstrap's xds cluster, as README.md shows for
// several replicas.
func startXDSEnvoyTo(t *testing.T, nodeID string, delta bool, cps ...*controlPlane) *xdsEnvoy {
	t.Helper()
	return startXDSEnvoyWith(t, nodeID, delta, cps, "bootstrap.yaml", nil, nil)
}

func startXDSEnvoyWith(t *testing.T, nodeID string, delta bool, cps []*controlPlane, bootstrap string, mutate func(cfg map[string]any), extraArgs []string) *xdsEnvoy {
	t.Helper()
	root, err := envoyproc.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(root, "envoy", bootstrap))
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := yaml.Unmarshal(raw, &cfg); err != nil {
		t.Fatal(err)
	}
	if mutate != nil {
		mutate(cfg)
	}
	adminPort := freePort(t)
	set(t, cfg, adminPort, "admin", "address", "socket_address", "port_value")
	set(t, cfg, fmt.Sprintf("127.0.0.1:%d", adminPort), "node", "metadata", "admin_address")
	var xdsEndpoints []any
	for _, cp := range cps {
		host, port := splitHostPort(t, cp.xdsAddr)
		xdsEndpoints = append(xdsEndpoints, map[string]any{"endpoint": map[string]any{"address": map[string]any{
			"socket_address": map[string]any{"address": host, "port_value": port}}}})
	}
	set(t, cfg, xdsEndpoints, "static_resources", "clusters", 0, "load_assignment", "endpoints", 0, "lb_endpoints")
	if delta {
		set(t, cfg, "DELTA_GRPC", "dynamic_resources", "ads_config", "api_type")
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "bootstrap.yaml")
	out, _ := yaml.Marshal(cfg)
	if err := os.WriteFile(path, out, 0o644); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "envoy.log")
	p := startEnvoy(t, envoyproc.Options{
		ConfigPath: path,
		AdminAddr:  fmt.Sprintf("127.0.0.1:%d", adminPort),
		LogPath:    logPath,
		NodeID:     nodeID,
		Cluster:    "mqtt-sticky",
		// The access log says which Envoy routed what; Envoy writes it
		// out every 10s by default.
		ExtraArgs: append([]string{"--file-flush-interval-msec", "50"}, extraArgs...),
	})
	return &xdsEnvoy{Process: p, nodeID: nodeID, delta: delta, log: logPath}
}

// clusterHost is one host of an Envoy cluster as the admin API reports it.
type clusterHost struct {
	Address string
	Healthy bool
}

// hosts returns the hosts of cluster "brokers" as this Envoy sees them.
func (e *xdsEnvoy) hosts(t *testing.T) []clusterHost {
	t.Helper()
	return clusterHosts(t, e.Process, "brokers")
}

// clusterHosts returns the hosts of an Envoy's cluster, from its admin
// /clusters, sorted by address.
func clusterHosts(t testing.TB, p *envoyproc.Process, cluster string) []clusterHost {
	t.Helper()
	code, body, err := p.Get(context.Background(), "/clusters?format=json")
	if err != nil || code != 200 {
		t.Fatalf("GET /clusters: %d %v", code, err)
	}
	clusters, err := health.ParseClusters(strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	var out []clusterHost
	for addr, h := range clusters[cluster] {
		out = append(out, clusterHost{Address: addr, Healthy: h.Healthy})
	}
	slices.SortFunc(out, func(a, b clusterHost) int { return strings.Compare(a.Address, b.Address) })
	return out
}

// waitAllHealthy waits until every host of an Envoy's cluster is healthy
// and there are want of them.
func waitAllHealthy(t testing.TB, p *envoyproc.Process, cluster string, want int, within time.Duration) {
	t.Helper()
	waitFor(t, within, fmt.Sprintf("%d healthy hosts in cluster %s", want, cluster), func() bool {
		last := clusterHosts(t, p, cluster)
		healthy := 0
		for _, h := range last {
			if h.Healthy {
				healthy++
			}
		}
		return healthy == want && len(last) == want
	})
}

// waitHosts waits until the Envoy serves the control plane's current
// version with exactly the given healthy brokers, and returns how long that
// took. Served means: the node acknowledged the current version for
// clusters and endpoints, no cluster is warming (a ring-hash ring size
// change replaces the cluster, and the old one serves until the new one is
// warm), and the cluster's healthy hosts are the wanted ones.
func (e *xdsEnvoy) waitHosts(t *testing.T, cp *controlPlane, want []*broker.Broker, within time.Duration) time.Duration {
	t.Helper()
	var addrs []string
	for _, b := range want {
		addrs = append(addrs, b.Addr())
	}
	return e.waitHostAddrs(t, cp, addrs, within)
}

// waitHostAddrs is waitHosts for brokers given by address.
func (e *xdsEnvoy) waitHostAddrs(t *testing.T, cp *controlPlane, want []string, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	wantSet := map[string]bool{}
	for _, a := range want {
		wantSet[a] = true
	}
	ctx := context.Background()
	var last []clusterHost
	var why string
	for time.Since(start) < within {
		why = ""
		if cp != nil {
			st, err := cp.client.Status(ctx)
			if err != nil {
				t.Fatal(err)
			}
			version := fmt.Sprint(st.Version)
			for _, n := range st.Nodes {
				if n.ID != e.nodeID {
					continue
				}
				// State of the world sends every type at every version; delta
				// sends only what changed, so its clusters can stay at an
				// older version once nothing is in flight.
				clusters := n.Resources["clusters"]
				clustersDone := clusters.AckedVersion == version || (e.delta && clusters.AckedVersion == clusters.SentVersion)
				if !clustersDone || n.Resources["endpoints"].AckedVersion != version {
					why = fmt.Sprintf("node acked %+v, serving version %s", n.Resources, version)
				}
			}
		}
		if why == "" {
			if st, err := e.Stats(ctx, "cluster_manager.warming_clusters"); err != nil || st["cluster_manager.warming_clusters"] != 0 {
				why = fmt.Sprintf("clusters warming: %v %v", st, err)
			}
		}
		if why == "" {
			last = e.hosts(t)
			healthy := map[string]bool{}
			for _, h := range last {
				if h.Healthy {
					healthy[h.Address] = true
				}
			}
			match := len(healthy) == len(wantSet)
			for a := range wantSet {
				match = match && healthy[a]
			}
			if match {
				return time.Since(start)
			}
			why = fmt.Sprintf("hosts %v", last)
		}
		time.Sleep(2 * time.Millisecond) // polling interval of a readiness check
	}
	t.Fatalf("envoy %s: not serving %d wanted brokers after %v: %s", e.nodeID, len(want), within, why)
	return 0
}

// connectAll connects every client ID once through addr (MQTT 3.1.1) and
// returns the broker each reached.
func connectAll(t *testing.T, addr string, brokers []*broker.Broker, ids []string, round int) map[string]string {
	t.Helper()
	ctx := context.Background()
	for _, b := range brokers {
		b.ResetRecords()
	}
	err := runParallel(len(ids), 16, func(i int) error {
		_, err := connectPaho(ctx, addr, source(i+round*37), ids[i], 4)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	got := landedOn(brokers)
	out := map[string]string{}
	for _, id := range ids {
		b, ok := got[id]
		if !ok {
			t.Fatalf("no broker recorded client %s", id)
		}
		out[id] = b
	}
	return out
}

func clientIDs(n int, prefix string) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("%s-%05d", prefix, i)
	}
	return ids
}

func toAPI(bs ...*broker.Broker) []model.Endpoint {
	var out []model.Endpoint
	for _, b := range bs {
		e, err := model.ParseEndpoint(b.Addr())
		if err != nil {
			panic(err) // brokers listen on IP addresses
		}
		out = append(out, e)
	}
	return out
}

func countByBroker(m map[string]string) map[string]int {
	c := map[string]int{}
	for _, b := range m {
		c[b]++
	}
	return c
}

// accessLine is one access-log line written by the listener's access log.
// accessLine is one entry of the JSON access log the control plane
// configures.
type accessLine struct {
	ClientID string `json:"client_id"`
	Version  string `json:"protocol_version"`
	From     string `json:"client_address"`
	Broker   string `json:"broker"`
}

// accessLogLines reads the access-log entries from an Envoy log, which
// also holds Envoy's own log lines. Every line that starts as a JSON
// object must be one whole entry: a line a client forged, or an entry
// split over two lines, fails the test.
func accessLogLines(t *testing.T, path string) []accessLine {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []accessLine
	for _, line := range strings.Split(string(data), "\n") {
		if !strings.HasPrefix(line, "{") {
			if strings.Contains(line, `"client_id"`) {
				t.Errorf("access-log entry split over lines: %q", line)
			}
			continue
		}
		var l accessLine
		if err := json.Unmarshal([]byte(line), &l); err != nil {
			t.Errorf("access-log line is not one JSON object: %v: %q", err, line)
			continue
		}
		out = append(out, l)
	}
	return out
}
