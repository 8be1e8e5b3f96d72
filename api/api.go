// Package api is the management API of the control plane: JSON over HTTP,
// defined in openapi.yaml (embedded and served at /openapi.yaml), with the
// handler that serves it and the client the CLI uses.
package api

import (
	"context"
	_ "embed"
	"maps"
	"slices"
	"strings"

	"github.com/mqtt-sticky/mqtt-sticky/contract"
	"github.com/mqtt-sticky/mqtt-sticky/xds/control"
	"github.com/mqtt-sticky/mqtt-sticky/xds/discovery"
	"github.com/mqtt-sticky/mqtt-sticky/xds/health"
	"github.com/mqtt-sticky/mqtt-sticky/xds/model"
	"github.com/mqtt-sticky/mqtt-sticky/xds/server"
)

// TokenEnv is the environment variable that holds the API's bearer token,
// for `mqtt-sticky serve` and for the CLI's client commands. Processes the
// control plane starts (Envoy, in `mqtt-sticky run`) do not inherit it.
const TokenEnv = "MQTT_STICKY_API_TOKEN"

// Spec is the OpenAPI definition of this API.
//
//go:embed openapi.yaml
var Spec []byte

// EndpointSet is the body of PUT /v1/clusters/{name}/endpoints.
type EndpointSet struct {
	Endpoints []model.Endpoint `json:"endpoints"`
}

// EndpointList is a cluster's endpoints at a version.
type EndpointList struct {
	Cluster   string           `json:"cluster"`
	Version   uint64           `json:"version"`
	Endpoints []model.Endpoint `json:"endpoints"`
}

// Cluster summarises one broker cluster.
type Cluster struct {
	Name          string `json:"name"`
	LBPolicy      string `json:"lb_policy"`
	ProxyProtocol string `json:"proxy_protocol"`
	HealthCheck   string `json:"health_check"`
	Endpoints     int    `json:"endpoints"`
	// Discovered clusters take their endpoints from DNS; the API refuses
	// to edit them.
	Discovered  bool               `json:"discovered,omitempty"`
	UpstreamTLS *model.UpstreamTLS `json:"upstream_tls,omitempty"`
}

// Listener is one listener as served: where clients connect, its TLS
// settings (file paths on the Envoy host; no key material), and its filter.
type Listener struct {
	Name    string          `json:"name"`
	Address string          `json:"address"`
	Port    int             `json:"port"`
	Cluster string          `json:"cluster"`
	TLS     *model.TLS      `json:"tls,omitempty"`
	Filter  contract.Config `json:"filter"`
}

// ListenerList is the body of GET /v1/listeners.
type ListenerList struct {
	Version   uint64     `json:"version"`
	Listeners []Listener `json:"listeners"`
}

// ClusterList is the body of GET /v1/clusters.
type ClusterList struct {
	Version  uint64    `json:"version"`
	Clusters []Cluster `json:"clusters"`
}

// Status is the body of GET /v1/status.
type Status struct {
	Version uint64 `json:"version"`
	// Replica names the replica that answered, when several share a store.
	Replica  string              `json:"replica,omitempty"`
	Nodes    []server.NodeStatus `json:"nodes"`
	Clusters []ClusterStatus     `json:"clusters"`
	// Partial says why only this replica's own nodes are listed.
	Partial string `json:"partial,omitempty"`
}

// ClusterStatus is what the control plane knows of one cluster beyond its
// configuration: how its discovery fares, its health as the Envoy nodes
// report it, and each broker's health and connections on every node.
type ClusterStatus struct {
	Name      string                `json:"name"`
	Discovery *discovery.Status     `json:"discovery,omitempty"`
	Health    *health.ClusterHealth `json:"health,omitempty"`
	Brokers   []health.Broker       `json:"brokers,omitempty"`
}

// Error is the body of every 4xx and 5xx answer.
type Error struct {
	Error string `json:"error"`
}

// Health is the body of GET /healthz.
type Health struct {
	Status  string `json:"status"` // "ok", or "degraded" when a dependency fails
	Version uint64 `json:"version"`
	// Degraded says, for each dependency that fails, why. The control
	// plane serves the last version to Envoy meanwhile, and refuses
	// changes it cannot store.
	Degraded map[string]string `json:"degraded,omitempty"`
}

// Backend is what the API manages: the controller's changes, plus the
// fleet's status and health. A change's ifVersion is the version of the
// request's If-Match, or control.AnyVersion.
type Backend interface {
	Model() *model.Model
	Served() (*model.Model, uint64)
	Version() uint64
	Endpoints(cluster string) ([]model.Endpoint, uint64, error)
	SetEndpoints(ctx context.Context, cluster string, eps []model.Endpoint, ifVersion uint64) (uint64, error)
	AddEndpoint(ctx context.Context, cluster string, ep model.Endpoint, ifVersion uint64) (uint64, error)
	RemoveEndpoint(ctx context.Context, cluster string, ep model.Endpoint, ifVersion uint64) (uint64, error)
	Status(ctx context.Context) Status
	// Degraded names each dependency that fails, and why.
	Degraded(ctx context.Context) map[string]string
}

// Fleet is the Backend `mqtt-sticky serve` runs: the controller for
// changes, the xDS server for the nodes' status, and, when they run, DNS
// discovery and the health watcher for the clusters' status.
type Fleet struct {
	*control.Controller
	Server    *server.Server
	Discovery *discovery.Runner // nil without discovered clusters
	Health    *health.Watcher   // nil when not watching
	// Replicas, when set, is where the replicas that share the store
	// publish their nodes (etcdstore.Board); nil when this control plane
	// runs alone.
	Replicas Replicas
	// Checks are the dependencies /healthz reports on, by name.
	Checks map[string]func(context.Context) error
}

// Nodes reports every Envoy node this replica's xDS server has seen.
func (f Fleet) Nodes() []server.NodeStatus { return f.Server.Nodes() }

// ClusterStatus reports every served cluster, in the model's order.
func (f Fleet) ClusterStatus() []ClusterStatus {
	out := []ClusterStatus{}
	m := f.Model()
	if m == nil {
		return out
	}
	disc := map[string]discovery.Status{}
	if f.Discovery != nil {
		for _, st := range f.Discovery.Status() {
			disc[st.Cluster] = st
		}
	}
	hl := map[string]health.ClusterHealth{}
	if f.Health != nil {
		for _, r := range f.Health.Report() {
			hl[r.Cluster] = r
		}
	}
	for _, c := range m.Clusters {
		cs := ClusterStatus{Name: c.Name}
		if st, ok := disc[c.Name]; ok {
			cs.Discovery = &st
		}
		if r, ok := hl[c.Name]; ok {
			cs.Health = &r
		}
		if f.Health != nil {
			cs.Brokers = f.Health.Brokers(c.Name)
		}
		out = append(out, cs)
	}
	return out
}

// Replicas lists the nodes every replica published.
type Replicas interface {
	Replica() string // this replica's name
	Nodes(ctx context.Context) ([]server.NodeStatus, error)
}

// Status reports every Envoy node, this replica's own and those the other
// replicas published, and every cluster's discovery and health.
func (f Fleet) Status(ctx context.Context) Status {
	st := Status{Version: f.Version(), Nodes: f.Server.Nodes(), Clusters: f.ClusterStatus()}
	if f.Replicas == nil {
		return st
	}
	st.Replica = f.Replicas.Replica()
	for i := range st.Nodes {
		st.Nodes[i].Replica = st.Replica
	}
	published, err := f.Replicas.Nodes(ctx)
	if err != nil {
		st.Partial = "only this replica's nodes: " + err.Error()
		return st
	}
	st.Nodes = mergeNodes(st.Replica, st.Nodes, published)
	return st
}

// mergeNodes lists each node once. This replica's entries are its live
// view; a node that several replicas list (it moved from one to another)
// is shown as the one it is connected to says, then as the one that saw
// it last.
func mergeNodes(replica string, local, published []server.NodeStatus) []server.NodeStatus {
	byID := map[string]server.NodeStatus{}
	for _, n := range published {
		if n.Replica == replica {
			continue // an older copy of a local entry
		}
		if cur, ok := byID[n.ID]; !ok || newer(n, cur) {
			byID[n.ID] = n
		}
	}
	for _, n := range local {
		if cur, ok := byID[n.ID]; !ok || !newer(cur, n) {
			byID[n.ID] = n
		}
	}
	out := slices.Collect(maps.Values(byID))
	slices.SortFunc(out, func(a, b server.NodeStatus) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// newer says whether a describes the node's present better than b.
func newer(a, b server.NodeStatus) bool {
	if a.Connected != b.Connected {
		return a.Connected
	}
	return a.LastSeen.After(b.LastSeen)
}

// Degraded runs the checks.
func (f Fleet) Degraded(ctx context.Context) map[string]string {
	var out map[string]string
	for name, check := range f.Checks {
		if err := check(ctx); err != nil {
			if out == nil {
				out = map[string]string{}
			}
			out[name] = err.Error()
		}
	}
	return out
}
