package server

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/mqtt-sticky/mqtt-sticky/xds/model"
)

// These tests run the real gRPC server on 127.0.0.1:0 and talk to it with
// raw ADS streams, as Envoy would (or an attacker would).

// startServer serves model.Default at version 1.
func startServer(t *testing.T, opts Options) (*Server, string) {
	t.Helper()
	if opts.Registerer == nil {
		opts.Registerer = prometheus.NewRegistry()
	}
	s := New(opts)
	push(t, s, model.Default(), 1)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, lis) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return s, lis.Addr().String()
}

func push(t *testing.T, s *Server, m *model.Model, version uint64) {
	t.Helper()
	commit, err := s.Prepare(m, version)
	if err != nil {
		t.Fatal(err)
	}
	commit()
}

// adsStream is one raw ADS stream on its own connection.
type adsStream struct {
	conn   *grpc.ClientConn
	stream discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	cancel context.CancelFunc
}

func dialADS(t testing.TB, addr string) *adsStream {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	a := &adsStream{conn: conn, stream: stream, cancel: cancel}
	t.Cleanup(a.close)
	return a
}

func (a *adsStream) close() {
	a.cancel()
	a.conn.Close()
}

// subscribe asks for the clusters as node, and returns the first response
// or the error that closed the stream. It acknowledges the response, as
// Envoy does, so the stream gets the next version when there is one.
func (a *adsStream) subscribe(node string) (*discovery.DiscoveryResponse, error) {
	// A Send that finds the stream closed returns io.EOF; the server's
	// status comes with the next Recv (grpc.ClientStream.SendMsg).
	a.stream.Send(&discovery.DiscoveryRequest{Node: &corev3.Node{Id: node, Cluster: "test"}, TypeUrl: resource.ClusterType})
	resp, err := a.stream.Recv()
	if err != nil {
		return nil, err
	}
	return resp, a.ack(resp)
}

func (a *adsStream) ack(resp *discovery.DiscoveryResponse) error {
	return a.stream.Send(&discovery.DiscoveryRequest{TypeUrl: resp.GetTypeUrl(), VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()})
}

// eventually polls cond until it holds, for up to 10s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within 10s: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func codeOf(err error) codes.Code { return status.Code(err) }

// A node gets its snapshot; a request carrying the nonce of a response
// acknowledges that response's version, or rejects it with a message.
func TestAckAndNack(t *testing.T) {
	reg := prometheus.NewRegistry()
	s, addr := startServer(t, Options{Registerer: reg})
	a := dialADS(t, addr)
	resp, err := a.subscribe("envoy-1")
	if err != nil || resp.GetVersionInfo() != "1" || len(resp.GetResources()) != 1 {
		t.Fatalf("first response %v, %v", resp, err)
	}
	eventually(t, "ack of version 1", func() bool { return s.Nodes()[0].Resources["clusters"].AckedVersion == "1" })

	m := model.Default()
	m.Clusters[0].Endpoints = m.Clusters[0].Endpoints[:2]
	push(t, s, m, 2)
	resp, err = a.stream.Recv()
	if err != nil || resp.GetVersionInfo() != "2" {
		t.Fatalf("second response %v, %v", resp, err)
	}
	a.stream.Send(&discovery.DiscoveryRequest{TypeUrl: resource.ClusterType, VersionInfo: "1", ResponseNonce: resp.GetNonce(),
		ErrorDetail: &statuspb.Status{Message: "cluster brokers: bad\n" + strings.Repeat("x", 10000)}})
	eventually(t, "nack of version 2", func() bool { return s.Nodes()[0].Resources["clusters"].NackedVersion == "2" })
	st := s.Nodes()[0]
	rs := st.Resources["clusters"]
	if !st.Connected || st.Streams != 1 || st.Cluster != "test" || rs.SentVersion != "2" || rs.AckedVersion != "1" ||
		!strings.HasPrefix(rs.NackMessage, "cluster brokers: bad") || len(rs.NackMessage) > maxNackMessage || rs.NackedAt == nil {
		t.Errorf("status %+v, clusters %+v", st, rs)
	}
	if got := testutil.ToFloat64(s.metrics.nacks.WithLabelValues("clusters")); got != 1 {
		t.Errorf("nack counter %v", got)
	}
	if got := testutil.ToFloat64(s.metrics.connected); got != 1 {
		t.Errorf("connected gauge %v", got)
	}
	// Per node: connected, clusters acknowledged at 1, and rejecting 2.
	want := `
# HELP mqtt_sticky_xds_node_acked_version The resource version the node last acknowledged (ACK), by resource type.
# TYPE mqtt_sticky_xds_node_acked_version gauge
mqtt_sticky_xds_node_acked_version{node="envoy-1",type="clusters"} 1
# HELP mqtt_sticky_xds_node_connected 1 while the Envoy node has an open xDS stream.
# TYPE mqtt_sticky_xds_node_connected gauge
mqtt_sticky_xds_node_connected{node="envoy-1"} 1
# HELP mqtt_sticky_xds_node_rejecting 1 while the node rejects (NACK) the version last sent to it, by resource type; it keeps running the version it last acknowledged.
# TYPE mqtt_sticky_xds_node_rejecting gauge
mqtt_sticky_xds_node_rejecting{node="envoy-1",type="clusters"} 1
`
	if err := testutil.CollectAndCompare(nodeCollector{s}, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
	// The server sends the rejected version again at once (the NACK
	// names version 1, the snapshot is at 2); the node rejects it again.
	if resp, err = a.stream.Recv(); err != nil || resp.GetVersionInfo() != "2" {
		t.Fatalf("resent response %v, %v", resp, err)
	}
	push(t, s, model.Default(), 3)
	a.stream.Send(&discovery.DiscoveryRequest{TypeUrl: resource.ClusterType, VersionInfo: "1", ResponseNonce: resp.GetNonce(),
		ErrorDetail: &statuspb.Status{Message: "cluster brokers: bad"}})
	if resp, err = a.stream.Recv(); err != nil || resp.GetVersionInfo() != "3" {
		t.Fatalf("third response %v, %v", resp, err)
	}
	a.ack(resp) // an ACK of 3 ends the rejection
	eventually(t, "ack of version 3", func() bool { return s.Nodes()[0].Resources["clusters"].AckedVersion == "3" })
	want = `
# HELP mqtt_sticky_xds_node_rejecting 1 while the node rejects (NACK) the version last sent to it, by resource type; it keeps running the version it last acknowledged.
# TYPE mqtt_sticky_xds_node_rejecting gauge
mqtt_sticky_xds_node_rejecting{node="envoy-1",type="clusters"} 0
`
	if err := testutil.CollectAndCompare(nodeCollector{s}, strings.NewReader(want), "mqtt_sticky_xds_node_rejecting"); err != nil {
		t.Errorf("after a later ACK: %v", err)
	}
}

// A node that reconnects with the version it runs shows that version as
// acknowledged before any response is sent; the admin address it
// advertises is kept when it is a host:port.
func TestReconnectShowsRunningVersion(t *testing.T) {
	s, addr := startServer(t, Options{})
	a := dialADS(t, addr)
	meta, _ := structpb.NewStruct(map[string]any{AdminAddressKey: "127.0.0.1:9901"})
	a.stream.Send(&discovery.DiscoveryRequest{Node: &corev3.Node{Id: "n", Metadata: meta}, TypeUrl: resource.ListenerType, VersionInfo: "5"})
	if _, err := a.stream.Recv(); err != nil {
		t.Fatal(err)
	}
	if n := s.Nodes()[0]; n.Resources["listeners"].AckedVersion != "5" || n.AdminAddress != "127.0.0.1:9901" {
		t.Errorf("%+v", n)
	}
	for _, bad := range []string{"no-port", "127.0.0.1:0", "host:99999", strings.Repeat("a", 300) + ":1"} {
		if got := adminAddress(bad); got != "" {
			t.Errorf("admin address %q kept", bad)
		}
	}
}

// A node that closes its last stream loses its snapshot at once, and its
// status entry after the grace period: nothing stays behind.
func TestNodeForgottenAfterGrace(t *testing.T) {
	s, addr := startServer(t, Options{NodeGrace: 300 * time.Millisecond})
	a := dialADS(t, addr)
	if _, err := a.subscribe("envoy-gone"); err != nil {
		t.Fatal(err)
	}
	a.close()
	eventually(t, "the node disconnected", func() bool { n := s.Nodes(); return len(n) == 1 && !n[0].Connected })
	if _, err := s.cache.GetSnapshot("envoy-gone"); err == nil {
		t.Error("a disconnected node keeps its snapshot")
	}
	eventually(t, "the node forgotten", func() bool { return len(s.Nodes()) == 0 })
	if keys := s.cache.GetStatusKeys(); len(keys) != 0 {
		t.Errorf("the cache keeps watches state for %v", keys)
	}
}

// A node that comes back within the grace period keeps its entry.
func TestReconnectWithinGrace(t *testing.T) {
	s, addr := startServer(t, Options{NodeGrace: time.Hour})
	a := dialADS(t, addr)
	if _, err := a.subscribe("envoy-1"); err != nil {
		t.Fatal(err)
	}
	first := s.Nodes()[0].FirstSeen
	a.close()
	eventually(t, "the node disconnected", func() bool { return !s.Nodes()[0].Connected })
	b := dialADS(t, addr)
	if resp, err := b.subscribe("envoy-1"); err != nil || resp.GetVersionInfo() != "1" {
		t.Fatalf("after reconnecting: %v %v", resp, err)
	}
	if n := s.Nodes(); len(n) != 1 || !n[0].Connected || !n[0].FirstSeen.Equal(first) {
		t.Errorf("after reconnecting: %+v", n)
	}
}

// The attack of issue 9: thousands of throwaway node IDs, each connecting,
// getting its config and leaving. Before the fix each one left a snapshot
// and a status entry behind for good. Now the server keeps at most
// MaxNodes of them, and none once the grace period has passed.
func TestThrowawayNodesAreBounded(t *testing.T) {
	const maxNodes, attackers = 50, 1000
	s, addr := startServer(t, Options{MaxNodes: maxNodes, NodeGrace: time.Hour})
	a := dialADS(t, addr)
	if _, err := a.subscribe("legit"); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, attackers)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < attackers; i += 8 {
				c := dialADS(t, addr)
				if _, err := c.subscribe(fmt.Sprintf("throwaway-%05d", i)); err != nil {
					errs <- fmt.Errorf("node %d: %w", i, err)
				}
				c.close()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("a throwaway node was refused although every other one had left: %v", err)
	}
	eventually(t, "the last throwaway stream closed", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.streams) == 1
	})
	nodes := s.Nodes()
	if len(nodes) > maxNodes {
		t.Errorf("%d nodes kept, the bound is %d", len(nodes), maxNodes)
	}
	legit := false
	for _, n := range nodes {
		legit = legit || (n.ID == "legit" && n.Connected)
	}
	if !legit {
		t.Error("the connected node was evicted")
	}
	if keys := s.cache.GetStatusKeys(); len(keys) != 1 {
		t.Errorf("the snapshot cache keeps %d nodes, want only the connected one", len(keys))
	}
	// A push now serves the connected node only, and it still gets it.
	m := model.Default()
	m.Clusters[0].Endpoints = m.Clusters[0].Endpoints[:1]
	push(t, s, m, 2)
	if resp, err := a.stream.Recv(); err != nil || resp.GetVersionInfo() != "2" {
		t.Errorf("the connected node after the attack: %v %v", resp, err)
	}
}

// When every node the server keeps is connected, a new one is refused
// with ResourceExhausted and counted; the others keep working.
func TestMaxNodesRefusesWhenAllConnected(t *testing.T) {
	s, addr := startServer(t, Options{MaxNodes: 3})
	var held []*adsStream
	for i := range 3 {
		a := dialADS(t, addr)
		if _, err := a.subscribe(fmt.Sprintf("envoy-%d", i)); err != nil {
			t.Fatal(err)
		}
		held = append(held, a)
	}
	_, err := dialADS(t, addr).subscribe("envoy-4")
	if codeOf(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "at most 3 nodes") || !strings.Contains(err.Error(), "--xds-max-nodes") {
		t.Fatalf("fourth node: %v, want ResourceExhausted naming the limit", err)
	}
	if got := testutil.ToFloat64(s.metrics.refused.WithLabelValues("too_many_nodes")); got != 1 {
		t.Errorf("refusal counter %v", got)
	}
	m := model.Default()
	m.Clusters[0].Endpoints = m.Clusters[0].Endpoints[:1]
	push(t, s, m, 2)
	for i, a := range held {
		if resp, err := a.stream.Recv(); err != nil || resp.GetVersionInfo() != "2" {
			t.Errorf("node %d: %v %v", i, resp, err)
		}
	}
	// One leaves: a new node takes its place.
	held[0].close()
	eventually(t, "a new node accepted once one left", func() bool {
		_, err := dialADS(t, addr).subscribe("envoy-4")
		return err == nil
	})
}

// Node IDs the server will not keep are refused before anything is kept,
// each with InvalidArgument and its reason counted; a 3 MB one does not
// even get past gRPC's message limit.
func TestNodeIDsAreChecked(t *testing.T) {
	s, addr := startServer(t, Options{})
	for _, tt := range []struct {
		name, id, reason string
		code             codes.Code
		msg              string
	}{
		{"missing", "", "node_id_missing", codes.InvalidArgument, "no node ID"},
		{"257 bytes", strings.Repeat("a", MaxNodeIDBytes+1), "node_id_too_long", codes.InvalidArgument, "node ID of 257 bytes: the limit is 256"},
		{"newline", "envoy-1\nlevel=ERROR msg=forged", "node_id_invalid", codes.InvalidArgument, "control characters"},
		{"escape", "envoy-\x1b[31m", "node_id_invalid", codes.InvalidArgument, "control characters"},
		{"3 MB", strings.Repeat("a", 3<<20), "", codes.ResourceExhausted, "larger than max"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			counter := s.metrics.refused.WithLabelValues(tt.reason)
			before := testutil.ToFloat64(counter)
			_, err := dialADS(t, addr).subscribe(tt.id)
			if codeOf(err) != tt.code || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("%v, want %v with %q", err, tt.code, tt.msg)
			}
			if got := testutil.ToFloat64(counter) - before; tt.reason != "" && got != 1 {
				t.Errorf("counter %s grew by %v", tt.reason, got)
			}
		})
	}
	if n := s.Nodes(); len(n) != 0 {
		t.Errorf("refused nodes were kept: %d", len(n))
	}
	if len(s.cache.GetStatusKeys()) != 0 {
		t.Errorf("refused nodes left cache state: %d", len(s.cache.GetStatusKeys()))
	}
	// 256 bytes is fine.
	if _, err := dialADS(t, addr).subscribe(strings.Repeat("a", MaxNodeIDBytes)); err != nil {
		t.Errorf("a 256-byte node ID: %v", err)
	}
}

// A stream serves one node: it cannot register more node IDs, and
// requests for types the server does not serve are not recorded.
func TestStreamHoldsOneNode(t *testing.T) {
	s, addr := startServer(t, Options{})
	a := dialADS(t, addr)
	if _, err := a.subscribe("envoy-1"); err != nil {
		t.Fatal(err)
	}
	a.stream.Send(&discovery.DiscoveryRequest{TypeUrl: "type.googleapis.com/made.up.Type"})
	_, err := a.subscribe("envoy-2")
	for err == nil {
		_, err = a.stream.Recv()
	}
	if codeOf(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "a stream serves one node") {
		t.Errorf("switching node: %v", err)
	}
	n := s.Nodes()
	if len(n) != 1 || n[0].ID != "envoy-1" || len(n[0].Resources) != 1 {
		t.Errorf("nodes %+v", n)
	}
}

// Open streams are bounded too, named or not.
func TestStreamsAreBounded(t *testing.T) {
	s, addr := startServer(t, Options{MaxNodes: 2})
	for range streamsPerNode * 2 {
		a := dialADS(t, addr)
		a.stream.Send(&discovery.DiscoveryRequest{TypeUrl: "type.googleapis.com/made.up.Type", Node: &corev3.Node{Id: "envoy-1"}})
	}
	eventually(t, "streams open", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.streams) == streamsPerNode*2
	})
	_, err := dialADS(t, addr).subscribe("envoy-2")
	if codeOf(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "xDS streams open") {
		t.Errorf("a stream beyond the bound: %v", err)
	}
}

func TestLogText(t *testing.T) {
	long := strings.Repeat("é", 100)
	got := logText(long)
	if !strings.HasSuffix(got, "...(200 bytes)") || len(got) > logLen+len("...(200 bytes)") {
		t.Errorf("%q", got)
	}
	if logText("short") != "short" {
		t.Error("short text changed")
	}
}

// go-control-plane numbers state-of-the-world and delta streams apart,
// from 1 each: the first stream of each kind, from two nodes, are two
// streams, and closing one leaves the other's node connected.
func TestSotWAndDeltaStreamsWithTheSameNumber(t *testing.T) {
	s, addr := startServer(t, Options{})
	sotw := dialADS(t, addr)
	if _, err := sotw.subscribe("sotw"); err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	delta, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	delta.Send(&discovery.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "delta"}, TypeUrl: resource.ClusterType})
	if _, err := delta.Recv(); err != nil {
		t.Fatal(err)
	}
	if n := s.Nodes(); len(n) != 2 || !n[0].Connected || !n[1].Connected {
		t.Fatalf("both nodes connected: %+v", n)
	}
	cancel()
	conn.Close()
	eventually(t, "the delta node disconnected, the other not", func() bool {
		n := s.Nodes()
		return len(n) == 2 && !n[0].Connected && n[0].ID == "delta" && n[1].Connected
	})
	sotw.close()
	eventually(t, "the SotW node disconnected too", func() bool {
		n := s.Nodes()
		return len(n) == 2 && !n[1].Connected
	})
}

// lineCounter counts the lines a logger writes.
type lineCounter struct {
	mu    sync.Mutex
	lines int
}

func (c *lineCounter) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lines += bytes.Count(p, []byte("\n"))
	return len(p), nil
}

// Whoever can open a stream can make nodes join, leave and be refused as
// fast as they like; the log lines about it stay within the limiter's
// budget, while the metrics count every one.
func TestNodeEventLogIsBounded(t *testing.T) {
	var out lineCounter
	reg := prometheus.NewRegistry()
	start := time.Now()
	_, addr := startServer(t, Options{MaxNodes: 10, NodeGrace: time.Hour, Registerer: reg,
		Logger: slog.New(slog.NewTextHandler(&out, nil))})
	const attempts = 400
	for i := range attempts {
		c := dialADS(t, addr)
		c.subscribe(fmt.Sprintf("churn-%04d", i)) // joins, or is refused once the bound evicts nothing
		c.close()
	}
	seconds := int(time.Since(start)/time.Second) + 1
	out.mu.Lock()
	lines := out.lines
	out.mu.Unlock()
	// Each node joins and leaves (two events): unlimited, that is 800 lines.
	if budget := (seconds+1)*nodeLogLinesPerSecond + 10; lines > budget {
		t.Errorf("%d log lines in %d s for %d node churns; the budget is %d", lines, seconds, attempts, budget)
	}
	t.Logf("%d log lines for %d node churns in %d s", lines, attempts, seconds)
}
