package tests

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"sigs.k8s.io/yaml"

	// The Istio-only filters are TypedStructs until they are dropped.
	_ "github.com/cncf/xds/go/udpa/type/v1"

	"github.com/mqtt-sticky/mqtt-sticky/filter/mqtt"
	"github.com/mqtt-sticky/mqtt-sticky/internal/envoyproc"
)

// envoyFilter is the part of an Istio EnvoyFilter this test applies:
// NETWORK_FILTER patches matched by listener port and filter name
// (INSERT_BEFORE, MERGE) and CLUSTER patches matched by service and port
// (MERGE). Decoding is strict, so the recipe cannot use a field the test
// would ignore.
type envoyFilter struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	} `json:"metadata"`
	Spec struct {
		WorkloadSelector struct {
			Labels map[string]string `json:"labels"`
		} `json:"workloadSelector"`
		ConfigPatches []configPatch `json:"configPatches"`
	} `json:"spec"`
}

// configPatch is one of an EnvoyFilter's patches.
type configPatch struct {
	ApplyTo string `json:"applyTo"`
	Match   struct {
		Context  string `json:"context"`
		Listener *struct {
			PortNumber  uint32 `json:"portNumber"`
			FilterChain struct {
				Filter struct {
					Name string `json:"name"`
				} `json:"filter"`
			} `json:"filterChain"`
		} `json:"listener"`
		Cluster *struct {
			Service    string `json:"service"`
			PortNumber int    `json:"portNumber"`
		} `json:"cluster"`
	} `json:"match"`
	Patch struct {
		Operation string          `json:"operation"`
		Value     json.RawMessage `json:"value"`
	} `json:"patch"`
}

// The Istio recipe, as far as it can be tested without Istio:
// deploy/istio/envoyfilter.yaml is applied, with EnvoyFilter's semantics
// (INSERT_BEFORE inserts; MERGE is a protobuf merge of the unpacked
// typed_config, or of the cluster), to a listener and cluster shaped like
// an Istio ingress gateway's (tests/testdata/istio). What stock Envoy cannot
// load (Istio's own filters, the SDS-backed mTLS match) is dropped; the
// rest runs in the real Envoy 1.40 with the module, and real clients stay
// on their broker with their address in the PROXY header.
func TestIstioRecipe(t *testing.T) {
	root, err := envoyproc.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	listener, cluster := istioShaped(t, filepath.Join(root, "tests", "testdata", "istio", "gateway-1883.yaml"))
	ef := readEnvoyFilter(t, filepath.Join(root, "deploy", "istio", "envoyfilter.yaml"))
	if ef.Spec.WorkloadSelector.Labels["istio"] != "ingressgateway" {
		t.Errorf("the EnvoyFilter selects %v, not the ingress gateway", ef.Spec.WorkloadSelector.Labels)
	}
	for i, p := range ef.Spec.ConfigPatches {
		if p.Match.Context != "GATEWAY" {
			t.Errorf("patch %d: context %q, want GATEWAY", i, p.Match.Context)
		}
		if n := applyPatch(t, listener, cluster, i, p); n == 0 {
			t.Errorf("patch %d (%s %s) matches nothing in the gateway's listener and cluster; Istio would ignore it", i, p.ApplyTo, p.Patch.Operation)
		}
	}
	if err := listener.ValidateAll(); err != nil {
		t.Fatalf("patched listener fails Envoy's validation: %v", err)
	}
	if err := cluster.ValidateAll(); err != nil {
		t.Fatalf("patched cluster fails Envoy's validation: %v", err)
	}

	// What was patched in: the filter before tcp_proxy, the hash on its
	// key; Maglev, per-broker stats and the MQTT health check.
	checkStickyFilter(t, listener.GetFilterChains()[0].GetFilters())
	if cluster.GetLbPolicy() != clusterv3.Cluster_MAGLEV || !cluster.GetTrackClusterStats().GetPerEndpointStats() || !cluster.GetIgnoreHealthOnHostRemoval() {
		t.Errorf("cluster after the MERGE: lb_policy %v, track_cluster_stats %v, ignore_health_on_host_removal %v",
			cluster.GetLbPolicy(), cluster.GetTrackClusterStats(), cluster.GetIgnoreHealthOnHostRemoval())
	}
	probe := mqtt.AppendConnect(nil, &mqtt.ConnectPacket{Connect: mqtt.Connect{
		Level: mqtt.Level311, ClientID: "mqtt-sticky-hc-istio", CleanStart: true, KeepAlive: 10}})
	if hc := cluster.GetHealthChecks(); len(hc) != 1 || hc[0].GetTcpHealthCheck().GetSend().GetText() != hex.EncodeToString(probe) {
		t.Errorf("health checks %v, want one MQTT CONNECT probe as mqtt-sticky-hc-istio", hc)
	}
	if t.Failed() {
		t.FailNow()
	}

	dropIstioOnly(t, listener, cluster)
	brokers := startBrokers(t, 3)
	run := runRecipe(t, listener, cluster, brokers)
	checkSticky(t, run.addr, brokers)
}

// istioShaped reads the Istio-shaped listener and cluster.
func istioShaped(t *testing.T, path string) (*listenerv3.Listener, *clusterv3.Cluster) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Listener json.RawMessage `json:"listener"`
		Cluster  json.RawMessage `json:"cluster"`
	}
	if err := yaml.UnmarshalStrict(raw, &doc); err != nil {
		t.Fatal(err)
	}
	l, c := &listenerv3.Listener{}, &clusterv3.Cluster{}
	if err := protojson.Unmarshal(doc.Listener, l); err != nil {
		t.Fatalf("%s: listener: %v", path, err)
	}
	if err := protojson.Unmarshal(doc.Cluster, c); err != nil {
		t.Fatalf("%s: cluster: %v", path, err)
	}
	return l, c
}

func readEnvoyFilter(t *testing.T, path string) *envoyFilter {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ef := &envoyFilter{}
	if err := yaml.UnmarshalStrict(raw, ef); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if ef.Kind != "EnvoyFilter" || !strings.HasPrefix(ef.APIVersion, "networking.istio.io/") {
		t.Fatalf("%s: %s %s, want an EnvoyFilter", path, ef.APIVersion, ef.Kind)
	}
	return ef
}

// applyPatch applies patch p, the EnvoyFilter's patch i, and returns how
// many places it matched. An applyTo or operation the test does not
// emulate fails the test.
func applyPatch(t *testing.T, l *listenerv3.Listener, c *clusterv3.Cluster, i int, p configPatch) int {
	t.Helper()
	matched := 0
	switch {
	case p.ApplyTo == "NETWORK_FILTER" && p.Match.Listener != nil:
		if l.GetAddress().GetSocketAddress().GetPortValue() != p.Match.Listener.PortNumber {
			return 0
		}
		patch := &listenerv3.Filter{}
		if err := protojson.Unmarshal(p.Patch.Value, patch); err != nil {
			t.Fatalf("patch %d: value: %v", i, err)
		}
		want := p.Match.Listener.FilterChain.Filter.Name
		for _, fc := range l.GetFilterChains() {
			at := slices.IndexFunc(fc.Filters, func(f *listenerv3.Filter) bool { return f.GetName() == want })
			if at < 0 {
				continue
			}
			matched++
			switch p.Patch.Operation {
			case "INSERT_BEFORE":
				fc.Filters = slices.Insert(fc.Filters, at, patch)
			case "MERGE":
				fc.Filters[at] = mergeFilter(t, fc.Filters[at], patch)
			default:
				t.Fatalf("patch %d: operation %s on a network filter is not emulated here", i, p.Patch.Operation)
			}
		}
	case p.ApplyTo == "CLUSTER" && p.Match.Cluster != nil:
		if c.GetName() != fmt.Sprintf("outbound|%d||%s", p.Match.Cluster.PortNumber, p.Match.Cluster.Service) {
			return 0
		}
		if p.Patch.Operation != "MERGE" {
			t.Fatalf("patch %d: operation %s on a cluster is not emulated here", i, p.Patch.Operation)
		}
		patch := &clusterv3.Cluster{}
		if err := protojson.Unmarshal(p.Patch.Value, patch); err != nil {
			t.Fatalf("patch %d: value: %v", i, err)
		}
		proto.Merge(c, patch)
		matched++
	default:
		t.Fatalf("patch %d: applyTo %s with this match is not emulated here", i, p.ApplyTo)
	}
	return matched
}

// mergeFilter merges a patch into a network filter as Istio does: both
// typed_configs are unpacked and proto-merged, so scalars are replaced
// and lists appended to.
func mergeFilter(t *testing.T, f, patch *listenerv3.Filter) *listenerv3.Filter {
	t.Helper()
	if patch.GetTypedConfig().GetTypeUrl() != f.GetTypedConfig().GetTypeUrl() {
		t.Fatalf("MERGE of %s into %s: the types differ", patch.GetTypedConfig().GetTypeUrl(), f.GetTypedConfig().GetTypeUrl())
	}
	dst, err := f.GetTypedConfig().UnmarshalNew()
	if err != nil {
		t.Fatal(err)
	}
	src, err := patch.GetTypedConfig().UnmarshalNew()
	if err != nil {
		t.Fatal(err)
	}
	proto.Merge(dst, src)
	a, err := anypb.New(dst)
	if err != nil {
		t.Fatal(err)
	}
	out := proto.Clone(f).(*listenerv3.Filter)
	out.ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: a}
	return out
}

// dropIstioOnly removes what only istio-proxy or istio-agent provide: the
// istio.* network and upstream filters, and the mTLS transport socket
// match whose certificates come by SDS from istio-agent.
func dropIstioOnly(t *testing.T, l *listenerv3.Listener, c *clusterv3.Cluster) {
	t.Helper()
	var dropped []string
	for _, fc := range l.GetFilterChains() {
		fc.Filters = slices.DeleteFunc(fc.Filters, func(f *listenerv3.Filter) bool {
			if strings.HasPrefix(f.GetName(), "istio.") {
				dropped = append(dropped, "listener filter "+f.GetName())
				return true
			}
			return false
		})
	}
	c.Filters = slices.DeleteFunc(c.Filters, func(f *clusterv3.Filter) bool {
		if strings.HasPrefix(f.GetName(), "istio.") {
			dropped = append(dropped, "cluster filter "+f.GetName())
			return true
		}
		return false
	})
	c.TransportSocketMatches = slices.DeleteFunc(c.TransportSocketMatches, func(m *clusterv3.Cluster_TransportSocketMatch) bool {
		if m.GetName() == "tlsMode-istio" {
			dropped = append(dropped, "transport socket match tlsMode-istio")
			return true
		}
		return false
	})
	t.Logf("dropped what stock Envoy cannot load: %s", strings.Join(dropped, ", "))
}
