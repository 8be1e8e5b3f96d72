package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

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
	fs.StringVar(&o.workDir, "dir", "build/run", "where logs and state go (emptied at start)")
	fs.IntVar(&o.brokerPort, "broker-port", 18831, "first port of the embedded brokers (three ports from here)")
	if rest, err := parse(fs, args); err != nil {
		return err
	} else if len(rest) > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, rest[0])
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return run(ctx, o, stdout)
}

func run(ctx context.Context, o runOptions, out io.Writer) error {
	if _, err := os.Stat(filepath.Join(o.moduleDir, "libmqtt_sticky.so")); err != nil {
		return fmt.Errorf("%s/libmqtt_sticky.so is missing: run `make filter` (or `make run`, which builds it)", o.moduleDir)
	}
	if o.envoyBin == "" {
		bin, err := envoyproc.FindBinary()
		if err != nil {
			return err
		}
		o.envoyBin = bin
	}
	if err := os.RemoveAll(o.workDir); err != nil {
		return err
	}
	if err := os.MkdirAll(o.workDir, 0o755); err != nil {
		return err
	}
	moduleDir, _ := filepath.Abs(o.moduleDir)
	logFile := func(name string) (*os.File, error) { return os.Create(filepath.Join(o.workDir, name)) }

	// Brokers: three embedded ones in one cluster, or the ones given.
	var endpoints []model.Endpoint
	var brokerLines []string
	if o.brokers == "" {
		// Broker logs go to the terminal: they show which broker each
		// client ID reached, and from which address.
		blog := slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{Level: slog.LevelInfo}))
		var clusterAddrs []string
		for i := range 3 {
			clusterAddrs = append(clusterAddrs, fmt.Sprintf("127.0.0.1:%d", o.brokerPort+10000+i))
		}
		for i := range 3 {
			port := o.brokerPort + i
			b, err := broker.Start(broker.Options{
				Name:          fmt.Sprintf("broker-%d", i+1),
				Listen:        fmt.Sprintf("127.0.0.1:%d", port),
				ProxyProtocol: broker.ProxyRequired,
				Logger:        blog,
				ClusterListen: clusterAddrs[i],
				Peers:         clusterAddrs,
			})
			if err != nil {
				return err
			}
			defer b.Close()
			endpoints = append(endpoints, model.Endpoint{Address: "127.0.0.1", Port: port})
			brokerLines = append(brokerLines, fmt.Sprintf("broker-%d  127.0.0.1:%d  (embedded, requires PROXY protocol)", i+1, port))
		}
	} else {
		for _, hp := range strings.Split(o.brokers, ",") {
			host, port, err := net.SplitHostPort(strings.TrimSpace(hp))
			if err != nil {
				return fmt.Errorf("%w: --brokers %q: want host:port[,host:port...]", errUsage, hp)
			}
			var p int
			fmt.Sscan(port, &p)
			endpoints = append(endpoints, model.Endpoint{Address: host, Port: p})
			brokerLines = append(brokerLines, fmt.Sprintf("%s  (existing, PROXY protocol %s)", hp, o.proxy))
		}
	}

	// The control plane, in this process.
	file := &model.File{Model: model.Model{
		Listeners: []model.Listener{{Name: "mqtt", Address: "0.0.0.0", Port: o.listenPort, AccessLog: true}},
		Clusters: []model.Cluster{{Name: model.DefaultClusterName, Endpoints: endpoints,
			ProxyProtocol: model.ProxyProtocol(o.proxy)}},
	}}
	file.SetDefaults()
	if err := file.Validate(); err != nil {
		return err
	}
	serveLog, err := logFile("serve.log")
	if err != nil {
		return err
	}
	defer serveLog.Close()
	log := slog.New(slog.NewTextHandler(serveLog, nil))
	cpCtx, stopCP := context.WithCancel(ctx)
	defer stopCP()
	cpReady := make(chan struct{})
	cpDone := make(chan error, 1)
	go func() {
		cpDone <- serve(cpCtx, serveOptions{file: file, xdsListen: runXDS, apiListen: o.apiAddr,
			stateFile: filepath.Join(o.workDir, "state.json")}, log, func(string, string) { close(cpReady) })
	}()
	select {
	case <-cpReady:
	case err := <-cpDone:
		return fmt.Errorf("control plane: %w (see %s)", err, serveLog.Name())
	}

	// Envoy, configured by the control plane.
	envoy, err := envoyproc.Start(envoyproc.Options{
		Binary:        o.envoyBin,
		ConfigPath:    o.bootstrap,
		AdminAddr:     runAdmin,
		ModuleDir:     moduleDir,
		LogPath:       filepath.Join(o.workDir, "envoy.log"),
		NodeID:        "envoy-1",
		Cluster:       "mqtt-sticky",
		DieWithParent: true,
	})
	if err != nil {
		return err
	}
	defer envoy.Stop(10 * time.Second)
	readyCtx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := envoy.WaitReady(readyCtx); err != nil {
		return err
	}
	healthy := waitHealthy(readyCtx, envoy, len(endpoints))

	fmt.Fprintf(out, `
mqtt-sticky is running.

  MQTT (Envoy + mqtt_sticky)  127.0.0.1:%[1]d
  brokers                     %[2]s
  management API              http://%[3]s   (OpenAPI: http://%[3]s/openapi.yaml)
  control-plane metrics       http://%[3]s/metrics
  Envoy admin                 http://%[4]s   (stats: http://%[4]s/stats?filter=mqtt_sticky)
  logs                        %[5]s/{envoy,serve}.log; Envoy's access log shows client ID -> broker
  healthy brokers             %[6]d of %[7]d

Try it (mosquitto clients: apt-get install mosquitto-clients):
  mosquitto_sub -h 127.0.0.1 -p %[1]d -i my-listener -t 'demo/#' -v
  mosquitto_pub -h 127.0.0.1 -p %[1]d -i my-device -t demo/hello -m hi
Connect again with the same -i: the broker lines below show it lands on the same broker.

Change brokers live:
  build/mqtt-sticky endpoints list
  build/mqtt-sticky endpoints remove 127.0.0.1:%[8]d
  build/mqtt-sticky endpoints add 127.0.0.1:%[8]d
  build/mqtt-sticky status

Ctrl-C stops everything.

`, o.listenPort, strings.Join(brokerLines, "\n                              "), o.apiAddr, runAdmin, o.workDir,
		healthy, len(endpoints), endpoints[len(endpoints)-1].Port)

	select {
	case <-ctx.Done():
		fmt.Fprintln(out, "\nstopping Envoy, the control plane and the brokers...")
	case <-envoy.Exited():
		return fmt.Errorf("envoy exited; log:\n%s", envoy.LogTail(20))
	case err := <-cpDone:
		return fmt.Errorf("control plane stopped: %v", err)
	}
	if err := envoy.Stop(10 * time.Second); err != nil {
		return err
	}
	stopCP()
	<-cpDone
	return nil
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
