package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/mqtt-sticky/mqtt-sticky/api"
	"github.com/mqtt-sticky/mqtt-sticky/xds/control"
	"github.com/mqtt-sticky/mqtt-sticky/xds/discovery"
	"github.com/mqtt-sticky/mqtt-sticky/xds/health"
	"github.com/mqtt-sticky/mqtt-sticky/xds/model"
	"github.com/mqtt-sticky/mqtt-sticky/xds/server"
	"github.com/mqtt-sticky/mqtt-sticky/xds/store"
	"github.com/mqtt-sticky/mqtt-sticky/xds/store/etcdstore"
)

const (
	defaultStateFile  = "mqtt-sticky-state.json"
	defaultHealthPoll = 2 * time.Second
)

type serveOptions struct {
	file        *model.File // used instead of configPath when set
	configPath  string
	xdsListen   string
	maxNodes    int
	nodeGrace   time.Duration
	apiListen   string
	stateFile   string
	noState     bool
	token       string
	metricsAuth bool
	logLevel    string
	// healthPoll is how often the Envoy nodes' admin /clusters is read
	// for their view of broker health; 0 turns it off.
	healthPoll time.Duration
	// The store: flags override the config file's store section.
	storeType   string
	etcd        etcdFlags
	replicaName string
}

func runServe(args []string, stdout, stderr io.Writer) error {
	var o serveOptions
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.configPath, "config", "", "config file (YAML); without it: a listener on :1883 and cluster \"brokers\" of 127.0.0.1:18831-18833")
	fs.StringVar(&o.xdsListen, "xds", "", "xDS gRPC address (default from the config file, else "+model.DefaultXDSListen+")")
	fs.IntVar(&o.maxNodes, "xds-max-nodes", 0, fmt.Sprintf("most Envoy nodes kept, connected or recently gone; beyond it new nodes are refused (config xds_max_nodes; default %d)", server.DefaultMaxNodes))
	fs.DurationVar(&o.nodeGrace, "xds-node-grace", 0, fmt.Sprintf("how long a node that left stays in the status (config xds_node_grace; default %v)", server.DefaultNodeGrace))
	fs.StringVar(&o.apiListen, "api", "", "management API address (default from the config file, else "+model.DefaultAPIListen+")")
	fs.StringVar(&o.stateFile, "state", "", "state file keeping endpoint changes across restarts (default from the config file, else "+defaultStateFile+")")
	fs.BoolVar(&o.noState, "no-state", false, "do not persist endpoint changes")
	fs.StringVar(&o.token, "api-token", os.Getenv("MQTT_STICKY_API_TOKEN"), "bearer token the API requires (env MQTT_STICKY_API_TOKEN); required when the API listens beyond loopback")
	fs.BoolVar(&o.metricsAuth, "metrics-require-token", false, "put /metrics behind the API token too")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.DurationVar(&o.healthPoll, "health-poll", defaultHealthPoll, "how often to read broker health from the admin /clusters of Envoy nodes that advertise admin_address in their node metadata; 0 turns it off")
	fs.StringVar(&o.storeType, "store", "", "where endpoint changes are kept: file (the state file; default) or etcd (shared by several replicas)")
	o.etcd.register(fs, true)
	fs.StringVar(&o.replicaName, "replica-name", "", "this replica's name in /v1/status, with --store etcd (default HOST:XDS-PORT)")
	if rest, err := parse(fs, args); err != nil {
		return err
	} else if len(rest) > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, rest[0])
	}
	log, err := newLogger(stderr, o.logLevel)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return serve(ctx, o, log, nil)
}

func newLogger(w io.Writer, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("%w: --log-level %q: use debug, info, warn or error", errUsage, level)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l})), nil
}

// serve runs until ctx ends. ready, when not nil, receives the bound
// addresses once both listeners accept connections.
func serve(ctx context.Context, o serveOptions, log *slog.Logger, ready func(xdsAddr, apiAddr string)) error {
	file := &model.File{Model: *model.Default()}
	if o.file != nil {
		file = o.file
	} else if o.configPath != "" {
		f, err := model.LoadFile(o.configPath)
		if err != nil {
			return err
		}
		file = f
	}
	warnUnreadableTLSFiles(log, &file.Model)
	xdsAddr := firstOf(o.xdsListen, file.XDSListen, model.DefaultXDSListen)
	apiAddr := firstOf(o.apiListen, file.APIListen, model.DefaultAPIListen)
	if o.maxNodes < 0 || o.nodeGrace < 0 {
		return fmt.Errorf("%w: --xds-max-nodes and --xds-node-grace cannot be negative", errUsage)
	}
	if o.metricsAuth && o.token == "" {
		return fmt.Errorf("%w: --metrics-require-token needs an API token", errUsage)
	}
	if o.token == "" && !isLoopback(apiAddr) {
		return fmt.Errorf("%w: the API listens on %s, beyond loopback: set --api-token or MQTT_STICKY_API_TOKEN", errUsage, apiAddr)
	}
	b, err := openBacking(o, file, xdsAddr, log)
	if err != nil {
		return err
	}
	defer b.close()
	ctx, stop := context.WithCancel(ctx)
	var background sync.WaitGroup
	defer func() {
		stop()
		background.Wait() // the board withdraws this replica's nodes on the way out
	}()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	srv := server.New(server.Options{
		Logger: log, Registerer: reg,
		MaxNodes:  firstPositive(o.maxNodes, file.XDSMaxNodes),
		NodeGrace: time.Duration(firstPositive(int64(o.nodeGrace), int64(file.XDSNodeGrace))),
	})
	ctl := control.New(&file.Model, b.store, srv, log)
	if err := ctl.Start(ctx); err != nil {
		return err
	}
	background.Go(func() { ctl.Run(ctx) })
	fleet := api.Fleet{Controller: ctl, Server: srv, Checks: b.checks}
	if b.board != nil {
		fleet.Replicas = b.board
		background.Go(func() { b.board.Publish(ctx, srv.Nodes) })
	}
	if err := startWatchers(ctx, &fleet, &file.Model, o.healthPoll, log, reg); err != nil {
		return err
	}

	xdsLis, err := net.Listen("tcp", xdsAddr)
	if err != nil {
		return fmt.Errorf("xDS listener: %w", err)
	}
	apiLis, err := net.Listen("tcp", apiAddr)
	if err != nil {
		xdsLis.Close()
		return fmt.Errorf("API listener: %w", err)
	}
	httpSrv := api.NewServer(api.NewHandler(fleet, api.Options{
		Token: o.token, MetricsNeedToken: o.metricsAuth, ListenAddr: apiAddr, Logger: log, Registry: reg,
	}))
	log.Info("mqtt-sticky serve", append([]any{"xds", xdsLis.Addr().String(), "api", apiLis.Addr().String()}, append(b.describe,
		"version", ctl.Version(), "clusters", len(file.Clusters), "token_required", o.token != "")...)...)

	errc := make(chan error, 2)
	go func() { errc <- srv.Serve(ctx, xdsLis) }()
	go func() {
		if err := httpSrv.Serve(apiLis); !errors.Is(err, http.ErrServerClosed) {
			errc <- err
		}
	}()
	if ready != nil {
		ready(xdsLis.Addr().String(), apiLis.Addr().String())
	}
	select {
	case <-ctx.Done():
	case err := <-errc:
		if err != nil {
			return err
		}
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	httpSrv.Shutdown(shutdown)
	log.Info("mqtt-sticky serve stopped")
	return nil
}

// startWatchers starts DNS discovery for the discovered clusters, and the
// health watcher unless poll is 0, and adds them to fleet for the API.
func startWatchers(ctx context.Context, fleet *api.Fleet, m *model.Model, poll time.Duration, log *slog.Logger, reg *prometheus.Registry) error {
	disc, err := discovery.New(m, fleet.Controller, log, reg)
	if err != nil {
		return err
	}
	fleet.Discovery = disc
	go disc.Run(ctx)
	if poll > 0 {
		fleet.Health = health.New(fleet, poll, log, reg)
		go fleet.Health.Run(ctx)
	}
	return nil
}

// backing is the store a control plane runs on, and what comes with it.
type backing struct {
	store    store.Store
	board    *etcdstore.Board // etcd only: where replicas publish their nodes
	checks   map[string]func(context.Context) error
	describe []any // for the start-up log line
	close    func()
}

// openBacking opens the store the flags and the config file choose: the
// state file, or etcd.
func openBacking(o serveOptions, file *model.File, xdsAddr string, log *slog.Logger) (*backing, error) {
	cfg := file.Store
	cfg.Type = firstOf(o.storeType, cfg.Type, model.StoreFile)
	cfg.Etcd = o.etcd.apply(cfg.Etcd)
	cfg.ReplicaName = firstOf(o.replicaName, cfg.ReplicaName)
	stateFile := firstOf(o.stateFile, file.StateFile)
	if o.storeType == model.StoreEtcd {
		// --store etcd overrides the config file's store, state_file
		// included, so one config file serves a single control plane
		// and replicas alike.
		stateFile = o.stateFile
	}
	if err := cfg.Validate(stateFile); err != nil {
		return nil, fmt.Errorf("%w: %v", errUsage, err)
	}
	if cfg.Type == model.StoreFile {
		path := firstOf(stateFile, defaultStateFile)
		if o.noState {
			path = ""
		}
		return &backing{store: store.NewFile(path), describe: []any{"store", "file", "state_file", path}, close: func() {}}, nil
	}
	if o.noState {
		return nil, fmt.Errorf("%w: --no-state is for the file store", errUsage)
	}
	name := cfg.ReplicaName
	if name == "" {
		host, _ := os.Hostname()
		_, port, _ := net.SplitHostPort(xdsAddr)
		name = host + ":" + port
	}
	s, err := openEtcd(cfg.Etcd, name, log)
	if err != nil {
		return nil, err
	}
	return &backing{
		store:    s,
		board:    s.Board(name),
		checks:   map[string]func(context.Context) error{"etcd": s.Check},
		describe: []any{"store", "etcd", "etcd_key", s.Key(), "replica", name},
		close:    func() { s.Close() },
	}, nil
}

func firstOf(values ...string) string {
	for _, v := range values {
		if v != "" {
			return v
		}
	}
	return ""
}

func firstPositive[T int | int64](values ...T) T {
	for _, v := range values {
		if v > 0 {
			return v
		}
	}
	return 0
}

func isLoopback(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback()
}
