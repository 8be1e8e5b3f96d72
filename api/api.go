// Package api is the management API of the control plane: JSON over HTTP,
// defined in openapi.yaml (embedded and served at /openapi.yaml), with the
// handler that serves it and the client the CLI uses.
package api

import (
	"context"
	_ "embed"

	"github.com/mqtt-sticky/mqtt-sticky/xds/control"
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
}

// ClusterList is the body of GET /v1/clusters.
type ClusterList struct {
	Version  uint64    `json:"version"`
	Clusters []Cluster `json:"clusters"`
}

// Status is the body of GET /v1/status.
type Status struct {
	Version uint64              `json:"version"`
	Nodes   []server.NodeStatus `json:"nodes"`
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
}

// Fleet is the Backend `mqtt-sticky serve` runs: the controller for
// changes, and the xDS server for the nodes' status.
type Fleet struct {
	*control.Controller
	Server *server.Server
}

// Nodes reports every Envoy node the xDS server has seen.
func (f Fleet) Nodes() []server.NodeStatus { return f.Server.Nodes() }
