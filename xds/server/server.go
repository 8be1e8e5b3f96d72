// Package server serves a model to Envoys over ADS (gRPC, state-of-the-world
// and delta) with go-control-plane's snapshot cache, and records what each
// Envoy node acknowledged or rejected.
//
// Each connected node gets its own snapshot, because its health-check
// client ID carries its node ID; the listeners, endpoints and all the rest
// are translated once per version and shared, so every Envoy maps a client
// ID to the same broker.
//
// Node IDs come from the network, so everything kept per node is bounded:
// the ID's length, the number of nodes (MaxNodes), and how long a node
// that left is remembered (NodeGrace). A node's snapshot exists only while
// it has a stream open.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	"github.com/mqtt-sticky/mqtt-sticky/internal/loglimit"
	"github.com/mqtt-sticky/mqtt-sticky/xds/model"
	"github.com/mqtt-sticky/mqtt-sticky/xds/translate"
)

// gRPC tuning for a fleet of Envoys holding one long-lived ADS stream each.
const (
	// grpcKeepaliveTime pings idle streams so a dead Envoy (or a middlebox
	// that dropped the connection) is noticed within a minute.
	grpcKeepaliveTime    = 30 * time.Second
	grpcKeepaliveTimeout = 10 * time.Second
	// grpcMinPingInterval accepts Envoy's own keepalive pings as often as
	// every 10s without treating them as abuse.
	grpcMinPingInterval = 10 * time.Second
	// grpcMaxStreams bounds concurrent streams per connection; ADS needs
	// one, the rest is headroom for a reconnect's overlap.
	grpcMaxStreams = 16
	// grpcMaxConnectionIdle closes connections that carry no stream.
	grpcMaxConnectionIdle = 5 * time.Minute
	// grpcMaxRecvMsgBytes bounds one request. Envoy's first request,
	// which carries its node and its list of extensions, is tens of KB;
	// gRPC refuses a larger message before reading it.
	grpcMaxRecvMsgBytes = 1 << 20
)

// Bounds on what a node can make the server keep.
const (
	// MaxNodeIDBytes bounds a node ID. Envoy node IDs are host or pod
	// names; a longer one is refused with InvalidArgument.
	MaxNodeIDBytes = 256
	// DefaultMaxNodes is the default of Options.MaxNodes.
	DefaultMaxNodes = 1000
	// DefaultNodeGrace is the default of Options.NodeGrace: longer than
	// Envoy's longest ADS reconnect backoff (30s), so a node that
	// reconnects after a network blip keeps its history.
	DefaultNodeGrace = 2 * time.Minute
	// maxNodeCluster and maxNackMessage bound the other texts a node
	// sends and the server keeps: its cluster name and its rejections.
	maxNodeCluster = 256
	maxNackMessage = 4096
	// streamsPerNode bounds open streams: each node may hold a second one
	// while it reconnects.
	streamsPerNode = 2
)

// Options configure a Server. Zero values take the defaults.
type Options struct {
	Logger     *slog.Logger
	Registerer prometheus.Registerer // nil: metrics are not registered
	// MaxNodes bounds the nodes the server keeps: connected ones, and
	// those that left less than NodeGrace ago. At the bound, the node that
	// left first is forgotten to make room; when every node is connected,
	// a new one is refused with ResourceExhausted.
	MaxNodes int
	// NodeGrace is how long a node that closed its last stream stays in
	// the status, so that a reconnect keeps its history.
	NodeGrace time.Duration
	// TLS, when set, is the xDS listener's TLS configuration.
	TLS *tls.Config
}

// Server is the xDS server. It owns the served state: the model and the
// version every node's snapshot is built from. The state changes only
// through Prepare and the commit it returns.
type Server struct {
	log     *slog.Logger
	nodeLog *loglimit.Limiter // bounds the lines about node events, which clients cause
	cache   cachev3.SnapshotCache
	metrics *Metrics
	opts    Options
	now     func() time.Time

	mu      sync.Mutex       // guards everything below
	model   *model.Model     // nil until the first commit
	fleet   *translate.Fleet // model, translated
	version uint64
	nodes   map[string]*node
	streams map[streamID]*stream
}

// node is what the server keeps of one node.
type node struct {
	status  NodeStatus
	streams int
	served  bool        // it has a snapshot in the cache
	forget  *time.Timer // set while it has no stream: forgets it after the grace period
}

// stream is one open ADS stream.
type stream struct {
	node string                  // "" until its first request
	sent map[string]sentResponse // the last response of each resource type
}

type sentResponse struct{ nonce, version string }

// New returns a server that serves nothing until its first commit.
func New(opts Options) *Server {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.MaxNodes <= 0 {
		opts.MaxNodes = DefaultMaxNodes
	}
	if opts.NodeGrace <= 0 {
		opts.NodeGrace = DefaultNodeGrace
	}
	s := &Server{
		log:     opts.Logger,
		nodeLog: loglimit.New(nodeLogLinesPerSecond),
		metrics: newMetrics(opts.Registerer),
		opts:    opts,
		now:     time.Now,
		cache:   cachev3.NewSnapshotCache(true, cachev3.IDHash{}, cacheLogger{opts.Logger}),
		nodes:   map[string]*node{},
		streams: map[streamID]*stream{},
	}
	if opts.Registerer != nil {
		opts.Registerer.MustRegister(nodeCollector{s})
	}
	return s
}

// Served returns a copy of the served model and its version; a nil model
// before the first commit.
func (s *Server) Served() (*model.Model, uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.model == nil {
		return nil, 0
	}
	return s.model.Clone(), s.version
}

// ErrOldVersion refuses a model prepared at a version not above the one
// served: every node already has it, or something newer.
var ErrOldVersion = errors.New("xds: version is not newer than the one served")

// Prepare translates m and checks the result, and changes nothing. The
// commit it returns serves it; it cannot fail, so a caller can persist m
// between the two and serve exactly what it stored.
func (s *Server) Prepare(m *model.Model, version uint64) (commit func(), err error) {
	s.mu.Lock()
	served := s.version
	s.mu.Unlock()
	if version <= served {
		return nil, fmt.Errorf("%w: %d, serving %d", ErrOldVersion, version, served)
	}
	m = m.Clone()
	fleet, err := translate.TranslateFleet(m)
	if err != nil {
		return nil, err
	}
	// Every node's snapshot has the same shape; check one.
	snap, err := newSnapshot(fleet.ForNode("validation"), version)
	if err != nil {
		return nil, err
	}
	if err := snap.Consistent(); err != nil {
		return nil, fmt.Errorf("%w: the snapshot is inconsistent: %v", model.ErrInvalid, err)
	}
	return func() { s.commit(m, fleet, version) }, nil
}

// commit serves a prepared model to every connected node.
func (s *Server) commit(m *model.Model, fleet *translate.Fleet, version uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if version <= s.version {
		s.log.Warn("xds: dropping a commit older than the served version", "version", version, "served", s.version)
		return
	}
	s.model, s.fleet, s.version = m, fleet, version
	connected := 0
	for id, n := range s.nodes {
		if n.streams > 0 {
			s.serveNode(id, n)
			connected++
		}
	}
	s.metrics.pushes.Inc()
	s.metrics.version.Set(float64(version))
	s.log.Info("xds: pushed new version", "version", version, "nodes", connected)
}

// serveNode sets the node's snapshot of the served version. s.mu must be
// held, and a model served.
func (s *Server) serveNode(id string, n *node) {
	snap, err := newSnapshot(s.fleet.ForNode(id), s.version)
	if err == nil {
		err = s.cache.SetSnapshot(context.Background(), id, snap)
	}
	if err != nil {
		// The snapshot's shape was checked in Prepare.
		s.log.Error("xds: cannot serve a node", "node", logText(id), "err", err)
		return
	}
	n.served = true
}

func newSnapshot(res *translate.Resources, version uint64) (*cachev3.Snapshot, error) {
	return cachev3.NewSnapshot(strconv.FormatUint(version, 10), map[resource.Type][]types.Resource{
		resource.ListenerType:        res.Listeners,
		resource.ClusterType:         res.Clusters,
		resource.EndpointType:        res.Endpoints,
		resource.ExtensionConfigType: res.Filters,
		resource.SecretType:          res.Secrets,
	})
}

// Nodes reports every node the server keeps, sorted by ID.
func (s *Server) Nodes() []NodeStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]NodeStatus, 0, len(s.nodes))
	for _, n := range s.nodes {
		c := n.status
		c.Resources = map[string]ResourceStatus{}
		for k, v := range n.status.Resources {
			c.Resources[k] = v
		}
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b NodeStatus) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// nodeLogLinesPerSecond bounds the log lines about nodes joining, leaving,
// being refused and rejecting updates: whoever can open an xDS stream can
// cause them, as fast as they like. The metrics keep the full counts.
const nodeLogLinesPerSecond = 20

// logNodeEvent writes a line about a node's streams, within
// nodeLogLinesPerSecond; a line after dropped ones says how many.
func (s *Server) logNodeEvent(level slog.Level, msg string, args ...any) {
	ok, dropped := s.nodeLog.Allow()
	if !ok {
		return
	}
	if dropped > 0 {
		args = append(args, "suppressed", dropped)
	}
	s.log.Log(context.Background(), level, msg, args...)
}

// refusal is why a stream was closed; the reason labels the metric.
func (s *Server) refuse(reason string, code codes.Code, format string, args ...any) error {
	s.metrics.refused.WithLabelValues(reason).Inc()
	err := status.Errorf(code, format, args...)
	s.logNodeEvent(slog.LevelWarn, "xds: stream refused", "reason", reason, "err", status.Convert(err).Message())
	return err
}

// streamOpened registers a stream, within the bound on open streams.
func (s *Server) streamOpened(id streamID) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if limit := streamsPerNode * s.opts.MaxNodes; len(s.streams) >= limit {
		return s.refuse("too_many_streams", codes.ResourceExhausted,
			"the control plane has %d xDS streams open, its limit (%d per node, --xds-max-nodes %d)", limit, streamsPerNode, s.opts.MaxNodes)
	}
	s.streams[id] = &stream{sent: map[string]sentResponse{}}
	return nil
}

// streamClosed drops a stream. When it was its node's last, the node's
// snapshot goes at once, and the node itself after the grace period.
func (s *Server) streamClosed(id streamID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.streams[id]
	delete(s.streams, id)
	if st == nil || st.node == "" {
		return
	}
	n := s.nodes[st.node]
	n.streams--
	n.status.Streams = n.streams
	n.status.LastSeen = s.now()
	if n.streams == 0 {
		n.status.Connected = false
		s.cache.ClearSnapshot(st.node)
		n.served = false
		nodeID := st.node
		n.forget = time.AfterFunc(s.opts.NodeGrace, func() { s.forgetNode(nodeID, n) })
		s.logNodeEvent(slog.LevelInfo, "xds: node disconnected", "node", logText(nodeID))
	}
	s.updateGauges()
}

// forgetNode drops a node that stayed away for the grace period.
func (s *Server) forgetNode(id string, n *node) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.nodes[id] == n && n.streams == 0 {
		delete(s.nodes, id)
		s.updateGauges()
	}
}

// evictOne forgets the node that left first, to make room for a new one.
// It reports false when every node is connected.
func (s *Server) evictOne() bool {
	var oldest string
	for id, n := range s.nodes {
		if n.streams == 0 && (oldest == "" || n.status.LastSeen.Before(s.nodes[oldest].status.LastSeen)) {
			oldest = id
		}
	}
	if oldest == "" {
		return false
	}
	s.nodes[oldest].forget.Stop()
	delete(s.nodes, oldest)
	return true
}

// request records a stream's request: the first one names the stream's
// node, and the server starts serving it; later ones acknowledge or
// reject the response named by their nonce. An error closes the stream.
func (s *Server) request(id streamID, req xdsRequest) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.streams[id]
	if st == nil {
		return status.Error(codes.Internal, "xds: request on an unknown stream")
	}
	if st.node == "" {
		if err := s.join(st, req); err != nil {
			return err
		}
	} else if req.node != nil && req.node.GetId() != st.node {
		return s.refuse("node_changed", codes.InvalidArgument, "a stream serves one node: it opened as %q and now says %q",
			logText(st.node), logText(req.node.GetId()))
	}
	n := s.nodes[st.node]
	n.status.LastSeen = s.now()
	kind, ours := resourceKind(req.typeURL)
	if !ours {
		return nil // not a type this server serves: nothing to record
	}
	rs := n.status.Resources[kind]
	sent, matches := st.sent[req.typeURL]
	matches = matches && req.nonce != "" && sent.nonce == req.nonce
	switch {
	case req.nonce == "":
		// A first request: after a reconnect it names the version the
		// node already runs.
		if req.versionInfo != "" {
			rs.AckedVersion = req.versionInfo
		}
	case req.nack:
		if matches {
			rs.NackedVersion = sent.version
		}
		rs.NackMessage = truncate(req.errDetail, maxNackMessage)
		at := s.now()
		rs.NackedAt = &at
		s.metrics.nacks.WithLabelValues(kind).Inc()
		s.logNodeEvent(slog.LevelWarn, "xds: node rejected an update", "node", logText(st.node), "type", kind, "error", logText(req.errDetail))
	case req.versionInfo != "":
		rs.AckedVersion = req.versionInfo
	case matches:
		rs.AckedVersion = sent.version // delta requests carry no version: use the one sent
	}
	n.status.Resources[kind] = rs
	return nil
}

// join makes a stream's first request name its node: a new node within
// the bound, or a known one that opened another stream or came back.
func (s *Server) join(st *stream, req xdsRequest) error {
	id := req.node.GetId()
	if reason, err := checkNodeID(id); err != nil {
		return s.refuse(reason, codes.InvalidArgument, "%v", err)
	}
	n := s.nodes[id]
	if n == nil {
		if len(s.nodes) >= s.opts.MaxNodes && !s.evictOne() {
			return s.refuse("too_many_nodes", codes.ResourceExhausted,
				"the control plane serves at most %d nodes and all are connected: node %q refused (raise --xds-max-nodes)",
				s.opts.MaxNodes, logText(id))
		}
		now := s.now()
		n = &node{status: NodeStatus{ID: id, FirstSeen: now, Resources: map[string]ResourceStatus{}}}
		s.nodes[id] = n
		s.logNodeEvent(slog.LevelInfo, "xds: new node", "node", logText(id), "version", s.version)
	}
	if n.forget != nil {
		n.forget.Stop()
		n.forget = nil
	}
	st.node = id
	n.streams++
	n.status.Streams = n.streams
	n.status.Connected = true
	n.status.Cluster = truncate(req.node.GetCluster(), maxNodeCluster)
	n.status.AdminAddress = adminAddress(req.node.GetMetadata().GetFields()[AdminAddressKey].GetStringValue())
	if v := req.node.GetUserAgentBuildVersion().GetVersion(); v != nil {
		n.status.EnvoyVersion = fmt.Sprintf("%d.%d.%d", v.GetMajorNumber(), v.GetMinorNumber(), v.GetPatch())
	}
	if s.model != nil && !n.served {
		s.serveNode(id, n)
	}
	s.updateGauges()
	return nil
}

// response records the response a stream is about to send.
func (s *Server) response(id streamID, typeURL, version, nonce string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	kind, ours := resourceKind(typeURL)
	st := s.streams[id]
	if st == nil || !ours {
		return
	}
	st.sent[typeURL] = sentResponse{nonce: nonce, version: version}
	s.metrics.responses.WithLabelValues(kind).Inc()
	if n := s.nodes[st.node]; n != nil {
		rs := n.status.Resources[kind]
		rs.SentVersion = version
		n.status.Resources[kind] = rs
	}
}

func (s *Server) updateGauges() {
	c := 0
	for _, n := range s.nodes {
		if n.streams > 0 {
			c++
		}
	}
	s.metrics.connected.Set(float64(c))
	s.metrics.nodes.Set(float64(len(s.nodes)))
}

// checkNodeID refuses node IDs the server will not keep, with the reason
// for the metric.
func checkNodeID(id string) (reason string, err error) {
	switch {
	case id == "":
		return "node_id_missing", errors.New("no node ID: set node.id in Envoy's bootstrap, or --service-node")
	case len(id) > MaxNodeIDBytes:
		return "node_id_too_long", fmt.Errorf("node ID of %d bytes: the limit is %d", len(id), MaxNodeIDBytes)
	case strings.ContainsFunc(id, unicode.IsControl):
		// gRPC's protobuf decoding already refuses invalid UTF-8.
		return "node_id_invalid", fmt.Errorf("node ID %q holds control characters", logText(id))
	}
	return "", nil
}

// logLen is how much of a peer's text goes into a log line.
const logLen = 64

// logText shortens text from the network for a log line or an error (the
// handler escapes what remains).
func logText(s string) string {
	if len(s) <= logLen {
		return s
	}
	return truncate(s, logLen) + fmt.Sprintf("...(%d bytes)", len(s))
}

// truncate cuts s to at most n bytes, at a character boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// Serve serves ADS on lis until ctx is done.
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	xds := serverv3.NewServer(ctx, s.cache, &callbacks{s: s})
	opts := []grpc.ServerOption{
		grpc.MaxConcurrentStreams(grpcMaxStreams),
		grpc.MaxRecvMsgSize(grpcMaxRecvMsgBytes),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: grpcKeepaliveTime, Timeout: grpcKeepaliveTimeout, MaxConnectionIdle: grpcMaxConnectionIdle}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: grpcMinPingInterval, PermitWithoutStream: true}),
	}
	if s.opts.TLS != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(s.opts.TLS)))
	}
	g := grpc.NewServer(opts...)
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(g, xds)
	errc := make(chan error, 1)
	go func() { errc <- g.Serve(lis) }()
	s.log.Info("xds: serving ADS", "addr", lis.Addr().String(), "tls", s.opts.TLS != nil,
		"max_nodes", s.opts.MaxNodes, "node_grace", s.opts.NodeGrace)
	select {
	case <-ctx.Done():
		g.Stop()
		<-errc
		return nil
	case err := <-errc:
		if errors.Is(err, grpc.ErrServerStopped) {
			return nil
		}
		return err
	}
}

// cacheLogger adapts slog to go-control-plane's logger, at debug level:
// the cache logs every watch. Its messages quote what nodes request
// (resource names, node IDs), so they are cut to a bounded length.
type cacheLogger struct{ l *slog.Logger }

const maxCacheLog = 1024

func (c cacheLogger) Debugf(format string, args ...any) { c.logf(slog.LevelDebug, format, args) }
func (c cacheLogger) Infof(format string, args ...any)  { c.logf(slog.LevelDebug, format, args) }
func (c cacheLogger) Warnf(format string, args ...any)  { c.logf(slog.LevelWarn, format, args) }
func (c cacheLogger) Errorf(format string, args ...any) { c.logf(slog.LevelError, format, args) }

func (c cacheLogger) logf(level slog.Level, format string, args []any) {
	if c.l.Enabled(context.Background(), level) {
		c.l.Log(context.Background(), level, cacheText(format, args))
	}
}

func cacheText(format string, args []any) string {
	s := fmt.Sprintf(format, args...)
	if len(s) > maxCacheLog {
		s = truncate(s, maxCacheLog) + fmt.Sprintf("...(%d bytes)", len(s))
	}
	return s
}
