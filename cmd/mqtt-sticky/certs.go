package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/mqtt-sticky/mqtt-sticky/internal/certs"
)

const certsUsage = `usage: mqtt-sticky certs --dir DIR [flags]

Writes the certificates for mutual TLS between Envoy and the xDS server:
a CA (created once, then kept), and a new server certificate and a new
client certificate signed by it on every run. Running it again rotates
the two: the control plane picks up its new certificate on the next
connection, without a restart.

  DIR/ca.crt, DIR/ca.key          the CA (the key stays here)
  DIR/server.crt, DIR/server.key  for serve --xds-tls-cert/--xds-tls-key
  DIR/client.crt, DIR/client.key  for Envoy's xds cluster

serve takes DIR/ca.crt as --xds-tls-client-ca, and Envoy as its trusted CA.
Deployments with their own PKI issue these from it instead.

flags:`

func runCerts(args []string, stdout, stderr io.Writer) error {
	var dir, serverNames, client string
	var keyUID int
	fs := flag.NewFlagSet("certs", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprintln(stderr, certsUsage); fs.PrintDefaults() }
	fs.StringVar(&dir, "dir", "", "directory for the files (created if missing)")
	fs.StringVar(&serverNames, "server-names", "localhost,127.0.0.1", "comma-separated DNS names and IP addresses Envoys reach the xDS server by")
	fs.StringVar(&client, "client", "envoy", "the client certificate's name (its CN)")
	fs.IntVar(&keyUID, "client-key-uid", -1, "make this user the owner of the client key (Envoy's official image runs as uid 101)")
	if rest, err := parse(fs, args); err != nil {
		return err
	} else if len(rest) > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, rest[0])
	}
	if dir == "" {
		return fmt.Errorf("%w: --dir is required", errUsage)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	ca, err := loadOrCreateCA(dir, stdout)
	if err != nil {
		return err
	}
	server := certs.Spec{Server: true}
	for _, n := range strings.Split(serverNames, ",") {
		if ip := net.ParseIP(n); ip != nil {
			server.IPs = append(server.IPs, ip)
		} else {
			server.DNS = append(server.DNS, n)
		}
	}
	server.CN = strings.Split(serverNames, ",")[0]
	if err := issue(ca, server, dir, "server", -1); err != nil {
		return err
	}
	if err := issue(ca, certs.Spec{CN: client}, dir, "client", keyUID); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "issued %s (for %s) and %s (for %s) in %s\n", certs.ServerFile, serverNames, certs.ClientFile, client, dir)
	return nil
}

// issue writes a new certificate and key as <dir>/<name>.crt and .key:
// the certificate readable by all (Envoy may run as another user), the
// key by its owner, keyUID when it is not -1.
func issue(ca *certs.CA, spec certs.Spec, dir, name string, keyUID int) error {
	pair, err := ca.Issue(spec)
	if err != nil {
		return err
	}
	certPath, keyPath, err := pair.Write(dir, name)
	if err != nil {
		return err
	}
	if err := os.Chmod(certPath, 0o644); err != nil {
		return err
	}
	if keyUID != -1 {
		return os.Chown(keyPath, keyUID, -1)
	}
	return nil
}

func loadOrCreateCA(dir string, out io.Writer) (*certs.CA, error) {
	ca, err := certs.LoadCA(filepath.Join(dir, certs.CAFile), filepath.Join(dir, certs.CAKeyFile))
	if !errors.Is(err, fs.ErrNotExist) {
		return ca, err
	}
	if ca, err = certs.NewCA("mqtt-sticky xDS CA"); err != nil {
		return nil, err
	}
	certPath, _, err := ca.Write(dir, "ca")
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(certPath, 0o644); err != nil {
		return nil, err
	}
	fmt.Fprintf(out, "created a CA in %s\n", certPath)
	return ca, nil
}
