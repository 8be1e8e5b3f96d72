package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/mqtt-sticky/mqtt-sticky/api"
	"github.com/mqtt-sticky/mqtt-sticky/internal/broker"
	"github.com/mqtt-sticky/mqtt-sticky/internal/envoyproc"
	"github.com/mqtt-sticky/mqtt-sticky/xds/model"
)

// The addresses envoy/bootstrap.yaml expects: run uses the bootstrap file
// as it is, so these are fixed.
const (
	runXDS   = "127.0.0.1:18000"
	runAdmin = "127.0.0.1:9901"
)

type runOptions struct {
	brokers    string // existing brokers; empty starts three embedded ones
	proxy      string
	listenPort int
	apiAddr    string
	envoyBin   string
	moduleDir  string
	bootstrap  string
	workDir    string
	brokerPort int
	// health is the cluster's health check type: mqtt, http or emqx. With
	// http or emqx the embedded brokers move to 127.0.0.11-13, so each
	// serves its availability check on the same port (18083).
	health string
	// dns, when set, is the name the cluster's endpoints are discovered
	// from (SRV when it starts with "_", else A records on dnsPort);
	// dnsResolver is the DNS server. Without one, and with embedded
	// brokers, run serves the name itself with dnsmasq (rundns.go).
	dns         string
	dnsResolver string
	dnsPort     int
	tlsDir      string // tls.go
	tlsPort     int
}

func runAll(args []string, stdout, stderr io.Writer) error {
	var o runOptions
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.brokers, "brokers", "", "comma-separated host:port of existing brokers (e.g. EMQX nodes) instead of three embedded ones; IP addresses")
	fs.StringVar(&o.proxy, "proxy-protocol", "v2", "PROXY protocol towards the brokers: v2, v1 or off (embedded brokers require v1 or v2)")
	fs.IntVar(&o.listenPort, "port", 1883, "port MQTT clients connect to")
	fs.StringVar(&o.apiAddr, "api", model.DefaultAPIListen, "management API address")
	fs.StringVar(&o.envoyBin, "envoy", "", "Envoy binary (default: $ENVOY_BIN, else the one in .venv)")
	fs.StringVar(&o.moduleDir, "module-dir", "build", "directory holding libmqtt_sticky.so")
	fs.StringVar(&o.bootstrap, "bootstrap", "envoy/bootstrap.yaml", "Envoy bootstrap")
	fs.StringVar(&o.workDir, "dir", "build/run", "where logs and state go; emptied at start if an earlier run created it, refused if it holds anything else")
	fs.IntVar(&o.brokerPort, "broker-port", 18831, "first port of the embedded brokers (three ports from here)")
	fs.StringVar(&o.health, "health-check", "mqtt", "health check: mqtt (a CONNECT on the MQTT port), http or emqx (EMQX's availability check on port 18083; embedded brokers then listen on 127.0.0.11-13)")
	fs.StringVar(&o.dns, "dns", "", "discover the brokers from this DNS name: SRV records when it starts with '_' (e.g. _mqtt._tcp.brokers.mqtt-sticky.local), else A records on --dns-port")
	fs.StringVar(&o.dnsResolver, "dns-resolver", "", "DNS server IP:PORT for --dns; without it, embedded brokers are served by a local dnsmasq from "+dnsDirName+"/ in --dir")
	fs.IntVar(&o.dnsPort, "dns-port", 1883, "broker port for --dns with A records")
	fs.StringVar(&o.tlsDir, "tls-dir", "", "also serve mutual TLS on --tls-port with server.crt, server.key and ca.crt from this directory (`make tls-example` makes them)")
	fs.IntVar(&o.tlsPort, "tls-port", 8883, "port of the TLS listener, with --tls-dir")
	if rest, err := parse(fs, args); err != nil {
		return err
	} else if len(rest) > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, rest[0])
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return run(ctx, o, stdout)
}

// run starts the brokers, the control plane and Envoy, prints where
// everything is, and stops them all when ctx ends or one of them fails.
func run(ctx context.Context, o runOptions, out io.Writer) error {
	existing, err := o.check()
	if err != nil {
		return err
	}
	if err := prepareWorkDir(o.workDir); err != nil {
		return err
	}
	brokers, err := startEmbeddedBrokers(o, existing, out)
	if err != nil {
		return err
	}
	defer brokers.close()
	if o.dns != "" && o.dnsResolver == "" && existing == nil {
		dns, err := startRunDNS(ctx, o, brokers.endpoints)
		if err != nil {
			return err
		}
		defer dns.stop()
		o.dnsResolver = dns.Addr
		brokers.dnsLine = fmt.Sprintf("dnsmasq on %s serves SRV %s from %s: edit it to add or remove brokers", dns.Addr, o.dns, dns.RecordsPath())
	}
	cp, err := startControlPlane(ctx, o, brokers.endpoints)
	if err != nil {
		return err
	}
	defer cp.stop()
	envoy, err := startEnvoy(o)
	if err != nil {
		return err
	}
	defer envoy.Stop(10 * time.Second)
	healthy, err := waitEnvoyReady(ctx, envoy, cp.listeners, len(brokers.endpoints))
	if err != nil {
		return err
	}
	printRunning(out, o, brokers, healthy)
	return waitForStop(ctx, out, envoy, cp)
}

// check validates every option, so that nothing is started or deleted
// because of a command line that later turns out wrong. It returns the
// existing brokers given with --brokers.
func (o *runOptions) check() ([]model.Endpoint, error) {
	if _, err := os.Stat(filepath.Join(o.moduleDir, "libmqtt_sticky.so")); err != nil {
		return nil, fmt.Errorf("%s/libmqtt_sticky.so is missing: run `make filter` (or `make run`, which builds it)", o.moduleDir)
	}
	if o.envoyBin == "" {
		bin, err := envoyproc.FindBinary()
		if err != nil {
			return nil, err
		}
		o.envoyBin = bin
	}
	if _, err := os.Stat(o.bootstrap); err != nil {
		return nil, fmt.Errorf("%w: --bootstrap: %v", errUsage, err)
	}
	switch model.ProxyProtocol(o.proxy) {
	case model.ProxyV1, model.ProxyV2, model.ProxyOff:
	default:
		return nil, fmt.Errorf("%w: --proxy-protocol %q: use v2, v1 or off", errUsage, o.proxy)
	}
	if o.listenPort < 1 || o.listenPort > 65535 || o.brokerPort < 1 || o.brokerPort+10002 > 65535 {
		return nil, fmt.Errorf("%w: --port and --broker-port must leave room for the ports run uses (1-65535)", errUsage)
	}
	if _, _, err := net.SplitHostPort(o.apiAddr); err != nil {
		return nil, fmt.Errorf("%w: --api %q: want host:port", errUsage, o.apiAddr)
	}
	switch model.HealthCheckType(o.health) {
	case model.HealthMQTT, model.HealthHTTP, model.HealthEMQX:
	default:
		return nil, fmt.Errorf("%w: --health-check %q: use mqtt, http or emqx", errUsage, o.health)
	}
	if o.dns != "" {
		m := &model.Model{Listeners: []model.Listener{{Port: 1883}},
			Clusters: []model.Cluster{{Discovery: &model.Discovery{DNS: o.discovery()}}}}
		m.SetDefaults()
		if err := m.Validate(); err != nil {
			return nil, fmt.Errorf("%w: --dns, --dns-resolver, --dns-port: %v", errUsage, err)
		}
	}
	if err := o.checkTLS(); err != nil {
		return nil, err
	}
	if o.brokers == "" {
		return nil, nil
	}
	if o.dns != "" {
		return nil, fmt.Errorf("%w: --dns and --brokers both say where the brokers are: give one", errUsage)
	}
	eps, err := model.ParseEndpoints(o.brokers)
	if err != nil {
		return nil, fmt.Errorf("%w: --brokers: %v", errUsage, err)
	}
	return eps, nil
}

// runBrokers are the brokers run sends clients to: embedded ones it
// started, or existing ones it was given.
type runBrokers struct {
	endpoints []model.Endpoint
	lines     []string // one line per broker for the banner
	started   []*broker.Broker
	dnsLine   string // how the brokers are discovered, for the banner
}

func (b *runBrokers) close() {
	for _, s := range b.started {
		s.Close()
	}
}

// startEmbeddedBrokers starts three brokers in one cluster, unless existing
// brokers were given. Broker logs go to the terminal: they show which
// broker each client ID reached, and from which address.
func startEmbeddedBrokers(o runOptions, existing []model.Endpoint, out io.Writer) (*runBrokers, error) {
	b := &runBrokers{}
	if existing != nil {
		b.endpoints = existing
		for _, e := range existing {
			b.lines = append(b.lines, fmt.Sprintf("%s  (existing, PROXY protocol %s)", e.Key(), o.proxy))
		}
		return b, nil
	}
	blog := slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{Level: slog.LevelInfo}))
	var clusterAddrs []string
	for i := range 3 {
		clusterAddrs = append(clusterAddrs, fmt.Sprintf("127.0.0.1:%d", o.brokerPort+10000+i))
	}
	for i := range 3 {
		ip, port := o.embeddedAddr(i)
		opts := broker.Options{
			Name:          fmt.Sprintf("broker-%d", i+1),
			Listen:        fmt.Sprintf("%s:%d", ip, port),
			ProxyProtocol: broker.ProxyRequired,
			Logger:        blog,
			ClusterListen: clusterAddrs[i],
			Peers:         clusterAddrs,
		}
		line := fmt.Sprintf("broker-%d  %s:%d  (embedded, requires PROXY protocol)", i+1, ip, port)
		if o.httpCheck() {
			opts.HTTPListen = fmt.Sprintf("%s:%d", ip, model.EMQXHealthPort)
			line += fmt.Sprintf(", availability check http://%s/api/v5/load_rebalance/availability_check", opts.HTTPListen)
		}
		s, err := broker.Start(opts)
		if err != nil {
			b.close()
			return nil, err
		}
		b.started = append(b.started, s)
		b.endpoints = append(b.endpoints, model.Endpoint{Address: ip, Port: port})
		b.lines = append(b.lines, line)
	}
	return b, nil
}

// httpCheck reports whether the brokers are probed over HTTP.
func (o runOptions) httpCheck() bool { return model.HealthCheckType(o.health) != model.HealthMQTT }

// embeddedAddr is embedded broker i's address: 127.0.0.1 on its own port,
// or, with an HTTP check (one port for every broker), its own address.
func (o runOptions) embeddedAddr(i int) (string, int) {
	if o.httpCheck() {
		return fmt.Sprintf("127.0.0.%d", 11+i), o.brokerPort
	}
	return "127.0.0.1", o.brokerPort + i
}

// discovery is the cluster's DNS discovery for --dns: SRV records for a
// name that starts with "_", else A records, looked up every second.
func (o runOptions) discovery() *model.DNSDiscovery {
	d := &model.DNSDiscovery{Name: o.dns, Record: model.RecordA, Port: o.dnsPort, Interval: model.Duration(time.Second), Resolver: o.dnsResolver}
	if strings.HasPrefix(o.dns, "_") {
		d.Record, d.Port = model.RecordSRV, 0
	}
	return d
}

// runControlPlane is the control plane run starts in this process.
type runControlPlane struct {
	cancel context.CancelFunc
	done   chan error
	log    *os.File
	// listeners are the names of the listeners it serves Envoy.
	listeners []string
}

func (cp *runControlPlane) stop() {
	cp.cancel()
	<-cp.done
	cp.log.Close()
}

// startControlPlane serves the brokers to Envoy, logging to serve.log, and
// returns once it accepts connections.
func startControlPlane(ctx context.Context, o runOptions, endpoints []model.Endpoint) (*runControlPlane, error) {
	cluster := model.Cluster{Name: model.DefaultClusterName, Endpoints: endpoints,
		ProxyProtocol: model.ProxyProtocol(o.proxy), HealthCheck: model.HealthCheck{Type: model.HealthCheckType(o.health)}}
	if o.dns != "" {
		cluster.Endpoints, cluster.Discovery = nil, &model.Discovery{DNS: o.discovery()}
	}
	file := &model.File{Model: model.Model{
		Listeners: []model.Listener{{Name: model.DefaultListenerName, Address: "0.0.0.0", Port: o.listenPort, AccessLog: true}},
		Clusters:  []model.Cluster{cluster},
	}}
	if l := o.tlsListener(); l != nil {
		file.Listeners = append(file.Listeners, *l)
	}
	file.SetDefaults()
	if err := file.Validate(); err != nil {
		return nil, err
	}
	logFile, err := os.Create(filepath.Join(o.workDir, "serve.log"))
	if err != nil {
		return nil, err
	}
	cpCtx, cancel := context.WithCancel(ctx)
	cp := &runControlPlane{cancel: cancel, done: make(chan error, 1), log: logFile}
	for _, l := range file.Listeners {
		cp.listeners = append(cp.listeners, l.Name)
	}
	ready := make(chan struct{})
	go func() {
		cp.done <- serve(cpCtx, serveOptions{file: file, xdsListen: runXDS, apiListen: o.apiAddr, healthPoll: defaultHealthPoll, token: os.Getenv(api.TokenEnv),
			stateFile: filepath.Join(o.workDir, "state.json")}, slog.New(slog.NewTextHandler(logFile, nil)),
			func(string, string) { close(ready) })
	}()
	select {
	case <-ready:
		return cp, nil
	case err := <-cp.done:
		cancel()
		logFile.Close()
		return nil, fmt.Errorf("control plane: %w (see %s)", err, logFile.Name())
	}
}

// startEnvoy starts Envoy on the bootstrap, which takes everything else
// from the control plane.
func startEnvoy(o runOptions) (*envoyproc.Process, error) {
	opts, err := envoyOptions(o)
	if err != nil {
		return nil, err
	}
	return envoyproc.Start(opts)
}

// envoyOptions are the options of run's Envoy. It does not inherit the API
// token: only the control plane needs it.
func envoyOptions(o runOptions) (envoyproc.Options, error) {
	moduleDir, err := filepath.Abs(o.moduleDir)
	if err != nil {
		return envoyproc.Options{}, err
	}
	return envoyproc.Options{
		Binary:        o.envoyBin,
		ConfigPath:    o.bootstrap,
		AdminAddr:     runAdmin,
		ModuleDir:     moduleDir,
		LogPath:       filepath.Join(o.workDir, "envoy.log"),
		NodeID:        "envoy-1",
		Cluster:       "mqtt-sticky",
		DieWithParent: true,
		DropEnv:       []string{api.TokenEnv},
	}, nil
}

// waitEnvoyReady waits up to a minute for Envoy to be ready, listen on
// every listener, and report every broker healthy, and returns how many it
// reports healthy.
func waitEnvoyReady(ctx context.Context, envoy *envoyproc.Process, listeners []string, brokers int) (int, error) {
	readyCtx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := envoy.WaitReady(readyCtx); err != nil {
		return 0, err
	}
	if err := waitListening(readyCtx, envoy, listeners); err != nil {
		return 0, err
	}
	return waitHealthy(readyCtx, envoy, brokers), nil
}

// waitListening waits until Envoy has every named listener active, and
// fails with Envoy's own reason when it refused one (its port already in
// use, say). Envoy reports ready once its listeners have an answer,
// accepted or not, so readiness alone does not say the port is open.
func waitListening(ctx context.Context, envoy *envoyproc.Process, names []string) error {
	for {
		active, refused, err := dynamicListeners(ctx, envoy)
		if err == nil {
			for _, name := range names {
				if why, ok := refused[name]; ok {
					return fmt.Errorf("Envoy refused listener %s: %s", name, why)
				}
			}
			if !slices.ContainsFunc(names, func(n string) bool { return !active[n] }) {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("Envoy is not listening on %s: %w (see its log)", strings.Join(names, ", "), ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// dynamicListeners reads Envoy's dynamic listeners from its config dump:
// which are active, and why each refused one was refused.
func dynamicListeners(ctx context.Context, envoy *envoyproc.Process) (active map[string]bool, refused map[string]string, err error) {
	code, body, err := envoy.Get(ctx, "/config_dump?resource=dynamic_listeners")
	if err != nil || code != http.StatusOK {
		return nil, nil, fmt.Errorf("config_dump: %d %v", code, err)
	}
	var dump struct {
		Configs []struct {
			Name        string          `json:"name"`
			ActiveState json.RawMessage `json:"active_state"`
			ErrorState  *struct {
				Details string `json:"details"`
			} `json:"error_state"`
		} `json:"configs"`
	}
	if err := json.Unmarshal([]byte(body), &dump); err != nil {
		return nil, nil, err
	}
	active, refused = map[string]bool{}, map[string]string{}
	for _, l := range dump.Configs {
		active[l.Name] = l.ActiveState != nil
		if l.ErrorState != nil {
			refused[l.Name] = l.ErrorState.Details
		}
	}
	return active, refused, nil
}

func printRunning(out io.Writer, o runOptions, b *runBrokers, healthy int) {
	fmt.Fprintf(out, `
mqtt-sticky is running.

  MQTT (Envoy + mqtt_sticky)  127.0.0.1:%[1]d%[9]s
  brokers                     %[2]s
  management API              http://%[3]s   (OpenAPI: http://%[3]s/openapi.yaml)
  control-plane metrics       http://%[3]s/metrics
  Envoy admin                 http://%[4]s   (stats: http://%[4]s/stats?filter=mqtt_sticky)
  logs                        %[5]s/{envoy,serve}.log; Envoy's access log shows client ID -> broker
  health check                %[8]s
  healthy brokers             %[6]d of %[7]d

Try it (mosquitto clients: apt-get install mosquitto-clients):
  mosquitto_sub -h 127.0.0.1 -p %[1]d -i my-listener -t 'demo/#' -v
  mosquitto_pub -h 127.0.0.1 -p %[1]d -i my-device -t demo/hello -m hi
Connect again with the same -i: the broker lines below show it lands on the same broker.

`, o.listenPort, strings.Join(b.lines, "\n                              "), o.apiAddr, runAdmin, o.workDir,
		healthy, len(b.endpoints), o.health, o.tlsBanner())
	last := b.endpoints[len(b.endpoints)-1]
	ref := last.Name
	if ref == "" {
		ref = last.Key()
	}
	switch {
	case b.dnsLine != "":
		fmt.Fprintf(out, "Discovery: %s.\n  build/mqtt-sticky status\n", b.dnsLine)
	case o.dns != "":
		fmt.Fprintf(out, "Discovery: the brokers come from DNS %s via %s.\n  build/mqtt-sticky status\n", o.dns, orDash(o.dnsResolver))
	default:
		fmt.Fprintf(out, "Change brokers live:\n  build/mqtt-sticky endpoints list\n  build/mqtt-sticky endpoints remove %[1]s\n  build/mqtt-sticky endpoints add %[2]s\n  build/mqtt-sticky status\n",
			ref, last.String())
	}
	if o.httpCheck() && len(b.started) > 0 {
		fmt.Fprintf(out, "Drain a broker (EMQX's evacuation), then undo it:\n  curl -X POST http://%[1]s/api/v5/load_rebalance/%[2]s/evacuation/start\n  curl -X POST http://%[1]s/api/v5/load_rebalance/%[2]s/evacuation/stop\n",
			b.started[len(b.started)-1].HTTPAddr(), b.started[len(b.started)-1].Name())
	}
	fmt.Fprint(out, "\nCtrl-C stops everything.\n\n")
}

// waitForStop returns when ctx ends (Ctrl-C), or with an error when Envoy
// or the control plane stops by itself.
func waitForStop(ctx context.Context, out io.Writer, envoy *envoyproc.Process, cp *runControlPlane) error {
	select {
	case <-ctx.Done():
		fmt.Fprintln(out, "\nstopping Envoy, the control plane and the brokers...")
		return envoy.Stop(10 * time.Second)
	case <-envoy.Exited():
		return fmt.Errorf("envoy exited; log:\n%s", envoy.LogTail(20))
	case err := <-cp.done:
		cp.done <- err // for cp.stop
		return fmt.Errorf("control plane stopped: %v", err)
	}
}

// waitHealthy waits until Envoy's brokers cluster has n healthy hosts, or
// ctx ends, and returns the last count seen.
func waitHealthy(ctx context.Context, envoy *envoyproc.Process, n int) int {
	const stat = "cluster.brokers.membership_healthy"
	var got int64
	for {
		st, err := envoy.Stats(ctx, stat)
		if err == nil {
			got = st[stat]
			if got >= int64(n) {
				return int(got)
			}
		}
		select {
		case <-ctx.Done():
			return int(got)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// runMarker marks a directory run created, and may therefore empty.
const runMarker = ".mqtt-sticky-run"

// prepareWorkDir gives run an empty directory for its logs and state. It
// empties only a directory that run created before (it holds runMarker)
// or one that is already empty: a mistyped --dir must never delete
// somebody's files.
func prepareWorkDir(dir string) error {
	entries, err := os.ReadDir(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return err
	case len(entries) == 0:
	case slices.ContainsFunc(entries, func(e fs.DirEntry) bool { return e.Name() == runMarker }):
		if err := os.RemoveAll(dir); err != nil {
			return err
		}
	default:
		return fmt.Errorf("%w: --dir %s is not empty and was not created by mqtt-sticky run: give an empty or new directory", errUsage, dir)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, runMarker), []byte("created by mqtt-sticky run; emptied by the next run\n"), 0o644)
}
