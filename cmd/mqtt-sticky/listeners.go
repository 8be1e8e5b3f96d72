package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/mqtt-sticky/mqtt-sticky/api"
)

// runListeners prints the served listeners: address, cluster, TLS and the
// identity settings of the filter.
func runListeners(args []string, stdout, stderr io.Writer) error {
	var cf clientFlags
	fs := flag.NewFlagSet("listeners", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cf.register(fs)
	if rest, err := parse(fs, args); err != nil {
		return err
	} else if len(rest) > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, rest[0])
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, err := cf.client()
	if err != nil {
		return err
	}
	list, err := c.Listeners(ctx)
	if err != nil {
		return err
	}
	if cf.json {
		return printJSON(stdout, list)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "version %d, %d listener(s)\n", list.Version, len(list.Listeners))
	fmt.Fprintln(tw, "NAME\tADDRESS\tCLUSTER\tTLS\tHASH KEY\tIDENTITY BINDING")
	for _, l := range list.Listeners {
		binding := string(l.Filter.IdentityBinding)
		if binding != "off" {
			binding += " = " + string(l.Filter.IdentitySource)
		}
		fmt.Fprintf(tw, "%s\t%s:%d\t%s\t%s\t%s\t%s\n", l.Name, l.Address, l.Port, l.Cluster, tlsSummary(l), l.Filter.HashKey, binding)
	}
	return tw.Flush()
}

func tlsSummary(l api.Listener) string {
	t := l.TLS
	if t == nil {
		return "off"
	}
	parts := []string{"TLS " + string(t.MinVersion) + "+"}
	switch {
	case t.RequireClientCert:
		parts = append(parts, "client certificate required")
	case t.ClientCAFile != "":
		parts = append(parts, "client certificate optional")
	}
	if l.Filter.ProxyProtocolCN {
		parts = append(parts, "CN to brokers")
	}
	return strings.Join(parts, ", ")
}
