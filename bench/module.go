package main

import (
	"fmt"
	"log"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/mqtt-sticky/mqtt-sticky/internal/envoyproc"
)

// The module alone: bench/abidriver loads libmqtt_sticky.so and calls its
// hooks as Envoy does, from one or two worker threads, with a compute loop
// standing in for Envoy's own work on each connection. It isolates the
// module's CPU (inside the hooks, and on the Go runtime's threads) from
// everything else, which on a busy machine a whole-proxy run cannot.

// moduleEnvoyMicros is the driver's stand-in for Envoy's own work per
// connection: plain Envoy (B) spends about 180µs of CPU per setup here.
const moduleEnvoyMicros = 180

type driverRun struct {
	workers               int
	hooks, other          float64 // µs per connection
	p50, p99              float64 // µs per connection inside the hooks
	commits, waitingGauge int64
}

func buildDriver(env *benchEnv) (string, error) {
	root, err := envoyproc.RepoRoot()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(env.dir, "abidriver")
	out, err := exec.Command("gcc", "-O2", "-Wall", "-rdynamic", "-o", bin, filepath.Join(root, "bench", "abidriver", "driver.c"), "-ldl", "-lpthread").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("building bench/abidriver: %v\n%s", err, out)
	}
	return bin, nil
}

// runDriver runs the driver and parses its key=value line.
func runDriver(bin, module string, workers, perWorker int) (driverRun, error) {
	cmd := exec.Command(bin, module, strconv.Itoa(workers), strconv.Itoa(perWorker), strconv.Itoa(moduleEnvoyMicros))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return driverRun{}, fmt.Errorf("abidriver: %v: %s%s", err, out, stderr.String())
	}
	v := map[string]float64{}
	for _, f := range strings.Fields(string(out)) {
		k, val, _ := strings.Cut(f, "=")
		v[k], _ = strconv.ParseFloat(val, 64)
	}
	n := v["connections"]
	if n == 0 {
		return driverRun{}, fmt.Errorf("abidriver: no result in %q", out)
	}
	return driverRun{workers: workers, hooks: v["hooks_cpu_s"] / n * 1e6, other: v["other_cpu_s"] / n * 1e6,
		p50: v["hook_ns_p50"] / 1000, p99: v["hook_ns_p99"] / 1000,
		commits: int64(v["scheduler_commits"]), waitingGauge: int64(v["gauge_waiting"])}, nil
}

func moduleSection(env *benchEnv) (string, error) {
	bin, err := buildDriver(env)
	if err != nil {
		return "", err
	}
	module := filepath.Join(env.moduleDir, "libmqtt_sticky.so")
	perWorker := 20000
	if env.quick {
		perWorker = 5000
	}
	runs := map[int][]driverRun{}
	for rep := range env.reps {
		for _, w := range []int{1, 2} {
			log.Printf("module alone, rep %d/%d, %d workers", rep+1, env.reps, w)
			r, err := runDriver(bin, module, w, perWorker)
			if err != nil {
				return "", err
			}
			runs[w] = append(runs[w], r)
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "## The module alone\n\n`go run ./bench --only module` (part of `make bench`): bench/abidriver loads build/libmqtt_sticky.so as Envoy does and calls its hooks from one or two threads, in Envoy's order (filter_new, new_connection, one read holding a whole CONNECT, tcp_proxy's second pass over it, close, destroy), with stand-ins for Envoy's callbacks and a %dµs compute loop per connection standing in for Envoy's own work, %d connections per thread, %d repetitions (medians). It measures the module's CPU per connection, inside the hooks and on every other thread (the Go runtime's, the module's deadline thread), apart from Envoy.\n\n", moduleEnvoyMicros, perWorker, env.reps)
	b.WriteString("| worker threads | in the hooks, µs per connection | other threads, µs per connection | total | share of B's ~180µs | hook time p50 / p99, µs | scheduler commits | waiting gauge after |\n|---|---|---|---|---|---|---|---|\n")
	for _, w := range []int{1, 2} {
		var hooks, other, p50, p99 []float64
		for _, r := range runs[w] {
			hooks, other, p50, p99 = append(hooks, r.hooks), append(other, r.other), append(p50, r.p50), append(p99, r.p99)
		}
		h, o := summarize(hooks), summarize(other)
		last := runs[w][len(runs[w])-1]
		fmt.Fprintf(&b, "| %d | %s | %s | %.2f | %.1f%% | %.1f / %.1f | %d | %d |\n", w, f2(h), f2(o), h.median+o.median,
			100*(h.median+o.median)/moduleEnvoyMicros, summarize(p50).median, summarize(p99).median, last.commits, last.waitingGauge)
	}
	b.WriteString("\nThe driver's CONNECT is a plain MQTT 3.1.1 one, which the module routes in C without entering Go (filter/quick); a split or unusual CONNECT would enter Go once per read that carries it. No timer, goroutine or scheduler is made per connection (the CONNECT deadline is kept in C, scheduler commits stay 0 when every CONNECT arrives in time), and the waiting gauge is back to 0.\n")
	return b.String(), nil
}
