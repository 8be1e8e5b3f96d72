package tlsfiles

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/mqtt-sticky/mqtt-sticky/internal/certs"
)

// pki is a CA with a server and a client certificate in a directory.
type pki struct {
	dir                string
	ca                 *certs.CA
	files              Files
	clientCert, client string
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	dir := t.TempDir()
	ca, err := certs.NewCA("test CA")
	if err != nil {
		t.Fatal(err)
	}
	p := &pki{dir: dir, ca: ca, files: Files{
		CertFile: filepath.Join(dir, "server.crt"), KeyFile: filepath.Join(dir, "server.key"),
		ClientCAFile: filepath.Join(dir, "ca.crt"), RequireClientCert: true,
	}}
	if err := os.WriteFile(p.files.ClientCAFile, ca.PEM, 0o644); err != nil {
		t.Fatal(err)
	}
	p.issueServer(t)
	client, err := ca.Issue(certs.Spec{CN: "envoy-1"})
	if err != nil {
		t.Fatal(err)
	}
	if p.clientCert, p.client, err = client.Write(dir, "client"); err != nil {
		t.Fatal(err)
	}
	return p
}

func (p *pki) issueServer(t *testing.T) {
	t.Helper()
	pair, err := p.ca.Issue(certs.Spec{CN: "localhost", DNS: []string{"localhost"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Server: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := pair.Write(p.dir, "server"); err != nil {
		t.Fatal(err)
	}
}

func (p *pki) serverSerial(t *testing.T) *big.Int {
	t.Helper()
	c, err := tls.LoadX509KeyPair(p.files.CertFile, p.files.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	return c.Leaf.SerialNumber
}

// serveTLS accepts connections and completes their handshakes.
func serveTLS(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	lis, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			go func() {
				c.(*tls.Conn).Handshake()
				c.Read(make([]byte, 1)) // until the client closes
				c.Close()
			}()
		}
	}()
	return lis.Addr().String()
}

// dial completes a handshake as a client and returns the server's
// certificate serial; withCert presents the client certificate.
func (p *pki) dial(addr string, withCert bool) (*big.Int, error) {
	pem, err := os.ReadFile(p.files.ClientCAFile)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	cfg := &tls.Config{RootCAs: roots, ServerName: "localhost"}
	if withCert {
		c, err := tls.LoadX509KeyPair(p.clientCert, p.client)
		if err != nil {
			return nil, err
		}
		cfg.Certificates = []tls.Certificate{c}
	}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	// With TLS 1.3 the server checks the client certificate after the
	// client's handshake is done: a refusal arrives on the first read.
	conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if _, err := conn.Read(make([]byte, 1)); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		return nil, err
	}
	return conn.ConnectionState().PeerCertificates[0].SerialNumber, nil
}

// A rotated certificate serves the next connection; a client without a
// certificate is refused.
func TestReloadAndClientCerts(t *testing.T) {
	p := newPKI(t)
	cfg, err := p.files.ServerConfig(nil)
	if err != nil {
		t.Fatal(err)
	}
	addr := serveTLS(t, cfg)
	first := p.serverSerial(t)
	if got, err := p.dial(addr, true); err != nil || got.Cmp(first) != 0 {
		t.Fatalf("first connection: serial %v, %v; want %v", got, err, first)
	}
	if _, err := p.dial(addr, false); err == nil {
		t.Error("a client without a certificate was accepted")
	}

	p.issueServer(t)
	rotated := p.serverSerial(t)
	if got, err := p.dial(addr, true); err != nil || got.Cmp(rotated) != 0 {
		t.Errorf("after rotation: serial %v, %v; want the new %v", got, err, rotated)
	}

	// A key that does not match its certificate (files replaced one at a
	// time) keeps the last good pair in use.
	other, err := p.ca.Issue(certs.Spec{CN: "localhost", Server: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p.files.KeyFile, other.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := p.dial(addr, true); err != nil || got.Cmp(rotated) != 0 {
		t.Errorf("with a mismatched key: serial %v, %v; want the last good %v", got, err, rotated)
	}
}

func TestCheck(t *testing.T) {
	for _, f := range []Files{
		{CertFile: "c"},
		{KeyFile: "k"},
		{CertFile: "c", KeyFile: "k", RequireClientCert: true},
	} {
		if f.Check() == nil {
			t.Errorf("%+v accepted", f)
		}
	}
	if err := (Files{}).Check(); err != nil {
		t.Error(err)
	}
	if _, err := (Files{CertFile: "/nonexistent", KeyFile: "/nonexistent"}).ServerConfig(nil); err == nil {
		t.Error("missing files accepted")
	}
}
