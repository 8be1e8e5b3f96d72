package main

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/mqtt-sticky/mqtt-sticky/contract"
	"github.com/mqtt-sticky/mqtt-sticky/xds/model"
)

// TLS in the CLI: serve's check of the files a model names, and the TLS
// listener of `mqtt-sticky run --tls-dir DIR`: mutual TLS with
// DIR's server certificate and client CA, the client ID bound to the
// certificate's CN, and the CN sent to the brokers in the PROXY header.
// run starts Envoy on this host, so unlike serve it can check the files.

var runTLSFiles = []string{"server.crt", "server.key", "ca.crt"}

func (o *runOptions) checkTLS() error {
	if o.tlsDir == "" {
		return nil
	}
	abs, err := filepath.Abs(o.tlsDir)
	if err != nil {
		return err
	}
	o.tlsDir = abs
	for _, f := range runTLSFiles {
		if _, err := os.Stat(filepath.Join(o.tlsDir, f)); err != nil {
			return fmt.Errorf("%w: --tls-dir: %v (`make tls-example` creates a test CA and certificates in build/tls)", errUsage, err)
		}
	}
	if o.tlsPort < 1 || o.tlsPort > 65535 || o.tlsPort == o.listenPort {
		return fmt.Errorf("%w: --tls-port %d: want a free port other than --port", errUsage, o.tlsPort)
	}
	if model.ProxyProtocol(o.proxy) != model.ProxyV2 {
		return fmt.Errorf("%w: --tls-dir sends the certificate CN in a PROXY v2 header: use --proxy-protocol v2", errUsage)
	}
	return nil
}

func (o *runOptions) tlsListener() *model.Listener {
	if o.tlsDir == "" {
		return nil
	}
	return &model.Listener{
		Name: "mqtt-tls", Address: "0.0.0.0", Port: o.tlsPort, AccessLog: true,
		TLS: &model.TLS{
			CertFile:          filepath.Join(o.tlsDir, "server.crt"),
			KeyFile:           filepath.Join(o.tlsDir, "server.key"),
			ClientCAFile:      filepath.Join(o.tlsDir, "ca.crt"),
			RequireClientCert: true,
		},
		Filter: contract.Config{IdentityBinding: contract.BindingClientID, ProxyProtocolCN: true},
	}
}

func (o *runOptions) tlsBanner() string {
	if o.tlsDir == "" {
		return ""
	}
	return fmt.Sprintf("\n  MQTT over mutual TLS        127.0.0.1:%d  (certificates in %s; client ID must be the certificate's CN)", o.tlsPort, o.tlsDir)
}

// warnUnreadableTLSFiles logs the TLS files serve cannot read. The paths
// are on the Envoy host, which may be another machine or container, so this
// is only a warning; where Envoy cannot read them, it rejects the secret,
// and `mqtt-sticky status` shows the NACK.
func warnUnreadableTLSFiles(log *slog.Logger, m *model.Model) {
	check := func(owner, field, path string) {
		if path == "" {
			return
		}
		f, err := os.Open(path)
		if err != nil {
			log.Warn("TLS file not readable on this host; Envoy must be able to read it on its own", "of", owner, "field", field, "err", err)
			return
		}
		f.Close()
	}
	for _, l := range m.Listeners {
		if t := l.TLS; t != nil {
			owner := "listener " + l.Name
			check(owner, "cert_file", t.CertFile)
			check(owner, "key_file", t.KeyFile)
			check(owner, "client_ca_file", t.ClientCAFile)
		}
	}
	for _, c := range m.Clusters {
		if u := c.UpstreamTLS; u != nil {
			owner := "cluster " + c.Name
			check(owner, "ca_file", u.CAFile)
			check(owner, "cert_file", u.CertFile)
			check(owner, "key_file", u.KeyFile)
		}
	}
}
