package tests

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mqtt-sticky/mqtt-sticky/bench/loadgen"
	"github.com/mqtt-sticky/mqtt-sticky/internal/broker"
	"github.com/mqtt-sticky/mqtt-sticky/xds/control"
	"github.com/mqtt-sticky/mqtt-sticky/xds/model"
)

// drainTime is the --drain-time-s of the Envoys in these tests: short, so
// that a change that starts a drain closes its connections within the
// test instead of ten minutes later.
const drainTime = 2 * time.Second

// changeRig is a fleet holding many idle MQTT connections through one
// Envoy fed by the control plane: three brokers (child processes) hold the
// clients, two more (in this process) hold none and come and go.
type changeRig struct {
	t       *testing.T
	file    *model.File
	cfgPath string
	cp      *controlPlane
	envoy   *xdsEnvoy
	holders []*brokerProc
	spares  []*broker.Broker
	clients *loadgen.Set
	listen  string
}

func newChangeRig(t *testing.T, clients int) *changeRig {
	r := &changeRig{t: t}
	for i := range 3 {
		r.holders = append(r.holders, startBrokerProc(t, fmt.Sprintf("b%d", i+1), brokerAddr(i+1)))
	}
	for i := 3; i < 5; i++ {
		b, err := broker.Start(broker.Options{Name: fmt.Sprintf("b%d", i+1), Listen: brokerAddr(i + 1), ProxyProtocol: broker.ProxyRequired})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		r.spares = append(r.spares, b)
	}
	port := freePort(t)
	r.listen = fmt.Sprintf("127.0.0.1:%d", port)
	var eps []model.Endpoint
	for _, b := range r.holders {
		e, err := model.ParseEndpoint(b.addr)
		if err != nil {
			t.Fatal(err)
		}
		eps = append(eps, e)
	}
	r.file = &model.File{Model: model.Model{
		Listeners: []model.Listener{{Name: "mqtt", Address: "127.0.0.1", Port: port,
			ConnectionRateLimit: &model.ConnectionRateLimit{ConnectionsPerSecond: 100_000, Burst: 100_000}}},
		Clusters: []model.Cluster{{Name: "brokers", Endpoints: eps, HealthCheck: model.HealthCheck{
			Type: model.HealthMQTT, Interval: model.Duration(500 * time.Millisecond), Timeout: model.Duration(400 * time.Millisecond)}}},
	}}
	r.file.SetDefaults()
	r.cfgPath = filepath.Join(t.TempDir(), "mqtt-sticky.yaml")
	writeFleet(t, r.cfgPath, r.file)
	r.cp = startControlPlane(t, r.cfgPath, filepath.Join(t.TempDir(), "state.json"))
	r.envoy = startXDSEnvoy(t, r.cp, "envoy-changes", false, "--drain-time-s", fmt.Sprint(int(drainTime.Seconds())))
	r.waitServed(r.holderAddrs())

	start := time.Now()
	set, err := loadgen.Connect(t.Context(), loadgen.Options{Addr: r.listen, IDPrefix: "held", KeepAlive: 30 * time.Second}, clients)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(set.Close)
	r.clients = set
	t.Logf("%d clients connected through Envoy in %v", clients, time.Since(start).Round(time.Millisecond))
	return r
}

func (r *changeRig) holderAddrs() []string {
	var out []string
	for _, b := range r.holders {
		out = append(out, b.addr)
	}
	return out
}

// waitServed waits until Envoy has acknowledged the control plane's
// current version of every resource type, no cluster is warming, no
// listener or filter chain is draining, and the brokers Envoy reports
// healthy are exactly want.
func (r *changeRig) waitServed(want []string) {
	r.t.Helper()
	ctx := r.t.Context()
	waitFor(r.t, 30*time.Second, "Envoy acknowledges every resource type", func() bool {
		st, err := r.cp.client.Status(ctx)
		if err != nil || len(st.Nodes) != 1 || !st.Nodes[0].Connected {
			return false
		}
		v := fmt.Sprint(st.Version)
		for _, kind := range []string{"listeners", "clusters", "endpoints", "filters"} {
			if st.Nodes[0].Resources[kind].AckedVersion != v {
				return false
			}
		}
		return true
	})
	r.envoy.waitHostAddrs(r.t, r.cp, want, 30*time.Second)
	waitFor(r.t, 4*drainTime+10*time.Second, "no listener or filter chain is draining", func() bool {
		st := envoyStats(r.t, r.envoy.Process, "listener_manager.total_")
		return st["listener_manager.total_listeners_draining"] == 0 && st["listener_manager.total_filter_chains_draining"] == 0
	})
}

// changeResult is one row of the report.
type changeResult struct {
	change string
	lost   int64
	envoy  map[string]int64 // what Envoy counted: listener and cluster updates
	took   time.Duration
}

// add sums another result into r, for a row that stands for many changes.
func (r *changeResult) add(o changeResult) {
	r.lost += o.lost
	r.took += o.took
	if r.envoy == nil {
		r.envoy = map[string]int64{}
	}
	for k, v := range o.envoy {
		r.envoy[k] += v
	}
}

// updates formats the Envoy counters whose names start with prefix.
func (r changeResult) updates(prefix string) string {
	var out []string
	for _, k := range envoyCounters {
		if d := r.envoy[k]; d != 0 && strings.HasPrefix(k, prefix) {
			out = append(out, fmt.Sprintf("%s +%d", k[strings.LastIndexByte(k, '.')+1:], d))
		}
	}
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, ", ")
}

// envoyCounters are the Envoy stats that say what a change did.
var envoyCounters = []string{
	"ecds.config_reload", "listener_manager.listener_added", "listener_manager.listener_modified", "listener_manager.listener_in_place_updated",
	"listener_manager.listener_removed", "cluster_manager.cluster_added", "cluster_manager.cluster_modified",
	"cluster_manager.cluster_removed", "cluster_manager.cluster_updated",
}

func (r *changeRig) counters() map[string]int64 {
	out := map[string]int64{}
	for _, prefix := range []string{"listener_manager.", "cluster_manager."} {
		for k, v := range envoyStats(r.t, r.envoy.Process, prefix) {
			out[k] = v
		}
	}
	// Filter configs Envoy took by extension config discovery, summed over
	// the listeners' filters.
	for k, v := range envoyStats(r.t, r.envoy.Process, "extension_config_discovery.") {
		if strings.HasSuffix(k, ".config_reload") {
			out["ecds.config_reload"] += v
		}
	}
	return out
}

// apply makes one change, waits until Envoy serves it and any drain it
// started has finished, and then counts the connections lost: every client
// must still answer a PINGREQ.
func (r *changeRig) apply(name string, want []string, change func()) changeResult {
	r.t.Helper()
	before := r.counters()
	lost0 := r.clients.Lost()
	start := time.Now()
	change()
	r.waitServed(want)
	answered, err := r.clients.Ping(r.t.Context(), 30*time.Second)
	if err != nil {
		r.t.Error(err)
	}
	after := r.counters()
	res := changeResult{change: name, lost: r.clients.Lost() - lost0, took: time.Since(start), envoy: map[string]int64{}}
	for _, k := range envoyCounters {
		res.envoy[k] = after[k] - before[k]
	}
	r.t.Logf("%s: %d lost, %d of %d answered a PINGREQ (listeners: %s; clusters: %s) in %v",
		name, res.lost, answered, r.clients.Len(), res.updates("listener"), res.updates("cluster"), res.took.Round(time.Millisecond))
	return res
}

// reconfigure edits the config file and restarts the control plane with
// it, as an operator changes anything but the endpoints.
func (r *changeRig) reconfigure(edit func(*model.File)) func() {
	return func() {
		edit(r.file)
		r.file.SetDefaults()
		writeFleet(r.t, r.cfgPath, r.file)
		r.cp.stop(r.t)
		r.cp.start(r.t)
	}
}

// Thousands of idle MQTT connections, held through Envoy while the
// control plane changes everything it can change, one change at a time.
// No change may close a connection: only removing the broker a client is
// on may, and none of these changes does. MQTT_STICKY_HOLD_CONNECTIONS
// sets the number of clients (8,000 for the documented run, `make
// bench-connections`).
func TestConnectionsSurviveChanges(t *testing.T) {
	n := envCount(t, "MQTT_STICKY_HOLD_CONNECTIONS", 400)
	r := newChangeRig(t, n)
	ctx := context.Background()
	holders := r.holderAddrs()
	var results []changeResult

	// 50 endpoint changes: a spare broker joins, then leaves; Maglev, so
	// each is an EDS update.
	sum := changeResult{change: "50 endpoint changes: 25 additions and 25 removals of brokers holding none of the clients (Maglev: EDS only)"}
	for i := range 25 {
		spare := r.spares[i%2]
		e := toAPI(spare)[0]
		sum.add(r.apply("add "+spare.Name(), append(holders, spare.Addr()), func() {
			if _, err := r.cp.client.AddEndpoint(ctx, "brokers", e, control.AnyVersion); err != nil {
				t.Fatal(err)
			}
		}))
		sum.add(r.apply("remove "+spare.Name(), holders, func() {
			if _, err := r.cp.client.RemoveEndpoint(ctx, "brokers", e, control.AnyVersion); err != nil {
				t.Fatal(err)
			}
		}))
	}
	results = append(results, sum)

	results = append(results,
		r.apply("control-plane restart", holders, r.reconfigure(func(*model.File) {})),
		r.apply("health-check change (interval 500ms → 1s)", holders, r.reconfigure(func(f *model.File) {
			f.Clusters[0].HealthCheck.Interval = model.Duration(time.Second)
		})),
		r.apply("circuit-breaker change (max_connections 1,000,000 → 500,000)", holders, r.reconfigure(func(f *model.File) {
			f.Clusters[0].CircuitBreaker.MaxConnections = 500_000
		})),
		r.apply("load-balancer change (Maglev → ring hash)", holders, r.reconfigure(func(f *model.File) {
			f.Clusters[0].LBPolicy, f.Clusters[0].MaglevTable = model.RingHash, 0
		})),
		r.apply("ring-size change (points_per_host 1024 → 2048)", holders, r.reconfigure(func(f *model.File) {
			f.Clusters[0].PointsPerHost = 2048
		})),
	)
	spare := toAPI(r.spares[0])[0]
	results = append(results,
		r.apply("endpoint addition under ring hash (ring grows)", append(holders, r.spares[0].Addr()), func() {
			if _, err := r.cp.client.AddEndpoint(ctx, "brokers", spare, control.AnyVersion); err != nil {
				t.Fatal(err)
			}
		}),
		r.apply("endpoint removal under ring hash (ring shrinks)", holders, func() {
			if _, err := r.cp.client.RemoveEndpoint(ctx, "brokers", spare, control.AnyVersion); err != nil {
				t.Fatal(err)
			}
		}),
		r.apply("filter change (connect_timeout_ms 5000 → 3000)", holders, r.reconfigure(func(f *model.File) {
			f.Listeners[0].Filter.ConnectTimeoutMs = 3000
		})),
		r.apply("tcp_proxy change (idle_timeout 1h → 2h)", holders, r.reconfigure(func(f *model.File) {
			f.Clusters[0].IdleTimeout = model.Duration(2 * time.Hour)
		})),
		r.apply("connection-rate-limit change (100,000/s → 50,000/s)", holders, r.reconfigure(func(f *model.File) {
			f.Listeners[0].ConnectionRateLimit = &model.ConnectionRateLimit{ConnectionsPerSecond: 50_000, Burst: 50_000}
		})),
		r.apply("new listener next to the existing one", holders, r.reconfigure(func(f *model.File) {
			second := f.Listeners[0]
			second.Name, second.Port = "mqtt-2", freePort(t)
			f.Listeners = append(f.Listeners, second)
		})),
	)

	var rows [][]string
	for _, res := range results {
		rows = append(rows, []string{res.change, itoa(res.lost), res.updates("ecds"), res.updates("listener"), res.updates("cluster")})
		if res.lost != 0 {
			t.Errorf("%s: %d of %d connections lost, want 0", res.change, res.lost, n)
		}
	}
	table := markdownTable([]string{"change", "connections lost", "filter configs (ECDS)", "listener updates", "cluster updates"}, rows)
	t.Logf("%d idle connections held through every change:\n%s", n, table)
	writeReport(t, "connections.md", fmt.Sprintf("%d idle MQTT connections (keepalive 30 s) through one Envoy (2 workers, `--drain-time-s %d`) fed by the control plane; after each change, every client must answer a PINGREQ.\n\n%s",
		n, int(drainTime.Seconds()), table))
}

// The changes that Envoy cannot make in place: a listener-level field
// (here the listener's buffer limit, then its port) replaces the listener,
// and Envoy keeps the old one's connections until --drain-time-s ends, then
// closes them all at once. The test measures when they go, for the
// README's list of changes that drain.
func TestListenerChangesDrain(t *testing.T) {
	r := newChangeRig(t, 60)
	holders := r.holderAddrs()
	var rows [][]string
	for _, step := range []struct {
		name string
		edit func(*model.File)
	}{
		{"listener buffer_limit_bytes 1 MiB → 512 KiB", func(f *model.File) { f.Listeners[0].BufferLimitBytes = 512 << 10 }},
		{"listener port change", func(f *model.File) { f.Listeners[0].Port = freePort(t) }},
	} {
		before := r.counters()
		lost0 := r.clients.Lost()
		start := time.Now()
		r.reconfigure(step.edit)()
		waitFor(t, 30*time.Second, "every held connection closes", func() bool {
			return r.clients.Lost()-lost0 == int64(r.clients.Len())
		})
		var first, last time.Time
		for i := range r.clients.Len() {
			at := r.clients.Status(i).LostAt
			if first.IsZero() || at.Before(first) {
				first = at
			}
			if at.After(last) {
				last = at
			}
		}
		after := r.counters()
		res := changeResult{envoy: map[string]int64{}}
		for _, k := range envoyCounters {
			res.envoy[k] = after[k] - before[k]
		}
		t.Logf("%s: %d connections closed between %v and %v after the change (drain time %v); %s",
			step.name, r.clients.Len(), first.Sub(start).Round(time.Millisecond), last.Sub(start).Round(time.Millisecond), drainTime, res.updates("listener"))
		if res.envoy["listener_manager.listener_modified"] != 1 {
			t.Errorf("%s: listener_modified +%d, want +1", step.name, res.envoy["listener_manager.listener_modified"])
		}
		if spread := last.Sub(first); spread > drainTime {
			t.Errorf("%s: closes spread over %v: Envoy now drains tcp_proxy gradually; update the README", step.name, spread)
		}
		rows = append(rows, []string{step.name, fmt.Sprint(r.clients.Len()), fmt.Sprintf("%v–%v", first.Sub(start).Round(100*time.Millisecond), last.Sub(start).Round(100*time.Millisecond)), res.updates("listener")})

		// Reconnect a fresh set of clients to the new listener.
		r.clients.Close()
		r.listen = fmt.Sprintf("127.0.0.1:%d", r.file.Listeners[0].Port)
		r.waitServed(holders)
		set, err := loadgen.Connect(t.Context(), loadgen.Options{Addr: r.listen, IDPrefix: "again", KeepAlive: 30 * time.Second}, 60)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(set.Close)
		r.clients = set
	}
	writeReport(t, "drains.md", markdownTable([]string{"change", "connections closed", "closed after (drain time 2 s)", "listener updates (Envoy)"}, rows))
}
