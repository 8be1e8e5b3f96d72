package main

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/mqtt-sticky/mqtt-sticky/internal/certs"
)

// mqtt-sticky certs makes a CA once and keeps it; every run issues a new
// server and client certificate it signed: running it again rotates them.
func TestCertsRotateUnderOneCA(t *testing.T) {
	dir := t.TempDir()
	run := func() (ca, server *x509.Certificate) {
		t.Helper()
		if err := runCerts([]string{"--dir", dir, "--server-names", "xds,127.0.0.1", "--client", "envoy-9"}, io.Discard, io.Discard); err != nil {
			t.Fatal(err)
		}
		caPair, err := tls.LoadX509KeyPair(filepath.Join(dir, certs.CAFile), filepath.Join(dir, certs.CAKeyFile))
		if err != nil {
			t.Fatal(err)
		}
		srv, err := tls.LoadX509KeyPair(filepath.Join(dir, certs.ServerFile), filepath.Join(dir, certs.ServerKeyFile))
		if err != nil {
			t.Fatal(err)
		}
		return caPair.Leaf, srv.Leaf
	}
	ca1, server1 := run()
	ca2, server2 := run()
	if !ca1.Equal(ca2) {
		t.Error("a second run replaced the CA")
	}
	if server1.SerialNumber.Cmp(server2.SerialNumber) == 0 {
		t.Error("a second run kept the server certificate")
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca1)
	if _, err := server2.Verify(x509.VerifyOptions{Roots: pool, DNSName: "xds"}); err != nil {
		t.Errorf("the new server certificate: %v", err)
	}
	client, err := tls.LoadX509KeyPair(filepath.Join(dir, certs.ClientFile), filepath.Join(dir, certs.ClientKeyFile))
	if err != nil || client.Leaf.Subject.CommonName != "envoy-9" {
		t.Fatalf("client certificate: %v", err)
	}
	if _, err := client.Leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("the client certificate: %v", err)
	}
	for file, mode := range map[string]os.FileMode{certs.ServerFile: 0o644, certs.ClientFile: 0o644, certs.CAFile: 0o644,
		certs.ServerKeyFile: 0o600, certs.ClientKeyFile: 0o600, certs.CAKeyFile: 0o600} {
		if fi, err := os.Stat(filepath.Join(dir, file)); err != nil || fi.Mode().Perm() != mode {
			t.Errorf("%s: %v, want mode %v", file, err, mode)
		}
	}
}
