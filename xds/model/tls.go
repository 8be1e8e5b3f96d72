package model

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"github.com/mqtt-sticky/mqtt-sticky/contract"
)

// TLS terminates TLS on a listener: Envoy holds the server certificate,
// and, with a client CA, asks clients for certificates and verifies them.
//
// Every path is a file on the Envoy host, not on the control plane's. Envoy
// reads the files itself and watches their directory, so replacing them
// (an atomic rename, or a Kubernetes-style symlink swap) rotates the
// certificate without a restart, and without touching the connections
// already open. The control plane never reads a private key, and none
// crosses the xDS channel. For the same reason, the control plane cannot
// check that the files exist: Envoy refuses (NACKs) a secret whose files it
// cannot read, and `mqtt-sticky status` shows the message.
type TLS struct {
	// CertFile and KeyFile are the server certificate chain and its key
	// (PEM). They must be in one directory: Envoy watches it to reload
	// both together.
	CertFile string `json:"cert_file"`
	KeyFile  string `json:"key_file"`
	// ClientCAFile, when set, makes Envoy request a client certificate and
	// verify it against these CA certificates (PEM).
	ClientCAFile string `json:"client_ca_file,omitempty"`
	// RequireClientCert refuses the handshake of a client without a
	// certificate. It needs ClientCAFile.
	RequireClientCert bool `json:"require_client_cert,omitempty"`
	// MinVersion is the oldest TLS version accepted: "1.2" or "1.3".
	MinVersion TLSVersion `json:"min_version,omitempty"`
	// ALPN lists the protocols Envoy offers, e.g. ["mqtt"]. Empty offers
	// none, and every client is accepted whatever it asks for.
	ALPN []string `json:"alpn,omitempty"`
}

// UpstreamTLS has Envoy speak TLS to a cluster's brokers. The PROXY header,
// when the cluster sends one, comes first, in the clear, as EMQX's ssl
// listener with proxy_protocol expects.
type UpstreamTLS struct {
	// CAFile holds the CA certificates (PEM) that signed the brokers'
	// certificates. Required: TLS without verifying the broker would only
	// hide the traffic from a passive observer.
	CAFile string `json:"ca_file"`
	// SNI is the server name Envoy sends. When set, the broker's
	// certificate must also carry it as a DNS SAN; without it, any
	// certificate CAFile's CAs signed is accepted.
	SNI string `json:"sni,omitempty"`
	// CertFile and KeyFile, when set, are the client certificate Envoy
	// presents to brokers that require one (one directory, as above).
	CertFile string `json:"cert_file,omitempty"`
	KeyFile  string `json:"key_file,omitempty"`
}

// TLSVersion is a TLS version, "1.2" or "1.3".
type TLSVersion string

// TLS versions.
const (
	TLS12             TLSVersion = "1.2"
	TLS13             TLSVersion = "1.3"
	DefaultMinVersion            = TLS12
)

// UnmarshalJSON accepts the version as a string or, since YAML reads a
// bare 1.3 as a number, as a number written the same way.
func (v *TLSVersion) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] >= '0' && b[0] <= '9' {
		*v = TLSVersion(b)
		return nil
	}
	return json.Unmarshal(b, (*string)(v))
}

// maxALPN bounds the ALPN list; each name is at most 255 bytes (RFC 7301).
const maxALPN = 16

func (t *TLS) setDefaults() {
	if t != nil && t.MinVersion == "" {
		t.MinVersion = DefaultMinVersion
	}
}

func (t *TLS) clone() *TLS {
	if t == nil {
		return nil
	}
	c := *t
	c.ALPN = slices.Clone(t.ALPN)
	return &c
}

func (u *UpstreamTLS) clone() *UpstreamTLS {
	if u == nil {
		return nil
	}
	c := *u
	return &c
}

// validateTLS checks the listener's TLS settings, and that a filter config
// needing a client certificate has a listener that can verify one.
func (l *Listener) validateTLS(c *Cluster) error {
	if err := l.TLS.validate(); err != nil {
		return fmt.Errorf("tls: %w", err)
	}
	if !l.Filter.NeedsCertificate() {
		return nil
	}
	needs := certificateNeeds(l.Filter)
	if l.TLS == nil {
		return fmt.Errorf("filter %s needs a client certificate, but the listener has no tls: every connection would be refused", needs)
	}
	if l.TLS.ClientCAFile == "" {
		return fmt.Errorf("filter %s needs a verified client certificate: set tls.client_ca_file (and usually tls.require_client_cert)", needs)
	}
	if l.Filter.ProxyProtocolCN && (c == nil || c.ProxyProtocol != ProxyV2) {
		return errors.New("filter proxy_protocol_cn needs a cluster with proxy_protocol v2: the CN travels in a PROXY v2 TLV")
	}
	return nil
}

// certificateNeeds names the filter settings that need a certificate.
func certificateNeeds(f contract.Config) string {
	var why []string
	if _, ok := f.HashKey.Certificate(); ok {
		why = append(why, "hash_key "+string(f.HashKey))
	}
	if f.IdentityBinding != contract.BindingOff {
		why = append(why, "identity_binding "+string(f.IdentityBinding))
	}
	if f.ProxyProtocolCN {
		why = append(why, "proxy_protocol_cn")
	}
	return strings.Join(why, " and ")
}

func (t *TLS) validate() error {
	if t == nil {
		return nil
	}
	if err := keyPair(t.CertFile, t.KeyFile, true); err != nil {
		return err
	}
	if t.ClientCAFile != "" {
		if err := checkPath("client_ca_file", t.ClientCAFile); err != nil {
			return err
		}
	}
	if t.RequireClientCert && t.ClientCAFile == "" {
		return errors.New("require_client_cert needs client_ca_file, the CAs client certificates are verified against")
	}
	if t.MinVersion != TLS12 && t.MinVersion != TLS13 {
		return fmt.Errorf("min_version %q must be %q or %q", t.MinVersion, TLS12, TLS13)
	}
	if len(t.ALPN) > maxALPN {
		return fmt.Errorf("alpn lists %d protocols, at most %d", len(t.ALPN), maxALPN)
	}
	for _, p := range t.ALPN {
		if p == "" || len(p) > 255 || strings.IndexFunc(p, func(r rune) bool { return r <= ' ' || r > '~' }) >= 0 {
			return fmt.Errorf("alpn protocol %q must be 1-255 printable ASCII characters without spaces", p)
		}
	}
	return nil
}

func (u *UpstreamTLS) validate() error {
	if u == nil {
		return nil
	}
	if u.CAFile == "" {
		return errors.New("ca_file is required: Envoy must verify the brokers' certificates")
	}
	if err := checkPath("ca_file", u.CAFile); err != nil {
		return err
	}
	if u.SNI != "" && !validDNSName(u.SNI) {
		return fmt.Errorf("sni %q is not a DNS name", u.SNI)
	}
	if u.CertFile != "" || u.KeyFile != "" {
		return keyPair(u.CertFile, u.KeyFile, false)
	}
	return nil
}

// keyPair checks a certificate and key path pair.
func keyPair(cert, key string, required bool) error {
	if cert == "" || key == "" {
		if required {
			return errors.New("cert_file and key_file are both required")
		}
		return errors.New("cert_file and key_file go together: set both or neither")
	}
	if err := checkPath("cert_file", cert); err != nil {
		return err
	}
	if err := checkPath("key_file", key); err != nil {
		return err
	}
	if filepath.Dir(cert) != filepath.Dir(key) {
		return fmt.Errorf("cert_file and key_file must be in one directory (Envoy watches it to reload both together), not %s and %s",
			filepath.Dir(cert), filepath.Dir(key))
	}
	return nil
}

// checkPath accepts an absolute path on the Envoy host. Relative paths
// would depend on the directory Envoy was started in.
func checkPath(field, p string) error {
	if !filepath.IsAbs(p) || filepath.Dir(p) == p {
		return fmt.Errorf("%s %q must be an absolute file path on the Envoy host", field, p)
	}
	if strings.ContainsFunc(p, func(r rune) bool { return r < ' ' || r == 0x7f }) {
		return fmt.Errorf("%s %q contains control characters", field, p)
	}
	return nil
}
