// Command bench measures mqtt-sticky against HAProxy 2.6, plain Envoy
// tcp_proxy and a direct connection, on one machine in one run, and writes
// docs/benchmarks.md. Run it with `make bench` (full) or `make bench-quick`.
//
// Every contender sits in front of the same brokers (embedded mochi-mqtt,
// accepting PROXY protocol) and is driven by the same load generator.
// Hashing contenders must first prove they are sticky; one that is not is
// reported as broken and not measured.
package main

import (
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/mqtt-sticky/mqtt-sticky/internal/broker"
	"github.com/mqtt-sticky/mqtt-sticky/internal/envoyproc"
)

type benchEnv struct {
	dir       string
	envoyBin  string
	moduleDir string
	quick     bool
	reps      int
	setupDur  time.Duration
	latDur    time.Duration
	workers   int
	connRate  int
	msgs      int
	msgRate   int
	idle      int
	qualityN  int
	brokers   []*broker.Broker
}

func main() {
	quick := flag.Bool("quick", false, "short runs and 5,000 IDs for routing quality (under 5 minutes)")
	out := flag.String("out", "docs/benchmarks.md", "report to write")
	moduleDir := flag.String("module-dir", "build", "directory holding libmqtt_sticky.so")
	soak := flag.Duration("soak", 0, "instead of the report: run connection setups through contender A (or B with --soak-b) for this long, for profiling")
	soakB := flag.Bool("soak-b", false, "with --soak, use contender B")
	tlsOnly := flag.Bool("tls-only", false, "measure only the TLS contenders (A-TLS, B-TLS, C-TLS)")
	flag.Parse()
	log.SetFlags(log.Ltime)

	env := &benchEnv{quick: *quick, reps: 7, setupDur: 8 * time.Second, latDur: 8 * time.Second,
		workers: 32, connRate: 200, msgs: 200_000, msgRate: 2000, idle: 9000, qualityN: 100_000}
	if env.quick {
		env.reps, env.setupDur, env.latDur, env.msgs, env.qualityN = 3, 2*time.Second, 2*time.Second, 50_000, 5_000
	}
	bin, err := envoyproc.FindBinary()
	if err != nil {
		log.Fatal(err)
	}
	env.envoyBin = bin
	env.moduleDir, _ = filepath.Abs(*moduleDir)
	if _, err := os.Stat(filepath.Join(env.moduleDir, "libmqtt_sticky.so")); err != nil {
		log.Fatalf("%s/libmqtt_sticky.so missing: run `make filter`", env.moduleDir)
	}
	if _, err := exec.LookPath("haproxy"); err != nil {
		log.Fatal("haproxy not found: apt-get install haproxy (HAProxy 2.6 from Debian)")
	}
	env.dir, err = os.MkdirTemp("", "mqtt-sticky-bench-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(env.dir)

	// Eleven brokers: the performance runs use three, routing quality up to
	// ten plus one joining.
	for i := range 11 {
		b, err := broker.Start(broker.Options{Name: fmt.Sprintf("b%d", i+1), Listen: fmt.Sprintf("127.0.1.%d:18831", i+1),
			ProxyProtocol: broker.ProxyOptional, MaxRecords: 2_000_000})
		if err != nil {
			log.Fatal(err)
		}
		defer b.Close()
		env.brokers = append(env.brokers, b)
	}
	if *soak > 0 {
		p, err := startEnvoy(env, "soak", "", brokerAddrs(env.brokers[:3]), lbMaglev, !*soakB)
		if err != nil {
			log.Fatal(err)
		}
		defer p.stop()
		log.Printf("soaking envoy pid %d for %v", p.pid, *soak)
		rate, cpu, err := setupRate(p.addr, p.pid, env.workers, *soak, "soak")
		log.Printf("rate %.0f/s, %.3f CPU s per 1000, err %v", rate, cpu, err)
		return
	}
	start := time.Now()
	rep := &report{env: env, started: start}
	if !*tlsOnly {
		rep.perf = runPerf(env)
	}
	rep.tls = runTLSPerf(env)
	if !*tlsOnly {
		rep.quality = runQuality(env)
		rep.goBench = runGoBenchmarks(env)
	}
	rep.took = time.Since(start)
	write := rep.write
	if *tlsOnly {
		write = rep.writeTLSOnly
	}
	if err := write(*out); err != nil {
		log.Fatal(err)
	}
	log.Printf("wrote %s in %v", *out, rep.took.Round(time.Second))
}

func brokerAddrs(bs []*broker.Broker) []string {
	var out []string
	for _, b := range bs {
		out = append(out, b.Addr())
	}
	return out
}

// runGoBenchmarks runs the hot-path testing.B benchmarks and summarises
// them with benchstat.
func runGoBenchmarks(env *benchEnv) string {
	count := "6"
	if env.quick {
		count = "3"
	}
	log.Printf("go test benchmarks (count %s)", count)
	cmd := exec.Command("go", "test", "-run", "^$", "-bench", ".", "-benchmem", "-count", count,
		"./filter/mqtt", "./filter", "./xds/translate")
	raw, err := cmd.Output()
	if err != nil {
		return fmt.Sprintf("go test -bench failed: %v\n%s", err, raw)
	}
	path := filepath.Join(env.dir, "hot-paths.txt")
	os.WriteFile(path, raw, 0o644)
	stat, err := exec.Command("go", "tool", "benchstat", "this-run="+path).CombinedOutput()
	if err != nil {
		return fmt.Sprintf("benchstat failed: %v\n%s", err, stat)
	}
	return strings.TrimSpace(string(stat))
}
