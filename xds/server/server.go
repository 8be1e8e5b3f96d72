// Package server serves a model to Envoys over ADS (gRPC, state-of-the-world
// and delta) with go-control-plane's snapshot cache, and records what each
// Envoy node acknowledged or rejected.
//
// Each node gets its own snapshot, because its health-check client ID
// carries its node ID; the listeners' and endpoints' contents are the same
// for every node, so every Envoy maps a client ID to the same broker.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"time"

	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

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
	// one, the rest is headroom for separate xDS streams.
	grpcMaxStreams = 1000
)

// Server is the xDS server. It owns the served state: the model and the
// version every node's snapshot is built from. The state changes only
// through Prepare and the commit it returns.
type Server struct {
	log     *slog.Logger
	cache   cachev3.SnapshotCache
	status  *tracker
	metrics *Metrics

	mu      sync.Mutex   // guards the served state and the node set
	model   *model.Model // nil until the first commit
	version uint64
	nodes   map[string]bool // node IDs that have a snapshot
}

// New returns a server that serves nothing until its first commit.
func New(log *slog.Logger, reg prometheus.Registerer) *Server {
	if log == nil {
		log = slog.Default()
	}
	s := &Server{
		log:     log,
		nodes:   map[string]bool{},
		metrics: newMetrics(reg),
	}
	s.status = newTracker(s.metrics)
	if reg != nil {
		reg.MustRegister(nodeCollector{s.status})
	}
	s.cache = cachev3.NewSnapshotCache(true, cachev3.IDHash{}, cacheLogger{log})
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

// Prepare translates m for every known node and checks the snapshots, and
// changes nothing. The commit it returns serves them; it cannot fail, so a
// caller can persist m between the two and serve exactly what it stored.
func (s *Server) Prepare(m *model.Model, version uint64) (commit func(), err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if version <= s.version {
		return nil, fmt.Errorf("%w: %d, serving %d", ErrOldVersion, version, s.version)
	}
	m = m.Clone()
	// Each node's translation validates the model; with no node yet,
	// translate once for the check alone.
	if len(s.nodes) == 0 {
		if _, err := translate.Translate(m, "validation"); err != nil {
			return nil, err
		}
	}
	snaps := map[string]*cachev3.Snapshot{}
	for node := range s.nodes {
		snap, err := buildSnapshot(m, version, node)
		if err != nil {
			return nil, err
		}
		snaps[node] = snap
	}
	return func() { s.commit(m, version, snaps) }, nil
}

// commit serves a prepared model. A node that arrived since Prepare gets
// its snapshot here.
func (s *Server) commit(m *model.Model, version uint64, snaps map[string]*cachev3.Snapshot) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if version <= s.version {
		s.log.Warn("xds: dropping a commit older than the served version", "version", version, "served", s.version)
		return
	}
	s.model, s.version = m, version
	for node := range s.nodes {
		if snaps[node] == nil {
			s.setNodeSnapshot(node)
			continue
		}
		if err := s.cache.SetSnapshot(context.Background(), node, snaps[node]); err != nil {
			// The snapshot was checked in Prepare; this only fails on a nil snapshot.
			s.log.Error("xds: setting snapshot failed", "node", node, "err", err)
		}
	}
	s.metrics.pushes.Inc()
	s.metrics.version.Set(float64(version))
	s.log.Info("xds: pushed new version", "version", version, "nodes", len(s.nodes))
}

// ensureNode creates the node's first snapshot when it first connects.
func (s *Server) ensureNode(node string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.nodes[node] {
		return
	}
	s.nodes[node] = true
	if s.model == nil {
		return // the first commit gives it a snapshot
	}
	if s.setNodeSnapshot(node) {
		s.log.Info("xds: new node", "node", node, "version", s.version)
	}
}

// setNodeSnapshot builds and sets one node's snapshot of the served model.
// s.mu must be held.
func (s *Server) setNodeSnapshot(node string) bool {
	snap, err := buildSnapshot(s.model, s.version, node)
	if err != nil {
		// The model was validated when it was prepared, and the node ID
		// only appears inside a health-check payload.
		s.log.Error("xds: cannot build a snapshot for a node", "node", node, "err", err)
		return false
	}
	if err := s.cache.SetSnapshot(context.Background(), node, snap); err != nil {
		s.log.Error("xds: setting snapshot failed", "node", node, "err", err)
		return false
	}
	return true
}

func buildSnapshot(m *model.Model, version uint64, node string) (*cachev3.Snapshot, error) {
	res, err := translate.Translate(m, node)
	if err != nil {
		return nil, err
	}
	snap, err := cachev3.NewSnapshot(strconv.FormatUint(version, 10), map[resource.Type][]types.Resource{
		resource.ListenerType:        res.Listeners,
		resource.ClusterType:         res.Clusters,
		resource.EndpointType:        res.Endpoints,
		resource.ExtensionConfigType: res.Filters,
		resource.SecretType:          res.Secrets,
	})
	if err != nil {
		return nil, err
	}
	if err := snap.Consistent(); err != nil {
		return nil, fmt.Errorf("%w: snapshot for node %q is inconsistent: %v", model.ErrInvalid, node, err)
	}
	return snap, nil
}

// Nodes reports every node seen, sorted by ID.
func (s *Server) Nodes() []NodeStatus { return s.status.snapshot() }

// Serve serves ADS on lis until ctx is done.
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	cb := &callbacks{s: s}
	xds := serverv3.NewServer(ctx, s.cache, cb)
	g := grpc.NewServer(
		grpc.MaxConcurrentStreams(grpcMaxStreams),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: grpcKeepaliveTime, Timeout: grpcKeepaliveTimeout}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: grpcMinPingInterval, PermitWithoutStream: true}),
	)
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(g, xds)
	errc := make(chan error, 1)
	go func() { errc <- g.Serve(lis) }()
	s.log.Info("xds: serving ADS", "addr", lis.Addr().String())
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
// the cache logs every watch.
type cacheLogger struct{ l *slog.Logger }

func (c cacheLogger) Debugf(format string, args ...any) { c.l.Debug(fmt.Sprintf(format, args...)) }
func (c cacheLogger) Infof(format string, args ...any)  { c.l.Debug(fmt.Sprintf(format, args...)) }
func (c cacheLogger) Warnf(format string, args ...any)  { c.l.Warn(fmt.Sprintf(format, args...)) }
func (c cacheLogger) Errorf(format string, args ...any) { c.l.Error(fmt.Sprintf(format, args...)) }
