package main

import (
	"context"
	"fmt"
	"log"
	"net"
	"strings"
	"sync"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	overloadv3 "github.com/envoyproxy/go-control-plane/envoy/config/overload/v3"
	downstreamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/resource_monitors/downstream_connections/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/mqtt-sticky/mqtt-sticky/contract"
	"github.com/mqtt-sticky/mqtt-sticky/filter/mqtt"
	"github.com/mqtt-sticky/mqtt-sticky/xds/model"
)

// Pre-CONNECT memory (issue 9, finding 6): many connections, each holding
// a CONNECT one byte short of the largest the filter accepts, and what
// Envoy's memory does, with the settings before and after the fix.

// overloadLimit adds the overload manager's global downstream connection
// limit, as envoy/bootstrap.yaml sets it.
func overloadLimit(limit uint64) envoyMod {
	return envoyMod{bootstrap: func(b *bootstrapv3.Bootstrap) {
		cfg, _ := anypb.New(&downstreamv3.DownstreamConnectionsConfig{MaxActiveDownstreamConnections: int64(limit)})
		b.OverloadManager = &overloadv3.OverloadManager{ResourceMonitors: []*overloadv3.ResourceMonitor{{
			Name:       "envoy.resource_monitors.global_downstream_max_connections",
			ConfigType: &overloadv3.ResourceMonitor_TypedConfig{TypedConfig: cfg},
		}}}
	}}
}

// partialConnectBytes returns the first size-1 bytes of a valid MQTT 3.1.1
// CONNECT of size bytes (size from 131 to 16386: two bytes of Remaining
// Length).
func partialConnectBytes(size int) []byte {
	id := strings.Repeat("a", size-15)
	pkt := mqtt.AppendConnect(nil, &mqtt.ConnectPacket{Connect: mqtt.Connect{Level: mqtt.Level311, ClientID: id, CleanStart: true}})
	if len(pkt) != size {
		// Remaining Length took three bytes: one less byte of client ID.
		pkt = mqtt.AppendConnect(nil, &mqtt.ConnectPacket{Connect: mqtt.Connect{Level: mqtt.Level311, ClientID: id[1:], CleanStart: true}})
	}
	return pkt[:len(pkt)-1]
}

type partialCase struct {
	name, what      string
	maxConnectBytes int
	mods            []envoyMod
}

type partialResult struct {
	c             partialCase
	base, peak    int64 // RSS, bytes
	allocated     int64 // growth of tcmalloc's allocated bytes
	held, refused int64
	err           string
}

func partialCases() []partialCase {
	before := modelMod(func(m *model.Model) {
		m.Listeners[0].Filter.MaxConnectBytes, m.Listeners[0].Filter.ConnectTimeoutMs = 65536, 10000
	})
	return []partialCase{
		{"before", "max_connect_bytes 65536, connect_timeout_ms 10000, no connection limit (main's parent commit)", 65536, []envoyMod{before}},
		{"after", fmt.Sprintf("defaults: max_connect_bytes %d, connect_timeout_ms %d, connection limit 50,000", contract.DefaultMaxConnectBytes, contract.DefaultConnectTimeoutMs),
			contract.DefaultMaxConnectBytes, []envoyMod{overloadLimit(50000)}},
		{"after, limit 1,000", "defaults, with the connection limit lowered to 1,000", contract.DefaultMaxConnectBytes, []envoyMod{overloadLimit(1000)}},
	}
}

func runPartial(env *benchEnv, c partialCase, n int) partialResult {
	r := partialResult{c: c}
	p, err := startEnvoyN(env, "partial", brokerAddrs(env.brokers[:3]), lbMaglev, true, 2, c.mods...)
	if err != nil {
		r.err = err.Error()
		return r
	}
	defer p.stop()
	// Warm up the workers, then let the allocator settle.
	setupRate(p, 4, 200*time.Millisecond, "pw")
	r.base = rssBytes(p.pid)
	m0, _ := envoyMemory(p)
	payload := partialConnectBytes(c.maxConnectBytes)
	conns := make([]net.Conn, n)
	var wg sync.WaitGroup
	d := &dialer{}
	for i := range n {
		c, err := d.dial(p.addr)
		if err != nil {
			r.err = err.Error()
			break
		}
		conns[i] = c
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.Write(payload)
		}()
	}
	wg.Wait()
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	// Envoy has read everything when the number of connections it holds
	// stops changing.
	ctx := context.Background()
	var last int64 = -1
	for range 100 {
		time.Sleep(50 * time.Millisecond) // polling interval of a readiness check
		st, _ := p.envoy.Stats(ctx, "mqtt_sticky.waiting_for_connect")
		if w := st["mqtt_sticky.waiting_for_connect"]; w == last && w > 0 {
			break
		} else {
			last = w
		}
	}
	r.peak = rssBytes(p.pid)
	m1, _ := envoyMemory(p)
	r.allocated = m1["allocated"] - m0["allocated"]
	st, _ := p.envoy.Stats(ctx, "")
	r.held = st["mqtt_sticky.waiting_for_connect"]
	for k, v := range st {
		if strings.HasSuffix(k, ".downstream_global_cx_overflow") {
			r.refused += v
		}
	}
	return r
}

func partialSection(env *benchEnv) (string, error) {
	n := env.partialConns
	var rs []partialResult
	for _, c := range partialCases() {
		log.Printf("pre-CONNECT memory: %s, %d partial CONNECTs", c.name, n)
		rs = append(rs, runPartial(env, c, n))
	}
	var b strings.Builder
	fmt.Fprintf(&b, "## Pre-CONNECT memory\n\n`go run ./bench --only partial --partial-connects %d` (part of `make bench`). %d connections opened at once, each sending a valid CONNECT one byte short of max_connect_bytes and then nothing (the attack of issue 9, finding 6), through Envoy (two workers) with each set of settings; Envoy's resident memory before and once it holds them all. Worst-case pre-CONNECT memory is the connection limit × (max_connect_bytes + Envoy's own per-connection overhead).\n\n", n, n)
	b.WriteString("| settings | | connections held | refused at accept | RSS before, MB | RSS with the attack, MB | growth, MB | per held connection, KB | tcmalloc allocated growth, MB |\n|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range rs {
		if r.err != "" {
			fmt.Fprintf(&b, "| %s | %s | failed: %s | | | | | | |\n", r.c.name, r.c.what, r.err)
			continue
		}
		grown := r.peak - r.base
		fmt.Fprintf(&b, "| %s | %s | %d | %d | %.0f | %.0f | %.0f | %.1f | %.0f |\n", r.c.name, r.c.what, r.held, r.refused,
			float64(r.base)/(1<<20), float64(r.peak)/(1<<20), float64(grown)/(1<<20), float64(grown)/float64(max(r.held, 1))/1024, float64(r.allocated)/(1<<20))
	}
	return b.String(), nil
}
