package filter

import (
	"errors"
	"strconv"
	"unicode/utf8"

	"github.com/mqtt-sticky/mqtt-sticky/contract"
	"github.com/mqtt-sticky/mqtt-sticky/filter/mqtt"
)

// The client certificate's identity, for hashing (hash_key cert_*), for
// binding the client ID or user name to it (identity_binding), and for the
// PROXY protocol SSL TLV (proxy_protocol_cn).
//
// Envoy reports only certificates its TLS handshake verified: the
// translator configures client_ca_file as the trusted CA of every listener
// whose filter needs a certificate, and Envoy then refuses a handshake
// whose certificate does not chain to it. Certificate data is fetched from
// Envoy only when the config needs it, once per connection, while the
// CONNECT is routed.

// identity is one part of the client certificate, looked up once.
type identity struct {
	source contract.IdentitySource
	value  string
	err    error // why there is no value; never quotes certificate bytes
}

var (
	errNotTLS        = errors.New("the connection is not TLS, and the filter config needs a client certificate")
	errNoCertificate = errors.New("no client certificate")
	errNoURISAN      = errors.New("the client certificate has no URI SAN")
	errNoDNSSAN      = errors.New("the client certificate has no DNS SAN")
	errBadSAN        = errors.New("the client certificate's SAN is not valid UTF-8")
)

// maxTLVCN bounds the CN put in the PROXY SSL TLV. X.520 allows 64
// characters; a longer CN would also need a two-byte length that the
// metadata string Envoy copies it through cannot carry as valid UTF-8.
const maxTLVCN = 127

// identityOf returns the certificate's identity from src, looking it up in
// Envoy the first time.
func (f *Filter) identityOf(src contract.IdentitySource) *identity {
	for i := range f.identities {
		if f.identities[i].source == src {
			return &f.identities[i]
		}
	}
	id := identity{source: src}
	id.value, id.err = f.lookupIdentity(src)
	f.identities = append(f.identities, id)
	return &f.identities[len(f.identities)-1]
}

func (f *Filter) lookupIdentity(src contract.IdentitySource) (string, error) {
	if !f.conn.IsTLS() {
		return "", errNotTLS
	}
	var sans []string
	switch src {
	case contract.IdentityCN:
		subject := f.conn.PeerSubject()
		if subject == "" {
			return "", errNoCertificate
		}
		return subjectCN(subject)
	case contract.IdentityURISAN:
		if sans = f.conn.PeerURISANs(); len(sans) == 0 {
			return "", errNoURISAN
		}
	default:
		if sans = f.conn.PeerDNSSANs(); len(sans) == 0 {
			return "", errNoDNSSAN
		}
	}
	if !utf8.ValidString(sans[0]) {
		return "", errBadSAN
	}
	return sans[0], nil
}

// requireIdentity returns the certificate's identity from src. Without
// one, it refuses the CONNECT as not authorized and reports false.
func (f *Filter) requireIdentity(src contract.IdentitySource, level mqtt.Level) (string, bool) {
	id := f.identityOf(src)
	if id.err == nil && id.value == "" {
		id.err = errors.New("the client certificate's " + string(src) + " is empty")
	}
	if id.err != nil {
		f.writeNotAuthorized(level)
		f.refuse(RejectNoIdentity, "refused CONNECT: no certificate identity ("+string(src)+")", id.err.Error())
		return "", false
	}
	return id.value, true
}

// checkBinding enforces identity_binding: the bound field (client ID or
// user name) must equal the certificate's identity, or be empty, in which
// case the identity stands in for it as the routing key (see routingKey).
func (f *Filter) checkBinding(c *mqtt.Connect) bool {
	if f.cfg.IdentityBinding == contract.BindingOff {
		return true
	}
	id, ok := f.requireIdentity(f.cfg.IdentitySource, c.Level)
	if !ok {
		return false
	}
	field, name := c.ClientID, "client ID"
	if f.cfg.IdentityBinding == contract.BindingUsername {
		field, name = c.Username, "user name"
	}
	if field == "" || field == id {
		return true
	}
	f.writeNotAuthorized(c.Level)
	f.refuse(RejectIdentity, "refused CONNECT: "+name+" is not the certificate's "+string(f.cfg.IdentitySource),
		name+" "+quoteForLog(field)+", certificate "+quoteForLog(id))
	return false
}

// boundIdentity returns the certificate identity that stands in for an
// empty hash-key field under a binding of that same field.
func (f *Filter) boundIdentity() (string, bool) {
	bound := (f.cfg.HashKey == contract.KeyClientID && f.cfg.IdentityBinding == contract.BindingClientID) ||
		(f.cfg.HashKey == contract.KeyUsername && f.cfg.IdentityBinding == contract.BindingUsername)
	if !bound {
		return "", false
	}
	id := f.identityOf(f.cfg.IdentitySource) // looked up by checkBinding
	return id.value, id.err == nil && id.value != ""
}

// usedIdentity returns the first certificate identity the connection's
// routing or binding used, for the dynamic metadata.
func (f *Filter) usedIdentity() string {
	for _, id := range f.identities {
		if id.err == nil && id.value != "" {
			return id.value
		}
	}
	return ""
}

// setSSLTLV stores the PROXY protocol v2 SSL TLV value holding the
// certificate's CN, which tcp_proxy sends to the broker. It refuses the
// CONNECT when there is no CN to send: a broker naming clients by that CN
// must not name this one by anything else.
func (f *Filter) setSSLTLV(level mqtt.Level) bool {
	cn, ok := f.requireIdentity(contract.IdentityCN, level)
	if !ok {
		return false
	}
	if len(cn) > maxTLVCN {
		f.writeNotAuthorized(level)
		f.refuse(RejectNoIdentity, "refused CONNECT: certificate CN too long for the PROXY protocol TLV",
			strconv.Itoa(len(cn))+" bytes, at most "+strconv.Itoa(maxTLVCN))
		return false
	}
	f.conn.SetSSLTLV(sslTLV(f.conn.TLSVersion(), cn))
	return true
}

// PROXY protocol v2 SSL TLV fields (the PROXY protocol specification,
// section 2.2.5).
const (
	pp2ClientSSL      = 0x01
	pp2ClientCertConn = 0x02
	pp2ClientCertSess = 0x04
	pp2SubtypeVersion = 0x21
	pp2SubtypeSSLCN   = 0x22
)

// sslTLV returns the value of a PP2_TYPE_SSL TLV (its type and length are
// written by Envoy): the client connected over TLS and presented a
// certificate on this connection, verify 0 (the certificate was verified),
// then the sub-TLVs PP2_SUBTYPE_SSL_VERSION, which the specification
// requires with PP2_CLIENT_SSL, and PP2_SUBTYPE_SSL_CN.
func sslTLV(version, cn string) []byte {
	v := make([]byte, 0, 11+len(version)+len(cn))
	v = append(v, pp2ClientSSL|pp2ClientCertConn|pp2ClientCertSess, 0, 0, 0, 0)
	if version != "" && len(version) < 0x80 {
		v = append(v, pp2SubtypeVersion, 0, byte(len(version)))
		v = append(v, version...)
	}
	v = append(v, pp2SubtypeSSLCN, byte(len(cn)>>8), byte(len(cn)))
	return append(v, cn...)
}

func (f *Filter) writeNotAuthorized(level mqtt.Level) {
	code := mqtt.ConnackNotAuthorized
	if level == mqtt.Level5 {
		code = mqtt.ReasonNotAuthorized
	}
	var buf [5]byte
	f.conn.Write(mqtt.AppendConnack(buf[:0], level, code))
}

// maxLoggedBytes bounds what of a client's field a log line shows.
const maxLoggedBytes = 64

// quoteForLog renders a client-controlled string for a log line: at most
// maxLoggedBytes of it, quoted, with every byte outside printable ASCII
// escaped, so it can neither forge a line nor hide in one.
func quoteForLog(s string) string {
	suffix := ""
	if len(s) > maxLoggedBytes {
		s, suffix = s[:maxLoggedBytes], "... ("+strconv.Itoa(len(s))+" bytes)"
	}
	return strconv.QuoteToASCII(s) + suffix
}
