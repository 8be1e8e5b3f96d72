package contract

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"
)

// KeySource names what the routing key is taken from: a CONNECT field.
// (The config key is hash_key; the filter-state key the result is stored
// under is FilterStateKey.)
type KeySource string

const (
	KeyClientID KeySource = "client_id"
	KeyUsername KeySource = "username"
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
const (
	DefaultMaxConnectBytes  = 64 << 10
	DefaultConnectTimeoutMs = 10_000

	minMaxConnectBytes  = 64              // smaller would refuse ordinary CONNECTs
	maxMaxConnectBytes  = 268_435_455 + 5 // the largest packet MQTT can express
	maxConnectTimeoutMs = 10 * 60 * 1000  // ten minutes: longer only helps slowloris
	defaultKeyPolicy    = EmptyAny        // an assigned ID has no session to keep
	defaultKeySource    = KeyClientID
)

// Config is the filter's configuration: the JSON carried in the Envoy
// filter_config (a google.protobuf.StringValue). Every field is optional.
type Config struct {
	HashKey          KeySource      `json:"hash_key,omitempty"`
	EmptyKey         EmptyKeyPolicy `json:"empty_key,omitempty"`
	MaxConnectBytes  int            `json:"max_connect_bytes,omitempty"`
	ConnectTimeoutMs int            `json:"connect_timeout_ms,omitempty"`
}

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
}

// Validate checks a Config whose defaults are filled in. Its errors name
// the field and the values it accepts.
func (c *Config) Validate() error {
	switch c.HashKey {
	case KeyClientID, KeyUsername:
	default:
		return fmt.Errorf("hash_key %q: must be %q or %q", c.HashKey, KeyClientID, KeyUsername)
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

// ConnectTimeout is ConnectTimeoutMs as a duration.
func (c *Config) ConnectTimeout() time.Duration {
	return time.Duration(c.ConnectTimeoutMs) * time.Millisecond
}
