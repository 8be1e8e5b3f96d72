// Package api is the management API of the control plane: JSON over HTTP,
// defined in openapi.yaml (embedded and served at /openapi.yaml), with the
// handler that serves it and the client the CLI uses.
package api

import (
	"context"
	_ "embed"

	"github.com/mqtt-sticky/mqtt-sticky/contract"
	"github.com/mqtt-sticky/mqtt-sticky/xds/control"
	"github.com/mqtt-sticky/mqtt-sticky/xds/discovery"
	"github.com/mqtt-sticky/mqtt-sticky/xds/health"
	"github.com/mqtt-sticky/mqtt-sticky/xds/model"
	"github.com/mqtt-sticky/mqtt-sticky/xds/server"
)

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
	Version  uint64              `json:"version"`
	Nodes    []server.NodeStatus `json:"nodes"`
	Clusters []ClusterStatus     `json:"clusters"`
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
	Status  string `json:"status"`
	Version uint64 `json:"version"`
}

// Backend is what the API manages: the controller's changes, plus the
// xDS server's view of the nodes.
type Backend interface {
	Model() *model.Model
	Version() uint64
	Endpoints(cluster string) ([]model.Endpoint, uint64, error)
	SetEndpoints(ctx context.Context, cluster string, eps []model.Endpoint) (uint64, error)
	AddEndpoint(ctx context.Context, cluster string, ep model.Endpoint) (uint64, error)
	RemoveEndpoint(ctx context.Context, cluster string, ep model.Endpoint) (uint64, error)
	Nodes() []server.NodeStatus
	ClusterStatus() []ClusterStatus
}

// Fleet is the Backend `mqtt-sticky serve` runs: the controller for
// changes, the xDS server for the nodes' status, and, when they run, DNS
// discovery and the health watcher for the clusters' status.
type Fleet struct {
	*control.Controller
	Server    *server.Server
	Discovery *discovery.Runner // nil without discovered clusters
	Health    *health.Watcher   // nil when not watching
}

// Nodes reports every Envoy node the xDS server has seen.
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
