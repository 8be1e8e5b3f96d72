package tests

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	proxyprotocolv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/proxy_protocol/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/mqtt-sticky/mqtt-sticky/filter/mqtt"
	"github.com/mqtt-sticky/mqtt-sticky/internal/envoyproc"
)

// The names Envoy Gateway v1.9 gives the recipe's resources
// (deploy/envoy-gateway: Gateway mqtt/mqtt-sticky, listener mqtt, TCPRoute
// mqtt/emqx).
const (
	egGateway  = "mqtt/mqtt-sticky"
	egListener = "mqtt/mqtt-sticky/mqtt"
	egChain    = "tcproute/mqtt/emqx"
	egCluster  = "tcproute/mqtt/emqx/rule/-1"
	// egHealthClientID is the client ID of the recipe's MQTT health check.
	egHealthClientID = "mqtt-sticky-hc-eg"
)

// egEMQXService stands for the EMQX Service the TCPRoute names; in a
// cluster the EMQX operator or chart creates it. egctl takes the
// endpoints from its cluster IP, which the test then replaces with the
// brokers.
const egEMQXService = `apiVersion: v1
kind: Service
metadata:
  name: emqx
  namespace: mqtt
spec:
  clusterIP: 10.96.0.50
  ports:
  - name: mqtt
    port: 1883
    targetPort: 1883
`

// egctl returns the egctl binary `make eg-tool` installs, or $EGCTL. A
// missing egctl fails the test.
func egctl(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("EGCTL"); p != "" {
		return p
	}
	root, err := envoyproc.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(root, ".tools", "bin", "egctl")
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("egctl not found (%v): run `make eg-tool`, or set EGCTL", err)
	}
	return p
}

// The Envoy Gateway recipe, end to end without a cluster: Envoy Gateway's
// own translator (egctl x translate) turns deploy/envoy-gateway into Envoy
// configuration; the EnvoyPatchPolicy must have applied (a patch that
// does not match is skipped silently, so the xDS output itself is
// checked); then the translated listener and cluster run in the real
// Envoy 1.40 with the module, in front of brokers that require PROXY
// protocol, and real clients stay on their broker.
func TestEnvoyGatewayRecipe(t *testing.T) {
	listener, cluster, cla := egTranslate(t)

	// The patched listener: the filter before tcp_proxy, which hashes on
	// its key; the client connection buffer holds a whole CONNECT.
	var chain *listenerv3.FilterChain
	for _, fc := range listener.GetFilterChains() {
		if fc.GetName() == egChain {
			chain = fc
		}
	}
	if chain == nil {
		t.Fatalf("listener %s has no filter chain %s", egListener, egChain)
	}
	cfg := checkStickyFilter(t, chain.GetFilters())
	if got := listener.GetPerConnectionBufferLimitBytes().GetValue(); int(got) < cfg.MaxConnectBytes {
		t.Errorf("listener buffer limit %d is below max_connect_bytes %d", got, cfg.MaxConnectBytes)
	}

	// The cluster: Maglev, PROXY v2, per-broker stats, removals at once,
	// and the MQTT health check the recipe writes in base64.
	if p := cluster.GetLoadBalancingPolicy().GetPolicies(); len(p) != 1 || p[0].GetTypedExtensionConfig().GetName() != "envoy.load_balancing_policies.maglev" {
		t.Errorf("cluster load balancing policy %v, want Maglev", p)
	}
	pp := &proxyprotocolv3.ProxyProtocolUpstreamTransport{}
	if err := cluster.GetTransportSocket().GetTypedConfig().UnmarshalTo(pp); err != nil || pp.GetConfig().GetVersion() != corev3.ProxyProtocolConfig_V2 {
		t.Errorf("cluster transport socket %v (%v), want upstream PROXY v2", cluster.GetTransportSocket(), err)
	}
	if !cluster.GetTrackClusterStats().GetPerEndpointStats() || !cluster.GetIgnoreHealthOnHostRemoval() ||
		cluster.GetCommonLbConfig().GetUpdateMergeWindow().AsDuration() != 0 || cluster.GetCommonLbConfig().GetHealthyPanicThreshold().GetValue() != 0 {
		t.Errorf("cluster patches not applied: track_cluster_stats %v, ignore_health_on_host_removal %v, common_lb_config %v",
			cluster.GetTrackClusterStats(), cluster.GetIgnoreHealthOnHostRemoval(), cluster.GetCommonLbConfig())
	}
	if cb := cluster.GetCircuitBreakers().GetThresholds(); len(cb) == 0 || cb[0].GetMaxConnections().GetValue() < 100000 {
		t.Errorf("circuit breakers %v: Envoy's default 1024 connections would refuse clients", cb)
	}
	// The probe must be a text (hex) payload: Envoy 1.40's TCP health
	// check sends nothing for a binary one.
	wantProbe := mqtt.AppendConnect(nil, &mqtt.ConnectPacket{Connect: mqtt.Connect{
		Level: mqtt.Level311, ClientID: egHealthClientID, CleanStart: true, KeepAlive: 10}})
	hc := cluster.GetHealthChecks()
	if len(hc) != 1 || hc[0].GetTcpHealthCheck().GetSend().GetText() != hex.EncodeToString(wantProbe) ||
		len(hc[0].GetTcpHealthCheck().GetReceive()) != 1 || hc[0].GetTcpHealthCheck().GetReceive()[0].GetText() != hex.EncodeToString(mqtt.AppendConnack(nil, mqtt.Level311, 0)) {
		t.Errorf("health check %v, want an MQTT 3.1.1 CONNECT as %s and an accepting CONNACK, as hex text", hc, egHealthClientID)
	}
	if t.Failed() {
		t.FailNow()
	}

	// Run it: Envoy Gateway's listener and cluster, its locality kept.
	cluster.LoadAssignment = cla
	brokers := startBrokers(t, 3)
	run := runRecipe(t, listener, cluster, brokers)
	checkSticky(t, run.addr, brokers)

	// The recipe's JSON access log names each client and its broker, one
	// entry per connection (Envoy flushes the file about once a second).
	logged := 0
	waitFor(t, 10*time.Second, "an access-log entry with client ID and broker for each of the 120 connections", func() bool {
		logged = countAccessLog(t, run.logPath, "recipe-")
		return logged >= 120
	})
	st := envoyStats(t, run.envoy, "mqtt_sticky.")
	t.Logf("access-log entries: %d; mqtt_sticky stats: connect_mqtt311=%d connect_mqtt5=%d", logged, st["mqtt_sticky.connect_mqtt311"], st["mqtt_sticky.connect_mqtt5"])
}

// egTranslate runs egctl on deploy/envoy-gateway and returns the recipe's
// listener, cluster and load assignment from its xDS output.
func egTranslate(t *testing.T) (*listenerv3.Listener, *clusterv3.Cluster, *endpointv3.ClusterLoadAssignment) {
	t.Helper()
	root, err := envoyproc.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(root, "deploy", "envoy-gateway", "*.yaml"))
	if len(files) == 0 {
		t.Fatal("no deploy/envoy-gateway/*.yaml")
	}
	var in bytes.Buffer
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		in.Write(data)
		in.WriteString("\n---\n")
	}
	in.WriteString(egEMQXService)
	inPath := filepath.Join(t.TempDir(), "envoy-gateway.yaml")
	if err := os.WriteFile(inPath, in.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(egctl(t), "x", "translate", "--from", "gateway-api", "--to", "xds", "-t", "all", "-o", "json", "-f", inPath)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("egctl x translate: %v\n%s", err, stderr.String())
	}

	// {"xds": {"<gateway>": ConfigDump}}; the dump's listeners, clusters
	// and endpoints are decoded one by one, so that types elsewhere in it
	// (the bootstrap's) need not be known here.
	var doc struct {
		XDS map[string]struct {
			Configs []json.RawMessage `json:"configs"`
		} `json:"xds"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		t.Fatalf("egctl output: %v", err)
	}
	dump, ok := doc.XDS[egGateway]
	if !ok {
		t.Fatalf("egctl translated no gateway %s: %s", egGateway, out)
	}
	var listener *listenerv3.Listener
	var cluster *clusterv3.Cluster
	var cla *endpointv3.ClusterLoadAssignment
	for _, raw := range dump.Configs {
		var c struct {
			Type      string `json:"@type"`
			Listeners []struct {
				ActiveState struct{ Listener json.RawMessage } `json:"activeState"`
			} `json:"dynamicListeners"`
			Clusters  []struct{ Cluster json.RawMessage } `json:"dynamicActiveClusters"`
			Endpoints []struct {
				EndpointConfig json.RawMessage `json:"endpointConfig"`
			} `json:"dynamicEndpointConfigs"`
		}
		if err := json.Unmarshal(raw, &c); err != nil {
			t.Fatal(err)
		}
		for _, l := range c.Listeners {
			if m := decodeNamed(t, l.ActiveState.Listener, &listenerv3.Listener{}, egListener); m != nil {
				listener = m
			}
		}
		for _, cl := range c.Clusters {
			if m := decodeNamed(t, cl.Cluster, &clusterv3.Cluster{}, egCluster); m != nil {
				cluster = m
			}
		}
		for _, e := range c.Endpoints {
			if m := decodeNamed(t, e.EndpointConfig, &endpointv3.ClusterLoadAssignment{}, egCluster); m != nil {
				cla = m
			}
		}
	}
	if listener == nil || cluster == nil || cla == nil {
		t.Fatalf("egctl output lacks listener %s, cluster %s or its endpoints:\n%s", egListener, egCluster, out)
	}
	return listener, cluster, cla
}

// named is an xDS resource with a name (a listener, a cluster) or a
// cluster name (a load assignment).
type named interface {
	proto.Message
	ValidateAll() error
}

// decodeNamed decodes one resource of egctl's output (protojson, with an
// "@type" that is dropped) and returns it when its name is want.
func decodeNamed[M named](t *testing.T, raw json.RawMessage, m M, want string) M {
	t.Helper()
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		t.Fatal(err)
	}
	name := fields["name"]
	if name == nil {
		name = fields["clusterName"]
	}
	var zero M
	if string(name) != `"`+want+`"` {
		return zero
	}
	delete(fields, "@type")
	raw, _ = json.Marshal(fields)
	if err := protojson.Unmarshal(raw, m); err != nil {
		t.Fatalf("decoding %s from egctl's output: %v", want, err)
	}
	if err := m.ValidateAll(); err != nil {
		t.Fatalf("%s from egctl's output fails Envoy's proto validation: %v", want, err)
	}
	return m
}

// countAccessLog counts the JSON access-log entries in an Envoy log whose
// client ID starts with prefix and that name a broker.
func countAccessLog(t *testing.T, path, prefix string) int {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(string(data), "\n") {
		var e struct {
			ClientID string `json:"client_id"`
			Broker   string `json:"broker"`
		}
		if strings.HasPrefix(line, "{") && json.Unmarshal([]byte(line), &e) == nil && strings.HasPrefix(e.ClientID, prefix) && e.Broker != "" {
			n++
		}
	}
	return n
}
