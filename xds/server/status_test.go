package server

import (
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// The tracker turns a stream's requests into ACK/NACK state: a request
// carrying the nonce of a response acknowledges that response's version,
// or rejects it when it carries an error.
func TestTrackerAckNack(t *testing.T) {
	m := newMetrics(prometheus.NewRegistry())
	tr := newTracker(m)
	tr.now = func() time.Time { return time.Unix(1000, 0) }
	node := &corev3.Node{Id: "envoy-1", Cluster: "edge"}

	tr.open(sotwStream(1))
	if id := tr.request(sotwStream(1), node, resource.ClusterType, "", "", "", false); id != "envoy-1" {
		t.Fatalf("node id %q", id)
	}
	tr.response(sotwStream(1), resource.ClusterType, "7", "n1")
	tr.request(sotwStream(1), nil, resource.ClusterType, "7", "n1", "", false) // ACK; later requests omit the node
	tr.response(sotwStream(1), resource.ClusterType, "8", "n2")
	tr.request(sotwStream(1), nil, resource.ClusterType, "7", "n2", "cluster brokers: bad", true) // NACK of 8

	st := tr.snapshot()
	if len(st) != 1 || !st[0].Connected || st[0].Streams != 1 || st[0].Cluster != "edge" {
		t.Fatalf("status %+v", st)
	}
	rs := st[0].Resources["clusters"]
	if rs.SentVersion != "8" || rs.AckedVersion != "7" || rs.NackedVersion != "8" || rs.NackMessage != "cluster brokers: bad" || rs.NackedAt == nil {
		t.Errorf("clusters state %+v", rs)
	}
	if got := testutil.ToFloat64(m.nacks.WithLabelValues("clusters")); got != 1 {
		t.Errorf("nack counter %v", got)
	}
	if got := testutil.ToFloat64(m.connected); got != 1 {
		t.Errorf("connected gauge %v", got)
	}
	// Per node: connected, clusters acknowledged at 7, and rejecting 8.
	want := `
# HELP mqtt_sticky_xds_node_acked_version The resource version the node last acknowledged (ACK), by resource type.
# TYPE mqtt_sticky_xds_node_acked_version gauge
mqtt_sticky_xds_node_acked_version{node="envoy-1",type="clusters"} 7
# HELP mqtt_sticky_xds_node_connected 1 while the Envoy node has an open xDS stream.
# TYPE mqtt_sticky_xds_node_connected gauge
mqtt_sticky_xds_node_connected{node="envoy-1"} 1
# HELP mqtt_sticky_xds_node_rejecting 1 while the node rejects (NACK) the version last sent to it, by resource type; it keeps running the version it last acknowledged.
# TYPE mqtt_sticky_xds_node_rejecting gauge
mqtt_sticky_xds_node_rejecting{node="envoy-1",type="clusters"} 1
`
	if err := testutil.CollectAndCompare(nodeCollector{tr}, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
	tr.response(sotwStream(1), resource.ClusterType, "9", "n3")
	tr.request(sotwStream(1), nil, resource.ClusterType, "9", "n3", "", false) // ACK of 9 ends the rejection
	want = `
# HELP mqtt_sticky_xds_node_rejecting 1 while the node rejects (NACK) the version last sent to it, by resource type; it keeps running the version it last acknowledged.
# TYPE mqtt_sticky_xds_node_rejecting gauge
mqtt_sticky_xds_node_rejecting{node="envoy-1",type="clusters"} 0
`
	if err := testutil.CollectAndCompare(nodeCollector{tr}, strings.NewReader(want), "mqtt_sticky_xds_node_rejecting"); err != nil {
		t.Errorf("after a later ACK: %v", err)
	}

	// Delta requests carry no version: the ACK is for the version sent
	// with the nonce.
	tr.open(deltaStream(2))
	tr.request(deltaStream(2), node, resource.EndpointType, "", "", "", false)
	tr.response(deltaStream(2), resource.EndpointType, "9", "d1")
	tr.request(deltaStream(2), nil, resource.EndpointType, "", "d1", "", false)
	if rs := tr.snapshot()[0].Resources["endpoints"]; rs.AckedVersion != "9" {
		t.Errorf("delta ack: %+v", rs)
	}
	if st := tr.snapshot()[0]; st.Streams != 2 {
		t.Errorf("streams %d", st.Streams)
	}

	tr.closed(sotwStream(1))
	tr.closed(deltaStream(2))
	if st := tr.snapshot()[0]; st.Connected || st.Streams != 0 {
		t.Errorf("after close: %+v", st)
	}
	if got := testutil.ToFloat64(m.connected); got != 0 {
		t.Errorf("connected gauge %v after close", got)
	}
}

// A node that reconnects with the version it runs shows that version as
// acknowledged before any response is sent.
func TestTrackerReconnect(t *testing.T) {
	tr := newTracker(newMetrics(nil))
	tr.open(sotwStream(1))
	tr.request(sotwStream(1), &corev3.Node{Id: "n"}, resource.ListenerType, "5", "", "", false)
	if rs := tr.snapshot()[0].Resources["listeners"]; rs.AckedVersion != "5" {
		t.Errorf("%+v", rs)
	}
}

// go-control-plane numbers state-of-the-world and delta streams
// separately: stream 1 of each kind, from two nodes, are two streams.
func TestTrackerSotWAndDeltaStreamsWithTheSameNumber(t *testing.T) {
	tr := newTracker(newMetrics(nil))
	tr.open(deltaStream(1))
	tr.request(deltaStream(1), &corev3.Node{Id: "delta"}, resource.EndpointType, "", "", "", false)
	tr.open(sotwStream(1))
	tr.request(sotwStream(1), &corev3.Node{Id: "sotw"}, resource.EndpointType, "", "", "", false)
	tr.response(deltaStream(1), resource.EndpointType, "2", "d1")
	tr.request(deltaStream(1), nil, resource.EndpointType, "", "d1", "", false)
	for _, n := range tr.snapshot() {
		want := map[string]string{"delta": "2", "sotw": ""}[n.ID]
		if got := n.Resources["endpoints"]; got.AckedVersion != want || got.SentVersion != want {
			t.Errorf("node %s: endpoints %+v, want version %q", n.ID, got, want)
		}
	}
}
