package health

import (
	"testing"
	"time"

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
	down := map[string]map[string]map[string]bool{"envoy-1": {"brokers": {}}}
	step := func(d time.Duration, views map[string]map[string]map[string]bool) ClusterHealth {
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
	up := map[string]map[string]map[string]bool{"envoy-1": {"brokers": {"127.0.0.1:18832": true}}}
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
