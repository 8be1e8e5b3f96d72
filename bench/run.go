package main

import (
	"crypto/tls"
	"fmt"
	"log"
	"time"
)

// perfResult holds one contender's figures.
type perfResult struct {
	name, title string
	sticky      string // what the stickiness check found
	broken      bool
	setupRate   stat // CONNECT/CONNACK handshakes per second
	cpuPer1000  stat // proxy CPU seconds per 1,000 handshakes
	cpuWorker   stat // of which Envoy's worker thread
	cpuOther    stat // of which every other thread (main, and Go runtime threads in A)
	connP50     stat // ms
	connP99     stat // ms
	msgRate     stat // messages per second
	msgP50      stat // ms
	msgP99      stat // ms
	memPerConn  stat // bytes
	rssAfter    int64
	err         string
}

func runPerf(env *benchEnv) []*perfResult {
	three := brokerAddrs(env.brokers[:3])
	type starter struct {
		name, title string
		start       func() (*proxy, error)
		hashes      string // "client ID", "source IP" or "" (direct)
	}
	starters := []starter{
		{"A", "Envoy 1.40 + mqtt_sticky filter, Maglev on client ID", func() (*proxy, error) {
			return startEnvoy(env, "A", "", three, lbMaglev, true)
		}, "client ID"},
		{"B", "Envoy 1.40 tcp_proxy, Maglev on source IP, no filter", func() (*proxy, error) {
			return startEnvoy(env, "B", "", three, lbMaglev, false)
		}, "source IP"},
		{"C", "HAProxy 2.6, consistent hash on client ID (variable)", func() (*proxy, error) {
			return startHAProxy(env, "C", "", three, false)
		}, "client ID"},
		{"C-naive", "HAProxy 2.6, payload expression directly in balance hash", func() (*proxy, error) {
			return startHAProxy(env, "C-naive", "", three, true)
		}, "client ID"},
		{"D", "direct to one broker (the floor)", func() (*proxy, error) {
			return &proxy{name: "D", addr: env.brokers[0].Addr(), stop: func() {}}, nil
		}, ""},
	}
	var results []*perfResult
	var live []*proxy
	var liveRes []*perfResult
	for _, s := range starters {
		r := &perfResult{name: s.name, title: s.title}
		results = append(results, r)
		p, err := s.start()
		if err != nil {
			r.err, r.broken = err.Error(), true
			continue
		}
		r.sticky, r.broken = proveSticky(env, p, s.hashes)
		log.Printf("%s: %s", s.name, r.sticky)
		if r.broken {
			p.stop()
			continue
		}
		live = append(live, p)
		liveRes = append(liveRes, r)
	}
	defer func() {
		for _, p := range live {
			p.stop()
		}
	}()

	// Interleave contenders within each repetition, so drift on the
	// machine affects all of them alike.
	measured := samples{}
	add := measured.add
	for rep := range env.reps {
		for i, p := range live {
			r := liveRes[i]
			if r.err != "" {
				continue
			}
			log.Printf("rep %d/%d: %s", rep+1, env.reps, p.name)
			prefix := fmt.Sprintf("%s-r%d", p.name, rep)
			rate, cpu, threads, err := setupRateThreads(p, env.workers, env.setupDur, prefix+"-rate")
			if err != nil {
				r.err = "setup rate: " + err.Error()
				continue
			}
			add(p.name, "rate", rate)
			if p.pid > 0 {
				add(p.name, "cpu", cpu)
				add(p.name, "worker", threads["worker"])
				add(p.name, "other", threads["other"])
			}
			lat, err := connectLatency(p.addr, env.connRate, env.latDur, prefix+"-lat")
			if err != nil {
				r.err = "connect latency: " + err.Error()
				continue
			}
			add(p.name, "c50", ms(percentile(lat, 50)))
			add(p.name, "c99", ms(percentile(lat, 99)))
			subID, pubID, err := sameBrokerPair(env, p, prefix)
			if err != nil {
				r.err = err.Error()
				continue
			}
			mr, err := publishThroughput(p.addr, subID, pubID, env.msgs, 64)
			if err != nil {
				r.err = "publish throughput: " + err.Error()
				continue
			}
			add(p.name, "msg", mr)
			ml, err := publishLatency(p.addr, subID+"-l", pubID+"-l", env.msgRate, env.latDur)
			if err != nil {
				r.err = "publish latency: " + err.Error()
				continue
			}
			add(p.name, "m50", ms(percentile(ml, 50)))
			add(p.name, "m99", ms(percentile(ml, 99)))
		}
	}
	// Memory: a fresh process per measurement, so allocator pools filled
	// by the setup-rate runs do not hide the cost of holding connections.
	memReps := min(env.reps, 3)
	for rep := range memReps {
		for _, s := range starters {
			r := resultOf(results, s.name)
			if r.broken || r.err != "" || s.hashes == "" {
				continue
			}
			log.Printf("memory %d/%d: %s with %d idle connections", rep+1, memReps, s.name, env.idle)
			per, after, err := heldMemory(s.start, nil, env.idle, fmt.Sprintf("%s-%d", s.name, rep))
			if err != nil {
				r.err = err.Error()
				continue
			}
			add(s.name, "mem", per)
			r.rssAfter = after
		}
	}
	for _, r := range liveRes {
		s := measured[r.name]
		r.setupRate, r.cpuPer1000 = summarize(s["rate"]), summarize(s["cpu"])
		r.cpuWorker, r.cpuOther = summarize(s["worker"]), summarize(s["other"])
		r.connP50, r.connP99 = summarize(s["c50"]), summarize(s["c99"])
		r.msgRate, r.msgP50, r.msgP99 = summarize(s["msg"]), summarize(s["m50"]), summarize(s["m99"])
		r.memPerConn = summarize(s["mem"])
	}
	return results
}

func resultOf(rs []*perfResult, name string) *perfResult {
	for _, r := range rs {
		if r.name == name {
			return r
		}
	}
	return nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// proveSticky connects one client ID ten times, from ten source addresses
// (or, for a contender hashing the source IP, from one), and reports
// whether every connection reached the same broker.
func proveSticky(env *benchEnv, p *proxy, hashes string) (string, bool) {
	if hashes == "" {
		return "direct connection, no hashing", false
	}
	id := "sticky-probe-" + p.name
	three := env.brokers[:3]
	seen := func(fixedSource bool) (map[string]int, error) {
		for _, b := range three {
			b.ResetRecords()
		}
		for i := range 10 {
			d := &dialer{n: uint32(i * 17), tls: p.tls}
			if fixedSource {
				d.n = 0
			}
			s, _, err := d.connect(p.addr, id)
			if err != nil {
				return nil, err
			}
			s.close()
		}
		got := map[string]int{}
		for _, b := range three {
			for _, c := range b.Connections() {
				if c.ClientID == id {
					got[b.Name()]++
				}
			}
		}
		return got, nil
	}
	byID, err := seen(false)
	if err != nil {
		return "stickiness check failed: " + err.Error(), true
	}
	if hashes == "source IP" {
		byIP, err := seen(true)
		if err != nil {
			return "stickiness check failed: " + err.Error(), true
		}
		if len(byIP) != 1 {
			return fmt.Sprintf("BROKEN: one source IP reached %d brokers %v", len(byIP), byIP), true
		}
		return fmt.Sprintf("sticky by source IP (10/10 from one IP on one broker); by client ID from 10 IPs: %d brokers %v", len(byID), byID), false
	}
	if len(byID) != 1 {
		return fmt.Sprintf("BROKEN: one client ID from 10 addresses reached %d brokers %v; not measured", len(byID), byID), true
	}
	return "sticky: one client ID from 10 source addresses, 10/10 on one broker", false
}

// sameBrokerPair finds a subscriber and a publisher ID the contender sends
// to the same broker.
func sameBrokerPair(env *benchEnv, p *proxy, prefix string) (string, string, error) {
	three := env.brokers[:3]
	where := func(id string) (string, error) {
		d := &dialer{}
		s, _, err := d.connect(p.addr, id)
		if err != nil {
			return "", err
		}
		s.close()
		for _, b := range three {
			for _, c := range b.Connections() {
				if c.ClientID == id {
					return b.Name(), nil
				}
			}
		}
		return "", fmt.Errorf("no broker recorded %s", id)
	}
	for _, b := range three {
		b.ResetRecords()
	}
	sub := prefix + "-sub"
	target, err := where(sub)
	if err != nil {
		return "", "", err
	}
	for i := range 200 {
		pub := fmt.Sprintf("%s-pub-%d", prefix, i)
		b, err := where(pub)
		if err != nil {
			return "", "", err
		}
		// Both must also land together for the -l pair used for latency.
		if b == target {
			bl, err := where(sub + "-l")
			if err != nil {
				return "", "", err
			}
			pl, err := where(pub + "-l")
			if err != nil {
				return "", "", err
			}
			if bl == pl {
				return sub, pub, nil
			}
		}
	}
	return "", "", fmt.Errorf("no publisher ID lands with the subscriber on %s", target)
}

func runQuality(env *benchEnv) []qualityRow {
	ids := randomIDs(env.qualityN)
	policies := []struct {
		name  string
		start func([]string) (*proxy, error)
	}{
		{"Envoy Maglev (mqtt-sticky default)", func(b []string) (*proxy, error) { return startEnvoy(env, "qm", "", b, lbMaglev, true) }},
		{"Envoy ring hash, 1024 points per host", func(b []string) (*proxy, error) { return startEnvoy(env, "qr", "", b, lbRingConst, true) }},
		{"Envoy ring hash, Envoy defaults", func(b []string) (*proxy, error) { return startEnvoy(env, "qd", "", b, lbRingDefault, true) }},
		{"HAProxy 2.6 consistent hash", func(b []string) (*proxy, error) { return startHAProxy(env, "qh", "", b, false) }},
	}
	var rows []qualityRow
	for _, n := range []int{3, 5, 10} {
		for _, pol := range policies {
			log.Printf("routing quality: %s, N=%d, %d IDs", pol.name, n, len(ids))
			row, err := quality(pol.name, pol.start, env.brokers, n, ids)
			if err != nil {
				log.Printf("  failed: %v", err)
				row.policy += " (failed: " + err.Error() + ")"
			}
			rows = append(rows, row)
		}
	}
	return rows
}

// samples collects each contender's measurements by name and kind, for
// the medians.
type samples map[string]map[string][]float64

func (s samples) add(name, key string, v float64) {
	if s[name] == nil {
		s[name] = map[string][]float64{}
	}
	s[name][key] = append(s[name][key], v)
}

// heldMemory starts a fresh proxy, warms its threads up (the first
// connections allocate per-thread state), holds n idle connections
// through it (over TLS with tlsConf), and stops it. It returns the
// resident memory per connection and the proxy's RSS while it held them.
func heldMemory(start func() (*proxy, error), tlsConf *tls.Config, n int, prefix string) (perConn float64, rss int64, err error) {
	p, err := start()
	if err != nil {
		return 0, 0, fmt.Errorf("idle memory: %w", err)
	}
	defer p.stop()
	p.tls = tlsConf
	if _, _, err := setupRate(p, 4, 200*time.Millisecond, prefix+"-w"); err != nil {
		return 0, 0, fmt.Errorf("idle memory warm-up: %w", err)
	}
	perConn, _, rss, err = idleMemory(p, n, prefix+"-m")
	if err != nil {
		return 0, 0, fmt.Errorf("idle memory: %w", err)
	}
	return perConn, rss, nil
}
