package tests

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mqtt-sticky/mqtt-sticky/contract"
	"github.com/mqtt-sticky/mqtt-sticky/filter/mqtt"
	"github.com/mqtt-sticky/mqtt-sticky/internal/procstat"
)

// partialConnect returns the first size-1 bytes of a valid MQTT 3.1.1
// CONNECT of exactly size bytes, fixed header included: an attacker's
// connection that holds as much of Envoy's memory as the filter allows
// and never completes.
func partialConnect(size int) []byte {
	// Fixed header 3 bytes (Remaining Length takes two), variable header
	// 10, client ID length 2: the client ID fills the rest.
	id := strings.Repeat("a", size-15)
	pkt := mqtt.AppendConnect(nil, &mqtt.ConnectPacket{Connect: mqtt.Connect{Level: mqtt.Level311, ClientID: id, CleanStart: true}})
	if len(pkt) != size {
		panic(fmt.Sprintf("partialConnect(%d): built %d bytes", size, len(pkt)))
	}
	return pkt[:size-1] // the last byte never comes
}

// setOverloadLimit sets the global downstream connection limit of
// envoy/static.yaml.
func setOverloadLimit(limit int) func(map[string]any) {
	return func(cfg map[string]any) {
		monitors := cfg["overload_manager"].(map[string]any)["resource_monitors"].([]any)
		monitors[0].(map[string]any)["typed_config"].(map[string]any)["max_active_downstream_connections"] = limit
	}
}

// rss is a process's resident memory in bytes.
func rss(t testing.TB, pid int) int64 {
	t.Helper()
	n, err := procstat.RSS(pid)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// perPartialConnect bounds what Envoy holds for one connection that sent
// max_connect_bytes of a CONNECT, beyond the bytes themselves: Envoy's
// buffer slices around them and the connection itself. Measured about
// 10 KB (this test logs it); the bound leaves room for allocator slack.
const perPartialConnect = 64 << 10

// The attack of issue 9, finding 6, through the real Envoy: twice as many
// connections as Envoy's global connection limit, each holding a CONNECT
// one byte short of max_connect_bytes. Envoy refuses those over the limit
// at accept, the filter holds the rest until connect_timeout_ms, and
// Envoy's memory grows by at most limit × (max_connect_bytes + a
// connection's overhead). Then the timeouts free every slot, and a real
// client connects.
func TestPreConnectMemoryIsBounded(t *testing.T) {
	const limit, attackers = 200, 400
	size := contract.DefaultMaxConnectBytes
	s := startStatic(t, startBrokers(t, 3), `{"connect_timeout_ms": 4000}`, setOverloadLimit(limit))
	pid := s.envoy.Pid()
	waitFor(t, 10*time.Second, "brokers healthy", func() bool {
		return envoyStats(t, s.envoy, "cluster.brokers.membership_healthy")["cluster.brokers.membership_healthy"] == 3
	})
	base := rss(t, pid)
	payload := partialConnect(size)

	ctx := context.Background()
	conns := make([]net.Conn, attackers)
	closedEarly := make([]bool, attackers)
	var wg sync.WaitGroup
	var mu sync.Mutex
	for i := range attackers {
		c, err := dialFrom(ctx, source(i), s.addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		conns[i] = c
		c.Write(payload) // a refused connection may already be closed
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			_, err := c.Read(make([]byte, 1))
			if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
				mu.Lock()
				closedEarly[i] = true // refused at once
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	refused := 0
	for _, early := range closedEarly {
		if early {
			refused++
		}
	}
	st := envoyStats(t, s.envoy, "")
	overflow := int64(0)
	for k, v := range st {
		if strings.HasSuffix(k, ".downstream_global_cx_overflow") {
			overflow += v
		}
	}
	waiting := st["mqtt_sticky.waiting_for_connect"]
	grown := rss(t, pid) - base
	t.Logf("%d attackers with %d-byte partial CONNECTs, limit %d: %d refused at once (downstream_global_cx_overflow %d), %d held (waiting_for_connect), Envoy RSS +%d KB (%d KB per held connection)",
		attackers, size-1, limit, refused, overflow, waiting, grown>>10, grown>>10/max(waiting, 1))
	if waiting > limit {
		t.Errorf("waiting_for_connect = %d, over the connection limit %d", waiting, limit)
	}
	if refused < attackers-limit || overflow < int64(attackers-limit) {
		t.Errorf("%d refused at once, overflow counter %d; want at least %d beyond the limit", refused, overflow, attackers-limit)
	}
	if bound := int64(limit) * int64(size+perPartialConnect); grown > bound {
		t.Errorf("Envoy RSS grew by %d KB, over the bound of %d connections × (%d + %d) bytes = %d KB", grown>>10, limit, size, perPartialConnect, bound>>10)
	}

	// connect_timeout_ms frees every held slot; then a real client gets in.
	waitFor(t, 15*time.Second, "every held connection times out", func() bool {
		return filterStats(t, s.envoy)["mqtt_sticky.waiting_for_connect"] == 0
	})
	if _, err := connectPaho(ctx, s.addr, source(1), "after-the-attack", 4); err != nil {
		t.Fatalf("a real client after the attack: %v", err)
	}
	checkFilterCounters(t, filterStats(t, s.envoy))
}

// checkFilterCounters checks that every connection the filter accepted
// ended in exactly one counter: routed by protocol version, or refused
// for one reason.
func checkFilterCounters(t testing.TB, st map[string]int64) {
	t.Helper()
	var routed, refused int64
	var parts []string
	for k, v := range st {
		name := strings.TrimPrefix(k, contract.MetricsNamespace+".")
		switch {
		case strings.HasPrefix(name, "connect_mqtt"):
			routed += v
		case strings.HasPrefix(name, "rejected_"), name == "timeout", name == "closed_before_connect":
			refused += v
		default:
			continue
		}
		if v != 0 {
			parts = append(parts, fmt.Sprintf("%s=%d", name, v))
		}
	}
	accepted := st[contract.MetricsNamespace+".accepted"]
	if waiting := st[contract.MetricsNamespace+".waiting_for_connect"]; routed+refused+waiting != accepted {
		t.Errorf("routed %d + refused %d + waiting %d != accepted %d (%s)", routed, refused, waiting, accepted, strings.Join(parts, " "))
	}
}

// A listener's connection_rate_limit refuses, at once and with a counter,
// the connections of a storm beyond its burst, before they reach
// mqtt_sticky; the ones it lets in are routed.
func TestConnectionRateLimitRefusesAStorm(t *testing.T) {
	const burst, storm = 20, 120
	brokers := startBrokers(t, 3)
	listenPort := freePort(t)
	cfg := fleetConfig(t, listenPort, brokers, healthOpts)
	raw, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	raw = []byte(strings.Replace(string(raw), "  access_log: true\n", fmt.Sprintf("  access_log: true\n  connection_rate_limit: {connections_per_second: 1, burst: %d}\n", burst), 1))
	if err := os.WriteFile(cfg, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	cp := startControlPlane(t, cfg, t.TempDir()+"/state.json")
	envoy := startXDSEnvoy(t, cp, "envoy-rate-limit", false)
	envoy.waitHosts(t, cp, brokers, 20*time.Second)
	addr := fmt.Sprintf("127.0.0.1:%d", listenPort)

	var mu sync.Mutex
	var ok, refused int
	var slowest time.Duration
	err = runParallel(storm, storm, func(i int) error {
		start := time.Now()
		_, err := connectPaho(context.Background(), addr, source(i), fmt.Sprintf("storm-%03d", i), 4)
		mu.Lock()
		defer mu.Unlock()
		if err == nil {
			ok++
			return nil
		}
		refused++
		slowest = max(slowest, time.Since(start))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	st := envoyStats(t, envoy.Process, "local_rate_limit.mqtt.")
	limited := st["local_rate_limit.mqtt.rate_limited"]
	t.Logf("storm of %d connections against burst %d at 1/s: %d connected, %d refused (slowest refusal %v), rate_limited %d",
		storm, burst, ok, refused, slowest.Round(time.Millisecond), limited)
	if ok < burst || ok > burst+3 || int64(refused) != limited {
		t.Errorf("%d connected, %d refused, rate_limited %d: want about %d connected and every refusal counted", ok, refused, limited, burst)
	}
	if slowest > 2*time.Second {
		t.Errorf("a refused client waited %v: refusals must be quick", slowest)
	}
	fst := filterStats(t, envoy.Process)
	if fst["mqtt_sticky.accepted"] != int64(ok) {
		t.Errorf("mqtt_sticky accepted %d connections; the rate limit should have kept the %d refused ones from it", fst["mqtt_sticky.accepted"], refused)
	}
	checkFilterCounters(t, fst)
}
