package tests

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/mqtt-sticky/mqtt-sticky/internal/certs"
)

// xdsCerts runs `mqtt-sticky certs` into dir: a CA on the first run, a new
// server and client certificate on every run. The server certificate
// names xds (envoy/bootstrap-mtls.yaml's server name), the Kubernetes
// xDS Service's name, and 127.0.0.1.
func xdsCerts(t *testing.T, dir string) {
	t.Helper()
	out, err := exec.Command(cliPath, "certs", "--dir", dir, "--server-names", "xds,mqtt-sticky-xds.mqtt.svc.cluster.local,127.0.0.1",
		"--client", "envoy-mtls").CombinedOutput()
	if err != nil {
		t.Fatalf("mqtt-sticky certs: %v\n%s", err, out)
	}
}

// xdsTLSFlags are serve's flags for mutual TLS with the files in dir.
func xdsTLSFlags(dir string) []string {
	return []string{"--xds-tls-cert", filepath.Join(dir, certs.ServerFile), "--xds-tls-key", filepath.Join(dir, certs.ServerKeyFile),
		"--xds-tls-client-ca", filepath.Join(dir, certs.CAFile), "--xds-tls-require-client-cert"}
}

// tlsEnvoyBootstrap points the xds cluster's certificate, key and CA (of
// a bootstrap whose first cluster is xds) at the files in dir.
func tlsEnvoyBootstrap(t *testing.T, dir string) func(map[string]any) {
	return func(cfg map[string]any) {
		common := get(t, cfg, "static_resources", "clusters", 0, "transport_socket", "typed_config", "common_tls_context")
		for file, path := range map[string][]any{
			certs.ClientFile:    {"tls_certificates", 0, "certificate_chain", "filename"},
			certs.ClientKeyFile: {"tls_certificates", 0, "private_key", "filename"},
			certs.CAFile:        {"validation_context", "trusted_ca", "filename"},
		} {
			set(t, common, filepath.Join(dir, file), path...)
		}
	}
}

// xdsHandshake completes a TLS handshake with the xDS server, with the
// client certificate or without, and opens an ADS stream: it returns the
// server certificate's serial, or why the server refused.
func xdsHandshake(t *testing.T, addr, dir string, withCert bool) (*big.Int, error) {
	t.Helper()
	caPEM, err := os.ReadFile(filepath.Join(dir, certs.CAFile))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	var serial *big.Int
	cfg := &tls.Config{RootCAs: roots, ServerName: "xds", VerifyConnection: func(cs tls.ConnectionState) error {
		serial = cs.PeerCertificates[0].SerialNumber
		return nil
	}}
	if withCert {
		cert, err := tls.LoadX509KeyPair(filepath.Join(dir, certs.ClientFile), filepath.Join(dir, certs.ClientKeyFile))
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return serial, err
	}
	if err := stream.Send(&discovery.DiscoveryRequest{Node: &corev3.Node{Id: "go-client"}, TypeUrl: resource.ClusterType}); err != nil {
		return serial, err
	}
	_, err = stream.Recv()
	return serial, err
}

// plainADS asks for the clusters without TLS.
func plainADS(addr string) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return err
	}
	if err := stream.Send(&discovery.DiscoveryRequest{Node: &corev3.Node{Id: "go-client"}, TypeUrl: resource.ClusterType}); err != nil {
		return err
	}
	_, err = stream.Recv()
	return err
}

func serialOf(t *testing.T, certFile string) *big.Int {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(certFile, strings.TrimSuffix(certFile, ".crt")+".key")
	if err != nil {
		t.Fatal(err)
	}
	return pair.Leaf.SerialNumber
}

// xDS served the whole configuration to anyone. Now: the real Envoy gets
// its configuration over mutual TLS with envoy/bootstrap-mtls.yaml and the
// certificates `mqtt-sticky certs` issues; a client without a certificate
// is refused; a rotated server certificate serves the next connection
// without a restart, and Envoys keep connecting.
func TestXDSMutualTLS(t *testing.T) {
	dir := t.TempDir()
	xdsCerts(t, dir)
	brokers := startBrokers(t, 2)
	listenPort := freePort(t)
	cp := startControlPlane(t, fleetConfig(t, listenPort, brokers, healthOpts), filepath.Join(t.TempDir(), "state.json"), xdsTLSFlags(dir)...)

	envoy := startXDSEnvoyFrom(t, cp, "envoy-mtls", false, "bootstrap-mtls.yaml", tlsEnvoyBootstrap(t, dir))
	envoy.waitHosts(t, cp, brokers, 30*time.Second)
	if _, err := connectPaho(context.Background(), fmt.Sprintf("127.0.0.1:%d", listenPort), source(1), "mtls-client", 4); err != nil {
		t.Errorf("an MQTT client through the Envoy configured over mTLS: %v", err)
	}

	// Without a client certificate: refused, and not a node. (With TLS
	// 1.3 the client learns of it as a "certificate required" alert or a
	// closed connection, depending on timing.)
	if _, err := xdsHandshake(t, cp.xdsAddr, dir, false); status.Code(err) != codes.Unavailable {
		t.Errorf("a client without a certificate: %v, want the connection refused", err)
	}
	// Plaintext: refused too.
	if err := plainADS(cp.xdsAddr); err == nil {
		t.Error("a plaintext client got a response")
	}
	if out, err := exec.Command(cliPath, "status", "--api", "http://"+cp.apiAddr).CombinedOutput(); err != nil || strings.Contains(string(out), "go-client") {
		t.Errorf("status after refused clients: %v\n%s", err, out)
	}

	// Rotation: new files, same paths, no restart.
	first, err := xdsHandshake(t, cp.xdsAddr, dir, true)
	if err != nil || first.Cmp(serialOf(t, filepath.Join(dir, certs.ServerFile))) != 0 {
		t.Fatalf("with the client certificate: serial %v, %v", first, err)
	}
	xdsCerts(t, dir)
	rotated := serialOf(t, filepath.Join(dir, certs.ServerFile))
	if rotated.Cmp(first) == 0 {
		t.Fatal("mqtt-sticky certs did not issue a new server certificate")
	}
	if got, err := xdsHandshake(t, cp.xdsAddr, dir, true); err != nil || got.Cmp(rotated) != 0 {
		t.Errorf("after rotation: serial %v, %v; want the new certificate's %v", got, err, rotated)
	}
	second := startXDSEnvoyFrom(t, cp, "envoy-mtls-2", true, "bootstrap-mtls.yaml", tlsEnvoyBootstrap(t, dir))
	second.waitHosts(t, cp, brokers, 30*time.Second)
	envoy.waitHosts(t, cp, brokers, time.Second)
}

// A control plane whose xDS listens beyond loopback without TLS does not
// start (it started silently and served everything to anyone).
func TestXDSBeyondLoopbackNeedsTLS(t *testing.T) {
	cmd := exec.Command(cliPath, "serve", "--xds", "0.0.0.0:0", "--api", "127.0.0.1:0", "--no-state")
	done := make(chan struct{})
	var out []byte
	var err error
	go func() { out, err = cmd.CombinedOutput(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("serve --xds 0.0.0.0:0 without TLS kept running:\n%s", out)
	}
	if cmd.ProcessState.ExitCode() != 2 || !strings.Contains(string(out), "without TLS") {
		t.Errorf("exit %d (%v):\n%s", cmd.ProcessState.ExitCode(), err, out)
	}
}
