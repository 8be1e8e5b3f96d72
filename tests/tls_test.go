package tests

import (
	"context"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/mqtt-sticky/mqtt-sticky/filter/mqtt"
	"github.com/mqtt-sticky/mqtt-sticky/internal/certs"
)

// Devices with client certificates connect over mutual TLS to the static
// example's TLS listener, three times each from three source addresses,
// with paho (3.1.1 and 5.0) and with mosquitto_pub and mosquitto_sub. Each device reaches
// one broker every time, the brokers see each client's real address in
// the PROXY header, and the certificate's CN in its SSL TLV. A device that
// leaves its client ID empty reaches its CN's broker. The plaintext
// listener on the same cluster sends the same client ID to the same
// broker.
func TestTLSStickyByCertificateIdentity(t *testing.T) {
	p := newPKI(t)
	s := startStaticTLS(t, startBrokerSet(t, 3, true), p, "")
	ctx := context.Background()
	const devices, rounds = 40, 3
	devs := make([]devCert, devices)
	for i := range devs {
		name := fmt.Sprintf("device-%03d", i)
		devs[i] = p.device(t, name, certs.Spec{CN: name, Org: "acme", URIs: []string{"spiffe://acme/device/" + name}, DNS: []string{name + ".acme.example"}})
	}
	type seen struct{ broker, remote string }
	for r := range rounds {
		err := runParallel(devices, 8, func(i int) error {
			version := 4 + (i%2)*1
			a, _, err := connectPahoTLS(ctx, s.tlsAddr, source(i+r*83), p.clientTLS(&devs[i]), devs[i].name, version)
			if err != nil {
				return err
			}
			if host, _, _ := net.SplitHostPort(a.local); host != source(i+r*83).String() {
				return fmt.Errorf("%s connected from %s, want %s", devs[i].name, a.local, source(i+r*83))
			}
			return nil
		})
		if err != nil {
			t.Fatalf("round %d: %v", r, err)
		}
	}
	byDevice := map[string]map[string]bool{}
	sources := map[string]map[string]bool{}
	for _, b := range s.brokers {
		for _, c := range b.Connections() {
			if !strings.HasPrefix(c.ClientID, "device-") {
				continue
			}
			if c.SSLCN != c.ClientID {
				t.Errorf("%s on %s: PROXY SSL TLV CN %q, want the certificate's CN", c.ClientID, b.Name(), c.SSLCN)
			}
			if !c.Proxied {
				t.Errorf("%s on %s: no client address in the PROXY header", c.ClientID, b.Name())
			}
			if byDevice[c.ClientID] == nil {
				byDevice[c.ClientID], sources[c.ClientID] = map[string]bool{}, map[string]bool{}
			}
			byDevice[c.ClientID][b.Name()] = true
			host, _, _ := net.SplitHostPort(c.Remote)
			sources[c.ClientID][host] = true
		}
	}
	perBroker := map[string]int{}
	for _, d := range devs {
		if len(byDevice[d.name]) != 1 || len(sources[d.name]) != rounds {
			t.Errorf("%s: reached brokers %v from sources %v; want one broker, %d sources", d.name, byDevice[d.name], sources[d.name], rounds)
		}
		for b := range byDevice[d.name] {
			perBroker[b]++
		}
	}
	if len(perBroker) != 3 {
		t.Errorf("devices per broker %v: want all three brokers used", perBroker)
	}
	home := landedOn(s.brokers)

	t.Run("mosquitto_pub from three addresses", func(t *testing.T) {
		d := devs[0]
		for r := range rounds {
			src := source(200 + r).String()
			out, err := exec.Command("mosquitto_pub", "-h", "127.0.0.1", "-p", portOf(t, s.tlsAddr), "-A", src,
				"--cafile", p.caFile, "--cert", d.cert, "--key", d.key, "-i", d.name, "-V", "mqttv311",
				"-t", "tls/mosquitto", "-m", "hello", "-q", "1").CombinedOutput()
			if err != nil {
				t.Fatalf("mosquitto_pub: %v\n%s", err, out)
			}
		}
		found := 0
		for _, b := range s.brokers {
			for _, c := range b.Connections() {
				if c.ClientID == d.name && sourceIn(c.Remote, 200, rounds) {
					found++
					if b.Name() != home[d.name] {
						t.Errorf("mosquitto_pub as %s reached %s, paho reached %s", d.name, b.Name(), home[d.name])
					}
				}
			}
		}
		if found != rounds {
			t.Errorf("brokers recorded %d mosquitto_pub connections from the three addresses, want %d", found, rounds)
		}
	})

	t.Run("mosquitto_sub receives what mosquitto_pub sent, both over mutual TLS", func(t *testing.T) {
		sub, pub := devs[2], devs[3]
		tlsArgs := func(d devCert) []string {
			return []string{"-h", "127.0.0.1", "-p", portOf(t, s.tlsAddr), "--cafile", p.caFile, "--cert", d.cert, "--key", d.key, "-i", d.name}
		}
		// Retained, so the subscriber gets it whichever of the two starts first.
		if out, err := exec.Command("mosquitto_pub", append(tlsArgs(pub), "-t", "tls/retained", "-m", "over-tls", "-q", "1", "-r")...).CombinedOutput(); err != nil {
			t.Fatalf("mosquitto_pub: %v\n%s", err, out)
		}
		out, err := exec.Command("mosquitto_sub", append(tlsArgs(sub), "-t", "tls/retained", "-C", "1", "-W", "10", "-q", "1")...).CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != "over-tls" {
			t.Fatalf("mosquitto_sub: %v, output %q", err, out)
		}
	})

	t.Run("empty client ID takes the CN's broker", func(t *testing.T) {
		for _, b := range s.brokers {
			b.ResetRecords()
		}
		d := devs[1]
		conn, _, err := dialTLS(ctx, source(7), s.tlsAddr, p.clientTLS(&d))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if code, err := connackOver(conn, mqtt.Level5, ""); err != nil || code != 0 {
			t.Fatalf("CONNACK %#x, %v", code, err)
		}
		var got []string
		for _, b := range s.brokers {
			for _, c := range b.Connections() {
				if c.SSLCN == d.name {
					got = append(got, b.Name())
				}
			}
		}
		if len(got) != 1 || got[0] != home[d.name] {
			t.Errorf("empty client ID with %s's certificate reached %v, want %s", d.name, got, home[d.name])
		}
	})

	t.Run("plaintext listener, same client ID, same broker", func(t *testing.T) {
		for _, d := range devs[:10] {
			if _, err := connectPaho(ctx, s.addr, source(9), d.name, 4); err != nil {
				t.Fatal(err)
			}
		}
		now := landedOn(s.brokers)
		for _, d := range devs[:10] {
			if now[d.name] != home[d.name] {
				t.Errorf("%s: plaintext reached %s, TLS reached %s", d.name, now[d.name], home[d.name])
			}
		}
	})

	st := s.stats(t)
	if st["mqtt_sticky.rejected_identity"] != 0 || st["mqtt_sticky.rejected_no_identity"] != 0 {
		t.Errorf("refusals among good clients: %v", st)
	}
}

// With hash_key cert_uri_san, the certificate picks the broker whatever
// client ID the device sends.
func TestTLSHashOnURISAN(t *testing.T) {
	p := newPKI(t)
	s := startStaticTLS(t, startBrokers(t, 3), p, `{"hash_key": "cert_uri_san", "proxy_protocol_cn": true}`)
	ctx := context.Background()
	for i := range 12 {
		name := fmt.Sprintf("sensor-%02d", i)
		d := p.device(t, name, certs.Spec{CN: name, URIs: []string{"spiffe://acme/sensor/" + name}})
		for r := range 3 {
			id := fmt.Sprintf("%s-session-%d", name, r) // a new client ID each time
			if _, _, err := connectPahoTLS(ctx, s.tlsAddr, source(i+r*31), p.clientTLS(&d), id, 4); err != nil {
				t.Fatal(err)
			}
		}
	}
	where := map[string]map[string]bool{}
	for _, b := range s.brokers {
		for _, c := range b.Connections() {
			if c.SSLCN == "" {
				continue // a health probe
			}
			if where[c.SSLCN] == nil {
				where[c.SSLCN] = map[string]bool{}
			}
			where[c.SSLCN][b.Name()] = true
		}
	}
	if len(where) != 12 {
		t.Fatalf("brokers saw %d certificates, want 12: %v", len(where), where)
	}
	for cn, bs := range where {
		if len(bs) != 1 {
			t.Errorf("%s: three client IDs reached brokers %v; want one broker per certificate", cn, bs)
		}
	}
}

// Every refusal closes only the refused connection: no client certificate,
// an expired one, one from a foreign CA, a client ID that is not the
// certificate's CN (CONNACK 0x05 for 3.1.1, 0x87 for 5.0), a plaintext
// CONNECT on the TLS port and a TLS ClientHello on the plaintext port. A
// bystander streaming QoS 1 messages over TLS meanwhile loses nothing.
func TestTLSRefusals(t *testing.T) {
	p := newPKI(t)
	s := startStaticTLS(t, startBrokerSet(t, 3, true), p, "")
	ctx := context.Background()
	sub := p.device(t, "bystander-sub", certs.Spec{CN: "bystander-sub"})
	pub := p.device(t, "bystander-pub", certs.Spec{CN: "bystander-pub"})
	ps := newTLSPubSub(t, s.tlsAddr, p.clientTLS(&sub), p.clientTLS(&pub), "bystander-sub", "bystander-pub", "tls/bystander")
	ps.run(5 * time.Millisecond)
	ps.waitSent(t, 50) // the stream is flowing before the first refusal

	good := p.device(t, "device-ok", certs.Spec{CN: "device-ok"})
	expired := p.device(t, "device-expired", certs.Spec{CN: "device-expired", Before: 48 * time.Hour, NotAfter: time.Now().Add(-24 * time.Hour)})
	foreign := p.issue(t, p.foreign, "device-foreign", certs.Spec{CN: "device-foreign"})
	before := listenerStats(t, s.envoy, s.tlsAddr)

	// A refused certificate ends the connection before any MQTT: the
	// handshake fails, or (TLS 1.3) the first read gets the server's alert.
	handshakeRefused := func(t *testing.T, dev *devCert) {
		t.Helper()
		conn, _, err := dialTLS(ctx, source(40), s.tlsAddr, p.clientTLS(dev))
		if err != nil {
			return
		}
		defer conn.Close()
		code, err := connackOver(conn, mqtt.Level311, "whoever")
		if err == nil {
			t.Fatalf("got CONNACK %#x, want the connection closed", code)
		}
	}
	t.Run("no client certificate", func(t *testing.T) { handshakeRefused(t, nil) })
	t.Run("expired certificate", func(t *testing.T) { handshakeRefused(t, &expired) })
	t.Run("foreign CA", func(t *testing.T) { handshakeRefused(t, &foreign) })

	t.Run("client ID is not the CN", func(t *testing.T) {
		_, code, err := connectPahoTLS(ctx, s.tlsAddr, source(41), p.clientTLS(&good), "device-other", 4)
		if err == nil || code != mqtt.ConnackNotAuthorized {
			t.Errorf("MQTT 3.1.1 (paho): CONNACK %#x, %v; want 0x05 not authorized", code, err)
		}
		_, code, err = connectPahoTLS(ctx, s.tlsAddr, source(41), p.clientTLS(&good), "device-other", 5)
		if err == nil || code != mqtt.ReasonNotAuthorized {
			t.Errorf("MQTT 5.0 (paho): CONNACK %#x, %v; want 0x87 not authorized", code, err)
		}
		for level, want := range map[mqtt.Level]byte{mqtt.Level311: 0x05, mqtt.Level5: 0x87, mqtt.Level31: 0x05} {
			conn, _, err := dialTLS(ctx, source(42), s.tlsAddr, p.clientTLS(&good))
			if err != nil {
				t.Fatal(err)
			}
			code, err := connackOver(conn, level, "device-ok\n[forged log line]")
			if err != nil || code != want {
				t.Errorf("MQTT %s: CONNACK %#x, %v; want %#x", level, code, err, want)
			}
			expectClosed(t, conn, 5*time.Second)
			conn.Close()
		}
	})

	t.Run("plaintext CONNECT on the TLS port", func(t *testing.T) {
		conn, err := dialFrom(ctx, source(43), s.tlsAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.Write(rawConnect(mqtt.Level311, "device-ok"))
		// Envoy answers with a TLS alert record (content type 0x15), never
		// MQTT, and closes.
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		got, err := io.ReadAll(conn)
		if err != nil {
			t.Fatalf("connection not closed: %v (read % x)", err, got)
		}
		if len(got) > 0 && got[0] != 0x15 {
			t.Errorf("got % x, want at most a TLS alert", got)
		}
	})

	t.Run("TLS ClientHello on the plaintext port", func(t *testing.T) {
		_, _, err := dialTLS(ctx, source(44), s.addr, p.clientTLS(&good))
		if err == nil {
			t.Fatal("TLS handshake succeeded on the plaintext port")
		}
	})

	t.Run("the good certificate still works", func(t *testing.T) {
		if _, _, err := connectPahoTLS(ctx, s.tlsAddr, source(45), p.clientTLS(&good), "device-ok", 5); err != nil {
			t.Fatal(err)
		}
	})

	ps.waitSent(t, 300)
	ps.finish(t)
	st := s.stats(t)
	if st["mqtt_sticky.rejected_identity"] != 5 || st["mqtt_sticky.rejected_not_connect"] != 1 {
		t.Errorf("rejected_identity %d (want 5), rejected_not_connect %d (want 1)", st["mqtt_sticky.rejected_identity"], st["mqtt_sticky.rejected_not_connect"])
	}
	after := listenerStats(t, s.envoy, s.tlsAddr)
	for stat, want := range map[string]int64{"ssl.fail_verify_no_cert": 1, "ssl.fail_verify_error": 2, "ssl.connection_error": 1} {
		if got := after[stat] - before[stat]; got != want {
			t.Errorf("%s grew by %d, want %d", stat, got, want)
		}
	}
	for _, b := range s.brokers {
		for _, c := range b.Connections() {
			if c.ClientID == "device-other" || strings.HasPrefix(c.ClientID, "device-ok\n") || c.ClientID == "whoever" {
				t.Errorf("broker %s accepted refused client %q", b.Name(), c.ClientID)
			}
		}
	}
}

// portOf returns the port of host:port.
func portOf(t testing.TB, addr string) string {
	t.Helper()
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// sourceIn reports whether addr's IP is source(first) ... source(first+n-1).
func sourceIn(addr string, first, n int) bool {
	host, _, _ := net.SplitHostPort(addr)
	for i := range n {
		if host == source(first+i).String() {
			return true
		}
	}
	return false
}

// A filter config that needs a certificate, on a plaintext listener (the
// control plane refuses this; a hand-written config can still do it),
// refuses every CONNECT with "not authorized" and counts it: it never
// routes on a guess.
func TestCertificateConfigOnPlaintextFailsClosed(t *testing.T) {
	s := startStatic(t, startBrokers(t, 3), `{"hash_key": "cert_cn"}`)
	ctx := context.Background()
	for level, want := range map[mqtt.Level]byte{mqtt.Level311: 0x05, mqtt.Level5: 0x87} {
		conn, err := dialFrom(ctx, source(60), s.addr)
		if err != nil {
			t.Fatal(err)
		}
		code, err := connackOver(conn, level, "device-1")
		if err != nil || code != want {
			t.Errorf("MQTT %s: CONNACK %#x, %v; want %#x", level, code, err, want)
		}
		expectClosed(t, conn, 5*time.Second)
		conn.Close()
	}
	if st := s.stats(t); st["mqtt_sticky.rejected_no_identity"] != 2 {
		t.Errorf("rejected_no_identity = %d, want 2", st["mqtt_sticky.rejected_no_identity"])
	}
	for _, b := range s.brokers {
		for _, c := range b.Connections() {
			if c.ClientID == "device-1" {
				t.Errorf("broker %s accepted the refused client", b.Name())
			}
		}
	}
}
