package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/mqtt-sticky/mqtt-sticky/internal/broker"
)

func runBroker(args []string, stdout, stderr io.Writer) error {
	var listen, mode, name, logLevel, clusterListen, peers, httpListen string
	var rejectLocal bool
	fs := flag.NewFlagSet("broker", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&listen, "listen", "127.0.0.1:18831", "address to accept MQTT connections on")
	fs.StringVar(&mode, "proxy-protocol", "required", "PROXY protocol header: required, optional or off")
	fs.StringVar(&name, "name", "", "broker name in logs (default: the listen address)")
	fs.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&clusterListen, "cluster-listen", "", "address peer brokers link to (enables clustering)")
	fs.StringVar(&peers, "peers", "", "comma-separated cluster addresses of the other brokers; a message published on any broker reaches subscribers on all")
	fs.StringVar(&httpListen, "http-listen", "", "address for EMQX 5's availability check (GET /api/v5/load_rebalance/availability_check: 200, or 503 while draining) and drain switch (POST /api/v5/load_rebalance/NAME/evacuation/start and .../stop)")
	fs.BoolVar(&rejectLocal, "reject-local", false, "refuse connections whose PROXY v2 header has the LOCAL command, as RabbitMQ 3.10 does")
	if rest, err := parse(fs, args); err != nil {
		return err
	} else if len(rest) > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, rest[0])
	}
	pm, err := broker.ParseProxyMode(mode)
	if err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	log, err := newLogger(stderr, logLevel)
	if err != nil {
		return err
	}
	var peerList []string
	for _, p := range strings.Split(peers, ",") {
		if p = strings.TrimSpace(p); p != "" {
			peerList = append(peerList, p)
		}
	}
	b, err := broker.Start(broker.Options{Name: name, Listen: listen, ProxyProtocol: pm, Logger: log,
		ClusterListen: clusterListen, Peers: peerList, HTTPListen: httpListen, RejectLocal: rejectLocal})
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	return b.Close()
}
