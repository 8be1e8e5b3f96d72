// Command bench measures mqtt-sticky against HAProxy 2.6, plain Envoy
// tcp_proxy and a direct connection, on one machine in one run, and writes
// docs/benchmarks.md. Run it with `make bench` (full) or `make bench-quick`.
//
// Every contender sits in front of the same brokers (embedded mochi-mqtt,
// accepting PROXY protocol) and is driven by the same load generator.
// Hashing contenders must first prove they are sticky; one that is not is
// reported as broken and not measured.
//
// The report is made of sections (sections.go); --only runs some of them
// and replaces only those in the report.
package main

import (
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/mqtt-sticky/mqtt-sticky/internal/broker"
	"github.com/mqtt-sticky/mqtt-sticky/internal/envoyproc"
)

type benchEnv struct {
	dir          string
	envoyBin     string
	moduleDir    string
	quick        bool
	reps         int
	setupDur     time.Duration
	latDur       time.Duration
	workers      int
	connRate     int
	msgs         int
	msgRate      int
	idle         int
	qualityN     int
	stormClients int
	stormRate    uint32
	partialConns int
	brokers      []*broker.Broker
	envoyEnv     []string // extra environment for Envoy (and the module's Go runtime)
}

// allSections are what a plain `go run ./bench` (make bench) runs.
var allSections = []string{"main", "concurrency", "module", "memory", "partial", "storms"}

func main() {
	quick := flag.Bool("quick", false, "short runs and fewer clients (under 10 minutes)")
	out := flag.String("out", "docs/benchmarks.md", "report to write; sections not run are kept")
	moduleDir := flag.String("module-dir", "build", "directory holding libmqtt_sticky.so")
	only := flag.String("only", strings.Join(allSections, ","), "comma-separated sections to run: "+strings.Join(allSections, ", "))
	insert := flag.String("insert", "", "NAME=FILE[,NAME=FILE]: put a markdown fragment (a test's report) into the report as section NAME, and run nothing")
	stormClients := flag.Int("storm-clients", 8000, "clients held through each proxy in the storms (quick: 1500)")
	partialConns := flag.Int("partial-connects", 3000, "connections holding a partial CONNECT in the pre-CONNECT memory measurement")
	profileLoad := flag.Duration("profile-load", 0, "instead of the report: run connection setups through contender A (or B with --profile-b) for this long, for profiling")
	profileB := flag.Bool("profile-b", false, "with --profile-load, use contender B")
	concurrency := flag.Int("concurrency", 1, "with --profile-load, Envoy's worker threads")
	envoyEnv := flag.String("envoy-env", "", "extra environment for the Envoys, e.g. GOMAXPROCS=3 (comma-separated)")
	reps := flag.Int("reps", 0, "repetitions of each measurement (default 7, quick 3)")
	tlsOnly := flag.Bool("tls-only", false, "measure only the TLS contenders (A-TLS, B-TLS, C-TLS) and write them alone to --out")
	flag.Parse()
	log.SetFlags(log.Ltime)

	if *insert != "" {
		if err := insertSections(*out, *insert); err != nil {
			log.Fatal(err)
		}
		return
	}
	env := &benchEnv{quick: *quick, reps: 7, setupDur: 8 * time.Second, latDur: 8 * time.Second,
		workers: 32, connRate: 200, msgs: 200_000, msgRate: 2000, idle: 9000, qualityN: 100_000,
		stormClients: *stormClients, stormRate: 2000, partialConns: *partialConns}
	if env.quick {
		env.reps, env.setupDur, env.latDur, env.msgs, env.qualityN = 3, 2*time.Second, 2*time.Second, 50_000, 5_000
		env.stormClients, env.stormRate = min(env.stormClients, 1500), 500
	}
	if *reps > 0 {
		env.reps = *reps
	}
	if *envoyEnv != "" {
		env.envoyEnv = strings.Split(*envoyEnv, ",")
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
	// ten plus one joining. MQTT_STICKY_TEST_NET=N moves them from 127.0.1.x
	// to 127.0.N.x, as it does the tests' brokers.
	net := "127.0.1"
	if n, err := strconv.Atoi(os.Getenv("MQTT_STICKY_TEST_NET")); err == nil && n > 1 && n < 255 {
		net = fmt.Sprintf("127.0.%d", n)
	}
	for i := range 11 {
		b, err := broker.Start(broker.Options{Name: fmt.Sprintf("b%d", i+1), Listen: fmt.Sprintf("%s.%d:18831", net, i+1),
			ProxyProtocol: broker.ProxyOptional, MaxRecords: 2_000_000})
		if err != nil {
			log.Fatal(err)
		}
		defer func() { b.Close() }()
		env.brokers = append(env.brokers, b)
	}
	if *profileLoad > 0 {
		runProfileLoad(env, *profileLoad, !*profileB, *concurrency)
		return
	}
	var run []string
	for _, s := range strings.Split(*only, ",") {
		if s = strings.TrimSpace(s); !slices.Contains(allSections, s) {
			log.Fatalf("--only %q: sections are %s", s, strings.Join(allSections, ", "))
		}
		run = append(run, s)
	}
	start := time.Now()
	if *tlsOnly {
		rep := &report{env: env, started: start}
		rep.tls = runTLSPerf(env)
		rep.took = time.Since(start)
		if err := rep.writeTLSOnly(*out); err != nil {
			log.Fatal(err)
		}
		return
	}
	sections := map[string]string{}
	for _, name := range run {
		log.Printf("section %s", name)
		text, err := runSection(env, name, *out)
		if err != nil {
			log.Fatalf("section %s: %v", name, err)
		}
		if name != "main" {
			text += fmt.Sprintf("\n_Written by `%s` on %s; the machine and versions are in the first section._\n",
				commandFor(name, env), time.Now().UTC().Format("2006-01-02 15:04 MST"))
		}
		sections[name] = text
	}
	if err := writeSections(*out, sections); err != nil {
		log.Fatal(err)
	}
	log.Printf("wrote %s (%s) in %v", *out, strings.Join(run, ", "), time.Since(start).Round(time.Second))
}

// runSection runs one section of the report and returns its markdown.
func runSection(env *benchEnv, name, out string) (string, error) {
	switch name {
	case "main":
		rep := &report{env: env, started: time.Now()}
		rep.perf = runPerf(env)
		rep.tls = runTLSPerf(env)
		rep.quality = runQuality(env)
		rep.goBench = runGoBenchmarks(env)
		rep.took = time.Since(rep.started)
		return rep.render(out)
	case "concurrency":
		return concurrencySection(env, runConcurrency(env)), nil
	case "module":
		return moduleSection(env)
	case "memory":
		return memorySection(env)
	case "partial":
		return partialSection(env)
	case "storms":
		return stormSection(env, runStorms(env)), nil
	}
	return "", fmt.Errorf("unknown section %q", name)
}

// commandFor is the command that reruns a section.
func commandFor(name string, env *benchEnv) string {
	quick := ""
	if env.quick {
		quick = " --quick"
	}
	return fmt.Sprintf("go run ./bench%s --only %s", quick, name)
}

// insertSections puts test reports into the report: NAME=FILE pairs.
func insertSections(out, spec string) error {
	sections := map[string]string{}
	for _, pair := range strings.Split(spec, ",") {
		name, file, ok := strings.Cut(pair, "=")
		if !ok {
			return fmt.Errorf("--insert %q: want NAME=FILE", pair)
		}
		text, err := os.ReadFile(file)
		if err != nil {
			return err
		}
		sections[name] = string(text)
	}
	return writeSections(out, sections)
}

func runProfileLoad(env *benchEnv, d time.Duration, withFilter bool, workers int) {
	p, err := startEnvoyN(env, "profile", brokerAddrs(env.brokers[:3]), lbMaglev, withFilter, workers)
	if err != nil {
		log.Fatal(err)
	}
	defer p.stop()
	log.Printf("loading envoy pid %d (admin %s) for %v", p.pid, p.envoy.AdminAddr(), d)
	rate, cpu, threads, err := setupRateThreads(p, env.workers, d, "profile")
	log.Printf("rate %.0f/s, %.3f CPU s per 1000 (worker %.3f, other %.3f), %.2f context switches per connection, err %v",
		rate, cpu, threads["worker"], threads["other"], threads["context-switches"], err)
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
