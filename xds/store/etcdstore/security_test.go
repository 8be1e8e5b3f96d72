package etcdstore

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/mqtt-sticky/mqtt-sticky/internal/etcdproc"
	"github.com/mqtt-sticky/mqtt-sticky/xds/store"
)

// Against members that serve clients over TLS and require a client
// certificate, the store works with the CA and a client certificate, and
// without the certificate it is refused.
func TestTLSWithClientCertificates(t *testing.T) {
	pki := newPKI(t)
	c, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cluster, err := etcdproc.StartClusterTLS(c, t.TempDir(), 1, &etcdproc.TLS{
		CAFile: pki.ca, CertFile: pki.serverCert, KeyFile: pki.serverKey, Client: pki.clientTLS(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Stop()

	s, err := New(Config{Endpoints: cluster.Endpoints(), CAFile: pki.ca, CertFile: pki.clientCert, KeyFile: pki.clientKey})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	mustLoad(t, s)
	if err := s.CompareAndSwap(ctx, 1, state(2, 1)); err != nil {
		t.Fatalf("over TLS: %v", err)
	}

	// The CA alone (no client certificate): the members refuse the
	// handshake, and nothing is read.
	anon, err := New(Config{Endpoints: cluster.Endpoints(), CAFile: pki.ca})
	if err == nil {
		defer anon.Close()
		if _, err = anon.Load(ctx); err == nil {
			t.Fatal("a client without a certificate read the state")
		}
	}
	t.Logf("without a client certificate: %v", err)
}

// With etcd's authentication on, the store works as a user whose role
// covers its prefix; a wrong password is an error that says so, not an
// outage (no 503 to retry).
func TestUsernameAndPassword(t *testing.T) {
	c, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cluster, err := etcdproc.StartCluster(c, t.TempDir(), 1)
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Stop()
	prefix := "/fleet-a/"
	enableAuth(t, cluster.Endpoints(), prefix, "mqtt-sticky", "s3cret")

	s, err := New(Config{Endpoints: cluster.Endpoints(), Prefix: prefix, Username: "mqtt-sticky", Password: "s3cret"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	mustLoad(t, s)
	if err := s.CompareAndSwap(ctx, 1, state(2, 1)); err != nil {
		t.Fatalf("as mqtt-sticky: %v", err)
	}
	if err := s.Check(ctx); err != nil {
		t.Errorf("check: %v", err)
	}

	// Outside its prefix the role grants nothing.
	other, err := New(Config{Endpoints: cluster.Endpoints(), Prefix: "/fleet-b/", Username: "mqtt-sticky", Password: "s3cret"})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, err := other.Load(ctx); err == nil || errors.Is(err, store.ErrUnavailable) {
		t.Errorf("another fleet's prefix: %v, want a permission error", err)
	}

	bad, err := New(Config{Endpoints: cluster.Endpoints(), Prefix: prefix, Username: "mqtt-sticky", Password: "wrong"})
	if err == nil {
		defer bad.Close()
		_, err = bad.Load(ctx)
	}
	if err == nil || errors.Is(err, store.ErrUnavailable) {
		t.Errorf("wrong password: %v, want an authentication error", err)
	}
	t.Logf("wrong password: %v", err)
}

// enableAuth creates user with a role that may read and write prefix, and
// turns authentication on.
func enableAuth(t *testing.T, endpoints []string, prefix, user, password string) {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	steps := []func() error{
		func() error { _, err := cli.UserAdd(ctx, "root", "root-password"); return err },
		func() error { _, err := cli.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := cli.RoleAdd(ctx, user); return err },
		func() error {
			_, err := cli.RoleGrantPermission(ctx, user, prefix, clientv3.GetPrefixRangeEnd(prefix), clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		},
		func() error { _, err := cli.UserAdd(ctx, user, password); return err },
		func() error { _, err := cli.UserGrantRole(ctx, user, user); return err },
		func() error { _, err := cli.AuthEnable(ctx); return err },
	}
	for i, step := range steps {
		if err := step(); err != nil {
			t.Fatalf("auth setup step %d: %v", i+1, err)
		}
	}
}

// pki is a CA, a certificate for the members (127.0.0.1) and one for the
// client, as PEM files.
type pki struct {
	dir                                              string
	ca, serverCert, serverKey, clientCert, clientKey string
	caCert                                           *x509.Certificate
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	p := &pki{dir: t.TempDir()}
	caKey := newKey(t)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	p.caCert, _ = x509.ParseCertificate(caDER)
	p.ca = p.write(t, "ca.pem", "CERTIFICATE", caDER)
	issue := func(name string, serial int64, usage x509.ExtKeyUsage) (string, string) {
		key := newKey(t)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
			IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, p.caCert, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		keyDER, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		return p.write(t, name+".pem", "CERTIFICATE", der), p.write(t, name+"-key.pem", "EC PRIVATE KEY", keyDER)
	}
	p.serverCert, p.serverKey = issue("etcd", 2, x509.ExtKeyUsageServerAuth)
	p.clientCert, p.clientKey = issue("mqtt-sticky", 3, x509.ExtKeyUsageClientAuth)
	return p
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func (p *pki) write(t *testing.T, name, kind string, der []byte) string {
	t.Helper()
	path := filepath.Join(p.dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// clientTLS is the client side, for etcdproc's health checks.
func (p *pki) clientTLS(t *testing.T) *tls.Config {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(p.clientCert, p.clientKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(p.caCert)
	return &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}
}
