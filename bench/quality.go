package main

import (
	"fmt"
	"math/rand/v2"

	"github.com/mqtt-sticky/mqtt-sticky/internal/broker"
)

// qualityRow is one policy at one broker count.
type qualityRow struct {
	policy      string
	n           int
	maxMean     float64 // busiest broker / mean, at n brokers
	movedAdd    float64 // fraction of IDs that moved when broker n+1 joined
	idealAdd    float64 // 1/(n+1)
	straysAdd   int     // IDs that moved between brokers that were there before
	movedRemove float64 // fraction that moved when broker n left
	idealRemove float64 // the removed broker's share
	straysRem   int     // IDs that moved although their broker stayed
}

// randomIDs returns n client IDs from a fixed seed, so every policy and
// every run routes the same IDs.
func randomIDs(n int) []string {
	r := rand.New(rand.NewPCG(1883, 8883))
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("dev-%016x", r.Uint64())
	}
	return ids
}

// routeAll connects every ID once through addr and returns the broker each
// reached, read from the brokers' own records.
func routeAll(addr string, brokers []*broker.Broker, ids []string) (map[string]string, error) {
	for _, b := range brokers {
		b.ResetRecords()
	}
	err := connectEach(addr, nil, len(ids), 64, func(i int) string { return ids[i] }, func(_ int, s *session) { s.close() })
	if err != nil {
		return nil, err
	}
	out := make(map[string]string, len(ids))
	for _, b := range brokers {
		for _, c := range b.Connections() {
			out[c.ClientID] = b.Name()
		}
	}
	if len(out) != len(ids) {
		return nil, fmt.Errorf("brokers recorded %d of %d client IDs", len(out), len(ids))
	}
	return out, nil
}

// quality measures one policy at n brokers: load spread, and how many IDs
// move when a broker joins and when one leaves. start runs the proxy in
// front of the given brokers; each host set gets a fresh proxy, which maps
// exactly as a live update does (the end-to-end tests check that).
func quality(policy string, start func([]string) (*proxy, error), all []*broker.Broker, n int, ids []string) (qualityRow, error) {
	row := qualityRow{policy: policy, n: n, idealAdd: 1 / float64(n+1)}
	route := func(k int) (map[string]string, error) {
		var addrs []string
		for _, b := range all[:k] {
			addrs = append(addrs, b.Addr())
		}
		p, err := start(addrs)
		if err != nil {
			return nil, err
		}
		defer p.stop()
		return routeAll(p.addr, all[:k], ids)
	}
	base, err := route(n)
	if err != nil {
		return row, err
	}
	counts := map[string]int{}
	for _, b := range base {
		counts[b]++
	}
	most := 0
	for _, c := range counts {
		most = max(most, c)
	}
	row.maxMean = float64(most) / (float64(len(ids)) / float64(n))

	added, err := route(n + 1)
	if err != nil {
		return row, err
	}
	joined := all[n].Name()
	moved := 0
	for id, b := range base {
		if added[id] != b {
			moved++
			if added[id] != joined {
				row.straysAdd++
			}
		}
	}
	row.movedAdd = float64(moved) / float64(len(ids))

	removed, err := route(n - 1)
	if err != nil {
		return row, err
	}
	left := all[n-1].Name()
	row.idealRemove = float64(counts[left]) / float64(len(ids))
	moved = 0
	for id, b := range base {
		if removed[id] != b {
			moved++
			if b != left {
				row.straysRem++
			}
		}
	}
	row.movedRemove = float64(moved) / float64(len(ids))
	return row, nil
}
