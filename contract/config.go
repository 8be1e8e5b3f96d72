package contract

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"
)

// KeySource names what the routing key is taken from: a CONNECT field, or
// the verified client certificate of a TLS connection. (The config key is
// hash_key; the filter-state key the result is stored under is
// FilterStateKey.)
type KeySource string

const (
	KeyClientID KeySource = "client_id"
	KeyUsername KeySource = "username"
	// KeyCertCN, KeyCertURISAN and KeyCertDNSSAN route on the client
	// certificate's identity, as a broker with peer_cert_as_clientid names
	// the client. See IdentitySource for which value each one takes.
	KeyCertCN     KeySource = "cert_cn"
	KeyCertURISAN KeySource = "cert_uri_san"
	KeyCertDNSSAN KeySource = "cert_dns_san"
)

// Certificate reports whether the key comes from the client certificate,
// and from which part of it.
func (k KeySource) Certificate() (IdentitySource, bool) {
	switch k {
	case KeyCertCN:
		return IdentityCN, true
	case KeyCertURISAN:
		return IdentityURISAN, true
	case KeyCertDNSSAN:
		return IdentityDNSSAN, true
	}
	return "", false
}

// IdentityBinding names the CONNECT field that must equal the client
// certificate's identity.
type IdentityBinding string

const (
	BindingOff      IdentityBinding = "off"
	BindingClientID IdentityBinding = "client_id"
	BindingUsername IdentityBinding = "username"
)

// IdentitySource is the part of the verified client certificate that
// names the client: the subject's common name, or the first URI or DNS
// subject alternative name, in the certificate's order.
type IdentitySource string

const (
	IdentityCN     IdentitySource = "cn"
	IdentityURISAN IdentitySource = "uri_san"
	IdentityDNSSAN IdentitySource = "dns_san"
)

// EmptyKeyPolicy says what to do when the hash key field is empty, as it is
// when an MQTT 3.1.1 or 5.0 client asks the broker to assign its ID.
type EmptyKeyPolicy string

const (
	// EmptyAny sets no routing key: Envoy's load balancer picks a broker.
	EmptyAny EmptyKeyPolicy = "any"
	// EmptySourceIP routes on the client's IP address instead.
	EmptySourceIP EmptyKeyPolicy = "source_ip"
	// EmptyReject answers with a CONNACK refusal and closes.
	EmptyReject EmptyKeyPolicy = "reject"
)

// Defaults and bounds for Config.
//
// Every connection that has not completed its CONNECT holds up to
// max_connect_bytes in Envoy's buffer until connect_timeout_ms, so the
// worst case of pre-CONNECT memory is Envoy's connection limit times
// max_connect_bytes (README, "Resource bounds on the data path"). A real
// CONNECT is a few hundred bytes; 4 KiB leaves room for a token as the
// password (JWTs run to 1–2 KB) and a small will. Fleets whose MQTT 5
// CONNECTs carry large wills or authentication data raise it. Five
// seconds is long for one packet that a client sends as soon as TCP is up,
// and short for a client that sends nothing.
const (
	DefaultMaxConnectBytes  = 4 << 10
	DefaultConnectTimeoutMs = 5_000

	minMaxConnectBytes  = 64              // smaller would refuse ordinary CONNECTs
	maxMaxConnectBytes  = 268_435_455 + 5 // the largest packet MQTT can express
	maxConnectTimeoutMs = 10 * 60 * 1000  // ten minutes: longer only helps slowloris
	defaultKeyPolicy    = EmptyAny        // an assigned ID has no session to keep
	defaultKeySource    = KeyClientID
	defaultBinding      = BindingOff
	defaultIdentity     = IdentityCN
)

// Config is the filter's configuration: the JSON carried in the Envoy
// filter_config (a google.protobuf.StringValue). Every field is optional.
type Config struct {
	HashKey          KeySource      `json:"hash_key,omitempty"`
	EmptyKey         EmptyKeyPolicy `json:"empty_key,omitempty"`
	MaxConnectBytes  int            `json:"max_connect_bytes,omitempty"`
	ConnectTimeoutMs int            `json:"connect_timeout_ms,omitempty"`
	// IdentityBinding refuses a CONNECT whose client ID (or user name)
	// is not the client certificate's identity, taken from
	// IdentitySource.
	IdentityBinding IdentityBinding `json:"identity_binding,omitempty"`
	IdentitySource  IdentitySource  `json:"identity_source,omitempty"`
	// ProxyProtocolCN has the filter build a PROXY protocol v2 SSL TLV
	// (type 0x20) holding the client certificate's CN, for tcp_proxy to
	// send to the broker (EMQX reads it for peer_cert_as_clientid).
	ProxyProtocolCN bool `json:"proxy_protocol_cn,omitempty"`
	// DynamicMetadata sets the connection's dynamic metadata (namespace
	// mqtt: client_id, username, protocol_version, keep_alive) for access
	// logs and other filters. It costs about 500 bytes per connection for
	// as long as the connection lives; without a reader, turn it off.
	// Default true.
	DynamicMetadata *bool `json:"dynamic_metadata,omitempty"`
}

// Metadata reports whether the filter sets dynamic metadata.
func (c *Config) Metadata() bool { return c.DynamicMetadata == nil || *c.DynamicMetadata }

// ParseConfig reads the filter_config JSON, fills in defaults and validates
// it. Unknown fields are errors, so a misspelt option is refused rather
// than ignored. An empty input gives the defaults.
func ParseConfig(raw []byte) (*Config, error) {
	c := &Config{}
	if len(bytes.TrimSpace(raw)) > 0 {
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		if err := dec.Decode(c); err != nil {
			return nil, fmt.Errorf("filter_config is not valid JSON for mqtt_sticky: %w", err)
		}
		if dec.More() {
			return nil, fmt.Errorf("filter_config has data after the JSON object")
		}
	}
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// SetDefaults fills in every field left empty.
func (c *Config) SetDefaults() {
	if c.HashKey == "" {
		c.HashKey = defaultKeySource
	}
	if c.EmptyKey == "" {
		c.EmptyKey = defaultKeyPolicy
	}
	if c.MaxConnectBytes == 0 {
		c.MaxConnectBytes = DefaultMaxConnectBytes
	}
	if c.ConnectTimeoutMs == 0 {
		c.ConnectTimeoutMs = DefaultConnectTimeoutMs
	}
	if c.IdentityBinding == "" {
		c.IdentityBinding = defaultBinding
	}
	if c.IdentitySource == "" {
		c.IdentitySource = defaultIdentity
	}
	if c.DynamicMetadata == nil {
		on := true
		c.DynamicMetadata = &on
	}
}

// Validate checks a Config whose defaults are filled in. Its errors name
// the field and the values it accepts.
func (c *Config) Validate() error {
	switch c.HashKey {
	case KeyClientID, KeyUsername, KeyCertCN, KeyCertURISAN, KeyCertDNSSAN:
	default:
		return fmt.Errorf("hash_key %q: must be %q, %q, %q, %q or %q", c.HashKey, KeyClientID, KeyUsername, KeyCertCN, KeyCertURISAN, KeyCertDNSSAN)
	}
	switch c.IdentityBinding {
	case BindingOff, BindingClientID, BindingUsername:
	default:
		return fmt.Errorf("identity_binding %q: must be %q, %q or %q", c.IdentityBinding, BindingOff, BindingClientID, BindingUsername)
	}
	switch c.IdentitySource {
	case IdentityCN, IdentityURISAN, IdentityDNSSAN:
	default:
		return fmt.Errorf("identity_source %q: must be %q, %q or %q", c.IdentitySource, IdentityCN, IdentityURISAN, IdentityDNSSAN)
	}
	switch c.EmptyKey {
	case EmptyAny, EmptySourceIP, EmptyReject:
	default:
		return fmt.Errorf("empty_key %q: must be %q, %q or %q", c.EmptyKey, EmptyAny, EmptySourceIP, EmptyReject)
	}
	if c.MaxConnectBytes < minMaxConnectBytes || c.MaxConnectBytes > maxMaxConnectBytes {
		return fmt.Errorf("max_connect_bytes %d: must be between %d and %d", c.MaxConnectBytes, minMaxConnectBytes, maxMaxConnectBytes)
	}
	if c.ConnectTimeoutMs < 1 || c.ConnectTimeoutMs > maxConnectTimeoutMs {
		return fmt.Errorf("connect_timeout_ms %d: must be between 1 and %d", c.ConnectTimeoutMs, maxConnectTimeoutMs)
	}
	return nil
}

// NeedsCertificate reports whether the config routes on, binds to or
// forwards the client certificate: every connection must then carry a
// verified one, and a connection without fails closed.
func (c *Config) NeedsCertificate() bool {
	_, fromCert := c.HashKey.Certificate()
	return fromCert || c.IdentityBinding != BindingOff || c.ProxyProtocolCN
}

// ConnectTimeout is ConnectTimeoutMs as a duration.
func (c *Config) ConnectTimeout() time.Duration {
	return time.Duration(c.ConnectTimeoutMs) * time.Millisecond
}
