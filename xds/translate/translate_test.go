package translate

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	ringhashv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/ring_hash/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	"github.com/mqtt-sticky/mqtt-sticky/xds/model"
)

var update = flag.Bool("update", false, "rewrite testdata/out from the translator's output")

const goldenNode = "golden-node"

// TestGolden translates every testdata/in/<case>.yaml and compares the
// resources with testdata/out/<case>.yaml. Run with -update to regenerate
// after an intended change, and review the diff.
func TestGolden(t *testing.T) {
	inputs, err := filepath.Glob(filepath.Join("testdata", "in", "*.yaml"))
	if err != nil || len(inputs) == 0 {
		t.Fatalf("no golden inputs: %v", err)
	}
	for _, in := range inputs {
		name := strings.TrimSuffix(filepath.Base(in), ".yaml")
		t.Run(name, func(t *testing.T) {
			data, err := os.ReadFile(in)
			if err != nil {
				t.Fatal(err)
			}
			f, err := model.ParseFile(data)
			if err != nil {
				t.Fatal(err)
			}
			res, err := Translate(&f.Model, goldenNode)
			if err != nil {
				t.Fatal(err)
			}
			got := render(t, res)
			out := filepath.Join("testdata", "out", name+".yaml")
			if *update {
				if err := os.WriteFile(out, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(out)
			if err != nil {
				t.Fatalf("%v (run go test ./xds/translate -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s differs from the translator's output; if the change is intended, run go test ./xds/translate -update\n%s", out, lineDiff(string(want), string(got)))
			}
		})
	}
}

// render writes resources as YAML with sorted keys, a stable form of
// protojson (whose own output is deliberately unstable).
func render(t *testing.T, r *Resources) []byte {
	t.Helper()
	doc := map[string][]any{}
	for kind, list := range map[string][]types.Resource{"listeners": r.Listeners, "clusters": r.Clusters, "endpoints": r.Endpoints} {
		doc[kind] = []any{}
		for _, res := range list {
			b, err := protojson.Marshal(res)
			if err != nil {
				t.Fatal(err)
			}
			var v any
			if err := json.Unmarshal(b, &v); err != nil {
				t.Fatal(err)
			}
			doc[kind] = append(doc[kind], v)
		}
	}
	out, err := yaml.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	for i := 0; i < max(len(w), len(g)); i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			b.WriteString("line " + strconv.Itoa(i+1) + ":\n  want: " + wl + "\n   got: " + gl + "\n")
			if b.Len() > 2000 {
				break
			}
		}
	}
	return b.String()
}

// Invalid models are refused before anything is built, with a message that
// names the problem.
func TestInvalidModels(t *testing.T) {
	base := `
listeners: [{name: mqtt, port: 1883}]
clusters: [{name: brokers, endpoints: [{address: 127.0.0.1, port: 18831}]}]
`
	tests := []struct {
		name, yaml, want string
	}{
		{"no listeners", `clusters: [{name: brokers}]`, "invalid configuration: no listeners: define at least one"},
		{"unknown key", base + "listner: x\n", `invalid configuration: error unmarshaling JSON: while decoding JSON: json: unknown field "listner"`},
		{"listener port", `
listeners: [{name: mqtt, port: 70000}]
clusters: [{name: brokers}]`, `invalid configuration: listener "mqtt": port 70000 is out of range 1-65535`},
		{"unknown cluster", `
listeners: [{name: mqtt, port: 1883, cluster: nowhere}]
clusters: [{name: brokers}]`, `invalid configuration: listener "mqtt": cluster "nowhere" is not defined`},
		{"duplicate bind", `
listeners: [{name: a, port: 1883}, {name: b, port: 1883}]
clusters: [{name: brokers}]`, `invalid configuration: listener "b": 0.0.0.0:1883 is already used by listener "a"`},
		{"filter option", `
listeners: [{name: mqtt, port: 1883, filter: {empty_key: drop}}]
clusters: [{name: brokers}]`, `invalid configuration: listener "mqtt": filter: empty_key "drop": must be "any", "source_ip" or "reject"`},
		{"hostname endpoint", `
listeners: [{name: mqtt, port: 1883}]
clusters: [{name: brokers, endpoints: [{address: emqx1, port: 1883}]}]`, `invalid configuration: cluster "brokers": endpoint address "emqx1" is not an IP address (Envoy does not resolve names in EDS; give the broker a fixed IP)`},
		{"endpoint port", `
listeners: [{name: mqtt, port: 1883}]
clusters: [{name: brokers, endpoints: [{address: 127.0.0.1, port: 0}]}]`, `invalid configuration: cluster "brokers": endpoint 127.0.0.1: port 0 is out of range 1-65535`},
		{"duplicate endpoint", `
listeners: [{name: mqtt, port: 1883}]
clusters: [{name: brokers, endpoints: [{address: 127.0.0.1, port: 1}, {address: 127.0.0.1, port: 1, weight: 3}]}]`, `invalid configuration: cluster "brokers": endpoint 127.0.0.1:1 is listed twice`},
		{"weight", `
listeners: [{name: mqtt, port: 1883}]
clusters: [{name: brokers, endpoints: [{address: 127.0.0.1, port: 1, weight: 500}]}]`, `invalid configuration: cluster "brokers": endpoint 127.0.0.1:1: weight 500 must be between 1 and 128`},
		{"lb policy", `
listeners: [{name: mqtt, port: 1883}]
clusters: [{name: brokers, lb_policy: round_robin}]`, `invalid configuration: cluster "brokers": lb_policy "round_robin" must be "maglev" or "ring_hash"`},
		{"maglev table not prime", `
listeners: [{name: mqtt, port: 1883}]
clusters: [{name: brokers, maglev_table_size: 65536}]`, `invalid configuration: cluster "brokers": maglev_table_size 65536 must be a prime no larger than 5000011 (65537 is a good choice)`},
		{"points on maglev", `
listeners: [{name: mqtt, port: 1883}]
clusters: [{name: brokers, points_per_host: 10}]`, `invalid configuration: cluster "brokers": points_per_host applies to ring_hash only`},
		{"hash balance", `
listeners: [{name: mqtt, port: 1883}]
clusters: [{name: brokers, hash_balance_factor: 50}]`, `invalid configuration: cluster "brokers": hash_balance_factor 50 must be 0 (off) or at least 100`},
		{"proxy protocol", `
listeners: [{name: mqtt, port: 1883}]
clusters: [{name: brokers, proxy_protocol: v3}]`, `invalid configuration: cluster "brokers": proxy_protocol "v3" must be v1, v2 or off`},
		{"health timeout", `
listeners: [{name: mqtt, port: 1883}]
clusters: [{name: brokers, health_check: {type: mqtt, interval: 1s, timeout: 2s}}]`, `invalid configuration: cluster "brokers": health_check interval 1s and timeout 2s: need interval >= 100ms and 10ms <= timeout <= interval`},
		{"bad duration", `
listeners: [{name: mqtt, port: 1883}]
clusters: [{name: brokers, idle_timeout: forever}]`, `invalid configuration: error unmarshaling JSON: while decoding JSON: duration "forever": time: invalid duration "forever" (write it like "5s" or "1m30s")`},
		{"idle timeout", `
listeners: [{name: mqtt, port: 1883}]
clusters: [{name: brokers, idle_timeout: 10ms}]`, `invalid configuration: cluster "brokers": idle_timeout 10ms is shorter than 1s; it must exceed 1.5 x the longest MQTT keepalive`},
		{"connect bigger than buffer", `
listeners: [{name: mqtt, port: 1883, buffer_limit_bytes: 4096}]
clusters: [{name: brokers}]`, `invalid configuration: listener "mqtt": filter max_connect_bytes 65536 exceeds buffer_limit_bytes 4096: Envoy would stop reading before the CONNECT is complete`},
		{"ring too big", `
listeners: [{name: mqtt, port: 1883}]
clusters: [{name: brokers, lb_policy: ring_hash, points_per_host: 65536, endpoints: [{address: 10.0.0.1, port: 1, weight: 128}, {address: 10.0.0.2, port: 1}]}]`, `invalid configuration: cluster "brokers": ring of 8454144 entries exceeds Envoy's maximum of 8388608: lower points_per_host`},
		{"panic threshold", `
listeners: [{name: mqtt, port: 1883}]
clusters: [{name: brokers, healthy_panic_threshold: 120}]`, `invalid configuration: cluster "brokers": healthy_panic_threshold 120 is a percentage (0-100)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := model.ParseFile([]byte(tt.yaml))
			if err == nil {
				_, err = Translate(&f.Model, goldenNode)
			}
			if err == nil {
				t.Fatalf("accepted; want %q", tt.want)
			}
			if !errors.Is(err, model.ErrInvalid) {
				t.Errorf("error %v does not wrap model.ErrInvalid", err)
			}
			if err.Error() != tt.want {
				t.Errorf("error:\n got %s\nwant %s", err, tt.want)
			}
		})
	}
}

// With ring hash, every broker keeps points_per_host points (times its
// weight) whatever the number of brokers, so adding the Nth broker takes
// about 1/N of the ring from the others instead of reshuffling it.
func TestRingSizeFollowsHostCount(t *testing.T) {
	for n := 1; n <= 12; n++ {
		m := model.Default()
		c := &m.Clusters[0]
		c.LBPolicy, c.MaglevTable, c.PointsPerHost = model.RingHash, 0, 512
		c.Endpoints = nil
		for i := range n {
			c.Endpoints = append(c.Endpoints, model.Endpoint{Address: "10.0.0.1", Port: 1000 + i, Weight: 1})
		}
		res, err := Translate(m, goldenNode)
		if err != nil {
			t.Fatal(err)
		}
		rh := &ringhashv3.RingHash{}
		if err := res.Clusters[0].(*clusterv3.Cluster).GetLoadBalancingPolicy().GetPolicies()[0].GetTypedExtensionConfig().GetTypedConfig().UnmarshalTo(rh); err != nil {
			t.Fatal(err)
		}
		// Envoy gives each of n equal hosts ceil(minimum_ring_size / n) points.
		perHost := (rh.GetMinimumRingSize().GetValue() + uint64(n) - 1) / uint64(n)
		if perHost != 512 || rh.GetMaximumRingSize().GetValue() != rh.GetMinimumRingSize().GetValue() {
			t.Errorf("%d hosts: ring %d..%d, %d points per host; want 512", n, rh.GetMinimumRingSize().GetValue(), rh.GetMaximumRingSize().GetValue(), perHost)
		}
	}
}

// Every node gets the same endpoints; only the health-check client ID,
// part of the cluster, differs.
func TestNodesShareEndpoints(t *testing.T) {
	m := model.Default()
	a, err := Translate(m, "envoy-a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := Translate(m, "envoy-b")
	if err != nil {
		t.Fatal(err)
	}
	ra, rb := render(t, &Resources{Endpoints: a.Endpoints}), render(t, &Resources{Endpoints: b.Endpoints})
	if !bytes.Equal(ra, rb) {
		t.Error("two nodes got different endpoints")
	}
	ca, cb := render(t, &Resources{Clusters: a.Clusters}), render(t, &Resources{Clusters: b.Clusters})
	if bytes.Equal(ca, cb) {
		t.Error("two nodes got the same health-check client ID")
	}
}

// Translation is deterministic: the same model, listed in any order, gives
// the same bytes.
func TestDeterministic(t *testing.T) {
	m := model.Default()
	first := render(t, mustTranslate(t, m))
	m2 := m.Clone()
	eps := m2.Clusters[0].Endpoints
	eps[0], eps[2] = eps[2], eps[0]
	for range 20 {
		if got := render(t, mustTranslate(t, m2)); !bytes.Equal(got, first) {
			t.Fatal("translation changed between runs or with endpoint order")
		}
	}
}

func mustTranslate(t *testing.T, m *model.Model) *Resources {
	t.Helper()
	r, err := Translate(m, goldenNode)
	if err != nil {
		t.Fatal(err)
	}
	return r
}
