package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/mqtt-sticky/mqtt-sticky/api"
)

// runListeners prints the served listeners: address, cluster, TLS and the
// identity settings of the filter.
func runListeners(args []string, stdout, stderr io.Writer) error {
	return runQuery(args, stdout, stderr, "listeners", (*api.Client).Listeners, printListeners)
}

func printListeners(tw *tabwriter.Writer, list *api.ListenerList) {
	fmt.Fprintf(tw, "version %d, %d listener(s)\n", list.Version, len(list.Listeners))
	fmt.Fprintln(tw, "NAME\tADDRESS\tCLUSTER\tTLS\tHASH KEY\tIDENTITY BINDING")
	for _, l := range list.Listeners {
		binding := string(l.Filter.IdentityBinding)
		if binding != "off" {
			binding += " = " + string(l.Filter.IdentitySource)
		}
		fmt.Fprintf(tw, "%s\t%s:%d\t%s\t%s\t%s\t%s\n", l.Name, l.Address, l.Port, l.Cluster, tlsSummary(l), l.Filter.HashKey, binding)
	}
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
