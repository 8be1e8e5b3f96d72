package tests

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	paho3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/mqtt-sticky/mqtt-sticky/filter/mqtt"
	"github.com/mqtt-sticky/mqtt-sticky/internal/broker"
	"github.com/mqtt-sticky/mqtt-sticky/internal/certs"
	"github.com/mqtt-sticky/mqtt-sticky/internal/envoyproc"
)

// pki is a test's certificates: a CA for devices and the server, a
// foreign CA, and files on disk the way an operator lays them out. The
// server certificate lives in a Kubernetes-style directory, where the
// files are symlinks through ..data, so rotate can swap every file at
// once.
type pki struct {
	dir       string
	ca        *certs.CA
	foreign   *certs.CA
	caFile    string
	serverDir string // watched by Envoy
	serverCrt string // serverDir/server.crt -> ..data/server.crt
	serverKey string
	version   int
}

const serverCN = "mqtt-sticky-test-server"

func newPKI(t testing.TB) *pki {
	t.Helper()
	ca, err := certs.NewCA("mqtt-sticky test CA")
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := certs.NewCA("some other CA")
	if err != nil {
		t.Fatal(err)
	}
	p := &pki{dir: t.TempDir(), ca: ca, foreign: foreign}
	caDir := filepath.Join(p.dir, "ca")
	p.serverDir = filepath.Join(p.dir, "server")
	for _, d := range []string{caDir, p.serverDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	p.caFile = filepath.Join(caDir, "ca.crt")
	if err := os.WriteFile(p.caFile, ca.PEM, 0o644); err != nil {
		t.Fatal(err)
	}
	p.serverCrt, p.serverKey = filepath.Join(p.serverDir, "server.crt"), filepath.Join(p.serverDir, "server.key")
	for _, f := range []string{"server.crt", "server.key"} {
		if err := os.Symlink(filepath.Join("..data", f), filepath.Join(p.serverDir, f)); err != nil {
			t.Fatal(err)
		}
	}
	p.rotate(t, serverCN+"-1")
	return p
}

// rotate issues a new server certificate with the given CN and swaps it in
// as Kubernetes updates a mounted secret: the files go into a new
// directory, and one rename of the ..data symlink switches both.
func (p *pki) rotate(t testing.TB, cn string) {
	t.Helper()
	pair, err := p.ca.Issue(certs.Spec{CN: cn, DNS: []string{"localhost"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Server: true})
	if err != nil {
		t.Fatal(err)
	}
	p.version++
	version := fmt.Sprintf("..v%d", p.version)
	if err := os.Mkdir(filepath.Join(p.serverDir, version), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, _, err := pair.Write(filepath.Join(p.serverDir, version), "server"); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(p.serverDir, "..data_tmp")
	if err := os.Symlink(version, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(p.serverDir, "..data")); err != nil {
		t.Fatal(err)
	}
}

// device issues a client certificate and writes it, returning its paths.
func (p *pki) device(t testing.TB, name string, spec certs.Spec) devCert {
	t.Helper()
	return p.issue(t, p.ca, name, spec)
}

func (p *pki) issue(t testing.TB, ca *certs.CA, name string, spec certs.Spec) devCert {
	t.Helper()
	pair, err := ca.Issue(spec)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(p.dir, "devices")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	crt, key, err := pair.Write(dir, name)
	if err != nil {
		t.Fatal(err)
	}
	tc, err := pair.TLS()
	if err != nil {
		t.Fatal(err)
	}
	return devCert{name: name, cert: crt, key: key, tls: tc}
}

// devCert is a client certificate on disk and in memory.
type devCert struct {
	name      string
	cert, key string
	tls       tls.Certificate
}

// clientTLS is the TLS config of a client trusting the test CA, with dev's
// certificate when it has one. The certificate is sent even when the
// server's list of acceptable CAs does not name its issuer (Go's client
// would otherwise send none), so a foreign certificate reaches Envoy's
// verification. Sessions are not resumed: every connection shows the
// server certificate the handshake sent.
func (p *pki) clientTLS(dev *devCert) *tls.Config {
	c := &tls.Config{RootCAs: p.ca.Pool(), ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
	if dev != nil {
		cert := dev.tls
		c.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }
	}
	return c
}

// dialTLS opens a TLS connection to addr from src and completes the
// handshake, returning the server's leaf certificate.
func dialTLS(ctx context.Context, src net.IP, addr string, cfg *tls.Config) (*tls.Conn, *x509.Certificate, error) {
	raw, err := dialFrom(ctx, src, addr)
	if err != nil {
		return nil, nil, err
	}
	c := tls.Client(raw, cfg)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if err := c.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, nil, err
	}
	c.SetDeadline(time.Time{})
	return c, c.ConnectionState().PeerCertificates[0], nil
}

// connackOver sends a CONNECT on an open connection and returns the
// CONNACK's return or reason code, or an error when the connection closes
// without one. In TLS 1.3 a refused client certificate only shows here: the
// client's handshake ends before the server has checked it.
func connackOver(c net.Conn, level mqtt.Level, clientID string) (byte, error) {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write(rawConnect(level, clientID)); err != nil {
		return 0, err
	}
	typ, body, err := readPacket(bufio.NewReader(c))
	if err != nil {
		return 0, err
	}
	if typ != 0x20 || len(body) < 2 {
		return 0, fmt.Errorf("got packet %#x % x, want CONNACK", typ, body)
	}
	return body[1], nil
}

// connectPahoTLS is connectPaho over TLS: MQTT 3.1.1 with paho.mqtt.golang
// or 5.0 with paho.golang, from src. It returns the CONNACK code with the
// error when the broker (or the filter) refused.
func connectPahoTLS(ctx context.Context, addr string, src net.IP, cfg *tls.Config, clientID string, version int) (attempt, byte, error) {
	if version == 5 {
		conn, _, err := dialTLS(ctx, src, addr, cfg)
		if err != nil {
			return attempt{}, 0, err
		}
		defer conn.Close()
		c := paho.NewClient(paho.ClientConfig{ClientID: clientID, Conn: conn})
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		ack, err := c.Connect(cctx, &paho.Connect{ClientID: clientID, KeepAlive: 30, CleanStart: true})
		if ack != nil && ack.ReasonCode != 0 {
			return attempt{}, ack.ReasonCode, fmt.Errorf("client %q: CONNACK reason %#x", clientID, ack.ReasonCode)
		}
		if err != nil {
			return attempt{}, 0, fmt.Errorf("client %q: %w", clientID, err)
		}
		local := conn.LocalAddr().String()
		_ = c.Disconnect(&paho.Disconnect{ReasonCode: 0})
		return attempt{clientID: clientID, local: local, version: 5}, 0, nil
	}
	var local string
	opts := paho3.NewClientOptions().
		AddBroker("tls://" + addr).
		SetClientID(clientID).
		SetProtocolVersion(4).
		SetCleanSession(true).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetConnectTimeout(10 * time.Second).
		SetCustomOpenConnectionFn(func(uri *url.URL, _ paho3.ClientOptions) (net.Conn, error) {
			c, _, err := dialTLS(ctx, src, uri.Host, cfg)
			if err == nil {
				local = c.LocalAddr().String()
			}
			return c, err
		})
	c := paho3.NewClient(opts)
	tok := c.Connect()
	if !tok.WaitTimeout(15 * time.Second) {
		return attempt{}, 0, fmt.Errorf("client %q: no CONNACK within 15s", clientID)
	}
	if err := tok.Error(); err != nil {
		return attempt{}, tok.(*paho3.ConnectToken).ReturnCode(), fmt.Errorf("client %q: %w", clientID, err)
	}
	c.Disconnect(0)
	return attempt{clientID: clientID, local: local, version: 4}, 0, nil
}

// tlsStack is Envoy running envoy/static.yaml with both of its listeners:
// plaintext on addr, mutual TLS on tlsAddr.
type tlsStack struct {
	*staticStack
	tlsAddr string
	pki     *pki
}

// startStaticTLS starts envoy/static.yaml with its TLS listener, its
// certificates from p, and tlsFilterJSON as that listener's filter config
// when not empty.
func startStaticTLS(t *testing.T, brokers []*broker.Broker, p *pki, tlsFilterJSON string) *tlsStack {
	t.Helper()
	port := freePort(t)
	s := startStatic(t, brokers, "", withStaticTLSListener(t, p, port, tlsFilterJSON))
	return &tlsStack{staticStack: s, tlsAddr: fmt.Sprintf("127.0.0.1:%d", port), pki: p}
}

// withStaticTLSListener adds envoy/static.yaml's TLS listener (which
// renderStatic leaves out) on port, with its SDS files pointing at p.
func withStaticTLSListener(t *testing.T, p *pki, port int, filterJSON string) func(map[string]any) {
	return func(cfg map[string]any) {
		t.Helper()
		l := get(t, staticConfig(t), "static_resources", "listeners", 1).(map[string]any)
		if l["name"] != "mqtt-tls" {
			t.Fatalf("envoy/static.yaml: listener 1 is %v, want mqtt-tls", l["name"])
		}
		set(t, l, "127.0.0.1", "address", "socket_address", "address")
		set(t, l, port, "address", "socket_address", "port_value")
		if filterJSON != "" {
			set(t, l, filterJSON, "filter_chains", 0, "filters", 0, "typed_config", "filter_config", "value")
		}
		sdsDir := filepath.Join(p.dir, "sds")
		if err := os.MkdirAll(sdsDir, 0o755); err != nil {
			t.Fatal(err)
		}
		writeSDS(t, filepath.Join(sdsDir, "server-cert.yaml"), fmt.Sprintf(`resources:
- "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret
  name: server_cert
  tls_certificate:
    certificate_chain: {filename: %s}
    private_key: {filename: %s}
    watched_directory: {path: %s}
`, p.serverCrt, p.serverKey, p.serverDir))
		writeSDS(t, filepath.Join(sdsDir, "client-ca.yaml"), fmt.Sprintf(`resources:
- "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret
  name: client_ca
  validation_context:
    trusted_ca: {filename: %s}
`, p.caFile))
		common := []any{"filter_chains", 0, "transport_socket", "typed_config", "common_tls_context"}
		certSource := append(append([]any{}, common...), "tls_certificate_sds_secret_configs", 0, "sds_config", "path_config_source")
		set(t, l, filepath.Join(sdsDir, "server-cert.yaml"), append(certSource, "path")...)
		set(t, l, sdsDir, append(certSource, "watched_directory", "path")...)
		caSource := append(append([]any{}, common...), "validation_context_sds_secret_config", "sds_config", "path_config_source")
		set(t, l, filepath.Join(sdsDir, "client-ca.yaml"), append(caSource, "path")...)
		set(t, l, sdsDir, append(caSource, "watched_directory", "path")...)
		listeners := get(t, cfg, "static_resources", "listeners").([]any)
		set(t, cfg, append(listeners, l), "static_resources", "listeners")
	}
}

func writeSDS(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// listenerStats returns an Envoy listener's stats whose names contain sub,
// keyed without the listener prefix (e.g. "ssl.connection_error").
func listenerStats(t testing.TB, p *envoyproc.Process, addr string) map[string]int64 {
	t.Helper()
	prefix := "listener." + strings.ReplaceAll(addr, ":", "_") + "."
	st := envoyStats(t, p, prefix)
	out := map[string]int64{}
	for k, v := range st {
		out[strings.TrimPrefix(k, prefix)] = v
	}
	return out
}

// tlsPubSub is a subscriber and a publisher over TLS that stream QoS 1
// messages until stopped, and count what was lost: the bystander whose
// stream must survive other clients' refusals and a certificate rotation.
type tlsPubSub struct {
	sub, pub paho3.Client
	topic    string
	lost     chan error
	sent     []string
	count    atomic.Int64 // len(sent), for waitSent
	received map[string]bool
	got      chan string
	stop     chan struct{}
	done     chan error
}

func newTLSPubSub(t *testing.T, addr string, cfgSub, cfgPub *tls.Config, subID, pubID, topic string) *tlsPubSub {
	t.Helper()
	ps := &tlsPubSub{topic: topic, lost: make(chan error, 2), received: map[string]bool{}, got: make(chan string, 100000),
		stop: make(chan struct{}), done: make(chan error, 1)}
	client := func(id string, cfg *tls.Config) paho3.Client {
		opts := paho3.NewClientOptions().AddBroker("tls://" + addr).SetClientID(id).SetTLSConfig(cfg).
			SetAutoReconnect(false).SetConnectRetry(false).SetKeepAlive(30 * time.Second).
			SetConnectionLostHandler(func(_ paho3.Client, err error) { ps.lost <- fmt.Errorf("%s lost its connection: %w", id, err) })
		c := paho3.NewClient(opts)
		if tok := c.Connect(); !tok.WaitTimeout(15*time.Second) || tok.Error() != nil {
			t.Fatalf("connect %s: %v", id, tok.Error())
		}
		t.Cleanup(func() { c.Disconnect(0) })
		return c
	}
	ps.sub = client(subID, cfgSub)
	tok := ps.sub.Subscribe(topic, 1, func(_ paho3.Client, m paho3.Message) { ps.got <- string(m.Payload()) })
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	ps.pub = client(pubID, cfgPub)
	return ps
}

// run publishes a message every interval until finish is called.
func (ps *tlsPubSub) run(interval time.Duration) {
	go func() {
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-ps.stop:
				ps.done <- nil
				return
			case <-tick.C:
			}
			payload := fmt.Sprintf("m-%06d", i)
			tok := ps.pub.Publish(ps.topic, 1, false, payload)
			if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
				ps.done <- fmt.Errorf("publish %s: %v", payload, tok.Error())
				return
			}
			ps.sent = append(ps.sent, payload)
			ps.count.Add(1)
		}
	}()
}

// waitSent waits until at least n messages were published, so a stream
// spans what the test does around it.
func (ps *tlsPubSub) waitSent(t *testing.T, n int64) {
	t.Helper()
	waitFor(t, 30*time.Second, fmt.Sprintf("bystander publishing %d messages", n), func() bool { return ps.count.Load() >= n })
}

// finish stops publishing and checks that every message published arrived
// and that neither client lost its connection.
func (ps *tlsPubSub) finish(t *testing.T) {
	t.Helper()
	close(ps.stop)
	if err := <-ps.done; err != nil {
		t.Fatal(err)
	}
	deadline := time.After(10 * time.Second)
	for len(ps.received) < len(ps.sent) {
		select {
		case m := <-ps.got:
			ps.received[m] = true
		case <-deadline:
			missing := 0
			for _, m := range ps.sent {
				if !ps.received[m] {
					missing++
				}
			}
			t.Fatalf("bystander: %d of %d QoS 1 messages never arrived", missing, len(ps.sent))
		}
	}
	select {
	case err := <-ps.lost:
		t.Fatal(err)
	default:
	}
	if len(ps.sent) == 0 {
		t.Fatal("bystander published nothing")
	}
	t.Logf("bystander: %d QoS 1 messages, all delivered, no connection lost", len(ps.sent))
}
