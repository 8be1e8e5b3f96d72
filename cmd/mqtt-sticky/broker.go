package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/mqtt-sticky/mqtt-sticky/internal/broker"
)

func runBroker(args []string, stdout, stderr io.Writer) error {
	var listen, mode, name, logLevel string
	fs := flag.NewFlagSet("broker", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&listen, "listen", "127.0.0.1:18831", "address to accept MQTT connections on")
	fs.StringVar(&mode, "proxy-protocol", "required", "PROXY protocol header: required, optional or off")
	fs.StringVar(&name, "name", "", "broker name in logs (default: the listen address)")
	fs.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
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
	b, err := broker.Start(broker.Options{Name: name, Listen: listen, ProxyProtocol: pm, Logger: log})
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	return b.Close()
}
