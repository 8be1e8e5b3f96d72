package broker

import (
	"bufio"
	"context"
	"crypto/tls"
	"net"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"
	"github.com/pires/go-proxyproto/tlvparse"

	"github.com/mqtt-sticky/mqtt-sticky/filter/mqtt"
	"github.com/mqtt-sticky/mqtt-sticky/internal/certs"
)

// A TLS broker reads the PROXY header first, in the clear, then runs TLS,
// and records the CN from the header's SSL TLV and the certificate the
// proxy presented.
func TestProxyHeaderThenTLS(t *testing.T) {
	ca, err := certs.NewCA("broker test CA")
	if err != nil {
		t.Fatal(err)
	}
	server, err := ca.Issue(certs.Spec{CN: "broker", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Server: true})
	if err != nil {
		t.Fatal(err)
	}
	proxyCert, err := ca.Issue(certs.Spec{CN: "envoy-client"})
	if err != nil {
		t.Fatal(err)
	}
	serverTLS, _ := server.TLS()
	clientTLS, _ := proxyCert.TLS()
	b, err := Start(Options{Listen: "127.0.0.1:0", ProxyProtocol: ProxyRequired, TLS: &tls.Config{
		Certificates: []tls.Certificate{serverTLS}, ClientCAs: ca.Pool(), ClientAuth: tls.VerifyClientCertIfGiven}})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()

	raw, err := net.Dial("tcp", b.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	ssl, err := tlvparse.PP2SSL{Client: 0x07, TLV: []proxyproto.TLV{
		{Type: proxyproto.PP2_SUBTYPE_SSL_VERSION, Value: []byte("TLSv1.3")},
		{Type: proxyproto.PP2_SUBTYPE_SSL_CN, Value: []byte("device-42")},
	}}.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	h := proxyproto.HeaderProxyFromAddrs(2, &net.TCPAddr{IP: net.IPv4(192, 0, 2, 7), Port: 40000}, raw.RemoteAddr())
	if err := h.SetTLVs([]proxyproto.TLV{ssl}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.WriteTo(raw); err != nil {
		t.Fatal(err)
	}
	tc := tls.Client(raw, &tls.Config{RootCAs: ca.Pool(), ServerName: "127.0.0.1", Certificates: []tls.Certificate{clientTLS}})
	if _, err := tc.Write(mqtt.AppendConnect(nil, &mqtt.ConnectPacket{Connect: mqtt.Connect{Level: mqtt.Level311, ClientID: "anything", CleanStart: true}})); err != nil {
		t.Fatal(err)
	}
	tc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if typ, _, err := mqtt.ReadPacket(bufio.NewReader(tc)); err != nil || typ != 0x20 {
		t.Fatalf("CONNACK %#x, %v", typ, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := b.WaitFor(ctx, func(c Connection) bool { return c.ClientID == "anything" })
	if err != nil {
		t.Fatal(err)
	}
	if c.Remote != "192.0.2.7:40000" || !c.Proxied || c.SSLCN != "device-42" || !c.TLS || c.TLSPeerCN != "envoy-client" {
		t.Errorf("recorded %+v", c)
	}
}
