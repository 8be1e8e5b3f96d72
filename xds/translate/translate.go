// Package translate turns a model.Model into the Envoy resources that
// implement it: one listener per model listener (the mqtt_sticky filter,
// then tcp_proxy hashing on its routing key), one EDS cluster per broker
// cluster (Maglev or ring hash, PROXY protocol to the brokers, MQTT health
// checks), and one load assignment per cluster.
//
// Translation is pure and deterministic: the same model and node give the
// same resources, byte for byte. Every resource is validated against
// Envoy's proto constraints before it is returned.
package translate

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	streamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	dynmodv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/dynamic_modules/v3"
	dmfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/dynamic_modules/v3"
	localrlv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/local_ratelimit/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	lbcommonv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/common/v3"
	maglevv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/maglev/v3"
	ringhashv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/ring_hash/v3"
	proxyprotocolv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/proxy_protocol/v3"
	rawbufferv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/raw_buffer/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/mqtt-sticky/mqtt-sticky/contract"
	"github.com/mqtt-sticky/mqtt-sticky/filter/mqtt"
	"github.com/mqtt-sticky/mqtt-sticky/xds/model"
)

// Resources are the Envoy resources for one node, each list sorted by name.
type Resources struct {
	Listeners []types.Resource
	Clusters  []types.Resource
	Endpoints []types.Resource
	// Filters are the listeners' network filters (TypedExtensionConfig),
	// which the listeners name and Envoy fetches by extension config
	// discovery (ECDS).
	Filters []types.Resource
	// Secrets are the TLS certificates and CAs (SDS) that TLS listeners
	// and clusters name; each points at files on the Envoy host (tls.go).
	Secrets []types.Resource
}

// Translate builds the resources for the Envoy whose node ID is nodeID. The
// node ID only shows in the health-check client ID, so every Envoy probes
// brokers under its own identity; the endpoints are identical for every
// node, which keeps every Envoy's hash ring the same.
func Translate(m *model.Model, nodeID string) (*Resources, error) {
	f, err := TranslateFleet(m)
	if err != nil {
		return nil, err
	}
	return f.ForNode(nodeID), nil
}

// Fleet is a model translated once for all nodes: the resources every node
// shares, built and validated once, and what ForNode needs to add each
// node's own part. A server with many nodes translates a new version once,
// then pays per node only for the clusters whose health check names the
// node.
type Fleet struct {
	listeners []types.Resource
	endpoints []types.Resource
	filters   []types.Resource
	secrets   []types.Resource
	clusters  []fleetCluster // sorted by name
}

// fleetCluster is one translated cluster; perNode is set when its health
// check carries the node ID (the MQTT probe's client ID).
type fleetCluster struct {
	base    *clusterv3.Cluster
	perNode *model.Cluster
}

// probeNodeID stands in for a node while the per-node clusters are
// validated: the longest node ID gives the largest health-check payload
// (HealthCheckClientID truncates beyond it), and nothing else in a
// cluster depends on the node.
var probeNodeID = strings.Repeat("n", maxHealthCheckClientID)

// TranslateFleet translates m for every node and validates every resource.
// The model must not change afterwards: the Fleet refers to its clusters.
func TranslateFleet(m *model.Model) (*Fleet, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	f := &Fleet{}
	for i := range m.Listeners {
		l := &m.Listeners[i]
		filters := buildFilters(l, m.Cluster(l.Cluster))
		f.listeners = append(f.listeners, buildListener(l, filters))
		for _, tc := range filters {
			f.filters = append(f.filters, tc)
		}
		for _, s := range listenerSecrets(l) {
			f.secrets = append(f.secrets, s)
		}
	}
	forwards := forwardsCN(m)
	var bases []types.Resource
	for i := range m.Clusters {
		c := &m.Clusters[i]
		// The base is the cluster as the longest node ID gets it, so
		// validating it validates every node's copy.
		fc := fleetCluster{base: buildCluster(c, probeNodeID, forwards[c.Name])}
		if c.HealthCheck.Type == model.HealthMQTT {
			fc.perNode = c
		}
		f.clusters = append(f.clusters, fc)
		bases = append(bases, fc.base)
		f.endpoints = append(f.endpoints, BuildLoadAssignment(c))
		for _, s := range clusterSecrets(c) {
			f.secrets = append(f.secrets, s)
		}
	}
	sortByName(f.listeners)
	sortByName(f.endpoints)
	sortByName(f.filters)
	sortByName(f.secrets)
	slices.SortFunc(f.clusters, func(a, b fleetCluster) int { return strings.Compare(a.base.GetName(), b.base.GetName()) })
	for _, list := range [][]types.Resource{f.listeners, bases, f.endpoints, f.filters, f.secrets} {
		for _, res := range list {
			if err := validate(res); err != nil {
				return nil, err
			}
		}
	}
	return f, nil
}

// ForNode returns the node's resources. The shared ones are the Fleet's
// own messages, the same for every node: nobody may modify them.
func (f *Fleet) ForNode(nodeID string) *Resources {
	r := &Resources{Listeners: f.listeners, Endpoints: f.endpoints, Filters: f.filters, Secrets: f.secrets,
		Clusters: make([]types.Resource, 0, len(f.clusters))}
	for _, c := range f.clusters {
		r.Clusters = append(r.Clusters, c.forNode(nodeID))
	}
	return r
}

// forNode is the cluster as the node gets it: the shared message, or a
// copy with the node's health check.
func (c fleetCluster) forNode(nodeID string) *clusterv3.Cluster {
	if c.perNode == nil {
		return c.base
	}
	cl := proto.Clone(c.base).(*clusterv3.Cluster)
	cl.HealthChecks = []*corev3.HealthCheck{healthCheck(c.perNode, nodeID)}
	return cl
}

// StaticListeners returns copies of the listeners with each filter's
// configuration inline instead of its ECDS reference, and TLS secrets named
// without a config source, so that they resolve to the bootstrap's static
// secrets (r.Secrets): the form a static Envoy configuration (a benchmark,
// a test, an example) needs.
func (r *Resources) StaticListeners() []*listenerv3.Listener {
	configs := map[string]*anypb.Any{}
	for _, f := range r.Filters {
		tc := f.(*corev3.TypedExtensionConfig)
		configs[tc.GetName()] = tc.GetTypedConfig()
	}
	var out []*listenerv3.Listener
	for _, res := range r.Listeners {
		l := proto.Clone(res).(*listenerv3.Listener)
		for _, chain := range l.GetFilterChains() {
			for _, f := range chain.GetFilters() {
				f.ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: configs[f.GetName()]}
			}
			staticSecretRefs(chain.GetTransportSocket())
		}
		out = append(out, l)
	}
	return out
}

type allValidator interface{ ValidateAll() error }

func validate(res types.Resource) error {
	v, ok := res.(allValidator)
	if !ok {
		return nil
	}
	if err := v.ValidateAll(); err != nil {
		return fmt.Errorf("%w: generated %T %q fails Envoy's validation: %v", model.ErrInvalid, res, cachev3.GetResourceName(res), err)
	}
	return nil
}

// buildListener returns a listener whose filter chain names its filters
// without their configuration, which Envoy fetches by ECDS. Changing a
// filter's settings then leaves the listener as it is: Envoy gives the new
// settings to new connections and keeps the connections it has. Were the
// settings inline, any change would be a filter-chain update, and Envoy
// would close every connection on the old chain when the drain time ends.
func buildListener(l *model.Listener, filters []*corev3.TypedExtensionConfig) *listenerv3.Listener {
	chain := &listenerv3.FilterChain{}
	for _, f := range filters {
		chain.Filters = append(chain.Filters, &listenerv3.Filter{
			Name: f.GetName(),
			ConfigType: &listenerv3.Filter_ConfigDiscovery{ConfigDiscovery: &corev3.ExtensionConfigSource{
				ConfigSource: adsSource(),
				TypeUrls:     []string{f.GetTypedConfig().GetTypeUrl()},
			}},
		})
	}
	chain.TransportSocket = downstreamTLS(l)
	return &listenerv3.Listener{
		Name:                          l.Name,
		Address:                       socketAddress(l.Address, l.Port),
		PerConnectionBufferLimitBytes: wrapperspb.UInt32(l.BufferLimitBytes),
		FilterChains:                  []*listenerv3.FilterChain{chain},
	}
}

// FilterName is the name of a listener's filter: the ECDS resource and the
// listener's Filter both carry it.
func FilterName(listener, filter string) string { return listener + "." + filter }

// buildFilters returns a listener's network filters in chain order: the
// connection rate limit when there is one, the mqtt_sticky filter, then
// tcp_proxy hashing on its routing key.
func buildFilters(l *model.Listener, c *model.Cluster) []*corev3.TypedExtensionConfig {
	var filters []*corev3.TypedExtensionConfig
	if l.ConnectionRateLimit != nil {
		filters = append(filters, &corev3.TypedExtensionConfig{Name: FilterName(l.Name, "connection_rate_limit"), TypedConfig: mustAny(connectionRateLimit(l))})
	}
	return append(filters,
		&corev3.TypedExtensionConfig{Name: FilterName(l.Name, contract.FilterName), TypedConfig: mustAny(stickyFilter(l))},
		&corev3.TypedExtensionConfig{Name: FilterName(l.Name, "tcp_proxy"), TypedConfig: mustAny(tcpProxy(l, c))},
	)
}

// connectionRateLimit is Envoy's local_ratelimit network filter: one token
// per new connection, from a bucket of burst tokens refilled at the
// listener's rate, in the shortest interval (at least Envoy's 50ms) that
// refills a whole number of tokens. A connection without a token is
// closed at once, before it reaches mqtt_sticky.
func connectionRateLimit(l *model.Listener) *localrlv3.LocalRateLimit {
	r := l.ConnectionRateLimit
	interval := time.Second
	for _, ms := range []uint32{50, 100, 200, 250, 500} {
		if r.ConnectionsPerSecond*ms%1000 == 0 {
			interval = time.Duration(ms) * time.Millisecond
			break
		}
	}
	return &localrlv3.LocalRateLimit{
		StatPrefix: l.Name,
		TokenBucket: &typev3.TokenBucket{
			MaxTokens:     r.Burst,
			TokensPerFill: wrapperspb.UInt32(uint32(uint64(r.ConnectionsPerSecond) * uint64(interval/time.Millisecond) / 1000)),
			FillInterval:  durationpb.New(interval),
		},
	}
}

func stickyFilter(l *model.Listener) *dmfilterv3.DynamicModuleNetworkFilter {
	filterJSON, _ := json.Marshal(l.Filter) // a struct of strings and ints: cannot fail
	return &dmfilterv3.DynamicModuleNetworkFilter{
		DynamicModuleConfig: &dynmodv3.DynamicModuleConfig{
			Name:             l.ModuleName,
			MetricsNamespace: contract.MetricsNamespace,
			// A Go runtime cannot be unloaded: keep the module loaded when
			// an update drops the last user of a config.
			DoNotClose: true,
		},
		FilterName:   contract.FilterName,
		FilterConfig: mustAny(wrapperspb.String(string(filterJSON))),
	}
}

func tcpProxy(l *model.Listener, c *model.Cluster) *tcpproxyv3.TcpProxy {
	tcp := &tcpproxyv3.TcpProxy{
		StatPrefix:       l.Name,
		ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: c.Name},
		HashPolicy: []*typev3.HashPolicy{{
			PolicySpecifier: &typev3.HashPolicy_FilterState_{FilterState: &typev3.HashPolicy_FilterState{Key: contract.FilterStateKey}},
		}},
		IdleTimeout: durationpb.New(c.IdleTimeout.D()),
		// Without it tcp_proxy stops reading from the client when the
		// connection opens, and mqtt_sticky never sees the CONNECT.
		MaxEarlyDataBytes: wrapperspb.UInt32(uint32(l.Filter.MaxConnectBytes)),
	}
	if l.AccessLog {
		tcp.AccessLog = []*accesslogv3.AccessLog{accessLog()}
	}
	addSSLTLV(tcp, l)
	return tcp
}

func adsSource() *corev3.ConfigSource {
	return &corev3.ConfigSource{
		ResourceApiVersion:    corev3.ApiVersion_V3,
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
	}
}

// accessLogFields are the access log's JSON fields, one object per client
// connection when it closes. JSON, not text: Envoy writes text formats raw,
// so a client ID holding a newline could forge a whole log line, while its
// JSON formatter escapes every control character.
var accessLogFields = map[string]string{
	"start_time":       "%START_TIME%",
	"client_id":        "%DYNAMIC_METADATA(" + contract.MetadataNamespace + ":" + contract.MetadataClientID + ")%",
	"identity":         "%DYNAMIC_METADATA(" + contract.MetadataNamespace + ":" + contract.MetadataIdentity + ")%",
	"protocol_version": "%DYNAMIC_METADATA(" + contract.MetadataNamespace + ":" + contract.MetadataProtocolVersion + ")%",
	"client_address":   "%DOWNSTREAM_REMOTE_ADDRESS%",
	"broker":           "%UPSTREAM_HOST%",
	"duration_ms":      "%DURATION%",
	"bytes_received":   "%BYTES_RECEIVED%",
	"bytes_sent":       "%BYTES_SENT%",
	"response_flags":   "%RESPONSE_FLAGS%",
	"termination":      "%CONNECTION_TERMINATION_DETAILS%",
}

func accessLog() *accesslogv3.AccessLog {
	fields := map[string]any{}
	for k, v := range accessLogFields {
		fields[k] = v
	}
	format, err := structpb.NewStruct(fields)
	if err != nil {
		panic(fmt.Sprintf("translate: access log format: %v", err)) // only strings: cannot fail
	}
	return &accesslogv3.AccessLog{
		Name: "envoy.access_loggers.stdout",
		ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: mustAny(&streamv3.StdoutAccessLog{
			AccessLogFormat: &streamv3.StdoutAccessLog_LogFormat{LogFormat: &corev3.SubstitutionFormatString{
				Format: &corev3.SubstitutionFormatString_JsonFormat{JsonFormat: format},
			}},
		})},
	}
}

// buildCluster returns the cluster; passSSLTLV lets the SSL TLV a listener's
// tcp_proxy adds through its PROXY transport socket.
func buildCluster(c *model.Cluster, nodeID string, passSSLTLV bool) *clusterv3.Cluster {
	cl := &clusterv3.Cluster{
		Name:                 c.Name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: adsSource()},
		ConnectTimeout:       durationpb.New(c.ConnectTimeout.D()),
		// A broker removed through the API must stop receiving clients at
		// once. By default Envoy keeps a removed host while it still passes
		// health checks, so removals would only take effect when it dies.
		IgnoreHealthOnHostRemoval:     true,
		LoadBalancingPolicy:           lbPolicy(c),
		PerConnectionBufferLimitBytes: wrapperspb.UInt32(c.BufferLimitBytes),
		CircuitBreakers: &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{
			Priority:           corev3.RoutingPriority_DEFAULT,
			MaxConnections:     wrapperspb.UInt32(c.CircuitBreaker.MaxConnections),
			MaxPendingRequests: wrapperspb.UInt32(c.CircuitBreaker.MaxPendingRequests),
		}}},
		CommonLbConfig: &clusterv3.Cluster_CommonLbConfig{
			HealthyPanicThreshold: &typev3.Percent{Value: float64(*c.HealthyPanicThreshold)},
			// Apply health changes to the hash table at once. Envoy's default
			// 1s merge window delays them: a broker that just passed its
			// first health check would get no clients for up to a second.
			UpdateMergeWindow: durationpb.New(0),
		},
		// Long-lived broker connections: notice a vanished broker even when
		// no MQTT traffic flows.
		UpstreamConnectionOptions: &clusterv3.UpstreamConnectionOptions{TcpKeepalive: &corev3.TcpKeepalive{
			KeepaliveTime:     wrapperspb.UInt32(60),
			KeepaliveInterval: wrapperspb.UInt32(10),
			KeepaliveProbes:   wrapperspb.UInt32(3),
		}},
		TransportSocket: transportSocket(c, passSSLTLV),
		// Per-broker stats (open connections, health) in Envoy's Prometheus
		// output, envoy_cluster_endpoint_*: without them Envoy reports
		// only cluster totals there, and a dashboard cannot show how the
		// clients spread over the brokers.
		TrackClusterStats: &clusterv3.TrackClusterStats{PerEndpointStats: true},
	}
	if hc := healthCheck(c, nodeID); hc != nil {
		cl.HealthChecks = []*corev3.HealthCheck{hc}
		if plainProbes(c) {
			cl.TransportSocketMatches = []*clusterv3.Cluster_TransportSocketMatch{{
				Name:            healthCheckSocket,
				Match:           healthCheckMatch(),
				TransportSocket: rawBuffer(),
			}}
		}
	}
	return cl
}

// healthCheckSocket names the cluster's plain socket for health probes,
// and the match criteria that select it. The criteria on a health check
// take precedence over endpoint metadata; client connections never carry
// them, so they keep the PROXY socket.
const (
	healthCheckSocket   = "health-check-plain"
	healthCheckMatchKey = "mqtt_sticky_health_check"
)

func healthCheckMatch() *structpb.Struct {
	return &structpb.Struct{Fields: map[string]*structpb.Value{healthCheckMatchKey: structpb.NewStringValue("plain")}}
}

func rawBuffer() *corev3.TransportSocket {
	return &corev3.TransportSocket{
		Name:       "envoy.transport_sockets.raw_buffer",
		ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: mustAny(&rawbufferv3.RawBuffer{})},
	}
}

// lbPolicy returns the consistent-hash policy. For ring hash the ring size
// is points_per_host times the total weight, so a broker keeps the same
// number of points whatever the number of brokers, and adding or removing
// one moves only about 1/N of the client IDs. (Envoy's default gives each
// host ceil(minimum_ring_size / N) points, which reshuffles every host's
// share when N changes.)
func lbPolicy(c *model.Cluster) *clusterv3.LoadBalancingPolicy {
	var chc *lbcommonv3.ConsistentHashingLbConfig
	if c.HashBalance != 0 {
		chc = &lbcommonv3.ConsistentHashingLbConfig{HashBalanceFactor: wrapperspb.UInt32(c.HashBalance)}
	}
	var name string
	var cfg proto.Message
	switch c.LBPolicy {
	case model.RingHash:
		var weight uint64
		for _, e := range c.Endpoints {
			weight += uint64(e.Weight)
		}
		size := max(uint64(c.PointsPerHost)*weight, 1)
		name = "envoy.load_balancing_policies.ring_hash"
		cfg = &ringhashv3.RingHash{
			HashFunction:              ringhashv3.RingHash_XX_HASH,
			MinimumRingSize:           wrapperspb.UInt64(size),
			MaximumRingSize:           wrapperspb.UInt64(size),
			ConsistentHashingLbConfig: chc,
		}
	default:
		name = "envoy.load_balancing_policies.maglev"
		cfg = &maglevv3.Maglev{TableSize: wrapperspb.UInt64(c.MaglevTable), ConsistentHashingLbConfig: chc}
	}
	return &clusterv3.LoadBalancingPolicy{Policies: []*clusterv3.LoadBalancingPolicy_Policy{{
		TypedExtensionConfig: &corev3.TypedExtensionConfig{Name: name, TypedConfig: mustAny(cfg)},
	}}}
}

func proxyVersion(p model.ProxyProtocol) corev3.ProxyProtocolConfig_Version {
	if p == model.ProxyV1 {
		return corev3.ProxyProtocolConfig_V1
	}
	return corev3.ProxyProtocolConfig_V2
}

// transportSocket wraps raw_buffer, or TLS towards the brokers, in the
// upstream PROXY protocol socket, so every broker connection starts with
// the client's real address, in the clear, and then the client's bytes.
func transportSocket(c *model.Cluster, passSSLTLV bool) *corev3.TransportSocket {
	inner := upstreamTLS(c)
	if c.ProxyProtocol == model.ProxyOff {
		return inner // nil for plaintext: Envoy's default raw_buffer
	}
	if inner == nil {
		inner = rawBuffer()
	}
	config := &corev3.ProxyProtocolConfig{Version: proxyVersion(c.ProxyProtocol)}
	if passSSLTLV {
		config.PassThroughTlvs = sslTLVPassThrough()
	}
	return &corev3.TransportSocket{
		Name: "envoy.transport_sockets.upstream_proxy_protocol",
		ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: mustAny(&proxyprotocolv3.ProxyProtocolUpstreamTransport{
			Config:          config,
			TransportSocket: inner,
		})},
	}
}

// healthCheck probes brokers. Every probe uses the cluster's plain socket
// (healthCheckSocket), never the PROXY transport socket: through that
// socket a probe would carry a PROXY v2 LOCAL header, which some brokers
// refuse (RabbitMQ 3.10 crashes the connection on it).
//
// The MQTT probe (and the tcp one) writes its own PROXY header instead:
// the health checker's proxy_protocol_config, version 1, which names the
// probe's real source and destination. Envoy 1.40 writes a LOCAL header
// for version 2 there, so version 1 is used whatever the cluster's
// version; brokers that take PROXY protocol read both. It sends one
// CONNECT per connection (connections are not reused: a second CONNECT on
// a connection is a protocol violation) and expects an accepting CONNACK.
//
// The http and emqx checks go to the management port (the endpoints'
// health_check_config.port_value) with no PROXY header at all.
func healthCheck(c *model.Cluster, nodeID string) *corev3.HealthCheck {
	h := c.HealthCheck
	if h.Type == model.HealthOff {
		return nil
	}
	hc := &corev3.HealthCheck{
		Timeout:               durationpb.New(h.Timeout.D()),
		Interval:              durationpb.New(h.Interval.D()),
		UnhealthyInterval:     durationpb.New(h.UnhealthyInterval.D()),
		UnhealthyEdgeInterval: durationpb.New(h.UnhealthyInterval.D()),
		HealthyEdgeInterval:   durationpb.New(h.UnhealthyInterval.D()),
		// Until a cluster carries traffic Envoy probes at no_traffic
		// intervals (60s by default); keep them to the ones above.
		NoTrafficInterval:            durationpb.New(h.UnhealthyInterval.D()),
		NoTrafficHealthyInterval:     durationpb.New(h.Interval.D()),
		UnhealthyThreshold:           wrapperspb.UInt32(h.UnhealthyThreshold),
		HealthyThreshold:             wrapperspb.UInt32(h.HealthyThreshold),
		ReuseConnection:              wrapperspb.Bool(false),
		AlwaysLogHealthCheckFailures: true,
	}
	if plainProbes(c) {
		hc.TransportSocketMatchCriteria = healthCheckMatch()
	}
	if h.IsHTTP() {
		hc.HealthChecker = &corev3.HealthCheck_HttpHealthCheck_{HttpHealthCheck: httpHealthCheck(h)}
		return hc
	}
	tcp := &corev3.HealthCheck_TcpHealthCheck{}
	if plainProbes(c) { // and so the cluster sends PROXY headers
		tcp.ProxyProtocolConfig = &corev3.ProxyProtocolConfig{Version: corev3.ProxyProtocolConfig_V1}
	}
	if h.Type == model.HealthMQTT {
		connect := mqtt.AppendConnect(nil, &mqtt.ConnectPacket{Connect: mqtt.Connect{
			Level:      mqtt.Level311,
			ClientID:   HealthCheckClientID(h.ClientIDPrefix, nodeID),
			CleanStart: true,
			KeepAlive:  uint16(max(h.Interval.D().Seconds()*2, 10)),
		}})
		accepted := mqtt.AppendConnack(nil, mqtt.Level311, 0) // 20 02 00 00
		tcp.Send = &corev3.HealthCheck_Payload{Payload: &corev3.HealthCheck_Payload_Text{Text: hex.EncodeToString(connect)}}
		tcp.Receive = []*corev3.HealthCheck_Payload{{Payload: &corev3.HealthCheck_Payload_Text{Text: hex.EncodeToString(accepted)}}}
	}
	hc.HealthChecker = &corev3.HealthCheck_TcpHealthCheck_{TcpHealthCheck: tcp}
	return hc
}

// httpHealthCheck is a GET of the check's path over HTTP/1.1 that passes
// on any of the expected statuses.
func httpHealthCheck(h model.HealthCheck) *corev3.HealthCheck_HttpHealthCheck {
	codes := slices.Sorted(slices.Values(h.Expect))
	var ranges []*typev3.Int64Range
	for _, code := range slices.Compact(codes) {
		ranges = append(ranges, &typev3.Int64Range{Start: int64(code), End: int64(code) + 1})
	}
	return &corev3.HealthCheck_HttpHealthCheck{Path: h.Path, ExpectedStatuses: ranges}
}

// maxHealthCheckClientID bounds the health-check client ID: brokers
// accept client IDs of at least 23 bytes, and usually far longer.
const maxHealthCheckClientID = 128

// HealthCheckClientID is the client ID an Envoy node probes brokers with.
func HealthCheckClientID(prefix, nodeID string) string {
	id := prefix + nodeID
	if len(id) > maxHealthCheckClientID {
		// Cut at a character boundary: MQTT client IDs are UTF-8.
		cut := maxHealthCheckClientID
		for cut > 0 && !utf8.RuneStart(id[cut]) {
			cut--
		}
		id = id[:cut]
	}
	return id
}

// BuildLoadAssignment returns the cluster's endpoints, sorted (see
// model.SortEndpoints) so that every Envoy, and every version, lists them
// the same way.
func BuildLoadAssignment(c *model.Cluster) *endpointv3.ClusterLoadAssignment {
	eps := append([]model.Endpoint(nil), c.Endpoints...)
	model.SortEndpoints(eps)
	lb := make([]*endpointv3.LbEndpoint, 0, len(eps))
	for _, e := range eps {
		ep := &endpointv3.Endpoint{Address: socketAddress(e.Address, e.Port)}
		if c.HealthCheck.IsHTTP() {
			// The http check probes the management port, not the MQTT port.
			ep.HealthCheckConfig = &endpointv3.Endpoint_HealthCheckConfig{PortValue: uint32(c.HealthCheck.Port)}
		}
		lb = append(lb, &endpointv3.LbEndpoint{
			HostIdentifier:      &endpointv3.LbEndpoint_Endpoint{Endpoint: ep},
			LoadBalancingWeight: wrapperspb.UInt32(e.Weight),
			Metadata:            hashKeyMetadata(e),
		})
	}
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: c.Name}
	if len(lb) > 0 {
		cla.Endpoints = []*endpointv3.LocalityLbEndpoints{{LbEndpoints: lb}}
	}
	return cla
}

// hashKeyMetadata gives a named endpoint its name as the identity Maglev
// and ring hash hash (envoy.lb hash_key), instead of its address.
func hashKeyMetadata(e model.Endpoint) *corev3.Metadata {
	if e.Name == "" {
		return nil
	}
	return &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{
		"envoy.lb": {Fields: map[string]*structpb.Value{"hash_key": structpb.NewStringValue(e.Name)}},
	}}
}

func socketAddress(addr string, port int) *corev3.Address {
	a := netip.MustParseAddr(addr) // validated by the model
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address:       a.String(),
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(port)},
	}}}
}

func mustAny(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic(fmt.Sprintf("translate: cannot pack %T: %v", m, err)) // only on a broken proto registry
	}
	return a
}

func sortByName(rs []types.Resource) {
	slices.SortFunc(rs, func(a, b types.Resource) int {
		return strings.Compare(cachev3.GetResourceName(a), cachev3.GetResourceName(b))
	})
}
