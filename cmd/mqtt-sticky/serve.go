package main

import (
	"context"
	"crypto/tls"
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
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/mqtt-sticky/mqtt-sticky/api"
	"github.com/mqtt-sticky/mqtt-sticky/internal/tlsfiles"
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

// minRemoteToken is the shortest API token accepted when the API listens
// beyond loopback: 16 random bytes (`openssl rand -hex 16` gives 32
// characters) cannot be guessed over the network.
const minRemoteToken = 16

type serveOptions struct {
	file        *model.File // used instead of configPath when set
	configPath  string
	xdsListen   string
	maxNodes    int
	nodeGrace   time.Duration
	apiListen   string
	stateFile   string
	noState     bool
	xdsTLS      tlsfiles.Files
	token       string // from MQTT_STICKY_API_TOKEN, or --api-token
	tokenOnArgv bool   // --api-token was given: visible in ps
	tokenFile   string
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
	fs.StringVar(&o.xdsListen, "xds", "", "xDS gRPC address (default from the config file, else "+model.DefaultXDSListen+"); beyond loopback it needs TLS")
	fs.StringVar(&o.xdsTLS.CertFile, "xds-tls-cert", "", "xDS server certificate, PEM (config xds_tls.cert_file); reloaded when it changes")
	fs.StringVar(&o.xdsTLS.KeyFile, "xds-tls-key", "", "xDS server key, PEM (config xds_tls.key_file)")
	fs.StringVar(&o.xdsTLS.ClientCAFile, "xds-tls-client-ca", "", "CA that signs the Envoys' client certificates, PEM (config xds_tls.client_ca_file)")
	fs.BoolVar(&o.xdsTLS.RequireClientCert, "xds-tls-require-client-cert", false, "refuse Envoys without a client certificate: mutual TLS (config xds_tls.require_client_cert)")
	fs.IntVar(&o.maxNodes, "xds-max-nodes", 0, fmt.Sprintf("most Envoy nodes kept, connected or recently gone; beyond it new nodes are refused (config xds_max_nodes; default %d)", server.DefaultMaxNodes))
	fs.DurationVar(&o.nodeGrace, "xds-node-grace", 0, fmt.Sprintf("how long a node that left stays in the status (config xds_node_grace; default %v)", server.DefaultNodeGrace))
	fs.StringVar(&o.apiListen, "api", "", "management API address (default from the config file, else "+model.DefaultAPIListen+")")
	fs.StringVar(&o.stateFile, "state", "", "state file keeping endpoint changes across restarts (default from the config file, else "+defaultStateFile+")")
	fs.BoolVar(&o.noState, "no-state", false, "do not persist endpoint changes")
	fs.StringVar(&o.tokenFile, "api-token-file", "", "file holding the bearer token the API requires (config api_token_file); required, or "+api.TokenEnv+", when the API listens beyond loopback")
	fs.StringVar(&o.token, "api-token", "", "the bearer token itself: visible to every user in ps, prefer --api-token-file or "+api.TokenEnv)
	fs.BoolVar(&o.metricsAuth, "metrics-require-token", false, "put /metrics behind the API token too (config metrics_require_token)")
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
	o.tokenOnArgv = o.token != ""
	if o.token == "" {
		o.token = os.Getenv(api.TokenEnv)
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

// serveConfig is what serve runs with: the config file with the flags
// applied, checked.
type serveConfig struct {
	file    *model.File
	xdsAddr string
	xdsTLS  tlsfiles.Files
	apiAddr string
	token   string
}

// resolve applies the flags over the config file and checks the result,
// before anything listens or is written.
func (o serveOptions) resolve(log *slog.Logger) (*serveConfig, error) {
	file := &model.File{Model: *model.Default()}
	if o.file != nil {
		file = o.file
	} else if o.configPath != "" {
		f, err := model.LoadFile(o.configPath)
		if err != nil {
			return nil, err
		}
		file = f
	}
	warnUnreadableTLSFiles(log, &file.Model)
	c := &serveConfig{
		file:    file,
		xdsAddr: firstOf(o.xdsListen, file.XDSListen, model.DefaultXDSListen),
		apiAddr: firstOf(o.apiListen, file.APIListen, model.DefaultAPIListen),
		xdsTLS: tlsfiles.Files{
			CertFile:          firstOf(o.xdsTLS.CertFile, file.XDSTLS.CertFile),
			KeyFile:           firstOf(o.xdsTLS.KeyFile, file.XDSTLS.KeyFile),
			ClientCAFile:      firstOf(o.xdsTLS.ClientCAFile, file.XDSTLS.ClientCAFile),
			RequireClientCert: o.xdsTLS.RequireClientCert || file.XDSTLS.RequireClientCert,
		},
	}
	if o.maxNodes < 0 || o.nodeGrace < 0 {
		return nil, fmt.Errorf("%w: --xds-max-nodes and --xds-node-grace cannot be negative", errUsage)
	}
	if err := c.xdsTLS.Check(); err != nil {
		return nil, fmt.Errorf("%w: xDS TLS: %v", errUsage, err)
	}
	if !c.xdsTLS.Enabled() && !isLoopback(c.xdsAddr) {
		return nil, fmt.Errorf("%w: xDS listens on %s, beyond loopback, without TLS: anyone who reaches it gets the whole configuration. "+
			"Set --xds-tls-cert and --xds-tls-key (config xds_tls), with --xds-tls-client-ca and --xds-tls-require-client-cert for mutual TLS", errUsage, c.xdsAddr)
	}
	if c.xdsTLS.Enabled() && !c.xdsTLS.RequireClientCert && !isLoopback(c.xdsAddr) {
		log.Warn("xDS uses TLS without requiring client certificates: anyone who reaches it can read the configuration; "+
			"set --xds-tls-client-ca and --xds-tls-require-client-cert", "xds", c.xdsAddr)
	}
	token, err := o.apiToken(firstOf(o.tokenFile, file.APITokenFile), log)
	if err != nil {
		return nil, err
	}
	if !isLoopback(c.apiAddr) && len(token) < minRemoteToken {
		if token == "" {
			return nil, fmt.Errorf("%w: the API listens on %s, beyond loopback: set --api-token-file (config api_token_file) or %s", errUsage, c.apiAddr, api.TokenEnv)
		}
		return nil, fmt.Errorf("%w: the API listens on %s, beyond loopback, and its token has %d bytes: use at least %d random bytes (openssl rand -hex 16)",
			errUsage, c.apiAddr, len(token), minRemoteToken)
	}
	if (o.metricsAuth || file.MetricsRequireToken) && token == "" {
		return nil, fmt.Errorf("%w: --metrics-require-token needs an API token", errUsage)
	}
	c.token = token
	return c, nil
}

// apiToken returns the API token from the token file, or from the
// environment or --api-token; at most one of them may be given.
func (o serveOptions) apiToken(tokenFile string, log *slog.Logger) (string, error) {
	token := o.token
	if tokenFile != "" {
		if token != "" {
			return "", fmt.Errorf("%w: give the API token once: a token file, or %s, or --api-token", errUsage, api.TokenEnv)
		}
		data, err := os.ReadFile(tokenFile)
		if err != nil {
			return "", fmt.Errorf("API token file: %w", err)
		}
		token = strings.TrimSpace(string(data))
		if token == "" {
			return "", fmt.Errorf("API token file %s is empty", tokenFile)
		}
	}
	if strings.ContainsFunc(token, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) {
		return "", fmt.Errorf("%w: the API token holds spaces or control characters, which cannot travel in an Authorization header", errUsage)
	}
	if o.tokenOnArgv {
		log.Warn("--api-token shows the token to every user of this machine (ps, /proc/*/cmdline): use --api-token-file or " + api.TokenEnv)
	}
	return token, nil
}

// serve runs until ctx ends. ready, when not nil, receives the bound
// addresses once both listeners accept connections.
func serve(ctx context.Context, o serveOptions, log *slog.Logger, ready func(xdsAddr, apiAddr string)) error {
	c, err := o.resolve(log)
	if err != nil {
		return err
	}
	file, xdsAddr, apiAddr := c.file, c.xdsAddr, c.apiAddr
	var xdsTLS *tls.Config
	if c.xdsTLS.Enabled() {
		if xdsTLS, err = c.xdsTLS.ServerConfig(log); err != nil {
			return fmt.Errorf("xDS TLS: %w", err)
		}
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
		Logger: log, Registerer: reg, TLS: xdsTLS,
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
		Token: c.token, MetricsNeedToken: o.metricsAuth || file.MetricsRequireToken, ListenAddr: apiAddr, Logger: log, Registry: reg,
	}))
	log.Info("mqtt-sticky serve", append([]any{"xds", xdsLis.Addr().String(), "xds_tls", c.xdsTLS.Enabled(), "xds_client_certs", c.xdsTLS.RequireClientCert,
		"api", apiLis.Addr().String()}, append(b.describe, "version", ctl.Version(), "clusters", len(file.Clusters), "token_required", c.token != "")...)...)

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
