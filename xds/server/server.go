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

// Server is the xDS server.
type Server struct {
	log     *slog.Logger
	cache   cachev3.SnapshotCache
	status  *tracker
	metrics *Metrics

	mu      sync.Mutex // serialises updates with snapshot creation for new nodes
	model   *model.Model
	version uint64
	nodes   map[string]bool // node IDs that have a snapshot
}

// New returns a server for an initial model and version. It validates the
// model by translating it once.
func New(m *model.Model, version uint64, log *slog.Logger, reg prometheus.Registerer) (*Server, error) {
	if log == nil {
		log = slog.Default()
	}
	if _, err := translate.Translate(m, "validation"); err != nil {
		return nil, err
	}
	s := &Server{
		log:     log,
		model:   m.Clone(),
		version: version,
		nodes:   map[string]bool{},
		metrics: newMetrics(reg),
	}
	s.status = newTracker(s.metrics)
	s.cache = cachev3.NewSnapshotCache(true, cachev3.IDHash{}, cacheLogger{log})
	s.metrics.version.Set(float64(version))
	return s, nil
}

// Version is the version of the resources being served.
func (s *Server) Version() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.version
}

// Update replaces the model. It builds and checks every known node's
// snapshot first; then it calls persist, if not nil; only when both
// succeed are the snapshots pushed. On any error nothing is pushed and the
// previous model stays in force.
func (s *Server) Update(m *model.Model, version uint64, persist func() error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	// Each node's translation validates the model; with no node yet,
	// translate once for the check alone.
	if len(s.nodes) == 0 {
		if _, err := translate.Translate(m, "validation"); err != nil {
			return err
		}
	}
	snaps := map[string]*cachev3.Snapshot{}
	for node := range s.nodes {
		snap, err := buildSnapshot(m, version, node)
		if err != nil {
			return err
		}
		snaps[node] = snap
	}
	if persist != nil {
		if err := persist(); err != nil {
			return err
		}
	}
	for node, snap := range snaps {
		if err := s.cache.SetSnapshot(context.Background(), node, snap); err != nil {
			// The snapshot was checked above; this only fails on a nil snapshot.
			s.log.Error("xds: setting snapshot failed", "node", node, "err", err)
		}
	}
	s.model, s.version = m.Clone(), version
	s.metrics.pushes.Inc()
	s.metrics.version.Set(float64(version))
	s.log.Info("xds: pushed new version", "version", version, "nodes", len(snaps))
	return nil
}

// ensureNode creates the node's first snapshot when it first connects.
func (s *Server) ensureNode(node string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.nodes[node] {
		return
	}
	snap, err := buildSnapshot(s.model, s.version, node)
	if err != nil {
		// The model was validated when it was set, and the node ID only
		// appears inside a health-check payload.
		s.log.Error("xds: cannot build a snapshot for a new node", "node", node, "err", err)
		return
	}
	if err := s.cache.SetSnapshot(context.Background(), node, snap); err != nil {
		s.log.Error("xds: setting snapshot failed", "node", node, "err", err)
		return
	}
	s.nodes[node] = true
	s.log.Info("xds: new node", "node", node, "version", s.version)
}

func buildSnapshot(m *model.Model, version uint64, node string) (*cachev3.Snapshot, error) {
	res, err := translate.Translate(m, node)
	if err != nil {
		return nil, err
	}
	snap, err := cachev3.NewSnapshot(strconv.FormatUint(version, 10), map[resource.Type][]types.Resource{
		resource.ListenerType: res.Listeners,
		resource.ClusterType:  res.Clusters,
		resource.EndpointType: res.Endpoints,
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
