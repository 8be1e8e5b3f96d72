package tests

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mqtt-sticky/mqtt-sticky/internal/broker"
	"github.com/mqtt-sticky/mqtt-sticky/internal/certs"
)

// tlsBrokerAddr is the fixed address of TLS broker i (from 1).
func tlsBrokerAddr(i int) string { return fmt.Sprintf("%s.%d:18841", brokerNet(), i) }

// brokerSNI is the name the TLS brokers' certificate carries, and the SNI
// the control plane has Envoy send and verify.
const brokerSNI = "brokers.mqtt-sticky.test"

// tlsBrokers are brokers that read a PROXY header, then run TLS with their
// own CA, and require a client certificate from that CA: the stand-in for
// EMQX's ssl listener with proxy_protocol and verify_peer.
type tlsBrokers struct {
	brokers    []*broker.Broker
	caFile     string
	clientCert string // Envoy's client certificate towards the brokers
	clientKey  string
	clientCN   string
}

func startTLSBrokers(t *testing.T, n int) *tlsBrokers {
	t.Helper()
	ca, err := certs.NewCA("broker CA")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	tb := &tlsBrokers{caFile: filepath.Join(dir, "broker-ca.crt"), clientCN: "envoy-upstream"}
	if err := os.WriteFile(tb.caFile, ca.PEM, 0o644); err != nil {
		t.Fatal(err)
	}
	server, err := ca.Issue(certs.Spec{CN: "broker", DNS: []string{brokerSNI}, Server: true})
	if err != nil {
		t.Fatal(err)
	}
	client, err := ca.Issue(certs.Spec{CN: tb.clientCN})
	if err != nil {
		t.Fatal(err)
	}
	if tb.clientCert, tb.clientKey, err = client.Write(dir, "envoy-upstream"); err != nil {
		t.Fatal(err)
	}
	serverTLS, err := server.TLS()
	if err != nil {
		t.Fatal(err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{serverTLS}, ClientCAs: ca.Pool(), ClientAuth: tls.RequireAndVerifyClientCert}
	var peers []string
	for i := range n {
		peers = append(peers, fmt.Sprintf("%s.%d:28841", brokerNet(), i+1))
	}
	for i := range n {
		b, err := broker.Start(broker.Options{Name: fmt.Sprintf("tls-b%d", i+1), Listen: tlsBrokerAddr(i + 1),
			ProxyProtocol: broker.ProxyRequired, TLS: cfg, Logger: testLogger(t), ClusterListen: peers[i], Peers: peers})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		tb.brokers = append(tb.brokers, b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, b := range tb.brokers {
		if err := b.WaitPeers(ctx); err != nil {
			t.Fatal(err)
		}
	}
	return tb
}

// The control plane's model, end to end: a plaintext and a mutual-TLS
// listener on one cluster whose brokers speak PROXY then TLS and require
// Envoy's client certificate. The MQTT health checks pass through that
// socket; a device's connection reaches its broker over TLS with its real
// address and CN in the PROXY header; the plaintext listener maps the same
// client ID to the same broker; the access log names the identity. Then the
// server certificate files are swapped under load: new handshakes get the
// new certificate, no handshake fails, established sessions keep streaming,
// and the listener is not touched.
func TestTLSThroughControlPlane(t *testing.T) {
	p := newPKI(t)
	tb := startTLSBrokers(t, 3)
	plainPort, tlsPort := freePort(t), freePort(t)
	var eps []string
	for _, b := range tb.brokers {
		host, port := splitHostPort(t, b.Addr())
		eps = append(eps, fmt.Sprintf("  - {address: %s, port: %d}", host, port))
	}
	cfg := fmt.Sprintf(`listeners:
- name: mqtt
  address: 127.0.0.1
  port: %d
- name: mqtts
  address: 127.0.0.1
  port: %d
  access_log: true
  tls: {cert_file: %s, key_file: %s, client_ca_file: %s, require_client_cert: true, min_version: "1.3", alpn: [mqtt]}
  filter: {identity_binding: client_id, proxy_protocol_cn: true}
clusters:
- name: brokers
%s
  upstream_tls: {ca_file: %s, sni: %s, cert_file: %s, key_file: %s}
  endpoints:
%s
`, plainPort, tlsPort, p.serverCrt, p.serverKey, p.caFile, healthOpts, tb.caFile, brokerSNI, tb.clientCert, tb.clientKey, strings.Join(eps, "\n"))
	cfgPath := filepath.Join(t.TempDir(), "mqtt-sticky.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	cp := startControlPlane(t, cfgPath, filepath.Join(t.TempDir(), "state.json"))
	envoy := startXDSEnvoy(t, cp, "envoy-tls", false)
	envoy.waitHosts(t, cp, tb.brokers, 30*time.Second) // MQTT probes over PROXY + TLS + client certificate
	plainAddr, tlsAddr := fmt.Sprintf("127.0.0.1:%d", plainPort), fmt.Sprintf("127.0.0.1:%d", tlsPort)
	ctx := context.Background()

	devs := map[string]devCert{}
	for i := range 6 {
		name := fmt.Sprintf("device-%d", i)
		devs[name] = p.device(t, name, certs.Spec{CN: name})
	}

	t.Run("device reaches its broker over TLS with its address and CN", func(t *testing.T) {
		d := devs["device-0"]
		a, _, err := connectPahoTLS(ctx, tlsAddr, source(3), p.clientTLS(&d), d.name, 5)
		if err != nil {
			t.Fatal(err)
		}
		// A broker records a client before it answers the CONNECT.
		var rec broker.Connection
		for _, b := range tb.brokers {
			for _, c := range b.Connections() {
				if c.ClientID == d.name {
					rec = c
				}
			}
		}
		if rec.Remote != a.local || !rec.Proxied || rec.SSLCN != d.name || !rec.TLS || rec.TLSPeerCN != tb.clientCN {
			t.Errorf("broker recorded %+v; want remote %s, PROXY SSL CN %s, TLS with Envoy's certificate %s", rec, a.local, d.name, tb.clientCN)
		}
	})

	t.Run("ALPN", func(t *testing.T) {
		d := devs["device-1"]
		cfg := p.clientTLS(&d)
		cfg.NextProtos = []string{"mqtt"}
		conn, _, err := dialTLS(ctx, source(4), tlsAddr, cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if got := conn.ConnectionState().NegotiatedProtocol; got != "mqtt" {
			t.Errorf("negotiated ALPN %q, want mqtt", got)
		}
	})

	t.Run("plaintext and TLS listeners map a client ID alike", func(t *testing.T) {
		for name, d := range devs {
			if _, _, err := connectPahoTLS(ctx, tlsAddr, source(5), p.clientTLS(&d), name, 4); err != nil {
				t.Fatal(err)
			}
		}
		viaTLS := landedOn(tb.brokers)
		for name := range devs {
			if _, err := connectPaho(ctx, plainAddr, source(6), name, 4); err != nil {
				t.Fatal(err)
			}
		}
		viaPlain := landedOn(tb.brokers)
		for name := range devs {
			if viaTLS[name] == "" || viaPlain[name] != viaTLS[name] {
				t.Errorf("%s: TLS listener reached %q, plaintext listener %q", name, viaTLS[name], viaPlain[name])
			}
		}
	})

	t.Run("access log names the identity", func(t *testing.T) {
		waitFor(t, 10*time.Second, "an access-log entry with the identity", func() bool {
			data, _ := os.ReadFile(envoy.log)
			for _, line := range strings.Split(string(data), "\n") {
				var e struct{ ClientID, Identity string }
				if json.Unmarshal([]byte(line), &struct {
					ClientID *string `json:"client_id"`
					Identity *string `json:"identity"`
				}{&e.ClientID, &e.Identity}) == nil && e.Identity == "device-0" && e.ClientID == "device-0" {
					return true
				}
			}
			return false
		})
	})

	t.Run("certificate rotation under load", func(t *testing.T) {
		sub, pub := p.device(t, "rot-sub", certs.Spec{CN: "rot-sub"}), p.device(t, "rot-pub", certs.Spec{CN: "rot-pub"})
		ps := newTLSPubSub(t, tlsAddr, p.clientTLS(&sub), p.clientTLS(&pub), "rot-sub", "rot-pub", "tls/rotation")
		ps.run(5 * time.Millisecond)
		ps.waitSent(t, 50)
		listenersBefore := envoyStats(t, envoy.Process, "listener_manager.")
		reloadStat := "server_ssl_socket_factory.ssl_context_update_by_sds"
		reloadsBefore := listenerStats(t, envoy.Process, tlsAddr)[reloadStat]

		// Handshakes and CONNECTs in a loop on four workers, recording the
		// server certificate each one saw. Each worker is its own device:
		// two CONNECTs with one client ID at once make the broker take one
		// session over, and the loser reads a DISCONNECT.
		var (
			stop     atomic.Bool
			wg       sync.WaitGroup
			mu       sync.Mutex
			seen     = map[string]int{}
			failures []error
			newFirst time.Time
		)
		for w := range 4 {
			d := devs[fmt.Sprintf("device-%d", 2+w)]
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; !stop.Load(); i++ {
					conn, leaf, err := dialTLS(ctx, source(10+w), tlsAddr, p.clientTLS(&d))
					if err == nil {
						var code byte
						code, err = connackOver(conn, 4, d.name)
						if err == nil && code != 0 {
							err = fmt.Errorf("CONNACK %#x", code)
						}
						conn.Close()
					}
					mu.Lock()
					if err != nil {
						failures = append(failures, err)
					} else {
						seen[leaf.Subject.CommonName]++
						if leaf.Subject.CommonName == serverCN+"-2" && newFirst.IsZero() {
							newFirst = time.Now()
						}
					}
					mu.Unlock()
				}
			}()
		}
		waitFor(t, 10*time.Second, "handshakes with the first certificate", func() bool {
			mu.Lock()
			defer mu.Unlock()
			return seen[serverCN+"-1"] >= 20
		})
		swapped := time.Now()
		p.rotate(t, serverCN+"-2")
		waitFor(t, 10*time.Second, "a handshake with the rotated certificate", func() bool {
			mu.Lock()
			defer mu.Unlock()
			return !newFirst.IsZero()
		})
		// From now on only the new certificate.
		mu.Lock()
		oldAtSwitch := seen[serverCN+"-1"]
		mu.Unlock()
		waitFor(t, 10*time.Second, "more handshakes after the rotation", func() bool {
			mu.Lock()
			defer mu.Unlock()
			return seen[serverCN+"-2"] >= 40
		})
		stop.Store(true)
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		if len(failures) > 0 {
			t.Errorf("%d handshakes or CONNECTs failed during the rotation, first: %v", len(failures), failures[0])
		}
		// A handshake that started just before the swap may finish with the
		// old certificate; a handful at most, on four workers.
		if late := seen[serverCN+"-1"] - oldAtSwitch; late > 4 {
			t.Errorf("%d handshakes got the old certificate after the new one was served", late)
		}
		t.Logf("rotation: new certificate served %v after the swap; handshakes %v", newFirst.Sub(swapped).Round(time.Millisecond), seen)
		ps.waitSent(t, ps.count.Load()+50) // the sessions opened before the swap keep streaming

		// The other way to replace the files: plain files renamed into the
		// watched directory (the key first, then the certificate).
		pair, err := p.ca.Issue(certs.Spec{CN: serverCN + "-3", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Server: true})
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := pair.Write(p.serverDir, "server"); err != nil {
			t.Fatal(err)
		}
		d := devs["device-2"]
		waitFor(t, 10*time.Second, "a handshake with the renamed-in certificate", func() bool {
			conn, leaf, err := dialTLS(ctx, source(20), tlsAddr, p.clientTLS(&d))
			if err != nil {
				t.Fatal(err)
			}
			conn.Close()
			return leaf.Subject.CommonName == serverCN+"-3"
		})
		ps.waitSent(t, ps.count.Load()+50)
		ps.finish(t)
		if got := listenerStats(t, envoy.Process, tlsAddr)[reloadStat] - reloadsBefore; got < 2 {
			t.Errorf("%s grew by %d over two rotations, want at least 2", reloadStat, got)
		}
		listenersAfter := envoyStats(t, envoy.Process, "listener_manager.")
		for _, k := range []string{"listener_manager.listener_modified", "listener_manager.listener_in_place_updated", "listener_manager.total_filter_chains_draining"} {
			if listenersAfter[k] != listenersBefore[k] {
				t.Errorf("%s went from %d to %d: the rotation touched the listener", k, listenersBefore[k], listenersAfter[k])
			}
		}
	})

	t.Run("the CLI shows the listeners' TLS", func(t *testing.T) {
		out, err := exec.Command(cliPath, "listeners", "--api", "http://"+cp.apiAddr).CombinedOutput()
		if err != nil {
			t.Fatalf("mqtt-sticky listeners: %v\n%s", err, out)
		}
		for _, want := range []string{"mqtts", "TLS 1.3+, client certificate required, CN to brokers", "client_id = cn"} {
			if !strings.Contains(string(out), want) {
				t.Errorf("mqtt-sticky listeners lacks %q:\n%s", want, out)
			}
		}
	})

	t.Run("status shows the secrets acknowledged", func(t *testing.T) {
		st, err := cp.client.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range st.Nodes {
			if n.ID == envoy.nodeID && n.Resources["secrets"].AckedVersion != fmt.Sprint(st.Version) {
				t.Errorf("secrets: %+v at version %d", n.Resources["secrets"], st.Version)
			}
		}
	})
}
