package main

import (
	"fmt"
	"log"
	"strings"
)

// The filter's cost at Envoy's default concurrency on this machine (two
// workers) as well as at one: contenders A and B, interleaved within each
// repetition, so drift on the machine affects both alike.

type concurrencyRow struct {
	workers          int
	rateA, rateB     stat
	cpuA, cpuB       stat // proxy CPU s per 1,000 setups
	otherA, otherB   stat // of which threads other than Envoy's workers
	switchA, switchB stat // context switches per setup, when perf is there
}

func runConcurrency(env *benchEnv) []concurrencyRow {
	three := brokerAddrs(env.brokers[:3])
	var rows []concurrencyRow
	for _, workers := range []int{1, 2} {
		a, err := startEnvoyN(env, fmt.Sprintf("cA%d", workers), three, lbMaglev, true, workers)
		if err != nil {
			log.Printf("concurrency %d: %v", workers, err)
			continue
		}
		b, err := startEnvoyN(env, fmt.Sprintf("cB%d", workers), three, lbMaglev, false, workers)
		if err != nil {
			a.stop()
			log.Printf("concurrency %d: %v", workers, err)
			continue
		}
		s := map[string][]float64{}
		for rep := range env.reps {
			for _, p := range []*proxy{a, b} {
				log.Printf("concurrency %d, rep %d/%d: %s", workers, rep+1, env.reps, p.name)
				rate, cpu, threads, err := setupRateThreads(p, env.workers, env.setupDur, fmt.Sprintf("%s-r%d", p.name, rep))
				if err != nil {
					log.Printf("  %v", err)
					continue
				}
				key := p.name[1:2] // A or B
				s["rate"+key] = append(s["rate"+key], rate)
				s["cpu"+key] = append(s["cpu"+key], cpu)
				s["other"+key] = append(s["other"+key], threads["other"])
				if v, ok := threads["context-switches"]; ok {
					s["cs"+key] = append(s["cs"+key], v)
				}
			}
		}
		a.stop()
		b.stop()
		rows = append(rows, concurrencyRow{workers: workers,
			rateA: summarize(s["rateA"]), rateB: summarize(s["rateB"]),
			cpuA: summarize(s["cpuA"]), cpuB: summarize(s["cpuB"]),
			otherA: summarize(s["otherA"]), otherB: summarize(s["otherB"]),
			switchA: summarize(s["csA"]), switchB: summarize(s["csB"])})
	}
	return rows
}

func concurrencySection(env *benchEnv, rows []concurrencyRow) string {
	var b strings.Builder
	fmt.Fprintf(&b, "## The filter's cost at one and two workers\n\n`go run ./bench --only concurrency` (part of `make bench`). Contender A (Envoy with mqtt_sticky) against B (the same Envoy, tcp_proxy alone) with `--concurrency 1` and `--concurrency 2` (Envoy's default on this 2-core machine), %d connectors doing CONNECT → CONNACK → close for %v per run, A and B interleaved, %d repetitions; medians with the range. The goal: A within 3%% of B at both.\n\n", env.workers, env.setupDur, env.reps)
	b.WriteString("| workers | setup rate A /s | setup rate B /s | A vs B | CPU s per 1,000, A | CPU s per 1,000, B | A vs B | of which non-worker threads, A | context switches per setup, A / B |\n|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range rows {
		cs := "-"
		if r.switchA.ok && r.switchB.ok {
			cs = fmt.Sprintf("%.2f / %.2f", r.switchA.median, r.switchB.median)
		}
		fmt.Fprintf(&b, "| %d | %s | %s | %s | %s | %s | %s | %s | %s |\n", r.workers, f0(r.rateA), f0(r.rateB), pct(r.rateA, r.rateB, -1),
			f3(r.cpuA), f3(r.cpuB), pct(r.cpuA, r.cpuB, 1), f3(r.otherA), cs)
	}
	b.WriteString("\n\"A vs B\" is A's setup rate below B's, and A's CPU per setup above B's. The load's CONNECTs are plain MQTT 3.1.1 ones, which the module routes in C without entering Go (filter/quick); the waiting gauge, the CONNECT deadline and routed connections stay in C too. What A adds beyond that is Envoy's own work for a second network filter: the dynamic-module filter object, the hashable filter state and tcp_proxy's early data. The next section measures the module alone.\n")
	return b.String()
}

// pct formats how much worse a is than b, in percent: sign -1 when lower
// is worse (rates), 1 when higher is worse (CPU).
func pct(a, b stat, sign float64) string {
	if !a.ok || !b.ok || b.median == 0 {
		return "-"
	}
	return fmt.Sprintf("%+.1f%%", sign*100*(a.median/b.median-1))
}
