package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	ringhashv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/ring_hash/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/mqtt-sticky/mqtt-sticky/internal/envoyproc"
	"github.com/mqtt-sticky/mqtt-sticky/xds/model"
	"github.com/mqtt-sticky/mqtt-sticky/xds/translate"
)

// proxy is one contender in front of the brokers.
type proxy struct {
	name  string // A, B, C, D
	title string
	addr  string // where clients connect
	pid   int    // 0 when there is no proxy (direct)
	stop  func()
	tls   *tls.Config        // set for the TLS contenders: clients' TLS config
	envoy *envoyproc.Process // nil unless the contender is Envoy
}

// lbKind is the hash the Envoy contenders use.
type lbKind string

const (
	lbMaglev      lbKind = "maglev"
	lbRingConst   lbKind = "ring hash, constant points per host"
	lbRingDefault lbKind = "ring hash, Envoy defaults"
)

// envoyConfig returns a static bootstrap for Envoy in front of brokers:
// built by the control plane's own translator (so contender A runs exactly
// what mqtt-sticky serves), with the EDS cluster turned into a static one.
// withFilter=false gives contender B: plain tcp_proxy hashing on the
// client's source IP. Each mod changes the model before it is translated
// (the TLS contenders add the listener's tls), or the bootstrap after.
func envoyConfig(listenPort, adminPort int, brokers []string, lb lbKind, withFilter bool, mods ...envoyMod) ([]byte, error) {
	m := &model.Model{
		Listeners: []model.Listener{{Name: "mqtt", Address: "127.0.0.1", Port: listenPort}},
		Clusters:  []model.Cluster{{Name: "brokers", HealthCheck: model.HealthCheck{Type: model.HealthOff}}},
	}
	if lb != lbMaglev {
		m.Clusters[0].LBPolicy = model.RingHash
	}
	eps, err := model.ParseEndpoints(strings.Join(brokers, ","))
	if err != nil {
		return nil, err
	}
	m.Clusters[0].Endpoints = eps
	for _, mod := range mods {
		if mod.model != nil {
			mod.model(m)
		}
	}
	m.SetDefaults()
	res, err := translate.Translate(m, "bench")
	if err != nil {
		return nil, err
	}
	l := res.StaticListeners()[0]
	c := res.Clusters[0].(*clusterv3.Cluster)
	c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC}
	c.EdsClusterConfig = nil
	c.LoadAssignment = translate.BuildLoadAssignment(&m.Clusters[0])
	if lb == lbRingDefault {
		any, _ := anypb.New(&ringhashv3.RingHash{}) // minimum_ring_size 1024, split over the hosts
		c.LoadBalancingPolicy.Policies[0].TypedExtensionConfig.TypedConfig = any
	}
	if !withFilter {
		chain := l.FilterChains[0]
		chain.Filters = chain.Filters[1:] // tcp_proxy alone
		tcp := &tcpproxyv3.TcpProxy{}
		if err := chain.Filters[0].GetTypedConfig().UnmarshalTo(tcp); err != nil {
			return nil, err
		}
		tcp.MaxEarlyDataBytes = nil
		tcp.HashPolicy = []*typev3.HashPolicy{{PolicySpecifier: &typev3.HashPolicy_SourceIp_{SourceIp: &typev3.HashPolicy_SourceIp{}}}}
		any, _ := anypb.New(tcp)
		chain.Filters[0].ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: any}
	}
	b := &bootstrapv3.Bootstrap{
		Admin: &bootstrapv3.Admin{Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: "127.0.0.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(adminPort)}}}}},
		StaticResources: &bootstrapv3.Bootstrap_StaticResources{
			Listeners: []*listenerv3.Listener{l},
			Clusters:  []*clusterv3.Cluster{c},
		},
	}
	for _, s := range res.Secrets {
		b.StaticResources.Secrets = append(b.StaticResources.Secrets, s.(*tlsv3.Secret))
	}
	for _, mod := range mods {
		if mod.bootstrap != nil {
			mod.bootstrap(b)
		}
	}
	if err := b.ValidateAll(); err != nil {
		return nil, err
	}
	return protojson.Marshal(b)
}

// envoyMod changes an Envoy contender: its model before translation, its
// bootstrap after, or the module it loads.
type envoyMod struct {
	model     func(*model.Model)
	bootstrap func(*bootstrapv3.Bootstrap)
	moduleDir string
}

func modelMod(f func(*model.Model)) envoyMod { return envoyMod{model: f} }

func freePort() int {
	p, err := envoyproc.FreePort("127.0.0.1")
	if err != nil {
		panic(err)
	}
	return p
}

// startEnvoy runs Envoy with one worker thread, like HAProxy's one thread.
func startEnvoy(env *benchEnv, name, title string, brokers []string, lb lbKind, withFilter bool, mutate ...func(*model.Model)) (*proxy, error) {
	var mods []envoyMod
	for _, f := range mutate {
		mods = append(mods, modelMod(f))
	}
	return startEnvoyN(env, name, brokers, lb, withFilter, 1, mods...)
}

// startEnvoyN runs Envoy with the given number of worker threads, its
// model changed by mods.
func startEnvoyN(env *benchEnv, name string, brokers []string, lb lbKind, withFilter bool, workers int, mods ...envoyMod) (*proxy, error) {
	return startEnvoyOn(env, name, freePort(), brokers, lb, withFilter, workers, mods...)
}

// startEnvoyOn is startEnvoyN on a given listener port, so that a
// restarted Envoy takes its predecessor's clients.
func startEnvoyOn(env *benchEnv, name string, port int, brokers []string, lb lbKind, withFilter bool, workers int, mods ...envoyMod) (*proxy, error) {
	admin := freePort()
	cfg, err := envoyConfig(port, admin, brokers, lb, withFilter, mods...)
	if err != nil {
		return nil, err
	}
	path := filepath.Join(env.dir, fmt.Sprintf("envoy-%s-%d.json", name, port))
	if err := os.WriteFile(path, cfg, 0o644); err != nil {
		return nil, err
	}
	moduleDir := env.moduleDir
	for _, mod := range mods {
		if mod.moduleDir != "" {
			moduleDir = mod.moduleDir
		}
	}
	p, err := envoyproc.Start(envoyproc.Options{
		Binary:        env.envoyBin,
		ConfigPath:    path,
		AdminAddr:     fmt.Sprintf("127.0.0.1:%d", admin),
		ModuleDir:     moduleDir,
		LogPath:       strings.TrimSuffix(path, ".json") + ".log",
		LogLevel:      "warning",
		Concurrency:   workers,
		Env:           env.envoyEnv,
		DieWithParent: true,
	})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.WaitReady(ctx); err != nil {
		p.Stop(5 * time.Second)
		return nil, err
	}
	return &proxy{name: name, addr: fmt.Sprintf("127.0.0.1:%d", port), pid: p.Pid(), envoy: p,
		stop: func() { p.Stop(10 * time.Second) }}, nil
}

// haproxyConfig is HAProxy 2.6 hashing on the client ID. The client ID is
// taken from the CONNECT in a frontend rule and stored in a variable; the
// backend hashes the variable. (Writing the payload expression directly in
// `balance hash` looks equivalent but silently falls back to round robin
// on 2.6: naive=true writes that form, to show the stickiness check
// catching it.) bindOpts are appended to the bind line (TLS termination).
func haproxyConfig(port int, brokers []string, naive bool, bindOpts ...string) string {
	return haproxyConfigWith(port, brokers, naive, 1, false, bindOpts...)
}

// haproxyConfigWith is haproxyConfig with threads threads and, with check,
// health checks on the brokers: a TCP connect every second with a 1s
// timeout, down after three failures, up after one success, as the Envoy
// contenders' MQTT checks in the storms.
func haproxyConfigWith(port int, brokers []string, naive bool, threads int, check bool, bindOpts ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `global
  maxconn 9900
  nbthread %d
defaults
  mode tcp
  timeout connect 5s
  timeout client 1h
  timeout server 1h
frontend mqtt
  bind 127.0.0.1:%d%s
  tcp-request inspect-delay 10s
  tcp-request content reject unless { req.payload(0,0),mqtt_is_valid }
  tcp-request content set-var(sess.mqtt_client_id) req.payload(0,0),mqtt_field_value(connect,client_identifier)
  default_backend brokers
backend brokers
`, threads, port, strings.Join(append([]string{""}, bindOpts...), " "))
	if naive {
		b.WriteString("  balance hash req.payload(0,0),mqtt_field_value(connect,client_identifier)\n")
	} else {
		b.WriteString("  balance hash var(sess.mqtt_client_id)\n")
	}
	b.WriteString("  hash-type consistent\n")
	if check {
		b.WriteString("  timeout check 1s\n  default-server check inter 1s fall 3 rise 1\n")
	}
	for i, s := range brokers {
		fmt.Fprintf(&b, "  server b%d %s send-proxy-v2\n", i+1, s)
	}
	return b.String()
}

func startHAProxy(env *benchEnv, name, title string, brokers []string, naive bool, bindOpts ...string) (*proxy, error) {
	port := freePort()
	return startHAProxyOn(env, name, port, haproxyConfig(port, brokers, naive, bindOpts...))
}

// startHAProxyOn runs HAProxy with cfg, which listens on port.
func startHAProxyOn(env *benchEnv, name string, port int, cfg string) (*proxy, error) {
	path := filepath.Join(env.dir, fmt.Sprintf("haproxy-%s-%d.cfg", name, port))
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	logf, err := os.Create(strings.TrimSuffix(path, ".cfg") + ".log")
	if err != nil {
		return nil, err
	}
	cmd := exec.Command("haproxy", "-db", "-f", path)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start haproxy (apt-get install haproxy): %w", err)
	}
	logf.Close()
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	stop := func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			break
		}
		select {
		case <-done:
			log, _ := os.ReadFile(strings.TrimSuffix(path, ".cfg") + ".log")
			return nil, fmt.Errorf("haproxy exited: %s", log)
		default:
		}
		if time.Now().After(deadline) {
			stop()
			return nil, fmt.Errorf("haproxy not listening on %s", addr)
		}
		time.Sleep(5 * time.Millisecond) // polling interval of a readiness check
	}
	return &proxy{name: name, addr: addr, pid: cmd.Process.Pid, stop: stop}, nil
}
