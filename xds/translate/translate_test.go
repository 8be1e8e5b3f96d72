package translate

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	ringhashv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/ring_hash/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/google/go-cmp/cmp"
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
				t.Errorf("%s differs from the translator's output (-want +got); if the change is intended, run go test ./xds/translate -update\n%s", out, cmp.Diff(string(want), string(got)))
			}
		})
	}
}

// render writes resources as YAML with sorted keys, a stable form of
// protojson (whose own output is deliberately unstable).
func render(t *testing.T, r *Resources) []byte {
	t.Helper()
	doc := map[string][]any{}
	for kind, list := range map[string][]types.Resource{"listeners": r.Listeners, "clusters": r.Clusters, "endpoints": r.Endpoints, "filters": r.Filters, "secrets": r.Secrets} {
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

// Rotating a certificate to new files changes only the secret that names
// them: the listener, and so its connections, stay as they are.
func TestCertificateChangeTouchesOnlySecrets(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("testdata", "in", "tls.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	f, err := model.ParseFile(data)
	if err != nil {
		t.Fatal(err)
	}
	before := mustTranslate(t, &f.Model)
	m := f.Model.Clone()
	m.Listeners[1].TLS.CertFile, m.Listeners[1].TLS.KeyFile = "/etc/envoy/tls-2/server.crt", "/etc/envoy/tls-2/server.key"
	m.Clusters[1].UpstreamTLS.CAFile = "/etc/envoy/brokers-2/ca.crt"
	after := mustTranslate(t, m)
	for kind, pair := range map[string][2][]types.Resource{
		"listeners": {before.Listeners, after.Listeners},
		"clusters":  {before.Clusters, after.Clusters},
		"filters":   {before.Filters, after.Filters},
	} {
		if a, b := render(t, &Resources{Listeners: pair[0]}), render(t, &Resources{Listeners: pair[1]}); !bytes.Equal(a, b) {
			t.Errorf("%s changed with the certificate files:\n%s", kind, cmp.Diff(string(a), string(b)))
		}
	}
	if a, b := render(t, &Resources{Secrets: before.Secrets}), render(t, &Resources{Secrets: after.Secrets}); bytes.Equal(a, b) {
		t.Error("the secrets did not change")
	}
}

// A long node ID is cut to 128 bytes at a character boundary, so the
// health-check client ID stays valid UTF-8 (MQTT requires it).
func TestHealthCheckClientIDIsBounded(t *testing.T) {
	id := HealthCheckClientID("mqtt-sticky-hc-", strings.Repeat("é", 200))
	if len(id) > 128 || len(id) < 126 || !utf8.ValidString(id) {
		t.Errorf("%d bytes, valid UTF-8 %v", len(id), utf8.ValidString(id))
	}
}

// A fleet translation gives every node the same shared messages, and its
// own health check (TestGolden checks what a node gets).
func TestFleetForNode(t *testing.T) {
	m := model.Default()
	f, err := TranslateFleet(m)
	if err != nil {
		t.Fatal(err)
	}
	a, b := f.ForNode("envoy-a"), f.ForNode("envoy-b")
	if a.Listeners[0] != b.Listeners[0] || a.Endpoints[0] != b.Endpoints[0] {
		t.Error("listeners and endpoints are not shared between nodes")
	}
	if bytes.Equal(render(t, &Resources{Clusters: a.Clusters}), render(t, &Resources{Clusters: b.Clusters})) {
		t.Error("two nodes got the same health-check client ID")
	}
}

// The token bucket refills exactly the configured rate, in the shortest
// interval Envoy accepts (50ms and up) that holds a whole number of tokens.
func TestConnectionRateLimitBucket(t *testing.T) {
	for _, tt := range []struct {
		perSecond      uint32
		wantIntervalMs int64
		wantPerFill    uint32
	}{
		{1, 1000, 1}, {3, 1000, 3}, {4, 250, 1}, {20, 50, 1}, {250, 100, 25}, {1000, 50, 50}, {999, 1000, 999},
	} {
		l := &model.Listener{Name: "mqtt", ConnectionRateLimit: &model.ConnectionRateLimit{ConnectionsPerSecond: tt.perSecond, Burst: 7}}
		b := connectionRateLimit(l).GetTokenBucket()
		ms := b.GetFillInterval().AsDuration().Milliseconds()
		if ms != tt.wantIntervalMs || b.GetTokensPerFill().GetValue() != tt.wantPerFill || b.GetMaxTokens() != 7 {
			t.Errorf("%d/s: %d tokens every %dms, max %d; want %d every %dms", tt.perSecond, b.GetTokensPerFill().GetValue(), ms, b.GetMaxTokens(), tt.wantPerFill, tt.wantIntervalMs)
		}
		if got := float64(b.GetTokensPerFill().GetValue()) * 1000 / float64(ms); got != float64(tt.perSecond) {
			t.Errorf("%d/s: the bucket refills %v/s", tt.perSecond, got)
		}
	}
}
