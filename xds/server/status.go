package server

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

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

// ResourceStatus is one resource type's state on a node: the version last
// sent, the version the node last accepted, and its last rejection.
type ResourceStatus struct {
	SentVersion   string     `json:"sent_version,omitempty"`
	AckedVersion  string     `json:"acked_version,omitempty"`
	NackedVersion string     `json:"nacked_version,omitempty"`
	NackMessage   string     `json:"nack_message,omitempty"`
	NackedAt      *time.Time `json:"nacked_at,omitempty"`
}

func shortType(typeURL string) string {
	switch typeURL {
	case resource.ListenerType:
		return "listeners"
	case resource.ClusterType:
		return "clusters"
	case resource.EndpointType:
		return "endpoints"
	case resource.ExtensionConfigType:
		return "filters"
	case resource.SecretType:
		return "secrets"
	}
	return strings.TrimPrefix(typeURL, resource.APITypePrefix)
}

// tracker follows every stream and turns requests into ACK/NACK state.
type tracker struct {
	metrics *Metrics
	now     func() time.Time

	mu      sync.Mutex
	nodes   map[string]*NodeStatus
	streams map[streamID]*streamState
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

type streamState struct {
	node   string
	nonces map[string]string // response nonce -> version sent with it
}

func newTracker(m *Metrics) *tracker {
	return &tracker{metrics: m, now: time.Now, nodes: map[string]*NodeStatus{}, streams: map[streamID]*streamState{}}
}

func (t *tracker) open(id streamID) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.streams[id] = &streamState{nonces: map[string]string{}}
}

func (t *tracker) closed(id streamID) {
	t.mu.Lock()
	defer t.mu.Unlock()
	st := t.streams[id]
	delete(t.streams, id)
	if st == nil || st.node == "" {
		return
	}
	if n := t.nodes[st.node]; n != nil {
		n.Streams--
		n.Connected = n.Streams > 0
		n.LastSeen = t.now()
	}
	t.updateConnected()
}

// request records a request's node, and whether it acknowledged or
// rejected the response named by its nonce. It returns the node ID.
func (t *tracker) request(id streamID, node *corev3.Node, typeURL, versionInfo, nonce string, errDetail string, nack bool) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	st := t.streams[id]
	if st == nil {
		st = &streamState{nonces: map[string]string{}}
		t.streams[id] = st
	}
	if st.node == "" && node.GetId() != "" {
		st.node = node.GetId()
		n := t.nodes[st.node]
		if n == nil {
			n = &NodeStatus{ID: st.node, FirstSeen: t.now(), Resources: map[string]ResourceStatus{}}
			t.nodes[st.node] = n
		}
		n.Cluster = node.GetCluster()
		n.AdminAddress = node.GetMetadata().GetFields()[AdminAddressKey].GetStringValue()
		if v := node.GetUserAgentBuildVersion().GetVersion(); v != nil {
			n.EnvoyVersion = formatVersion(v.GetMajorNumber(), v.GetMinorNumber(), v.GetPatch())
		}
		n.Streams++
		n.Connected = true
		t.updateConnected()
	}
	n := t.nodes[st.node]
	if n == nil {
		return ""
	}
	n.LastSeen = t.now()
	kind := shortType(typeURL)
	rs := n.Resources[kind]
	if nonce == "" {
		// A first request: after a reconnect it names the version the
		// node already runs.
		if versionInfo != "" {
			rs.AckedVersion = versionInfo
			n.Resources[kind] = rs
		}
		return n.ID
	}
	sent, known := st.nonces[nonce]
	delete(st.nonces, nonce)
	switch {
	case nack:
		if known {
			rs.NackedVersion = sent
		}
		rs.NackMessage = errDetail
		at := t.now()
		rs.NackedAt = &at
		t.metrics.nacks.WithLabelValues(kind).Inc()
	case versionInfo != "":
		rs.AckedVersion = versionInfo
	case known:
		rs.AckedVersion = sent // delta requests carry no version: use the one sent
	}
	n.Resources[kind] = rs
	return n.ID
}

func (t *tracker) response(id streamID, typeURL, version, nonce string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	st := t.streams[id]
	if st == nil {
		return
	}
	st.nonces[nonce] = version
	kind := shortType(typeURL)
	t.metrics.responses.WithLabelValues(kind).Inc()
	if n := t.nodes[st.node]; n != nil {
		rs := n.Resources[kind]
		rs.SentVersion = version
		n.Resources[kind] = rs
	}
}

func (t *tracker) updateConnected() {
	c := 0
	for _, n := range t.nodes {
		if n.Connected {
			c++
		}
	}
	t.metrics.connected.Set(float64(c))
}

func (t *tracker) snapshot() []NodeStatus {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]NodeStatus, 0, len(t.nodes))
	for _, n := range t.nodes {
		c := *n
		c.Resources = map[string]ResourceStatus{}
		for k, v := range n.Resources {
			c.Resources[k] = v
		}
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b NodeStatus) int { return strings.Compare(a.ID, b.ID) })
	return out
}

func formatVersion(major, minor, patch uint32) string {
	return fmt.Sprintf("%d.%d.%d", major, minor, patch)
}

// callbacks connects go-control-plane's stream events to the tracker, and
// gives a node its snapshot the first time it asks.
type callbacks struct{ s *Server }

func (c *callbacks) OnStreamOpen(_ context.Context, id int64, _ string) error {
	c.s.status.open(sotwStream(id))
	return nil
}

func (c *callbacks) OnStreamClosed(id int64, _ *corev3.Node) { c.s.status.closed(sotwStream(id)) }

func (c *callbacks) OnDeltaStreamOpen(_ context.Context, id int64, _ string) error {
	c.s.status.open(deltaStream(id))
	return nil
}

func (c *callbacks) OnDeltaStreamClosed(id int64, _ *corev3.Node) { c.s.status.closed(deltaStream(id)) }

func (c *callbacks) OnStreamRequest(id int64, req *discovery.DiscoveryRequest) error {
	node := c.s.status.request(sotwStream(id), req.GetNode(), req.GetTypeUrl(), req.GetVersionInfo(), req.GetResponseNonce(),
		req.GetErrorDetail().GetMessage(), req.GetErrorDetail() != nil)
	c.logNack(node, req.GetTypeUrl(), req.GetErrorDetail().GetMessage(), req.GetErrorDetail() != nil)
	if node != "" {
		c.s.ensureNode(node)
	}
	return nil
}

func (c *callbacks) OnStreamResponse(_ context.Context, id int64, _ *discovery.DiscoveryRequest, resp *discovery.DiscoveryResponse) {
	c.s.status.response(sotwStream(id), resp.GetTypeUrl(), resp.GetVersionInfo(), resp.GetNonce())
}

func (c *callbacks) OnStreamDeltaRequest(id int64, req *discovery.DeltaDiscoveryRequest) error {
	node := c.s.status.request(deltaStream(id), req.GetNode(), req.GetTypeUrl(), "", req.GetResponseNonce(),
		req.GetErrorDetail().GetMessage(), req.GetErrorDetail() != nil)
	c.logNack(node, req.GetTypeUrl(), req.GetErrorDetail().GetMessage(), req.GetErrorDetail() != nil)
	if node != "" {
		c.s.ensureNode(node)
	}
	return nil
}

func (c *callbacks) OnStreamDeltaResponse(id int64, _ *discovery.DeltaDiscoveryRequest, resp *discovery.DeltaDiscoveryResponse) {
	c.s.status.response(deltaStream(id), resp.GetTypeUrl(), resp.GetSystemVersionInfo(), resp.GetNonce())
}

func (c *callbacks) OnFetchRequest(context.Context, *discovery.DiscoveryRequest) error { return nil }

func (c *callbacks) OnFetchResponse(*discovery.DiscoveryRequest, *discovery.DiscoveryResponse) {}

func (c *callbacks) logNack(node, typeURL, msg string, nack bool) {
	if nack {
		c.s.log.Warn("xds: node rejected an update", "node", node, "type", shortType(typeURL), "error", msg)
	}
}

// Metrics are the server's Prometheus metrics.
type Metrics struct {
	pushes    prometheus.Counter
	responses *prometheus.CounterVec
	nacks     *prometheus.CounterVec
	connected prometheus.Gauge
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
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "mqtt_sticky_xds_connected_nodes", Help: "Envoy nodes with at least one open xDS stream.",
		}),
		version: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "mqtt_sticky_xds_version", Help: "The resource version being served.",
		}),
	}
	// Every resource type's series exists from the start, at 0: a
	// dashboard or alert then sees "no NACK yet" instead of no data.
	for _, typeURL := range []string{resource.ListenerType, resource.ClusterType, resource.EndpointType, resource.ExtensionConfigType} {
		m.responses.WithLabelValues(shortType(typeURL))
		m.nacks.WithLabelValues(shortType(typeURL))
	}
	if reg != nil {
		reg.MustRegister(m.pushes, m.responses, m.nacks, m.connected, m.version)
	}
	return m
}

// nodeCollector exports each node's xDS state, read from the tracker at
// scrape time: it keeps nothing of its own, so a node's series exist
// exactly while the tracker knows the node.
type nodeCollector struct{ t *tracker }

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
	for _, n := range c.t.snapshot() {
		ch <- prometheus.MustNewConstMetric(nodeConnectedDesc, prometheus.GaugeValue, boolValue(n.Connected), n.ID)
		for kind, rs := range n.Resources {
			if v, err := strconv.ParseUint(rs.AckedVersion, 10, 64); err == nil {
				ch <- prometheus.MustNewConstMetric(nodeAckedDesc, prometheus.GaugeValue, float64(v), n.ID, kind)
			}
			ch <- prometheus.MustNewConstMetric(nodeRejectingDesc, prometheus.GaugeValue, boolValue(rs.Rejecting()), n.ID, kind)
		}
	}
}

// Rejecting reports whether the node's answer to the version last sent
// was a NACK.
func (rs ResourceStatus) Rejecting() bool {
	return rs.NackedVersion != "" && rs.NackedVersion == rs.SentVersion && rs.AckedVersion != rs.SentVersion
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
