package filter

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/pires/go-proxyproto"
	"github.com/pires/go-proxyproto/tlvparse"

	"github.com/mqtt-sticky/mqtt-sticky/filter/mqtt"
	"github.com/mqtt-sticky/mqtt-sticky/internal/loglimit"
)

// freshLogLimit gives a test the whole per-second log budget, so the
// lines it checks are not the ones the limiter drops.
func freshLogLimit(t *testing.T) {
	saved := logLimiter
	logLimiter = loglimit.New(1000)
	t.Cleanup(func() { logLimiter = saved })
}

// device is a connection with a verified client certificate.
func device(c *fakeConn) {
	c.tls = true
	c.subject = "CN=device-42,O=acme"
	c.uriSANs = []string{"spiffe://acme/device/42", "spiffe://acme/other"}
	c.dnsSANs = []string{"device42.example", "alt.example"}
}

func TestHashOnCertificateIdentity(t *testing.T) {
	for _, tt := range []struct{ hashKey, want string }{
		{"cert_cn", "device-42"},
		{"cert_uri_san", "spiffe://acme/device/42"},
		{"cert_dns_san", "device42.example"},
	} {
		f, c := newFilter(t, `{"hash_key": "`+tt.hashKey+`"}`)
		device(c)
		if st := f.OnRead([][]byte{connect(mqtt.Level311, "whatever", "")}, false); st != Routed {
			t.Fatalf("%s: OnRead = %v, closed %v, logs %v", tt.hashKey, st, c.closed, c.logs)
		}
		if c.hashKey == nil || *c.hashKey != tt.want {
			t.Errorf("%s: hash key %v, want %q", tt.hashKey, c.hashKey, tt.want)
		}
		if c.metadata["identity"] != tt.want || c.metadata["client_id"] != "whatever" {
			t.Errorf("%s: metadata %v", tt.hashKey, c.metadata)
		}
	}
}

// A config that needs a certificate fails closed, per connection, when
// the connection cannot give one: plaintext, no certificate, or a
// certificate without the configured part.
func TestNoIdentityFailsClosed(t *testing.T) {
	freshLogLimit(t)
	for _, tt := range []struct {
		name, cfg string
		setup     func(*fakeConn)
		log       string
	}{
		{"plaintext", `{"hash_key": "cert_cn"}`, func(c *fakeConn) {}, "not TLS"},
		{"no certificate", `{"hash_key": "cert_cn"}`, func(c *fakeConn) { c.tls = true }, "no client certificate"},
		{"no URI SAN", `{"hash_key": "cert_uri_san"}`, func(c *fakeConn) { device(c); c.uriSANs = nil }, "no URI SAN"},
		{"no DNS SAN", `{"identity_binding": "client_id", "identity_source": "dns_san"}`, func(c *fakeConn) { device(c); c.dnsSANs = nil }, "no DNS SAN"},
		{"two CNs", `{"identity_binding": "client_id"}`, func(c *fakeConn) { device(c); c.subject = "CN=a,CN=b" }, "2 CNs"},
		{"empty CN", `{"hash_key": "cert_cn"}`, func(c *fakeConn) { device(c); c.subject = "CN=,O=acme" }, "is empty"},
		{"PROXY TLV on plaintext", `{"proxy_protocol_cn": true}`, func(c *fakeConn) {}, "not TLS"},
	} {
		for _, level := range []mqtt.Level{mqtt.Level311, mqtt.Level5} {
			f, c := newFilter(t, tt.cfg)
			tt.setup(c)
			if st := f.OnRead([][]byte{connect(level, "device-42", "")}, false); st != Stop {
				t.Fatalf("%s: OnRead = %v, want Stop", tt.name, st)
			}
			want := mqtt.AppendConnack(nil, level, map[mqtt.Level]byte{mqtt.Level311: 0x05, mqtt.Level5: 0x87}[level])
			if !bytes.Equal(c.written, want) {
				t.Errorf("%s, MQTT %s: wrote % x, want CONNACK not authorized % x", tt.name, level, c.written, want)
			}
			if c.counters[RejectNoIdentity] != 1 || len(c.closed) != 1 || c.hashKey != nil || f.Waiting() {
				t.Errorf("%s: counters %v, closed %v, key %v, waiting %v", tt.name, c.counters, c.closed, c.hashKey, f.Waiting())
			}
			if len(c.logs) != 1 || !strings.Contains(c.logs[0], tt.log) {
				t.Errorf("%s: logs %q, want one mentioning %q", tt.name, c.logs, tt.log)
			}
		}
	}
}

func TestBindingRefusesAnotherIdentity(t *testing.T) {
	for _, tt := range []struct {
		name, cfg, clientID, username string
		level                         mqtt.Level
		code                          byte
	}{
		{"client ID, 3.1.1", `{"identity_binding": "client_id"}`, "device-43", "", mqtt.Level311, 0x05},
		{"client ID, 5.0", `{"identity_binding": "client_id"}`, "device-43", "", mqtt.Level5, 0x87},
		{"client ID, 3.1", `{"identity_binding": "client_id"}`, "device-43", "", mqtt.Level31, 0x05},
		{"user name", `{"identity_binding": "username"}`, "device-42", "mallory", mqtt.Level5, 0x87},
		{"URI SAN", `{"identity_binding": "client_id", "identity_source": "uri_san"}`, "device-42", "", mqtt.Level311, 0x05},
		{"second SAN is not the identity", `{"identity_binding": "client_id", "identity_source": "dns_san"}`, "alt.example", "", mqtt.Level311, 0x05},
		{"case differs", `{"identity_binding": "client_id"}`, "DEVICE-42", "", mqtt.Level311, 0x05},
	} {
		f, c := newFilter(t, tt.cfg)
		device(c)
		if st := f.OnRead([][]byte{connect(tt.level, tt.clientID, tt.username)}, false); st != Stop {
			t.Fatalf("%s: OnRead = %v", tt.name, st)
		}
		if want := mqtt.AppendConnack(nil, tt.level, tt.code); !bytes.Equal(c.written, want) {
			t.Errorf("%s: wrote % x, want % x", tt.name, c.written, want)
		}
		if c.counters[RejectIdentity] != 1 || len(c.closed) != 1 || c.hashKey != nil {
			t.Errorf("%s: counters %v, closed %v, key %v", tt.name, c.counters, c.closed, c.hashKey)
		}
	}
}

func TestBindingAccepts(t *testing.T) {
	for _, tt := range []struct {
		name, cfg, clientID, username, key string
	}{
		{"client ID is the CN", `{"identity_binding": "client_id"}`, "device-42", "", "device-42"},
		{"empty client ID takes the CN's mapping", `{"identity_binding": "client_id", "empty_key": "reject"}`, "", "", "device-42"},
		{"user name is the URI SAN", `{"identity_binding": "username", "identity_source": "uri_san"}`, "any-id", "spiffe://acme/device/42", "any-id"},
		{"no user name under username binding", `{"identity_binding": "username", "hash_key": "username"}`, "any-id", "", "device-42"},
		{"binding with a certificate hash", `{"identity_binding": "client_id", "hash_key": "cert_dns_san"}`, "device-42", "", "device42.example"},
	} {
		f, c := newFilter(t, tt.cfg)
		device(c)
		if st := f.OnRead([][]byte{connect(mqtt.Level5, tt.clientID, tt.username)}, false); st != Routed {
			t.Fatalf("%s: OnRead = %v, logs %v", tt.name, st, c.logs)
		}
		if c.hashKey == nil || *c.hashKey != tt.key {
			t.Errorf("%s: key %v, want %q", tt.name, c.hashKey, tt.key)
		}
		if c.metadata["identity"] == "" || c.counters[EmptyKeyCount] != 0 {
			t.Errorf("%s: metadata %v, counters %v", tt.name, c.metadata, c.counters)
		}
	}
}

// The certificate is only asked of Envoy when the config needs it, and
// once per part however many features use it.
func TestCertificateReadOnlyWhenNeeded(t *testing.T) {
	f, c := newFilter(t, `{}`)
	device(c)
	if st := f.OnRead([][]byte{connect(mqtt.Level311, "x", "")}, false); st != Routed || c.certReads != 0 {
		t.Errorf("plain config: OnRead %v, %d certificate reads", st, c.certReads)
	}
	if _, ok := c.metadata["identity"]; ok {
		t.Error("identity metadata without a certificate config")
	}
	f, c = newFilter(t, `{"hash_key": "cert_cn", "identity_binding": "client_id", "proxy_protocol_cn": true}`)
	device(c)
	if st := f.OnRead([][]byte{connect(mqtt.Level311, "device-42", "")}, false); st != Routed || c.certReads != 1 {
		t.Errorf("CN for three features: OnRead %v, %d certificate reads, want 1", st, c.certReads)
	}
}

func TestProxyProtocolTLV(t *testing.T) {
	f, c := newFilter(t, `{"proxy_protocol_cn": true}`)
	device(c)
	if st := f.OnRead([][]byte{connect(mqtt.Level311, "anything", "")}, false); st != Routed {
		t.Fatalf("OnRead = %v", st)
	}
	want := append([]byte{0x07, 0, 0, 0, 0, 0x21, 0, 7}, "TLSv1.3"...)
	want = append(append(want, 0x22, 0, 9), "device-42"...)
	if !bytes.Equal(c.sslTLV, want) {
		t.Errorf("SSL TLV % x, want % x", c.sslTLV, want)
	}
	// An independent PROXY protocol parser reads it as a verified SSL
	// client with that CN.
	ssl, err := tlvparse.SSL(proxyproto.TLV{Type: proxyproto.PP2_TYPE_SSL, Value: c.sslTLV})
	if err != nil {
		t.Fatal(err)
	}
	if cn, ok := ssl.ClientCN(); !ok || cn != "device-42" || !ssl.Verified() || !ssl.ClientCertConn() {
		t.Errorf("parsed SSL TLV: CN %q %v, verified %v, certificate on this connection %v", cn, ok, ssl.Verified(), ssl.ClientCertConn())
	}
	f, c = newFilter(t, `{"proxy_protocol_cn": true}`)
	device(c)
	c.subject = "CN=" + strings.Repeat("x", 128)
	if st := f.OnRead([][]byte{connect(mqtt.Level311, "anything", "")}, false); st != Stop || c.counters[RejectNoIdentity] != 1 || c.sslTLV != nil {
		t.Errorf("128-byte CN: OnRead %v, counters %v, TLV % x", st, c.counters, c.sslTLV)
	}
}

// The refusal log line shows neither raw control bytes nor more than a
// bounded prefix of what the client sent.
func TestIdentityRefusalLogIsSafe(t *testing.T) {
	freshLogLimit(t)
	f, c := newFilter(t, `{"identity_binding": "client_id"}`)
	device(c)
	id := "evil\n[fake] line\x1b[31m" + strings.Repeat("A", 500)
	f.OnRead([][]byte{connect(mqtt.Level311, id, "")}, false)
	if len(c.logs) != 1 {
		t.Fatalf("logs %q", c.logs)
	}
	l := c.logs[0]
	if strings.ContainsAny(l, "\n\x1b") || strings.Contains(l, strings.Repeat("A", 65)) || !strings.Contains(l, fmt.Sprintf("(%d bytes)", len(id))) {
		t.Errorf("unsafe or unbounded log line: %q", l)
	}
	if !strings.Contains(l, `certificate "device-42"`) {
		t.Errorf("log line lacks the certificate identity: %q", l)
	}
}
