// Package api is the management API of the control plane: JSON over HTTP,
// defined in openapi.yaml (embedded and served at /openapi.yaml), with the
// handler that serves it and the client the CLI uses.
package api

import (
	_ "embed"

	"github.com/mqtt-sticky/mqtt-sticky/xds/model"
	"github.com/mqtt-sticky/mqtt-sticky/xds/server"
)

// Spec is the OpenAPI definition of this API.
//
//go:embed openapi.yaml
var Spec []byte

// Endpoint is one broker, as the API reads and writes it.
type Endpoint struct {
	Address string `json:"address"`
	Port    int    `json:"port"`
	Weight  uint32 `json:"weight,omitempty"`
}

// EndpointSet is the body of PUT /v1/clusters/{name}/endpoints.
type EndpointSet struct {
	Endpoints []Endpoint `json:"endpoints"`
}

// EndpointList is a cluster's endpoints at a version.
type EndpointList struct {
	Cluster   string     `json:"cluster"`
	Version   uint64     `json:"version"`
	Endpoints []Endpoint `json:"endpoints"`
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

// Backend is what the API manages: the store, plus the xDS server's view
// of the nodes.
type Backend interface {
	Model() *model.Model
	Version() uint64
	Endpoints(cluster string) ([]model.Endpoint, error)
	SetEndpoints(cluster string, eps []model.Endpoint) (uint64, error)
	AddEndpoint(cluster string, ep model.Endpoint) (uint64, error)
	RemoveEndpoint(cluster, address string, port int) (uint64, error)
	Nodes() []server.NodeStatus
}

func fromModel(eps []model.Endpoint) []Endpoint {
	out := make([]Endpoint, 0, len(eps))
	for _, e := range eps {
		out = append(out, Endpoint{Address: e.Address, Port: e.Port, Weight: e.Weight})
	}
	return out
}

func toModel(e Endpoint) model.Endpoint {
	if e.Weight == 0 {
		e.Weight = model.DefaultWeight
	}
	return model.Endpoint{Address: e.Address, Port: e.Port, Weight: e.Weight}
}
