package tests

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	paho3 "github.com/eclipse/paho.mqtt.golang"
	"go.yaml.in/yaml/v3"

	"github.com/mqtt-sticky/mqtt-sticky/filter/mqtt"
	"github.com/mqtt-sticky/mqtt-sticky/internal/envoyproc"
	"github.com/mqtt-sticky/mqtt-sticky/xds/control"
)

// rateInterval stands for Grafana's $__rate_interval: at least four of
// the test's one-second scrapes.
const rateInterval = "5s"

// Every query of the Grafana dashboard (deploy/grafana/*.json) returns
// data from a real Prometheus (Debian's prometheus package) that scrapes a
// real Envoy and the control plane with deploy/prometheus/prometheus.yaml's
// jobs, while clients connect: MQTT 3.1, 3.1.1 and 5.0 clients are routed,
// some stay connected, a non-MQTT client is refused, and the API is used.
func TestDashboardQueriesReturnData(t *testing.T) {
	root, err := envoyproc.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	queries := dashboardQueries(t, root)

	brokers := startBrokers(t, 3)
	listenPort := freePort(t)
	cp := startControlPlane(t, fleetConfig(t, listenPort, brokers, healthOpts), filepath.Join(t.TempDir(), "state.json"))
	envoy := startXDSEnvoy(t, cp, "envoy-prometheus", false)
	envoy.waitHosts(t, cp, brokers, 20*time.Second)
	addr := fmt.Sprintf("127.0.0.1:%d", listenPort)

	prom := startPrometheus(t, filepath.Join(root, "deploy", "prometheus", "prometheus.yaml"), map[string]string{
		"mqtt-sticky-envoy":         envoy.AdminAddr(),
		"mqtt-sticky-control-plane": cp.apiAddr,
	})

	// Clients: some stay connected, and traffic goes on until the queries
	// are done, so that every rate has something to measure.
	for i := range 6 {
		holdConnection(t, addr, fmt.Sprintf("held-%d", i))
	}
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		dashboardTraffic(ctx, t, addr)
	}()
	defer func() { stop(); wg.Wait() }()
	if _, err := cp.client.Status(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := cp.client.AddEndpoint(ctx, "brokers", toAPI(brokers[0])[0], control.AnyVersion); err == nil {
		t.Fatal("adding an existing endpoint was accepted") // a 409, counted by route and code
	}

	waitFor(t, 30*time.Second, "Prometheus scraping Envoy and the control plane", func() bool {
		res, err := prom.query(`sum(up{job=~"mqtt-sticky-envoy|mqtt-sticky-control-plane"})`)
		return err == nil && len(res) == 1 && res[0].value() == 2
	})

	// Poll until every query has returned at least one sample that is a
	// number: a rate needs two scrapes in its window, and each query is
	// evaluated when its data can exist.
	pending := map[string]string{} // expr as sent -> last answer
	for _, q := range queries {
		pending[q] = "not run"
	}
	deadline := time.Now().Add(45 * time.Second)
	for len(pending) > 0 && time.Now().Before(deadline) {
		for q := range pending {
			res, err := prom.query(q)
			switch {
			case err != nil:
				pending[q] = err.Error()
			case len(res) == 0:
				pending[q] = "empty result"
			case !res.hasNumber():
				pending[q] = fmt.Sprintf("only NaN: %v", res)
			default:
				delete(pending, q)
				t.Logf("%-100s %v", q, res)
			}
		}
		if len(pending) > 0 {
			time.Sleep(time.Second) // one scrape interval
		}
	}
	for q, why := range pending {
		t.Errorf("dashboard query returns no data: %s: %s", q, why)
	}
	t.Logf("%d dashboard queries checked against Prometheus at %s", len(queries), prom.base)
}

// dashboardQueries returns every query of every panel of
// deploy/grafana/*.json, with the dashboard's variables filled in. A
// variable the test does not know fails it.
func dashboardQueries(t *testing.T, root string) []string {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(root, "deploy", "grafana", "*.json"))
	if len(files) == 0 {
		t.Fatal("no deploy/grafana/*.json")
	}
	type panel struct {
		Title   string `json:"title"`
		Targets []struct {
			Expr string `json:"expr"`
		} `json:"targets"`
		Panels []json.RawMessage `json:"panels"`
	}
	var queries []string
	var walk func(raw []json.RawMessage)
	walk = func(raw []json.RawMessage) {
		for _, r := range raw {
			var p panel
			if err := json.Unmarshal(r, &p); err != nil {
				t.Fatal(err)
			}
			for _, target := range p.Targets {
				q := strings.ReplaceAll(target.Expr, "$__rate_interval", rateInterval)
				if grafanaVariable.MatchString(q) {
					t.Fatalf("panel %q: query %q uses a variable this test does not fill in", p.Title, target.Expr)
				}
				queries = append(queries, q)
			}
			walk(p.Panels)
		}
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var d struct {
			Panels []json.RawMessage `json:"panels"`
		}
		if err := json.Unmarshal(data, &d); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		walk(d.Panels)
	}
	if len(queries) == 0 {
		t.Fatal("the dashboards have no queries")
	}
	return queries
}

// grafanaVariable matches Grafana's variable syntax ($name, ${name},
// [[name]]); $1 in label_replace is not one.
var grafanaVariable = regexp.MustCompile(`\$[A-Za-z_]\w*|\$\{[^}]+\}|\[\[[^\]]+\]\]`)

// holdConnection connects a client that stays connected until the test
// ends.
func holdConnection(t *testing.T, addr, id string) {
	t.Helper()
	c := paho3.NewClient(paho3.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(id).
		SetAutoReconnect(false).SetConnectRetry(false).SetKeepAlive(30 * time.Second))
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %s: %v", id, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(0) })
}

// dashboardTraffic connects clients until ctx ends: MQTT 3.1.1 and 5.0
// with paho, MQTT 3.1 as raw bytes, and now and then a client that sends
// something else, which the filter refuses.
func dashboardTraffic(ctx context.Context, t *testing.T, addr string) {
	for i := 0; ctx.Err() == nil; i++ {
		id := fmt.Sprintf("traffic-%d", i%50)
		var err error
		switch i % 4 {
		case 0:
			_, err = connectPaho(ctx, addr, source(i), id, 4)
		case 1:
			_, err = connectPaho(ctx, addr, source(i), id, 5)
		case 2:
			err = connectRaw31(ctx, addr, id)
		case 3:
			err = sendNotMQTT(ctx, addr)
		}
		if err != nil && ctx.Err() == nil {
			t.Errorf("traffic: %v", err)
			return
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// connectRaw31 sends an MQTT 3.1 CONNECT and reads the answer.
func connectRaw31(ctx context.Context, addr, id string) error {
	c, err := dialFrom(ctx, source(7), addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.Write(rawConnect(mqtt.Level31, id)); err != nil {
		return err
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if typ, _, err := readPacket(bufio.NewReader(c)); err != nil || typ != 0x20 {
		return fmt.Errorf("MQTT 3.1 client %s: CONNACK %#x, %v", id, typ, err)
	}
	return nil
}

// sendNotMQTT sends an HTTP request, which the filter must refuse.
func sendNotMQTT(ctx context.Context, addr string) error {
	c, err := dialFrom(ctx, source(8), addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 16)); n > 0 || err == nil {
		return fmt.Errorf("a non-MQTT client got %d bytes and no close", n)
	}
	return nil
}

// prometheus is a Prometheus server the test runs.
type prometheus struct{ base string }

// startPrometheus checks the scrape config with promtool, then runs
// Prometheus on loopback with its jobs pointed at the given targets
// (static instead of DNS discovery), scraping every second.
func startPrometheus(t *testing.T, configPath string, targets map[string]string) *prometheus {
	t.Helper()
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Fatalf("prometheus not found (%v): install Debian's prometheus package (apt-get install prometheus)", err)
	}
	if out, err := exec.Command(filepath.Join(filepath.Dir(bin), "promtool"), "check", "config", configPath).CombinedOutput(); err != nil {
		t.Fatalf("promtool check config %s: %v\n%s", configPath, err, out)
	}
	raw, err := os.ReadFile(configPath)
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := yaml.Unmarshal(raw, &cfg); err != nil {
		t.Fatal(err)
	}
	cfg["global"] = map[string]any{"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
	jobs, _ := cfg["scrape_configs"].([]any)
	for _, j := range jobs {
		job := j.(map[string]any)
		name, _ := job["job_name"].(string)
		target, ok := targets[name]
		if !ok {
			t.Fatalf("scrape job %s: no test target for it", name)
		}
		delete(targets, name)
		delete(job, "dns_sd_configs")
		job["static_configs"] = []any{map[string]any{"targets": []any{target}}}
	}
	for name := range targets {
		t.Fatalf("%s has no scrape job %s", configPath, name)
	}
	dir := t.TempDir()
	out, _ := yaml.Marshal(cfg)
	path := filepath.Join(dir, "prometheus.yaml")
	if err := os.WriteFile(path, out, 0o644); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	logPath := filepath.Join(dir, "prometheus.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(bin, "--config.file="+path, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), "--log.level=warn")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			log, _ := os.ReadFile(logPath)
			t.Logf("prometheus log:\n%s", lastLines(string(log), 30))
		}
	})
	p := &prometheus{base: fmt.Sprintf("http://127.0.0.1:%d", port)}
	waitFor(t, 30*time.Second, "Prometheus ready", func() bool {
		select {
		case <-exited:
			log, _ := os.ReadFile(logPath)
			t.Fatalf("prometheus exited:\n%s", log)
		default:
		}
		resp, err := http.Get(p.base + "/-/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	t.Logf("prometheus %s with %s", p.base, path)
	return p
}

// sample is one series of a query's answer.
type sample struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"`
}

func (s sample) value() float64 {
	str, _ := s.Value[1].(string)
	v, err := strconv.ParseFloat(str, 64)
	if err != nil {
		return math.NaN()
	}
	return v
}

func (s sample) String() string { return fmt.Sprintf("%v=%v", s.Metric, s.Value[1]) }

type samples []sample

func (ss samples) hasNumber() bool {
	for _, s := range ss {
		if !math.IsNaN(s.value()) {
			return true
		}
	}
	return false
}

// query runs an instant query and returns its vector (a scalar answer
// is one sample without labels).
func (p *prometheus) query(q string) (samples, error) {
	resp, err := http.Get(p.base + "/api/v1/query?query=" + url.QueryEscape(q))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var body struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string          `json:"resultType"`
			Result     json.RawMessage `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return nil, err
	}
	if body.Status != "success" {
		return nil, fmt.Errorf("query %s: %s", q, body.Error)
	}
	switch body.Data.ResultType {
	case "vector":
		var out samples
		err := json.Unmarshal(body.Data.Result, &out)
		return out, err
	case "scalar":
		var v [2]any
		err := json.Unmarshal(body.Data.Result, &v)
		return samples{{Value: v}}, err
	}
	return nil, fmt.Errorf("query %s: result type %s", q, body.Data.ResultType)
}
