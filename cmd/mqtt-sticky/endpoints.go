package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/mqtt-sticky/mqtt-sticky/api"
	"github.com/mqtt-sticky/mqtt-sticky/xds/control"
	"github.com/mqtt-sticky/mqtt-sticky/xds/model"
	"github.com/mqtt-sticky/mqtt-sticky/xds/server"
)

const endpointsUsage = `usage:
  mqtt-sticky endpoints list                                   [flags]
  mqtt-sticky endpoints add    [NAME@]ADDRESS:PORT [--weight N] [--name NAME] [flags]
  mqtt-sticky endpoints remove ADDRESS:PORT | NAME              [flags]
  mqtt-sticky endpoints set    [NAME@]ADDRESS:PORT[=WEIGHT]...  [flags]   (replaces the whole set)

IPv6 addresses go in brackets: [fd00::1]:1883. A NAME is the broker's
stable identity: the consistent hash uses it instead of the address, so a
broker that returns on a new address under the same name keeps its
clients (emqx-0@10.0.0.11:1883).

A change made after reading the list can be made conditional on nobody
having changed anything since: list prints the version, and
--if-version N applies the change only while the version is still N
(the API's If-Match); otherwise it fails with HTTP 412 and changes nothing.

flags:`

type clientFlags struct {
	api, token, tokenFile, cluster string
	json                           bool
}

func (c *clientFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.api, "api", envOr("MQTT_STICKY_API", "http://127.0.0.1:8080"), "management API URL (env MQTT_STICKY_API)")
	fs.StringVar(&c.token, "token", envOr(api.TokenEnv, ""), "API bearer token (env "+api.TokenEnv+"; the flag shows it in ps, prefer the variable or --token-file)")
	fs.StringVar(&c.tokenFile, "token-file", "", "file holding the API bearer token")
	fs.StringVar(&c.cluster, "cluster", "brokers", "broker cluster")
	fs.BoolVar(&c.json, "json", false, "print the API's JSON answer")
}

func (c *clientFlags) client() (*api.Client, error) {
	base := c.api
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	token := c.token
	if c.tokenFile != "" {
		data, err := os.ReadFile(c.tokenFile)
		if err != nil {
			return nil, fmt.Errorf("--token-file: %w", err)
		}
		token = strings.TrimSpace(string(data))
	}
	return &api.Client{BaseURL: base, Token: token}, nil
}

func runEndpoints(args []string, stdout, stderr io.Writer) error {
	var cf clientFlags
	var weight uint
	var name string
	var ifVersion uint64
	fs := flag.NewFlagSet("endpoints", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprintln(stderr, endpointsUsage); fs.PrintDefaults() }
	cf.register(fs)
	fs.UintVar(&weight, "weight", 1, "weight of the endpoint to add (1-128)")
	fs.StringVar(&name, "name", "", "name of the endpoint to add (its stable identity); same as NAME@ADDRESS:PORT")
	fs.Uint64Var(&ifVersion, "if-version", control.AnyVersion, "change only if the served version is still N, as `endpoints list` printed it (0: whatever the version)")
	rest, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(rest) == 0 {
		fs.Usage()
		return fmt.Errorf("%w: missing subcommand: list, add, remove or set", errUsage)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, err := cf.client()
	if err != nil {
		return err
	}
	var list *api.EndpointList
	switch sub, operands := rest[0], rest[1:]; sub {
	case "list":
		if len(operands) != 0 {
			return fmt.Errorf("%w: list takes no arguments", errUsage)
		}
		if ifVersion != control.AnyVersion {
			return fmt.Errorf("%w: --if-version applies to add, remove and set", errUsage)
		}
		list, err = c.Endpoints(ctx, cf.cluster)
	case "add":
		if len(operands) != 1 {
			return fmt.Errorf("%w: add takes one [NAME@]ADDRESS:PORT", errUsage)
		}
		e, perr := parseEndpoint(operands[0])
		if perr != nil {
			return perr
		}
		if e.Weight == 0 {
			e.Weight = uint32(weight)
		}
		if name != "" && e.Name != "" && name != e.Name {
			return fmt.Errorf("%w: --name %q and %q name the endpoint twice", errUsage, name, e.Name)
		} else if name != "" {
			e.Name = name
		}
		list, err = c.AddEndpoint(ctx, cf.cluster, e, ifVersion)
	case "remove":
		if len(operands) != 1 {
			return fmt.Errorf("%w: remove takes one ADDRESS:PORT or NAME", errUsage)
		}
		e, perr := model.ParseEndpointRef(operands[0])
		if perr != nil {
			return fmt.Errorf("%w: %v", errUsage, perr)
		}
		list, err = c.RemoveEndpoint(ctx, cf.cluster, e, ifVersion)
	case "set":
		eps := []model.Endpoint{}
		for _, op := range operands {
			e, perr := parseEndpoint(op)
			if perr != nil {
				return perr
			}
			eps = append(eps, e)
		}
		list, err = c.SetEndpoints(ctx, cf.cluster, eps, ifVersion)
	default:
		return fmt.Errorf("%w: unknown subcommand %q: use list, add, remove or set", errUsage, sub)
	}
	if err != nil {
		return err
	}
	if cf.json {
		return printJSON(stdout, list)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "cluster %s, version %d, %d endpoint(s)\n", list.Cluster, list.Version, len(list.Endpoints))
	if len(list.Endpoints) > 0 {
		fmt.Fprintln(tw, "NAME\tADDRESS\tPORT\tWEIGHT")
	}
	for _, e := range list.Endpoints {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\n", orDash(e.Name), e.Address, e.Port, e.Weight)
	}
	return tw.Flush()
}

// parseEndpoint reads ADDRESS:PORT[=WEIGHT], so the user hears about a
// typo before any request is sent.
func parseEndpoint(s string) (model.Endpoint, error) {
	e, err := model.ParseEndpoint(s)
	if err != nil {
		return model.Endpoint{}, fmt.Errorf("%w: %v", errUsage, err)
	}
	return e, nil
}

func runStatus(args []string, stdout, stderr io.Writer) error {
	return runQuery(args, stdout, stderr, "status", (*api.Client).Status, printStatus)
}

func printStatus(tw *tabwriter.Writer, st *api.Status) {
	if st.Replica != "" {
		fmt.Fprintf(tw, "replica %s: ", st.Replica)
	}
	fmt.Fprintf(tw, "serving version %d; %d node(s)\n", st.Version, len(st.Nodes))
	if st.Partial != "" {
		fmt.Fprintf(tw, "warning: %s\n", st.Partial)
	}
	// The replica column only means something when several share a store.
	replica := func(n server.NodeStatus) string {
		if st.Replica == "" {
			return ""
		}
		return orDash(n.Replica) + "\t"
	}
	if len(st.Nodes) > 0 {
		fmt.Fprintf(tw, "NODE\t%sCONNECTED\tLISTENERS\tFILTERS\tCLUSTERS\tENDPOINTS\tSECRETS\tLAST NACK\n", replica(server.NodeStatus{Replica: "REPLICA"}))
	}
	for _, n := range st.Nodes {
		nack := "-"
		for kind, r := range n.Resources {
			if r.NackMessage != "" {
				nack = kind + " v" + r.NackedVersion + ": " + r.NackMessage
			}
		}
		fmt.Fprintf(tw, "%s\t%s%v\t%s\t%s\t%s\t%s\t%s\t%s\n", n.ID, replica(n), n.Connected,
			orDash(n.Resources["listeners"].AckedVersion), orDash(n.Resources["filters"].AckedVersion), orDash(n.Resources["clusters"].AckedVersion),
			orDash(n.Resources["endpoints"].AckedVersion), orDash(n.Resources["secrets"].AckedVersion), nack)
	}
	for _, c := range st.Clusters {
		printClusterStatus(tw, c)
	}
}

// runQuery runs a command that takes no arguments and prints what one API
// call returns: the API's JSON with --json, else a table.
func runQuery[T any](args []string, stdout, stderr io.Writer, name string, call func(*api.Client, context.Context) (T, error), table func(*tabwriter.Writer, T)) error {
	var cf clientFlags
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
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
	v, err := call(c, ctx)
	if err != nil {
		return err
	}
	if cf.json {
		return printJSON(stdout, v)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	table(tw, v)
	return tw.Flush()
}

// printClusterStatus prints a cluster's discovery and health lines, when
// it has them.
func printClusterStatus(w io.Writer, c api.ClusterStatus) {
	if d := c.Discovery; d != nil {
		line := fmt.Sprintf("cluster %s: DNS %s %s via %s: %d endpoint(s)", c.Name, strings.ToUpper(d.Record), d.Name, d.Resolver, d.Records)
		if d.LastSuccess != nil {
			line += ", last good answer " + d.LastSuccess.Format(time.RFC3339)
		}
		if d.Failing > 0 {
			line += fmt.Sprintf("; %d failed lookup(s), keeping the last good endpoints: %s", d.Failing, d.LastError)
		}
		fmt.Fprintln(w, line)
	}
	if h := c.Health; h != nil {
		fmt.Fprintf(w, "cluster %s: healthy endpoints by node %v of %d\n", c.Name, h.Healthy, h.Endpoints)
		if h.NeverHealthy {
			fmt.Fprintf(w, "cluster %s: WARNING: %s\n", c.Name, h.Message)
		}
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
