// Package discovery keeps the endpoints of discovered clusters up to date:
// it resolves each cluster's DNS name on the cluster's interval and hands
// the answer to the controller, which validates, persists and serves it
// like any other change. It never empties a cluster: a failed or empty
// lookup keeps the last good set, and is logged, counted and reported.
package discovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mqtt-sticky/mqtt-sticky/xds/model"
)

// Setter serves a discovered endpoint set: control.Controller.
type Setter interface {
	SetDiscovered(ctx context.Context, cluster string, eps []model.Endpoint) (version uint64, changed bool, err error)
}

// Status is what discovery last did for one cluster, for /v1/status.
type Status struct {
	Cluster  string `json:"cluster"`
	Name     string `json:"name"`
	Record   string `json:"record"`
	Resolver string `json:"resolver"`
	// Records is the number of endpoints in the last good answer.
	Records     int        `json:"records"`
	LastSuccess *time.Time `json:"last_success,omitempty"`
	LastChange  *time.Time `json:"last_change,omitempty"`
	LastError   string     `json:"last_error,omitempty"`
	LastErrorAt *time.Time `json:"last_error_at,omitempty"`
	// Failing counts the failed or empty lookups since the last good one;
	// while it is above 0 the cluster keeps its last good endpoints.
	Failing int `json:"consecutive_failures"`
}

// Runner resolves every discovered cluster.
type Runner struct {
	setter  Setter
	log     *slog.Logger
	metrics *metrics
	targets []target

	mu     sync.Mutex
	status map[string]*Status
}

type target struct {
	cluster  string
	dns      model.DNSDiscovery
	resolver string // IP:PORT
}

// resolvConf is where the default resolver comes from.
const resolvConf = "/etc/resolv.conf"

// New returns a runner for the discovered clusters of m. A cluster without
// a resolver uses the first nameserver of /etc/resolv.conf.
func New(m *model.Model, setter Setter, log *slog.Logger, reg prometheus.Registerer) (*Runner, error) {
	if log == nil {
		log = slog.Default()
	}
	r := &Runner{setter: setter, log: log, metrics: newMetrics(reg), status: map[string]*Status{}}
	for _, c := range m.Clusters {
		if !c.Discovered() {
			continue
		}
		d := *c.Discovery.DNS
		resolver, err := resolverOf(d.Resolver)
		if err != nil {
			return nil, fmt.Errorf("cluster %q: %w", c.Name, err)
		}
		r.targets = append(r.targets, target{cluster: c.Name, dns: d, resolver: resolver})
		r.status[c.Name] = &Status{Cluster: c.Name, Name: d.Name, Record: string(d.Record), Resolver: resolver}
	}
	return r, nil
}

func resolverOf(configured string) (string, error) {
	if configured != "" {
		return model.ParseResolver(configured)
	}
	cc, err := dns.ClientConfigFromFile(resolvConf)
	if err != nil || len(cc.Servers) == 0 {
		return "", fmt.Errorf("discovery.dns.resolver is not set and %s names no nameserver (%v): set the resolver", resolvConf, err)
	}
	return model.ParseResolver(cc.Servers[0] + ":" + cc.Port)
}

// Run resolves every discovered cluster at once, then on its interval,
// until ctx ends.
func (r *Runner) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, t := range r.targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.loop(ctx, t)
		}()
	}
	wg.Wait()
}

func (r *Runner) loop(ctx context.Context, t target) {
	tick := time.NewTicker(t.dns.Interval.D())
	defer tick.Stop()
	for {
		r.refresh(ctx, t)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// Outcomes of one refresh, the values of the lookups metric's result label.
const (
	resultChanged   = "changed"
	resultUnchanged = "unchanged"
	resultEmpty     = "empty"
	resultFailed    = "failed"
	resultRefused   = "refused" // the answer failed validation, or could not be stored
)

// refresh resolves one cluster and serves the answer. On failure the
// cluster keeps what it has.
func (r *Runner) refresh(ctx context.Context, t target) {
	timeout := min(t.dns.Interval.D(), 5*time.Second)
	lctx, cancel := context.WithTimeout(ctx, timeout)
	eps, err := lookup(lctx, t.resolver, t.dns)
	cancel()
	if ctx.Err() != nil {
		return
	}
	if err != nil {
		result := resultFailed
		if errors.Is(err, errEmpty) {
			result = resultEmpty
		}
		r.failed(t, result, err)
		return
	}
	version, changed, err := r.setter.SetDiscovered(ctx, t.cluster, eps)
	if err != nil {
		r.failed(t, resultRefused, fmt.Errorf("answer not served: %w", err))
		return
	}
	r.succeeded(t, eps, version, changed)
}

func (r *Runner) failed(t target, result string, err error) {
	r.metrics.lookups.WithLabelValues(t.cluster, result).Inc()
	r.mu.Lock()
	st := r.status[t.cluster]
	now := time.Now()
	st.LastError, st.LastErrorAt = err.Error(), &now
	st.Failing++
	failing, records := st.Failing, st.Records
	r.mu.Unlock()
	r.metrics.failing.WithLabelValues(t.cluster).Set(float64(failing))
	r.log.Warn("discovery: lookup failed; keeping the last good endpoints", "cluster", t.cluster, "name", t.dns.Name,
		"record", t.dns.Record, "resolver", t.resolver, "err", err, "consecutive_failures", failing, "kept", records)
}

func (r *Runner) succeeded(t target, eps []model.Endpoint, version uint64, changed bool) {
	result := resultUnchanged
	if changed {
		result = resultChanged
	}
	r.metrics.lookups.WithLabelValues(t.cluster, result).Inc()
	r.metrics.records.WithLabelValues(t.cluster).Set(float64(len(eps)))
	r.metrics.failing.WithLabelValues(t.cluster).Set(0)
	r.metrics.lastSuccess.WithLabelValues(t.cluster).SetToCurrentTime()
	r.mu.Lock()
	st := r.status[t.cluster]
	now := time.Now()
	st.Records, st.LastSuccess, st.Failing = len(eps), &now, 0
	if changed {
		st.LastChange = &now
	}
	r.mu.Unlock()
	if changed {
		r.log.Info("discovery: endpoints changed", "cluster", t.cluster, "name", t.dns.Name, "endpoints", len(eps), "version", version)
	}
}

// Status reports every discovered cluster, sorted by name.
func (r *Runner) Status() []Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Status, 0, len(r.status))
	for _, st := range r.status {
		out = append(out, *st)
	}
	slices.SortFunc(out, func(a, b Status) int {
		if a.Cluster < b.Cluster {
			return -1
		}
		if a.Cluster > b.Cluster {
			return 1
		}
		return 0
	})
	return out
}

type metrics struct {
	lookups     *prometheus.CounterVec
	records     *prometheus.GaugeVec
	failing     *prometheus.GaugeVec
	lastSuccess *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		lookups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mqtt_sticky_discovery_lookups_total",
			Help: "DNS discovery lookups, by cluster and result: changed, unchanged, empty, failed or refused (the last three keep the last good endpoints).",
		}, []string{"cluster", "result"}),
		records: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "mqtt_sticky_discovery_endpoints", Help: "Endpoints in the last good DNS answer, by cluster.",
		}, []string{"cluster"}),
		failing: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "mqtt_sticky_discovery_consecutive_failures", Help: "Failed or empty DNS lookups since the last good one, by cluster.",
		}, []string{"cluster"}),
		lastSuccess: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "mqtt_sticky_discovery_last_success_timestamp_seconds", Help: "When the last good DNS answer arrived, by cluster.",
		}, []string{"cluster"}),
	}
	if reg != nil {
		reg.MustRegister(m.lookups, m.records, m.failing, m.lastSuccess)
	}
	return m
}
