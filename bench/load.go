package main

import (
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/procfs"

	"github.com/mqtt-sticky/mqtt-sticky/filter/mqtt"
	"github.com/mqtt-sticky/mqtt-sticky/internal/procstat"
)

// setupRate runs workers that each connect through the proxy (with a TLS
// handshake first when p.tls is set), complete CONNECT/CONNACK and close,
// as fast as they can, for dur. It returns completed setups per second and
// the proxy's CPU seconds per 1,000 of them.
func setupRate(p *proxy, workers int, dur time.Duration, prefix string) (rate, cpuPer1000 float64, err error) {
	rate, cpuPer1000, _, err = setupRateThreads(p, workers, dur, prefix)
	return rate, cpuPer1000, err
}

// setupRateThreads is setupRate that also splits the proxy's CPU per 1,000
// handshakes by thread: "worker" for Envoy's worker threads (wrk:*),
// "other" for every other thread (Envoy's main thread and, with the
// module loaded, the Go runtime's threads).
func setupRateThreads(p *proxy, workers int, dur time.Duration, prefix string) (rate, cpuPer1000 float64, byThread map[string]float64, err error) {
	pid := p.pid
	var done, failed atomic.Int64
	var firstErr atomic.Value
	perf := startPerf(pid)
	cpu0 := cpuSeconds(pid)
	threads0 := threadCPU(pid)
	start := time.Now()
	deadline := start.Add(dur)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := &dialer{n: uint32(w * 7919), tls: p.tls}
			for i := 0; time.Now().Before(deadline); i++ {
				s, _, err := d.connect(p.addr, fmt.Sprintf("%s-%d-%d", prefix, w, i))
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
					continue
				}
				s.close()
				done.Add(1)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	cpu := cpuSeconds(pid) - cpu0
	threads1 := threadCPU(pid)
	counts := perf.stop()
	if f := failed.Load(); f > done.Load()/100 {
		return 0, 0, nil, fmt.Errorf("%d of %d connections failed: %v", f, f+done.Load(), firstErr.Load())
	}
	if done.Load() == 0 {
		return 0, 0, nil, fmt.Errorf("no connection completed in %v", dur)
	}
	rate = float64(done.Load()) / elapsed
	byThread = map[string]float64{}
	if pid > 0 && done.Load() > 0 {
		cpuPer1000 = cpu / float64(done.Load()) * 1000
		for k, v := range threads1 {
			byThread[k] = (v - threads0[k]) / float64(done.Load()) * 1000
		}
		for k, v := range counts {
			byThread[k] = v / float64(done.Load()) // per connection
		}
	}
	return rate, cpuPer1000, byThread, nil
}

// threadCPU sums CPU seconds over the process's threads, grouped into
// "worker" (Envoy's wrk:* threads) and "other".
func threadCPU(pid int) map[string]float64 {
	out := map[string]float64{}
	if pid <= 0 {
		return out
	}
	threads, err := procfs.AllThreads(pid)
	if err != nil {
		return out
	}
	for _, t := range threads {
		comm, err1 := t.Comm()
		stat, err2 := t.Stat()
		if err1 != nil || err2 != nil {
			continue // the thread exited
		}
		group := "other"
		if strings.HasPrefix(comm, "wrk:") {
			group = "worker"
		}
		out[group] += stat.CPUTime()
	}
	return out
}

// connectLatency opens connections at a fixed rate for dur and returns the
// CONNECT-to-CONNACK time of each.
func connectLatency(addr string, perSecond int, dur time.Duration, prefix string) ([]time.Duration, error) {
	interval := time.Second / time.Duration(perSecond)
	n := int(dur / interval)
	out := make([]time.Duration, n)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for i := range n {
		<-tick.C
		wg.Add(1)
		dd := &dialer{n: uint32(i)}
		go func() {
			defer wg.Done()
			s, took, err := dd.connect(addr, fmt.Sprintf("%s-%d", prefix, i))
			if err != nil {
				errs <- err
				return
			}
			out[i] = took
			s.close()
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return nil, err
	}
	return out, nil
}

// pubSub connects a subscriber and a publisher (on the same broker, which
// the caller arranges through the client IDs) and subscribes. Both connect
// from the address sameBrokerPair tried them from, so that a contender
// hashing the source address puts them where it did then.
func pubSub(addr, subID, pubID, topic string) (sub, pub *session, err error) {
	sub, _, err = (&dialer{}).connect(addr, subID)
	if err != nil {
		return nil, nil, err
	}
	if err := sub.subscribe(topic); err != nil {
		sub.close()
		return nil, nil, err
	}
	pub, _, err = (&dialer{}).connect(addr, pubID)
	if err != nil {
		sub.close()
		return nil, nil, err
	}
	return sub, pub, nil
}

// publishThroughput sends n QoS 0 messages of size bytes as fast as the
// connection takes them and returns messages received per second.
func publishThroughput(addr, subID, pubID string, n, size int) (float64, error) {
	topic := "bench/throughput/" + subID
	sub, pub, err := pubSub(addr, subID, pubID, topic)
	if err != nil {
		return 0, err
	}
	defer sub.close()
	defer pub.close()
	got := make(chan error, 1)
	start := time.Now()
	go func() {
		sub.conn.SetReadDeadline(time.Now().Add(60 * time.Second))
		for i := 0; i < n; i++ {
			if _, err := sub.readPublish(); err != nil {
				got <- fmt.Errorf("after %d of %d messages: %w", i, n, err)
				return
			}
		}
		got <- nil
	}()
	payload := make([]byte, size)
	var batch []byte
	for i := 0; i < n; i++ {
		batch = mqtt.AppendPublish(batch, mqtt.Level311, topic, payload)
		if len(batch) > 32<<10 || i == n-1 {
			if _, err := pub.conn.Write(batch); err != nil {
				return 0, err
			}
			batch = batch[:0]
		}
	}
	if err := <-got; err != nil {
		return 0, err
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

// publishLatency publishes at a fixed rate, each payload carrying its send
// time, and returns each message's publish-to-receive time.
func publishLatency(addr, subID, pubID string, perSecond int, dur time.Duration) ([]time.Duration, error) {
	topic := "bench/latency/" + subID
	sub, pub, err := pubSub(addr, subID, pubID, topic)
	if err != nil {
		return nil, err
	}
	defer sub.close()
	defer pub.close()
	n := int(dur.Seconds() * float64(perSecond))
	base := time.Now()
	out := make([]time.Duration, 0, n)
	got := make(chan error, 1)
	go func() {
		sub.conn.SetReadDeadline(time.Now().Add(dur + 30*time.Second))
		for range n {
			p, err := sub.readPublish()
			if err != nil || len(p) < 8 {
				got <- fmt.Errorf("after %d messages: %v", len(out), err)
				return
			}
			sent := time.Duration(binary.BigEndian.Uint64(p))
			out = append(out, time.Since(base)-sent)
		}
		got <- nil
	}()
	tick := time.NewTicker(time.Second / time.Duration(perSecond))
	defer tick.Stop()
	payload := make([]byte, 64)
	var pkt []byte
	for range n {
		<-tick.C
		binary.BigEndian.PutUint64(payload, uint64(time.Since(base)))
		pkt = mqtt.AppendPublish(pkt[:0], mqtt.Level311, topic, payload)
		if _, err := pub.conn.Write(pkt); err != nil {
			return nil, err
		}
	}
	if err := <-got; err != nil {
		return nil, err
	}
	return out, nil
}

// idleMemory opens n connections through the proxy, each after a completed
// CONNECT, keeps them open and idle, and returns the proxy's resident
// memory growth per connection. Each held function runs while the
// connections are open, to take more measurements.
func idleMemory(p *proxy, n int, prefix string, held ...func()) (perConn float64, base, after int64, err error) {
	base = rssBytes(p.pid)
	sessions := make([]*session, n)
	err = connectEach(p.addr, p.tls, n, 64, func(i int) string { return fmt.Sprintf("%s-%d", prefix, i) },
		func(i int, s *session) { sessions[i] = s })
	defer func() {
		for _, s := range sessions {
			if s != nil {
				s.close()
			}
		}
	}()
	if err != nil {
		return 0, 0, 0, err
	}
	after = rssBytes(p.pid)
	for _, f := range held {
		f()
	}
	return float64(after-base) / float64(n), base, after, nil
}

// connectEach connects n clients through addr (over TLS when tlsConf is
// set) with workers in parallel; client i uses the ID idFor(i), and
// got(i, session) receives its session once CONNACK is in. It stops at the
// first error.
func connectEach(addr string, tlsConf *tls.Config, n, workers int, idFor func(int) string, got func(int, *session)) error {
	var next atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := &dialer{n: uint32(w * 977), tls: tlsConf}
			for firstErr.Load() == nil {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				s, _, err := d.connect(addr, idFor(i))
				if err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				got(i, s)
			}
		}()
	}
	wg.Wait()
	if e := firstErr.Load(); e != nil {
		return e.(error)
	}
	return nil
}

// cpuSeconds is the process's user+system CPU time, 0 without a process.
func cpuSeconds(pid int) float64 {
	if pid <= 0 {
		return 0
	}
	s, _ := procstat.CPUSeconds(pid)
	return s
}

// rssBytes is the process's resident set size, 0 when it has gone.
func rssBytes(pid int) int64 {
	n, _ := procstat.RSS(pid)
	return n
}

// percentile returns the p-th percentile (0-100) of ds.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(float64(len(s)-1) * p / 100)
	return s[i]
}

// stat is a median with its spread over repetitions.
type stat struct {
	median, min, max float64
	ok               bool
}

func summarize(xs []float64) stat {
	if len(xs) == 0 {
		return stat{}
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return stat{median: m, min: s[0], max: s[len(s)-1], ok: true}
}
