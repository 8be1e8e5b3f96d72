package health

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mqtt-sticky/mqtt-sticky/xds/model"
)

// never_healthy needs every endpoint unhealthy on every node since it was
// added, for longer than the grace a first probe needs; one healthy report
// clears it for good, and a new endpoint restarts the grace.
func TestNeverHealthy(t *testing.T) {
	m := model.Default()
	w := New(nil, time.Second, nil, prometheus.NewRegistry())
	now := time.Unix(1000, 0)
	w.now = func() time.Time { return now }
	down := map[string]nodeView{"envoy-1": {"brokers": {}}}
	step := func(d time.Duration, views map[string]nodeView) ClusterHealth {
		now = now.Add(d)
		w.update(m, views)
		return w.Report()[0]
	}
	if r := step(0, down); r.NeverHealthy {
		t.Error("flagged before the grace passed")
	}
	if r := step(grace(m.Clusters[0].HealthCheck)+time.Second, down); !r.NeverHealthy || r.Message == "" {
		t.Errorf("not flagged after the grace: %+v", r)
	}
	if r := step(time.Second, nil); r.NeverHealthy {
		t.Error("flagged with no node reporting")
	}
	up := map[string]nodeView{"envoy-1": {"brokers": {"127.0.0.1:18832": {Healthy: true}}}}
	if r := step(time.Second, up); r.NeverHealthy || r.Healthy["envoy-1"] != 1 {
		t.Errorf("a healthy endpoint: %+v", r)
	}
	if r := step(time.Hour, down); r.NeverHealthy {
		t.Error("flagged again although an endpoint passed once")
	}
	m.Clusters[0].Endpoints = []model.Endpoint{{Address: "10.0.0.1", Port: 1883, Weight: 1}}
	if r := step(time.Second, down); r.NeverHealthy {
		t.Error("a new endpoint set was flagged before its grace")
	}
	if r := step(time.Hour, down); !r.NeverHealthy {
		t.Error("a new endpoint set that never passed was not flagged")
	}
}

// Each broker of each cluster, in the model's order, with every reporting
// node's view and the connections summed; an endpoint a node does not
// list is absent from that node's view, and one it lists but the model
// does not have is ignored.
func TestBrokers(t *testing.T) {
	m := model.Default() // brokers: 127.0.0.1:18831-18833
	w := New(nil, time.Second, nil, prometheus.NewRegistry())
	if b := w.Brokers("brokers"); b != nil {
		t.Errorf("before the first poll: %v", b)
	}
	w.update(m, map[string]nodeView{
		"envoy-1": {"brokers": {
			"127.0.0.1:18831": {Healthy: true, Connections: 3},
			"127.0.0.1:18832": {Healthy: false},
			"10.9.9.9:1883":   {Healthy: true, Connections: 7},
		}},
		"envoy-2": {"brokers": {"127.0.0.1:18831": {Healthy: true, Connections: 2}}},
	})
	got := w.Brokers("brokers")
	want := []Broker{
		{Address: "127.0.0.1:18831", Connections: 5, Nodes: map[string]Host{"envoy-1": {true, 3}, "envoy-2": {true, 2}}},
		{Address: "127.0.0.1:18832", Nodes: map[string]Host{"envoy-1": {false, 0}}},
		{Address: "127.0.0.1:18833", Nodes: map[string]Host{}},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("brokers (-want +got):\n%s", diff)
	}
	if b := w.Brokers("no-such-cluster"); b != nil {
		t.Errorf("unknown cluster: %v", b)
	}
}

// A /clusters document in the shape Envoy 1.40 writes: a host is healthy
// only when EDS says HEALTHY and no active-check flag is set; cx_active
// is absent when it is 0; IPv6 addresses get brackets.
func TestParseClusters(t *testing.T) {
	doc := `{"cluster_statuses":[
	 {"name":"brokers","host_statuses":[
	  {"address":{"socket_address":{"address":"127.0.0.1","port_value":18831}},
	   "stats":[{"name":"cx_total","value":"9"},{"name":"cx_active","value":"3","type":"GAUGE"}],
	   "health_status":{"eds_health_status":"HEALTHY"}},
	  {"address":{"socket_address":{"address":"127.0.0.1","port_value":18832}},
	   "stats":[{"name":"cx_active","type":"GAUGE"}],
	   "health_status":{"failed_active_health_check":true,"eds_health_status":"HEALTHY"}},
	  {"address":{"socket_address":{"address":"::1","port_value":18833}},
	   "health_status":{"eds_health_status":"DRAINING"}}]},
	 {"name":"xds","host_statuses":[]}]}`
	got, err := ParseClusters(strings.NewReader(doc))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]map[string]Host{
		"brokers": {
			"127.0.0.1:18831": {Healthy: true, Connections: 3},
			"127.0.0.1:18832": {Healthy: false},
			"[::1]:18833":     {Healthy: false},
		},
		"xds": {},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("clusters (-want +got):\n%s", diff)
	}
	if _, err := ParseClusters(strings.NewReader(`{"cluster_statuses":[`)); err == nil {
		t.Error("a cut document was accepted")
	}
}
