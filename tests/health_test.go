package tests

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/mqtt-sticky/mqtt-sticky/api"
	"github.com/mqtt-sticky/mqtt-sticky/internal/broker"
)

// The http and emqx health checks probe each broker's availability
// endpoint on its management port: draining one broker (EMQX's evacuation
// start) makes Envoy mark it unhealthy within interval x threshold, its
// client IDs go elsewhere and nobody else moves; stopping the evacuation
// brings them back. The MQTT port still gets PROXY headers carrying the
// clients' addresses; the management port never gets one.
func TestHTTPHealthChecks(t *testing.T) {
	const timing = "interval: 500ms, timeout: 400ms, unhealthy_threshold: 2, healthy_threshold: 1"
	for typ, opts := range map[string]string{
		"http": fmt.Sprintf("  health_check: {type: http, port: %d, path: /api/v5/load_rebalance/availability_check, expect: [200], %s}", brokerHTTPPort, timing),
		"emqx": fmt.Sprintf("  health_check: {type: emqx, port: %d, %s}", brokerHTTPPort, timing),
	} {
		t.Run(typ, func(t *testing.T) {
			brokers := startStrictBrokers(t, 3)
			listenPort := freePort(t)
			cp := startControlPlane(t, fleetConfig(t, listenPort, brokers, opts), filepath.Join(t.TempDir(), "state.json"))
			envoy := startXDSEnvoy(t, cp, "envoy-"+typ, false)
			envoy.waitHosts(t, cp, brokers, 20*time.Second)
			addr := fmt.Sprintf("127.0.0.1:%d", listenPort)
			ids := clientIDs(600, "drain-"+typ)
			before := connectAll(t, addr, brokers, ids, 0)

			victim := brokers[1]
			evacuate(t, 2, victim.Name(), "start")
			rest := []*broker.Broker{brokers[0], brokers[2]}
			detect := envoy.waitHosts(t, cp, rest, 10*time.Second)
			limit := 3*500*time.Millisecond + 400*time.Millisecond
			t.Logf("%s: Envoy marked the draining broker unhealthy %v after its evacuation started (interval 500ms x threshold 2, timeout 400ms)", typ, detect)
			if detect > limit {
				t.Errorf("detection took %v, want at most %v", detect, limit)
			}
			during := connectAll(t, addr, rest, ids, 1)
			strays := 0
			for _, id := range ids {
				switch {
				case before[id] == victim.Name() && during[id] == victim.Name():
					t.Errorf("%s reached the draining broker", id)
				case before[id] != victim.Name() && during[id] != before[id]:
					strays++
				}
			}
			checkStrays(t, "maglev", "draining a broker", strays, len(ids))

			evacuate(t, 2, victim.Name(), "stop")
			envoy.waitHosts(t, cp, brokers, 10*time.Second)
			after := connectAll(t, addr, brokers, ids, 2)
			if moved, _ := movedIDs(ids, before, after, ""); moved != 0 {
				t.Errorf("%d IDs are not back on their broker after the evacuation stopped", moved)
			}
			for _, b := range brokers {
				if b.HealthChecks() == 0 || b.HTTPProxyHeaders() != 0 || b.Forwarded() == 0 || b.LocalRejected() != 0 {
					t.Errorf("%s: %d availability checks, %d PROXY headers on the management port, %d forwarded clients, %d LOCAL headers refused",
						b.Name(), b.HealthChecks(), b.HTTPProxyHeaders(), b.Forwarded(), b.LocalRejected())
				}
			}
			h := waitHealth(t, cp, "every broker healthy", func(h api.ClusterStatus) bool { return h.Health.Healthy[envoy.nodeID] == 3 })
			if h.Health.NeverHealthy {
				t.Errorf("status says the check never passed: %+v", h.Health)
			}
		})
	}
}

// evacuate starts or stops broker i's evacuation through its EMQX-style
// endpoint, as an operator would with EMQX.
func evacuate(t *testing.T, i int, node, action string) {
	t.Helper()
	url := fmt.Sprintf("http://%s/api/v5/load_rebalance/%s/evacuation/%s", httpAddr(i), node, action)
	resp, err := http.Post(url, "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("POST %s: %s", url, resp.Status)
	}
}

// waitHealth polls /v1/status until ok holds for cluster "brokers"' health.
func waitHealth(t *testing.T, cp *controlPlane, what string, ok func(api.ClusterStatus) bool) api.ClusterStatus {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var last []api.ClusterStatus
	for time.Now().Before(deadline) {
		st, err := cp.client.Status(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		last = st.Clusters
		for _, c := range st.Clusters {
			if c.Name == "brokers" && c.Health != nil && ok(c) {
				return c
			}
		}
		time.Sleep(50 * time.Millisecond) // polling interval of a readiness check
	}
	t.Fatalf("status never showed %s: %+v", what, last)
	return api.ClusterStatus{}
}

// A health check that can never pass (here: an http check on a port no
// broker listens on) is not silent: /v1/status, the CLI and a metric say
// that no endpoint has passed since it was added. The control plane reads
// this from the Envoy node's admin /clusters.
func TestNeverHealthyIsReported(t *testing.T) {
	brokers := startStrictBrokers(t, 2)
	listenPort := freePort(t)
	opts := "  health_check: {type: http, port: 18099, path: /, interval: 500ms, timeout: 200ms, unhealthy_threshold: 2, healthy_threshold: 1}"
	cp := startControlPlane(t, fleetConfig(t, listenPort, brokers, opts), filepath.Join(t.TempDir(), "state.json"))
	envoy := startXDSEnvoy(t, cp, "envoy-never-healthy", false)
	c := waitHealth(t, cp, "never_healthy", func(c api.ClusterStatus) bool { return c.Health.NeverHealthy })
	t.Logf("status: %+v", *c.Health)
	if c.Health.Healthy[envoy.nodeID] != 0 || c.Health.Message == "" {
		t.Errorf("health %+v", *c.Health)
	}
	if m := cpMetrics(t, cp); !contains(m, `mqtt_sticky_cluster_never_healthy{cluster="brokers"} 1`) {
		t.Error(`/metrics lacks mqtt_sticky_cluster_never_healthy{cluster="brokers"} 1`)
	}
	if out, code := runCLI(t, cp, "status"); code != 0 || !contains(out, "WARNING: every endpoint has been unhealthy") {
		t.Errorf("mqtt-sticky status: exit %d\n%s", code, out)
	}
}
