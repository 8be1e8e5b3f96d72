// Command mqtt-sticky runs the mqtt-sticky control plane and talks to it.
//
//	mqtt-sticky serve [--config FILE]         xDS server and management API
//	mqtt-sticky endpoints list|add|remove|set  change brokers through the API
//	mqtt-sticky listeners                      the listeners, their TLS and identity settings
//	mqtt-sticky status                         Envoy nodes and what they accepted
//	mqtt-sticky store copy|show                move the state between a state file and etcd
//	mqtt-sticky broker --listen ADDR           an embedded MQTT broker
//	mqtt-sticky run                            brokers + serve + Envoy, for trying it out
//	mqtt-sticky certs --dir DIR                certificates for mutual TLS on xDS
//
// Run `mqtt-sticky <command> -h` for a command's flags.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
)

// errUsage marks a command-line mistake: exit code 2.
var errUsage = errors.New("usage")

type command struct {
	name, summary string
	run           func(args []string, stdout, stderr io.Writer) error
}

func commands() []command {
	return []command{
		{"serve", "run the xDS server and the management API", runServe},
		{"endpoints", "list or change a cluster's broker endpoints (list|add|remove|set)", runEndpoints},
		{"listeners", "show the listeners, with their TLS and identity settings", runListeners},
		{"status", "show the Envoy nodes and the versions they accepted or rejected", runStatus},
		{"store", "copy the endpoint state between a state file and etcd (copy|show)", runStore},
		{"broker", "run an embedded MQTT broker that can require PROXY protocol", runBroker},
		{"run", "start brokers, the control plane and Envoy together, for local use", runAll},
		{"certs", "write a CA and the certificates for mutual TLS between Envoy and xDS", runCerts},
	}
}

func main() {
	os.Exit(realMain(os.Args[1:], os.Stdout, os.Stderr))
}

func realMain(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	for _, c := range commands() {
		if c.name == args[0] {
			err := c.run(args[1:], stdout, stderr)
			switch {
			case err == nil:
				return 0
			case errors.Is(err, flag.ErrHelp):
				return 0
			case errors.Is(err, errUsage):
				fmt.Fprintf(stderr, "mqtt-sticky %s: %v\n", c.name, err)
				return 2
			default:
				fmt.Fprintf(stderr, "mqtt-sticky %s: %v\n", c.name, err)
				return 1
			}
		}
	}
	fmt.Fprintf(stderr, "mqtt-sticky: unknown command %q\n\n", args[0])
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: mqtt-sticky <command> [flags]\n\ncommands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
	}
}

// parse parses flags that may come before, between or after positional
// arguments, and returns the positional ones.
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, fmt.Errorf("%w: %v", errUsage, err)
		}
		args = fs.Args()
		if len(args) == 0 {
			return positional, nil
		}
		positional = append(positional, args[0])
		args = args[1:]
	}
}

func envOr(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}
