// Package certs makes X.509 certificates (ECDSA P-256) for the tests, the
// benchmarks, `mqtt-sticky run` and `mqtt-sticky certs`: a CA, and server,
// device or client certificates it signs, with any CN, SANs and validity.
// It is no PKI: deployments with one issue their certificates from it.
package certs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"time"
)

// CA is a certificate authority that signs certificates.
type CA struct {
	Cert *x509.Certificate
	key  *ecdsa.PrivateKey
	PEM  []byte // the CA certificate
}

// NewCA makes a self-signed CA valid from an hour ago for ten years.
func NewCA(name string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: name, Organization: []string{"mqtt-sticky test"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(10 * 365 * 24 * time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, key: key, PEM: pemBlock("CERTIFICATE", der)}, nil
}

// Spec describes a certificate to issue.
type Spec struct {
	CN       string
	Org      string
	DNS      []string
	URIs     []string
	IPs      []net.IP
	Server   bool          // server authentication; otherwise client
	NotAfter time.Time     // zero: a year from now
	Before   time.Duration // NotBefore is this long ago; zero: an hour
}

// Pair is an issued certificate and its key, in PEM.
type Pair struct {
	CertPEM, KeyPEM []byte
	Cert            *x509.Certificate
}

// Issue signs a certificate for spec.
func (ca *CA) Issue(spec Spec) (*Pair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	before := spec.Before
	if before == 0 {
		before = time.Hour
	}
	notAfter := spec.NotAfter
	if notAfter.IsZero() {
		notAfter = time.Now().Add(365 * 24 * time.Hour)
	}
	usage := x509.ExtKeyUsageClientAuth
	if spec.Server {
		usage = x509.ExtKeyUsageServerAuth
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: spec.CN},
		NotBefore:    time.Now().Add(-before),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		DNSNames:     spec.DNS,
		IPAddresses:  spec.IPs,
	}
	if spec.Org != "" {
		tmpl.Subject.Organization = []string{spec.Org}
	}
	for _, u := range spec.URIs {
		parsed, err := url.Parse(u)
		if err != nil {
			return nil, fmt.Errorf("certs: URI SAN %q: %w", u, err)
		}
		tmpl.URIs = append(tmpl.URIs, parsed)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return &Pair{CertPEM: pemBlock("CERTIFICATE", der), KeyPEM: pemBlock("PRIVATE KEY", keyDER), Cert: cert}, nil
}

// TLS returns the pair as a tls.Certificate.
func (p *Pair) TLS() (tls.Certificate, error) { return tls.X509KeyPair(p.CertPEM, p.KeyPEM) }

// Write stores the pair as <dir>/<name>.crt and <dir>/<name>.key (mode
// 0600) and returns the two paths. Each file is written beside its final
// name and renamed into place, so a process watching dir sees complete
// files only.
func (p *Pair) Write(dir, name string) (certPath, keyPath string, err error) {
	certPath, keyPath = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	if err := WriteAtomic(keyPath, p.KeyPEM); err != nil {
		return "", "", err
	}
	if err := WriteAtomic(certPath, p.CertPEM); err != nil {
		return "", "", err
	}
	return certPath, keyPath, nil
}

// WriteAtomic writes data to a temporary file in path's directory and
// renames it to path.
func WriteAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path)+"-")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// The files of a directory `mqtt-sticky certs` fills: Write and Pair.Write
// name them <name>.crt and <name>.key.
const (
	CAFile        = "ca.crt"
	CAKeyFile     = "ca.key"
	ServerFile    = "server.crt"
	ServerKeyFile = "server.key"
	ClientFile    = "client.crt"
	ClientKeyFile = "client.key"
)

// Write stores the CA's certificate and key as <dir>/<name>.crt and
// <dir>/<name>.key (mode 0600), as Pair.Write does, so that LoadCA can
// sign more certificates with it later.
func (ca *CA) Write(dir, name string) (certPath, keyPath string, err error) {
	keyDER, err := x509.MarshalPKCS8PrivateKey(ca.key)
	if err != nil {
		return "", "", err
	}
	p := &Pair{CertPEM: ca.PEM, KeyPEM: pemBlock("PRIVATE KEY", keyDER), Cert: ca.Cert}
	return p.Write(dir, name)
}

// LoadCA reads a CA that Write stored.
func LoadCA(certPath, keyPath string) (*CA, error) {
	pair, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		return nil, err
	}
	key, ok := pair.PrivateKey.(*ecdsa.PrivateKey)
	if !ok || !pair.Leaf.IsCA {
		return nil, fmt.Errorf("certs: %s is not an ECDSA CA certificate", certPath)
	}
	return &CA{Cert: pair.Leaf, key: key, PEM: pemBlock("CERTIFICATE", pair.Leaf.Raw)}, nil
}

// Pool returns a cert pool holding the CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return n
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}
