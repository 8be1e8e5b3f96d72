package server

import (
	"context"
	"net"
	"strconv"
	"strings"
	"time"
	"unicode"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
)

// NodeStatus is what the server knows of one Envoy node.
type NodeStatus struct {
	ID           string `json:"id"`
	Cluster      string `json:"cluster,omitempty"`
	EnvoyVersion string `json:"envoy_version,omitempty"`
	// AdminAddress is the admin address the node advertises in its
	// metadata (AdminAddressKey); the control plane reads the node's
	// view of broker health there.
	AdminAddress string                    `json:"admin_address,omitempty"`
	Connected    bool                      `json:"connected"`
	Streams      int                       `json:"streams"`
	FirstSeen    time.Time                 `json:"first_seen"`
	LastSeen     time.Time                 `json:"last_seen"`
	Resources    map[string]ResourceStatus `json:"resources"` // "listeners", "clusters", "endpoints"
	// Replica names the control-plane replica the node is (or was last)
	// connected to, when several share a store; the server leaves it empty.
	Replica string `json:"replica,omitempty"`
}

// AdminAddressKey is the node metadata key under which an Envoy advertises
// its admin address (host:port), as envoy/bootstrap.yaml does.
const AdminAddressKey = "admin_address"

// adminAddress is the address a node advertises, when it is a host:port
// of a sane length (it is kept, shown and dialled); "" otherwise.
func adminAddress(s string) string {
	host, port, err := net.SplitHostPort(s)
	if err != nil || host == "" || len(s) > maxNodeCluster || strings.ContainsFunc(s, unicode.IsControl) {
		return ""
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return ""
	}
	return s
}

// ResourceStatus is one resource type's state on a node: the version last
// sent, the version the node last accepted, and its last rejection.
type ResourceStatus struct {
	SentVersion   string     `json:"sent_version,omitempty"`
	AckedVersion  string     `json:"acked_version,omitempty"`
	NackedVersion string     `json:"nacked_version,omitempty"`
	NackMessage   string     `json:"nack_message,omitempty"`
	NackedAt      *time.Time `json:"nacked_at,omitempty"`
}

// resourceKind names the resource types this server serves, as the status
// shows them. Requests for other types are not recorded, so a node cannot
// grow its status with made-up type URLs.
func resourceKind(typeURL string) (string, bool) {
	switch typeURL {
	case resource.ListenerType:
		return "listeners", true
	case resource.ClusterType:
		return "clusters", true
	case resource.EndpointType:
		return "endpoints", true
	case resource.ExtensionConfigType:
		return "filters", true
	case resource.SecretType:
		return "secrets", true
	}
	return "", false
}

// resourceTypes are the type URLs the server serves.
var resourceTypes = []string{resource.ListenerType, resource.ClusterType, resource.EndpointType, resource.ExtensionConfigType, resource.SecretType}

// Rejecting reports whether the node's answer to the version last sent
// was a NACK.
func (rs ResourceStatus) Rejecting() bool {
	return rs.NackedVersion != "" && rs.NackedVersion == rs.SentVersion && rs.AckedVersion != rs.SentVersion
}

// xdsRequest is what the server reads of a state-of-the-world or delta
// request.
type xdsRequest struct {
	node        *corev3.Node // nil on later requests of a stream
	typeURL     string
	versionInfo string // "" in delta requests
	nonce       string
	nack        bool
	errDetail   string
}

// streamID names a stream. go-control-plane numbers state-of-the-world
// and delta streams separately, from 1 each: the same number can name
// one stream of each kind at once.
type streamID struct {
	delta bool
	n     int64
}

func sotwStream(n int64) streamID  { return streamID{n: n} }
func deltaStream(n int64) streamID { return streamID{delta: true, n: n} }

// callbacks connects go-control-plane's stream events to the server.
type callbacks struct{ s *Server }

func (c *callbacks) OnStreamOpen(_ context.Context, id int64, _ string) error {
	return c.s.streamOpened(sotwStream(id))
}

func (c *callbacks) OnStreamClosed(id int64, _ *corev3.Node) { c.s.streamClosed(sotwStream(id)) }

func (c *callbacks) OnDeltaStreamOpen(_ context.Context, id int64, _ string) error {
	return c.s.streamOpened(deltaStream(id))
}

func (c *callbacks) OnDeltaStreamClosed(id int64, _ *corev3.Node) { c.s.streamClosed(deltaStream(id)) }

func (c *callbacks) OnStreamRequest(id int64, req *discovery.DiscoveryRequest) error {
	return c.s.request(sotwStream(id), xdsRequest{node: req.GetNode(), typeURL: req.GetTypeUrl(), versionInfo: req.GetVersionInfo(),
		nonce: req.GetResponseNonce(), nack: req.GetErrorDetail() != nil, errDetail: req.GetErrorDetail().GetMessage()})
}

func (c *callbacks) OnStreamResponse(_ context.Context, id int64, _ *discovery.DiscoveryRequest, resp *discovery.DiscoveryResponse) {
	c.s.response(sotwStream(id), resp.GetTypeUrl(), resp.GetVersionInfo(), resp.GetNonce())
}

func (c *callbacks) OnStreamDeltaRequest(id int64, req *discovery.DeltaDiscoveryRequest) error {
	return c.s.request(deltaStream(id), xdsRequest{node: req.GetNode(), typeURL: req.GetTypeUrl(),
		nonce: req.GetResponseNonce(), nack: req.GetErrorDetail() != nil, errDetail: req.GetErrorDetail().GetMessage()})
}

func (c *callbacks) OnStreamDeltaResponse(id int64, _ *discovery.DeltaDiscoveryRequest, resp *discovery.DeltaDiscoveryResponse) {
	c.s.response(deltaStream(id), resp.GetTypeUrl(), resp.GetSystemVersionInfo(), resp.GetNonce())
}

func (c *callbacks) OnFetchRequest(context.Context, *discovery.DiscoveryRequest) error { return nil }

func (c *callbacks) OnFetchResponse(*discovery.DiscoveryRequest, *discovery.DiscoveryResponse) {}

// Metrics are the server's Prometheus metrics.
type Metrics struct {
	pushes    prometheus.Counter
	responses *prometheus.CounterVec
	nacks     *prometheus.CounterVec
	refused   *prometheus.CounterVec
	connected prometheus.Gauge
	nodes     prometheus.Gauge
	version   prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		pushes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mqtt_sticky_xds_pushes_total", Help: "New resource versions pushed to the snapshot cache.",
		}),
		responses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mqtt_sticky_xds_responses_total", Help: "xDS responses sent to Envoys, by resource type.",
		}, []string{"type"}),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mqtt_sticky_xds_nacks_total", Help: "xDS responses rejected (NACKed) by Envoys, by resource type.",
		}, []string{"type"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mqtt_sticky_xds_streams_refused_total",
			Help: "xDS streams closed by the server, by reason: node_id_missing, node_id_too_long, node_id_invalid, node_changed, too_many_nodes, too_many_streams.",
		}, []string{"reason"}),
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "mqtt_sticky_xds_connected_nodes", Help: "Envoy nodes with at least one open xDS stream.",
		}),
		nodes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "mqtt_sticky_xds_nodes", Help: "Envoy nodes the server keeps: connected, or gone for less than the grace period.",
		}),
		version: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "mqtt_sticky_xds_version", Help: "The resource version being served.",
		}),
	}
	// Every series exists from the start, at 0: a dashboard or alert then
	// sees "none yet" instead of no data.
	for _, typeURL := range resourceTypes {
		kind, _ := resourceKind(typeURL)
		m.responses.WithLabelValues(kind)
		m.nacks.WithLabelValues(kind)
	}
	for _, reason := range []string{"node_id_missing", "node_id_too_long", "node_id_invalid", "node_changed", "too_many_nodes", "too_many_streams"} {
		m.refused.WithLabelValues(reason)
	}
	if reg != nil {
		reg.MustRegister(m.pushes, m.responses, m.nacks, m.refused, m.connected, m.nodes, m.version)
	}
	return m
}

// nodeCollector exports each node's xDS state, read from the server at
// scrape time: it keeps nothing of its own, so a node's series exist
// exactly while the server keeps the node (at most MaxNodes of them).
type nodeCollector struct{ s *Server }

var (
	nodeConnectedDesc = prometheus.NewDesc("mqtt_sticky_xds_node_connected",
		"1 while the Envoy node has an open xDS stream.", []string{"node"}, nil)
	nodeAckedDesc = prometheus.NewDesc("mqtt_sticky_xds_node_acked_version",
		"The resource version the node last acknowledged (ACK), by resource type.", []string{"node", "type"}, nil)
	nodeRejectingDesc = prometheus.NewDesc("mqtt_sticky_xds_node_rejecting",
		"1 while the node rejects (NACK) the version last sent to it, by resource type; it keeps running the version it last acknowledged.", []string{"node", "type"}, nil)
)

func (c nodeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- nodeConnectedDesc
	ch <- nodeAckedDesc
	ch <- nodeRejectingDesc
}

func (c nodeCollector) Collect(ch chan<- prometheus.Metric) {
	for _, n := range c.s.Nodes() {
		ch <- prometheus.MustNewConstMetric(nodeConnectedDesc, prometheus.GaugeValue, boolValue(n.Connected), n.ID)
		for kind, rs := range n.Resources {
			if v, err := strconv.ParseUint(rs.AckedVersion, 10, 64); err == nil {
				ch <- prometheus.MustNewConstMetric(nodeAckedDesc, prometheus.GaugeValue, float64(v), n.ID, kind)
			}
			ch <- prometheus.MustNewConstMetric(nodeRejectingDesc, prometheus.GaugeValue, boolValue(rs.Rejecting()), n.ID, kind)
		}
	}
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
