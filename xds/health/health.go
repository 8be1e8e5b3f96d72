// Package health reads each Envoy node's own view of broker health, so the
// control plane can say when a cluster's health check can never pass, and
// each broker's health and open connections on every node, for the status
// page and /v1/status.
//
// xDS carries configuration to Envoy, never health back. Of the ways Envoy
// 1.40 reports health, this package reads the admin /clusters endpoint of
// the nodes that advertise their admin address in node metadata
// (server.AdminAddressKey):
//   - it is the load balancer's own view: the flags Envoy routes by;
//   - health-check event sinks only write files on the Envoy host (the
//     event_service field is not implemented);
//   - LRS reports load, not health, and Envoy 1.40 refuses it beside the
//     per-endpoint stats the Prometheus dashboard reads ("Only one of
//     cluster per_endpoint_stats and cluster manager load_stats_config
//     can be specified": both latch the same host counters);
//   - HDS makes Envoy run separate probes, doubling the brokers' probe
//     load and reporting those probes rather than the cluster's view.
//
// Only GET /clusters?format=json is ever requested, with a timeout and a
// bounded body, and only from nodes connected to this control plane.
package health

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mqtt-sticky/mqtt-sticky/xds/model"
	"github.com/mqtt-sticky/mqtt-sticky/xds/server"
)

// maxBody bounds one /clusters answer: a few KB per host.
const maxBody = 16 << 20

// Source is what the watcher reads: the served model and the nodes.
type Source interface {
	Model() *model.Model
	Nodes() []server.NodeStatus
}

// ClusterHealth is one cluster's health as the Envoy nodes report it.
type ClusterHealth struct {
	Cluster   string `json:"cluster"`
	Endpoints int    `json:"endpoints"`
	// Healthy is each reporting node's count of healthy endpoints.
	Healthy map[string]int `json:"healthy"`
	// NeverHealthy is set when every endpoint has been unhealthy on every
	// reporting node since it was added: the health check likely cannot
	// pass (wrong port, path or PROXY setting), and no client gets through.
	NeverHealthy bool   `json:"never_healthy"`
	Message      string `json:"message,omitempty"`
}

// Host is one broker as one Envoy node reports it.
type Host struct {
	Healthy bool `json:"healthy"`
	// Connections is the number of client connections the node holds to
	// the broker (Envoy's cx_active for the host).
	Connections uint64 `json:"connections"`
}

// Broker is one endpoint of a cluster as the Envoy nodes report it.
type Broker struct {
	Address string `json:"address"`
	// Nodes is each reporting node's view; a node that does not list the
	// endpoint (it has not received it yet) is absent.
	Nodes map[string]Host `json:"nodes"`
	// Connections is the sum of the nodes' connections.
	Connections uint64 `json:"connections"`
}

// nodeView is one node's /clusters: cluster -> "address:port" -> host.
type nodeView map[string]map[string]Host

// Watcher polls the nodes' admin endpoints.
type Watcher struct {
	src      Source
	log      *slog.Logger
	interval time.Duration
	client   *http.Client
	now      func() time.Time

	neverHealthy *prometheus.GaugeVec
	healthy      *prometheus.GaugeVec
	polls        *prometheus.CounterVec

	mu      sync.Mutex
	hosts   map[string]map[string]*hostState // cluster -> address:port -> state
	report  map[string]ClusterHealth
	brokers map[string][]Broker // cluster -> its endpoints, in the model's order
	failed  map[string]bool     // nodes whose last poll failed, to log once
}

type hostState struct {
	added       time.Time
	everHealthy bool
}

// New returns a watcher that polls every interval.
func New(src Source, interval time.Duration, log *slog.Logger, reg prometheus.Registerer) *Watcher {
	if log == nil {
		log = slog.Default()
	}
	w := &Watcher{
		src: src, log: log, interval: interval, now: time.Now,
		client: &http.Client{Timeout: min(interval, 2*time.Second)},
		neverHealthy: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "mqtt_sticky_cluster_never_healthy",
			Help: "1 when every endpoint of the cluster has been unhealthy on every reporting Envoy since it was added: the health check likely cannot pass.",
		}, []string{"cluster"}),
		healthy: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "mqtt_sticky_envoy_healthy_endpoints", Help: "Healthy endpoints of a cluster, as each Envoy node reports them.",
		}, []string{"cluster", "node"}),
		polls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mqtt_sticky_envoy_health_polls_total", Help: "Reads of Envoy nodes' admin /clusters, by result (ok or failed).",
		}, []string{"result"}),
		hosts:  map[string]map[string]*hostState{},
		report: map[string]ClusterHealth{},
		failed: map[string]bool{},
	}
	if reg != nil {
		reg.MustRegister(w.neverHealthy, w.healthy, w.polls)
	}
	return w
}

// Run polls until ctx ends.
func (w *Watcher) Run(ctx context.Context) {
	tick := time.NewTicker(w.interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		w.Poll(ctx)
	}
}

// Report returns each health-checked cluster's health, sorted by name.
func (w *Watcher) Report() []ClusterHealth {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]ClusterHealth, 0, len(w.report))
	for _, r := range w.report {
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b ClusterHealth) int { return strings.Compare(a.Cluster, b.Cluster) })
	return out
}

// Poll reads every connected node that advertises an admin address once,
// and updates the report.
func (w *Watcher) Poll(ctx context.Context) {
	m := w.src.Model()
	if m == nil {
		return
	}
	views := map[string]nodeView{} // by node
	for _, n := range w.src.Nodes() {
		if !n.Connected || n.AdminAddress == "" {
			continue
		}
		view, err := w.read(ctx, n.AdminAddress)
		if err != nil {
			w.polls.WithLabelValues("failed").Inc()
			w.logFailure(n.ID, err)
			continue
		}
		w.polls.WithLabelValues("ok").Inc()
		w.logFailure(n.ID, nil)
		views[n.ID] = view
	}
	w.update(m, views)
}

func (w *Watcher) logFailure(node string, err error) {
	w.mu.Lock()
	was := w.failed[node]
	w.failed[node] = err != nil
	w.mu.Unlock()
	if err != nil && !was {
		w.log.Warn("health: cannot read the node's admin /clusters", "node", node, "err", err)
	}
}

// Brokers returns a cluster's endpoints with each reporting node's view of
// them, in the model's order; nil before the first poll or for a cluster
// the model does not have.
func (w *Watcher) Brokers(cluster string) []Broker {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.brokers[cluster])
}

// update folds the nodes' views into each cluster's host states.
func (w *Watcher) update(m *model.Model, views map[string]nodeView) {
	w.mu.Lock()
	defer w.mu.Unlock()
	now := w.now()
	report := map[string]ClusterHealth{}
	w.brokers = map[string][]Broker{}
	for _, c := range m.Clusters {
		w.brokers[c.Name] = brokers(c, views)
		if c.HealthCheck.Type == model.HealthOff {
			delete(w.hosts, c.Name)
			continue
		}
		hosts := w.trackHosts(c, now)
		r := ClusterHealth{Cluster: c.Name, Endpoints: len(c.Endpoints), Healthy: map[string]int{}}
		for node, view := range views {
			r.Healthy[node] = 0
			for addr, st := range hosts {
				if view[c.Name][addr].Healthy {
					st.everHealthy = true
					r.Healthy[node]++
				}
			}
			w.healthy.WithLabelValues(c.Name, node).Set(float64(r.Healthy[node]))
		}
		r.NeverHealthy = len(views) > 0 && neverHealthy(hosts, now.Add(-grace(c.HealthCheck)))
		if r.NeverHealthy {
			r.Message = fmt.Sprintf("every endpoint has been unhealthy on every reporting Envoy since it was added: check the %s health check (port, path, PROXY protocol)", c.HealthCheck.Type)
			if !w.report[c.Name].NeverHealthy {
				w.log.Warn("health: no endpoint of the cluster has passed a health check", "cluster", c.Name, "endpoints", len(hosts), "check", c.HealthCheck.Type)
			}
		}
		w.neverHealthy.WithLabelValues(c.Name).Set(boolGauge(r.NeverHealthy))
		report[c.Name] = r
	}
	w.report = report
}

// brokers returns a cluster's endpoints as the nodes report them.
func brokers(c model.Cluster, views map[string]nodeView) []Broker {
	out := make([]Broker, 0, len(c.Endpoints))
	for _, e := range c.Endpoints {
		b := Broker{Address: e.Key(), Nodes: map[string]Host{}}
		for node, v := range views {
			if h, ok := v[c.Name][b.Address]; ok {
				b.Nodes[node] = h
				b.Connections += h.Connections
			}
		}
		out = append(out, b)
	}
	return out
}

// trackHosts returns the cluster's host states, starting a new one for
// every endpoint not seen before and forgetting removed ones.
func (w *Watcher) trackHosts(c model.Cluster, now time.Time) map[string]*hostState {
	old := w.hosts[c.Name]
	hosts := map[string]*hostState{}
	for _, e := range c.Endpoints {
		if st := old[e.Key()]; st != nil {
			hosts[e.Key()] = st
		} else {
			hosts[e.Key()] = &hostState{added: now}
		}
	}
	w.hosts[c.Name] = hosts
	return hosts
}

// neverHealthy: at least one endpoint, each added before cutoff and never
// reported healthy.
func neverHealthy(hosts map[string]*hostState, cutoff time.Time) bool {
	if len(hosts) == 0 {
		return false
	}
	for _, st := range hosts {
		if st.everHealthy || st.added.After(cutoff) {
			return false
		}
	}
	return true
}

// grace is how long a new endpoint may stay unhealthy before it counts:
// enough for the failures that mark it down and one more probe.
func grace(h model.HealthCheck) time.Duration {
	return h.Interval.D() + time.Duration(h.UnhealthyThreshold+1)*(h.UnhealthyInterval.D()+h.Timeout.D())
}

func boolGauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// clustersDoc is the part of Envoy's /clusters?format=json read here.
type clustersDoc struct {
	ClusterStatuses []struct {
		Name         string `json:"name"`
		HostStatuses []struct {
			Address struct {
				SocketAddress struct {
					Address   string `json:"address"`
					PortValue int    `json:"port_value"`
				} `json:"socket_address"`
			} `json:"address"`
			HealthStatus map[string]any `json:"health_status"`
			// Stats holds cx_active among others; Envoy leaves "value"
			// out when it is 0.
			Stats []struct {
				Name  string `json:"name"`
				Value string `json:"value"`
			} `json:"stats"`
		} `json:"host_statuses"`
	} `json:"cluster_statuses"`
}

// read returns one node's view.
func (w *Watcher) read(ctx context.Context, adminAddr string) (nodeView, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+adminAddr+"/clusters?format=json", nil)
	if err != nil {
		return nil, err
	}
	resp, err := w.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /clusters: %s", resp.Status)
	}
	v, err := ParseClusters(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return nil, fmt.Errorf("GET /clusters: %w", err)
	}
	return v, nil
}

// ParseClusters reads Envoy's GET /clusters?format=json: for each cluster,
// its hosts by address (model.Endpoint.KeyOrRaw) with their health and
// active connections.
func ParseClusters(r io.Reader) (map[string]map[string]Host, error) {
	var doc clustersDoc
	if err := json.NewDecoder(r).Decode(&doc); err != nil {
		return nil, err
	}
	v := map[string]map[string]Host{}
	for _, c := range doc.ClusterStatuses {
		hosts := map[string]Host{}
		for _, h := range c.HostStatuses {
			a := h.Address.SocketAddress
			host := Host{Healthy: healthy(h.HealthStatus)}
			for _, st := range h.Stats {
				if st.Name == "cx_active" {
					host.Connections, _ = strconv.ParseUint(st.Value, 10, 64)
				}
			}
			hosts[model.Endpoint{Address: a.Address, Port: a.PortValue}.KeyOrRaw()] = host
		}
		v[c.Name] = hosts
	}
	return v, nil
}

// healthy reads Envoy's health_status: EDS status HEALTHY and no failure
// flag (failed_active_health_check, pending_active_hc, ...) set.
func healthy(st map[string]any) bool {
	for k, v := range st {
		if k == "eds_health_status" {
			if v != "HEALTHY" {
				return false
			}
		} else if v == true {
			return false
		}
	}
	return true
}
