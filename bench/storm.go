package main

import (
	"context"
	"fmt"
	"log"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/mqtt-sticky/mqtt-sticky/bench/loadgen"
	"github.com/mqtt-sticky/mqtt-sticky/internal/broker"
	"github.com/mqtt-sticky/mqtt-sticky/xds/model"
)

// Reconnect storms: thousands of idle clients held through a proxy, then a
// broker dies (its clients reconnect at once) or the proxy restarts (every
// client reconnects at once). Clients reconnect as devices do: at once,
// then after a jittered backoff from 100ms doubling to 5s.

// stormHealth is the contenders' broker health checking during storms: a
// probe a second, down after three failures, up after one success. A dead
// broker refuses the probe at once; a live one that a storm slows down has
// a second to answer, and three chances, before its clients are moved.
func stormHealth(m *model.Model) {
	m.Clusters[0].HealthCheck = model.HealthCheck{Type: model.HealthMQTT, Interval: model.Duration(time.Second),
		Timeout: model.Duration(time.Second), UnhealthyThreshold: 3, HealthyThreshold: 1}
}

// stormContender starts one proxy on a given port in front of brokers.
type stormContender struct {
	name, title string
	hashes      string // "client ID" or "source IP": what stays sticky
	start       func(port int, brokers []string) (*proxy, error)
}

func stormContenders(env *benchEnv) []stormContender {
	withRate := func(m *model.Model) {
		stormHealth(m)
		m.Listeners[0].ConnectionRateLimit = &model.ConnectionRateLimit{ConnectionsPerSecond: env.stormRate, Burst: env.stormRate}
	}
	return []stormContender{
		{"A", "Envoy + mqtt_sticky, Maglev on client ID", "client ID", func(port int, b []string) (*proxy, error) {
			return startEnvoyOn(env, "storm-A", port, b, lbMaglev, true, 2, modelMod(stormHealth))
		}},
		{"A-rate", fmt.Sprintf("A with connection_rate_limit %d/s", env.stormRate), "client ID", func(port int, b []string) (*proxy, error) {
			return startEnvoyOn(env, "storm-A-rate", port, b, lbMaglev, true, 2, modelMod(withRate))
		}},
		{"B", "Envoy tcp_proxy, Maglev on source IP", "source IP", func(port int, b []string) (*proxy, error) {
			return startEnvoyOn(env, "storm-B", port, b, lbMaglev, false, 2, modelMod(stormHealth))
		}},
		{"C", "HAProxy 2.6, consistent hash on client ID", "client ID", func(port int, b []string) (*proxy, error) {
			return startHAProxyOn(env, "storm-C", port, haproxyConfigWith(port, b, false, 2, true))
		}},
	}
}

// stormResult is one storm through one contender.
type stormResult struct {
	contender, title, event string
	clients                 int
	affected                int           // clients whose connection was cut
	allBack                 time.Duration // from the event until every client was connected again
	p50, p99                time.Duration // of the affected clients' time to reconnect
	failedAttempts          int64         // reconnect attempts that failed
	onDeadBroker            int           // clients found on the dead broker afterwards (want 0)
	disturbed               int           // clients of live brokers that lost their connection or moved (want 0)
	notSticky               int           // of a sample reconnected afterwards, how many reached another broker (want 0)
	sample                  int
	rateLimited             int64
	minHealthy              int64 // fewest brokers Envoy reported healthy during the storm (-1: not Envoy)
	err                     string
}

func runStorms(env *benchEnv) []stormResult {
	var out []stormResult
	for _, c := range stormContenders(env) {
		for _, event := range []string{"broker dies", "proxy restarts"} {
			if c.name == "A-rate" && event == "broker dies" {
				continue // the rate limit matters when everyone reconnects
			}
			log.Printf("storm: %s, %s, %d clients", c.name, event, env.stormClients)
			r := storm(env, c, event)
			if r.err != "" {
				log.Printf("  failed: %s", r.err)
			} else {
				log.Printf("  every client back after %v (p50 %v, p99 %v); %d on the dead broker, %d disturbed, %d of %d not sticky, fewest healthy brokers %d",
					r.allBack.Round(time.Millisecond), r.p50.Round(time.Millisecond), r.p99.Round(time.Millisecond), r.onDeadBroker, r.disturbed, r.notSticky, r.sample, r.minHealthy)
			}
			out = append(out, r)
		}
	}
	return out
}

// storm runs one event through one contender.
func storm(env *benchEnv, c stormContender, event string) stormResult {
	r := stormResult{contender: c.name, title: c.title, event: event, clients: env.stormClients}
	fail := func(err error) stormResult { r.err = err.Error(); return r }
	three := env.brokers[:3]
	port := freePort()
	p, err := c.start(port, brokerAddrs(three))
	if err != nil {
		return fail(err)
	}
	defer func() { p.stop() }()
	if err := waitHealthy(p, 3); err != nil {
		return fail(err)
	}
	for _, b := range three {
		b.ResetRecords()
	}
	// Client i always connects from the same address, as a device behind
	// one NAT does, so that source-IP hashing can be sticky too.
	source := func(i int) net.IP { return net.IPv4(127, 0, 0, byte(2+i%249)) }
	ctx := context.Background()
	set, err := loadgen.Connect(ctx, loadgen.Options{Addr: p.addr, IDPrefix: "storm-" + c.name, KeepAlive: 60 * time.Second,
		Source: source, Reconnect: true, Workers: 32}, env.stormClients)
	if err != nil {
		return fail(err)
	}
	defer set.Close()
	prefix := "storm-" + c.name + "-"
	before := brokerByClient(three, prefix)
	if len(before) != set.Len() {
		return fail(fmt.Errorf("brokers recorded %d of %d clients", len(before), set.Len()))
	}

	dead := ""
	start := time.Now()
	switch event {
	case "broker dies":
		victim := three[1]
		dead = victim.Name()
		victim.Close() // its clients' connections are reset, and it refuses new ones
		defer restartBroker(env, 1)
	case "proxy restarts":
		p.stop()
		if p, err = c.start(port, brokerAddrs(three)); err != nil {
			return fail(err)
		}
	}
	minHealthy := watchHealthy(p)
	waitCtx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	if r.allBack, err = set.WaitConnected(waitCtx, start); err != nil {
		minHealthy.stop()
		return fail(err)
	}
	r.failedAttempts = set.Failed()
	if p.envoy != nil {
		if st, err := p.envoy.Stats(ctx, "local_rate_limit."); err == nil {
			for _, v := range st {
				r.rateLimited += v
			}
		}
	}
	r.minHealthy = minHealthy.stop()

	// Who was cut, how long each took to come back, and where it is now.
	after := brokerByClient(three, prefix)
	var took []time.Duration
	for i := range set.Len() {
		st := set.Status(i)
		if st.Connects > 1 {
			r.affected++
			took = append(took, st.ConnectedAt.Sub(start))
		}
		was, now := before[st.ID], after[st.ID]
		switch {
		case dead != "" && now == dead:
			r.onDeadBroker++
		case dead != "" && was != dead && (st.Connects > 1 || now != was):
			r.disturbed++ // its broker lives: it must never have been cut or moved
		case dead == "" && now != was:
			r.disturbed++ // the same brokers: every client must return to its own
		}
	}
	slices.Sort(took)
	if len(took) > 0 {
		r.p50, r.p99 = took[len(took)/2], took[len(took)*99/100]
	}

	// Sticky: connect a sample of the reconnected clients once more, from
	// the same addresses; each must reach the broker it reached in the
	// storm.
	set.Close()
	for _, b := range three {
		b.ResetRecords()
	}
	var sample []int
	for i := 0; i < set.Len() && len(sample) < 200; i++ {
		if set.Status(i).Connects > 1 {
			sample = append(sample, i)
		}
	}
	r.sample = len(sample)
	again, err := loadgen.Connect(ctx, loadgen.Options{Addr: p.addr, IDPrefix: "storm-" + c.name, KeepAlive: 60 * time.Second,
		Source: func(k int) net.IP { return source(sample[k]) }, Workers: 16, IDs: func(k int) string { return set.ID(sample[k]) }}, len(sample))
	if err != nil {
		return fail(fmt.Errorf("stickiness check: %w", err))
	}
	again.Close()
	check := brokerByClient(three, prefix)
	for _, i := range sample {
		if check[set.ID(i)] != after[set.ID(i)] {
			r.notSticky++
		}
	}
	return r
}

// brokerByClient maps each client ID with the prefix to the broker its
// latest connection reached (the health checks' clients are left out).
func brokerByClient(brokers []*broker.Broker, prefix string) map[string]string {
	type rec struct {
		broker string
		at     time.Time
	}
	latest := map[string]rec{}
	for _, b := range brokers {
		for _, c := range b.Connections() {
			if !strings.HasPrefix(c.ClientID, prefix) {
				continue
			}
			if r, ok := latest[c.ClientID]; !ok || c.At.After(r.at) {
				latest[c.ClientID] = rec{b.Name(), c.At}
			}
		}
	}
	out := make(map[string]string, len(latest))
	for id, r := range latest {
		out[id] = r.broker
	}
	return out
}

// restartBroker brings broker i back on its address after a storm.
func restartBroker(env *benchEnv, i int) {
	old := env.brokers[i]
	b, err := broker.Start(broker.Options{Name: old.Name(), Listen: old.Addr(), ProxyProtocol: broker.ProxyOptional, MaxRecords: 2_000_000})
	if err != nil {
		log.Fatalf("restarting broker %s: %v", old.Name(), err)
	}
	env.brokers[i] = b
}

// healthWatch samples how many brokers an Envoy contender reports healthy,
// every 50ms, and keeps the fewest: a live broker marked unhealthy under a
// storm's load moves its clients.
type healthWatch struct {
	done chan struct{}
	min  chan int64
}

func watchHealthy(p *proxy) *healthWatch {
	w := &healthWatch{done: make(chan struct{}), min: make(chan int64, 1)}
	go func() {
		least := int64(-1)
		for {
			if p.envoy != nil {
				if st, err := p.envoy.Stats(context.Background(), "cluster.brokers.membership_healthy"); err == nil {
					if v, ok := st["cluster.brokers.membership_healthy"]; ok && (least < 0 || v < least) {
						least = v
					}
				}
			}
			select {
			case <-w.done:
				w.min <- least
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	return w
}

func (w *healthWatch) stop() int64 {
	select {
	case <-w.done:
	default:
		close(w.done)
	}
	return <-w.min
}

// waitHealthy waits until an Envoy contender reports n healthy brokers;
// HAProxy starts with its servers up.
func waitHealthy(p *proxy, n int) error {
	if p.envoy == nil {
		return nil
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, err := p.envoy.Stats(context.Background(), "cluster.brokers.membership_healthy")
		if err == nil && st["cluster.brokers.membership_healthy"] == int64(n) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %d of %d brokers healthy after 30s (%v)", p.name, st["cluster.brokers.membership_healthy"], n, err)
		}
		time.Sleep(20 * time.Millisecond) // polling interval of a readiness check
	}
}

// stormSection renders the storm results.
func stormSection(env *benchEnv, rs []stormResult) string {
	var b strings.Builder
	fmt.Fprintf(&b, "## Reconnect storms\n\n`go run ./bench --only storms` (part of `make bench`). %d idle MQTT clients (keepalive 60 s) held through each proxy, in front of three brokers, each proxy with two threads (Envoy `--concurrency 2`, HAProxy `nbthread 2`) and broker health checks every second (1 s timeout, down after three failures, up after one success). Clients reconnect as devices do: at once, then after a backoff from 100 ms doubling to 5 s, with ±50%% jitter. Each client keeps its source address (127.0.0.2–250), so source-IP hashing (B) is sticky too.\n\n", env.stormClients)
	b.WriteString("- **broker dies**: the second broker closes every connection and refuses new ones; about a third of the clients reconnect at once, through a proxy that still hashes some of them to the dead broker until its health check notices.\n")
	b.WriteString("- **proxy restarts**: the proxy process is stopped and a new one started on the same port; every client reconnects at once.\n\n")
	b.WriteString("\"All back\" is the time from the event until every client has its CONNACK again; the percentiles are over the clients that were cut. \"On the dead broker\" and \"disturbed\" (clients of live brokers cut or moved; after a restart, clients not back on their own broker) must be 0. \"Not sticky\": a sample of the reconnected clients connects once more, and must reach the broker it reached in the storm. \"Fewest healthy\": the fewest brokers Envoy reported healthy during the storm (2 of 3 when one died): fewer means a live broker failed its health checks under the storm's load, and its clients moved.\n\n")
	b.WriteString("Health checks must survive a storm. In trial runs with a 500 ms probe timeout and brokers marked down after two failures, the rate-limited restart (the longest storm, with the most refused and retried connections) left live brokers too slow to answer: Envoy marked two of three unhealthy, moved 1,200 clients to the third, and 18 of 200 sampled clients were on another broker when they reconnected later. A dead broker refuses its probe at once whatever the timeout, so a generous timeout costs nothing in detection; the threshold does (three failures, three seconds here).\n\n")
	b.WriteString("| contender | event | clients cut | all back | p50 | p99 | failed attempts | refused by rate limit | on the dead broker | disturbed | not sticky | fewest healthy |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range rs {
		name := r.contender + ": " + r.title
		if r.err != "" {
			fmt.Fprintf(&b, "| %s | %s | failed: %s | | | | | | | | | |\n", name, r.event, r.err)
			continue
		}
		healthy := "-"
		if r.minHealthy >= 0 {
			healthy = fmt.Sprint(r.minHealthy)
		}
		fmt.Fprintf(&b, "| %s | %s | %d of %d | %.2f s | %.2f s | %.2f s | %d | %d | %d | %d | %d of %d | %s |\n", name, r.event, r.affected, r.clients,
			r.allBack.Seconds(), r.p50.Seconds(), r.p99.Seconds(), r.failedAttempts, r.rateLimited, r.onDeadBroker, r.disturbed, r.notSticky, r.sample, healthy)
	}
	return b.String()
}
