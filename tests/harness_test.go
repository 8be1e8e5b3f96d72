// Package tests holds the end-to-end tests: the real Envoy binary with the
// mqtt_sticky module loaded, real MQTT brokers that require PROXY protocol,
// and real MQTT clients, all on loopback. Envoy must be installed (`make
// envoy`); without it the tests fail, they never skip.
package tests

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	paho3 "github.com/eclipse/paho.mqtt.golang"
	"go.yaml.in/yaml/v3"

	"github.com/mqtt-sticky/mqtt-sticky/filter/mqtt"
	"github.com/mqtt-sticky/mqtt-sticky/internal/broker"
	"github.com/mqtt-sticky/mqtt-sticky/internal/envoyproc"
)

// moduleDir holds libmqtt_sticky.so, built from this checkout by TestMain.
var moduleDir string

func TestMain(m *testing.M) {
	dir, err := buildModule()
	if err != nil {
		fmt.Fprintln(os.Stderr, "building the module:", err)
		os.Exit(1)
	}
	moduleDir = dir
	cli, err := buildCLI()
	if err != nil {
		fmt.Fprintln(os.Stderr, "building mqtt-sticky:", err)
		os.Exit(1)
	}
	cliPath = cli
	os.Exit(m.Run())
}

// buildCLI builds the mqtt-sticky command from the current sources.
func buildCLI() (string, error) {
	root, err := envoyproc.RepoRoot()
	if err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp("", "mqtt-sticky-cli-")
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, "mqtt-sticky")
	cmd := exec.Command("go", "build", "-o", path, "./cmd/mqtt-sticky")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("%v\n%s", err, out)
	}
	return path, nil
}

// buildModule builds the dynamic module from the current sources, so the
// tests never run a stale build/libmqtt_sticky.so. MQTT_STICKY_MODULE_DIR
// points at a prebuilt one instead.
func buildModule(tags ...string) (string, error) {
	if d := os.Getenv("MQTT_STICKY_MODULE_DIR"); d != "" && len(tags) == 0 {
		return d, nil
	}
	root, err := envoyproc.RepoRoot()
	if err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp("", "mqtt-sticky-module-")
	if err != nil {
		return "", err
	}
	tags = append([]string{"mqtt_sticky_module"}, tags...)
	args := []string{"build", "-buildmode=c-shared", "-tags", strings.Join(tags, ","), "-o", filepath.Join(dir, "libmqtt_sticky.so"), "./filter/module"}
	cmd := exec.Command("go", args...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("%v\n%s", err, out)
	}
	return dir, nil
}

// envoyBinary returns the Envoy binary or fails the test: a missing Envoy
// is an error here, never a reason to skip.
func envoyBinary(t testing.TB) string {
	t.Helper()
	bin, err := envoyproc.FindBinary()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// brokerNet is the loopback /24 the tests' brokers listen in: 127.0.1 by
// default, 127.0.N with MQTT_STICKY_TEST_NET=N, so that two checkouts can
// run their end-to-end tests on one machine at the same time.
func brokerNet() string {
	if n, err := strconv.Atoi(os.Getenv("MQTT_STICKY_TEST_NET")); err == nil && n > 1 && n < 255 {
		return fmt.Sprintf("127.0.%d", n)
	}
	return "127.0.1"
}

// brokerAddr is the fixed address of the test's broker i (from 1), and
// peerAddr the address its peers link to.
func brokerAddr(i int) string { return fmt.Sprintf("%s.%d:18831", brokerNet(), i) }
func peerAddr(i int) string   { return fmt.Sprintf("%s.%d:28831", brokerNet(), i) }

// startBrokers starts n brokers that require a PROXY header, broker i on
// brokerAddr(i). Fixed addresses make the hash ring the same on every
// run, so the measured fractions of moved clients are reproducible.
func startBrokers(t testing.TB, n int) []*broker.Broker {
	t.Helper()
	return startBrokerSet(t, n, false)
}

// startBrokerSet is startBrokers; with clustered set, the brokers also
// link to each other on peerAddr(i) and forward publishes, and it
// returns once every link is up.
func startBrokerSet(t testing.TB, n int, clustered bool) []*broker.Broker {
	t.Helper()
	return startBrokersWith(t, n, clustered, false)
}

// startStrictBrokers starts n brokers like startBrokers that also refuse a
// PROXY LOCAL header, as RabbitMQ 3.10 does, and serve EMQX's availability
// check and evacuation switch on httpAddr(i): the brokers the control
// plane's tests run against.
func startStrictBrokers(t testing.TB, n int) []*broker.Broker {
	t.Helper()
	return startBrokersWith(t, n, false, true)
}

// httpAddr is the address of broker i's HTTP endpoints: the same port on
// every broker's address, as a cluster's http health check needs.
func httpAddr(i int) string { return fmt.Sprintf("%s.%d:%d", brokerNet(), i, brokerHTTPPort) }

const brokerHTTPPort = 18083

// strictBroker starts one broker like startStrictBrokers does, named name,
// on addr:18831 with its HTTP endpoints on addr:18083.
func strictBroker(t testing.TB, name, ip string) *broker.Broker {
	t.Helper()
	b, err := broker.Start(broker.Options{Name: name, Listen: ip + ":18831", ProxyProtocol: broker.ProxyRequired,
		Logger: testLogger(t), RejectLocal: true, HTTPListen: fmt.Sprintf("%s:%d", ip, brokerHTTPPort)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// startBrokersWith is startBrokerSet; strict brokers are as
// startStrictBrokers describes.
func startBrokersWith(t testing.TB, n int, clustered, strict bool) []*broker.Broker {
	t.Helper()
	var peers []string
	for i := range n {
		peers = append(peers, peerAddr(i+1))
	}
	var bs []*broker.Broker
	for i := range n {
		opts := broker.Options{
			Name:          fmt.Sprintf("b%d", i+1),
			Listen:        brokerAddr(i + 1),
			ProxyProtocol: broker.ProxyRequired,
			Logger:        testLogger(t),
		}
		if strict {
			opts.RejectLocal, opts.HTTPListen = true, httpAddr(i+1)
		}
		if clustered {
			opts.ClusterListen, opts.Peers = peers[i], peers
		}
		b, err := broker.Start(opts)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		bs = append(bs, b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, b := range bs {
		if err := b.WaitPeers(ctx); err != nil {
			t.Fatal(err)
		}
	}
	return bs
}

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("MQTT_STICKY_TEST_VERBOSE") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return nil
}

// staticStack is Envoy running envoy/static.yaml, with its ports, broker
// endpoints and filter config rewritten for the test.
type staticStack struct {
	envoy   *envoyproc.Process
	addr    string // Envoy's MQTT listener
	brokers []*broker.Broker
}

// startStatic starts an Envoy with envoy/static.yaml in front of brokers.
// The filter config is replaced by filterJSON when it is not empty.
func startStatic(t *testing.T, brokers []*broker.Broker, filterJSON string, mutate ...func(map[string]any)) *staticStack {
	t.Helper()
	return startStaticWith(t, moduleDir, brokers, filterJSON, mutate...)
}

// startStaticWith is startStatic with the module loaded from modDir.
func startStaticWith(t *testing.T, modDir string, brokers []*broker.Broker, filterJSON string, mutate ...func(map[string]any)) *staticStack {
	t.Helper()
	path, listenPort, adminPort := renderStatic(t, brokers, filterJSON, mutate...)
	p := startEnvoy(t, envoyproc.Options{
		ConfigPath: path,
		AdminAddr:  fmt.Sprintf("127.0.0.1:%d", adminPort),
		LogPath:    filepath.Join(filepath.Dir(path), "envoy.log"),
		ModuleDir:  modDir,
	})
	return &staticStack{envoy: p, addr: fmt.Sprintf("127.0.0.1:%d", listenPort), brokers: brokers}
}

// staticConfig is envoy/static.yaml, decoded.
func staticConfig(t *testing.T) map[string]any {
	t.Helper()
	root, err := envoyproc.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(root, "envoy", "static.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := yaml.Unmarshal(raw, &cfg); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// renderStatic writes envoy/static.yaml with free loopback ports, the given
// brokers as endpoints and, when not empty, filterJSON as the filter config.
func renderStatic(t *testing.T, brokers []*broker.Broker, filterJSON string, mutate ...func(map[string]any)) (path string, listenPort, adminPort int) {
	t.Helper()
	cfg := staticConfig(t)
	listenPort = freePort(t)
	adminPort = freePort(t)

	set(t, cfg, adminPort, "admin", "address", "socket_address", "port_value")
	listener := get(t, cfg, "static_resources", "listeners", 0)
	// The plaintext listener only: the TLS listener needs certificates,
	// which withStaticTLSListener (tls_harness_test.go) provides.
	set(t, cfg, []any{listener}, "static_resources", "listeners")
	set(t, listener, "127.0.0.1", "address", "socket_address", "address")
	set(t, listener, listenPort, "address", "socket_address", "port_value")
	if filterJSON != "" {
		set(t, listener, filterJSON, "filter_chains", 0, "filters", 0, "typed_config", "filter_config", "value")
	}
	var endpoints []any
	for _, b := range brokers {
		host, port := splitHostPort(t, b.Addr())
		endpoints = append(endpoints, map[string]any{"endpoint": map[string]any{"address": map[string]any{
			"socket_address": map[string]any{"address": host, "port_value": port}}}})
	}
	if len(endpoints) > 0 {
		set(t, cfg, endpoints, "static_resources", "clusters", 0, "load_assignment", "endpoints", 0, "lb_endpoints")
	}
	for _, m := range mutate {
		m(cfg)
	}
	path = filepath.Join(t.TempDir(), "envoy.yaml")
	out, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, out, 0o644); err != nil {
		t.Fatal(err)
	}
	return path, listenPort, adminPort
}

// startEnvoy runs Envoy with the module and waits until it is ready.
func startEnvoy(t testing.TB, opts envoyproc.Options) *envoyproc.Process {
	t.Helper()
	opts.Binary = envoyBinary(t)
	if opts.ModuleDir == "" {
		opts.ModuleDir = moduleDir
	}
	if opts.Concurrency == 0 {
		opts.Concurrency = 2
	}
	p, err := envoyproc.Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Stop(10 * time.Second); err != nil {
			t.Error(err)
		}
		if t.Failed() {
			t.Logf("envoy log (%s):\n%s", opts.LogPath, p.LogTail(60))
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	return p
}

func freePort(t testing.TB) int {
	t.Helper()
	p, err := envoyproc.FreePort("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func splitHostPort(t testing.TB, addr string) (string, int) {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		t.Fatal(err)
	}
	return host, p
}

// get walks a decoded YAML document by map keys and list indexes.
func get(t testing.TB, v any, path ...any) any {
	t.Helper()
	for _, k := range path {
		switch k := k.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				t.Fatalf("yaml path %v: %q is not in a map", path, k)
			}
			v = m[k]
		case int:
			l, ok := v.([]any)
			if !ok || k >= len(l) {
				t.Fatalf("yaml path %v: no index %d", path, k)
			}
			v = l[k]
		}
	}
	return v
}

func set(t testing.TB, v any, value any, path ...any) {
	t.Helper()
	parent := get(t, v, path[:len(path)-1]...)
	switch k := path[len(path)-1].(type) {
	case string:
		parent.(map[string]any)[k] = value
	case int:
		parent.([]any)[k] = value
	}
}

// stats returns the mqtt_sticky.* counters and gauges.
func (s *staticStack) stats(t testing.TB) map[string]int64 {
	t.Helper()
	return filterStats(t, s.envoy)
}

func filterStats(t testing.TB, p *envoyproc.Process) map[string]int64 {
	t.Helper()
	return envoyStats(t, p, "mqtt_sticky.")
}

// envoyStats returns an Envoy's counters and gauges whose names start with
// prefix.
func envoyStats(t testing.TB, p *envoyproc.Process, prefix string) map[string]int64 {
	t.Helper()
	st, err := p.Stats(context.Background(), prefix)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// waitFor polls cond until it holds, and fails the test if it does not
// within the given time.
func waitFor(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for backoff := 5 * time.Millisecond; !cond(); backoff = min(backoff*2, 200*time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, within)
		}
		time.Sleep(backoff)
	}
}

// source returns the loopback address 127.0.0.n, standing for client n's IP.
func source(n int) net.IP { return net.IPv4(127, 0, 0, byte(2+n%250)) }

// dialFrom opens a TCP connection to addr from the given source IP.
func dialFrom(ctx context.Context, src net.IP, addr string) (net.Conn, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: src}, Timeout: 5 * time.Second}
	return d.DialContext(ctx, "tcp", addr)
}

// attempt is one client connection: who connected, from where.
type attempt struct {
	clientID string
	local    string // the client's address as Envoy saw it
	version  int
}

// connectPaho connects with a real client library, MQTT 3.1.1 (paho.mqtt.golang)
// or 5.0 (paho.golang), from src, waits for CONNACK, then disconnects.
func connectPaho(ctx context.Context, addr string, src net.IP, clientID string, version int) (attempt, error) {
	if version == 5 {
		return connectPaho5(ctx, addr, src, clientID)
	}
	var local string
	opts := paho3.NewClientOptions().
		AddBroker("tcp://" + addr).
		SetClientID(clientID).
		SetProtocolVersion(4).
		SetCleanSession(true).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetConnectTimeout(5 * time.Second).
		SetCustomOpenConnectionFn(func(uri *url.URL, _ paho3.ClientOptions) (net.Conn, error) {
			c, err := dialFrom(ctx, src, uri.Host)
			if err == nil {
				local = c.LocalAddr().String()
			}
			return c, err
		})
	c := paho3.NewClient(opts)
	tok := c.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		return attempt{}, fmt.Errorf("client %s: no CONNACK within 10s", clientID)
	}
	if err := tok.Error(); err != nil {
		return attempt{}, fmt.Errorf("client %s: %w", clientID, err)
	}
	c.Disconnect(0)
	return attempt{clientID: clientID, local: local, version: 4}, nil
}

func connectPaho5(ctx context.Context, addr string, src net.IP, clientID string) (attempt, error) {
	conn, err := dialFrom(ctx, src, addr)
	if err != nil {
		return attempt{}, err
	}
	c := paho.NewClient(paho.ClientConfig{ClientID: clientID, Conn: conn})
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ack, err := c.Connect(cctx, &paho.Connect{ClientID: clientID, KeepAlive: 30, CleanStart: true})
	if err != nil {
		conn.Close()
		return attempt{}, fmt.Errorf("client %s: %w", clientID, err)
	}
	if ack.ReasonCode != 0 {
		conn.Close()
		return attempt{}, fmt.Errorf("client %s: CONNACK reason %#x", clientID, ack.ReasonCode)
	}
	local := conn.LocalAddr().String()
	_ = c.Disconnect(&paho.Disconnect{ReasonCode: 0})
	return attempt{clientID: clientID, local: local, version: 5}, nil
}

// runParallel runs fn for 0..n-1 on workers goroutines and returns the
// first error.
func runParallel(n, workers int, fn func(i int) error) error {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
		next  = make(chan int)
	)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := fn(i); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	return first
}

// brokerOf maps "clientID|remote" to the broker that recorded it.
func brokerOf(brokers []*broker.Broker) map[string]string {
	m := map[string]string{}
	for _, b := range brokers {
		for _, c := range b.Connections() {
			m[c.ClientID+"|"+c.Remote] = c.Broker
		}
	}
	return m
}

// landedOn reports the broker each client ID's latest connection reached.
func landedOn(brokers []*broker.Broker) map[string]string {
	type rec struct {
		broker string
		at     time.Time
	}
	latest := map[string]rec{}
	for _, b := range brokers {
		for _, c := range b.Connections() {
			if r, ok := latest[c.ClientID]; !ok || c.At.After(r.at) {
				latest[c.ClientID] = rec{c.Broker, c.At}
			}
		}
	}
	m := map[string]string{}
	for id, r := range latest {
		m[id] = r.broker
	}
	return m
}

// rawConnect builds a CONNECT with the repository's encoder.
func rawConnect(level mqtt.Level, clientID string) []byte {
	return mqtt.AppendConnect(nil, &mqtt.ConnectPacket{Connect: mqtt.Connect{Level: level, ClientID: clientID, CleanStart: true, KeepAlive: 30}})
}

// readPacket reads one MQTT packet: its first byte and its body.
func readPacket(r *bufio.Reader) (byte, []byte, error) { return mqtt.ReadPacket(r) }

// expectClosed reads until the peer closes, failing on data or timeout.
func expectClosed(t testing.TB, c net.Conn, within time.Duration) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(within))
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if n > 0 {
		t.Fatalf("expected the connection to close, got % x", buf[:n])
	}
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("connection still open after %v", within)
	}
	if err == nil {
		t.Fatal("read returned no data and no error")
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }
