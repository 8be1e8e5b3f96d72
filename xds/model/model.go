// Package model is the control plane's view of a broker fleet: the
// listeners clients connect to, the broker clusters behind them, and each
// cluster's endpoints. It is the input of package translate, which turns it
// into Envoy resources, and the thing the store persists and the API
// changes. Everything here is plain data with defaults and validation; no
// I/O.
package model

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/mqtt-sticky/mqtt-sticky/contract"
)

// Model is the whole fleet configuration.
type Model struct {
	Listeners []Listener `json:"listeners"`
	Clusters  []Cluster  `json:"clusters"`
}

// Listener is an address Envoy accepts MQTT clients on.
type Listener struct {
	Name    string `json:"name"`
	Address string `json:"address"`
	Port    int    `json:"port"`
	Cluster string `json:"cluster"` // the broker cluster clients are sent to
	// Filter holds the mqtt_sticky filter's options, with the same JSON keys
	// as the filter's own config.
	Filter contract.Config `json:"filter"`
	// BufferLimitBytes bounds what Envoy buffers per client connection.
	BufferLimitBytes uint32 `json:"buffer_limit_bytes,omitempty"`
	// ModuleName is the dynamic module Envoy loads (lib<name>.so from
	// ENVOY_DYNAMIC_MODULES_SEARCH_PATH).
	ModuleName string `json:"module_name,omitempty"`
	// AccessLog writes one line per client connection to Envoy's stdout:
	// client ID, protocol version, client address, broker, bytes.
	AccessLog bool `json:"access_log,omitempty"`
	// TLS makes this a TLS listener; nil is plaintext. See tls.go.
	TLS *TLS `json:"tls,omitempty"`
	// ConnectionRateLimit, when set, refuses new connections beyond a rate,
	// before they reach mqtt_sticky (Envoy's local_ratelimit network filter).
	ConnectionRateLimit *ConnectionRateLimit `json:"connection_rate_limit,omitempty"`
}

// ConnectionRateLimit is a token bucket for new connections on one listener
// of one Envoy: Burst connections at once, refilled at ConnectionsPerSecond.
// A connection beyond it is closed at once, and Envoy counts it in
// local_rate_limit.<listener>.rate_limited, so that a reconnect storm
// beyond what the brokers take is refused quickly instead of timing out.
type ConnectionRateLimit struct {
	ConnectionsPerSecond uint32 `json:"connections_per_second"`
	Burst                uint32 `json:"burst,omitempty"` // default: one second's worth
}

// LBPolicy is a consistent-hash load balancer.
type LBPolicy string

const (
	Maglev   LBPolicy = "maglev"
	RingHash LBPolicy = "ring_hash"
)

// ProxyProtocol is the PROXY protocol version sent to brokers.
type ProxyProtocol string

const (
	ProxyV1  ProxyProtocol = "v1"
	ProxyV2  ProxyProtocol = "v2"
	ProxyOff ProxyProtocol = "off"
)

// HealthCheckType is how Envoy probes brokers.
type HealthCheckType string

const (
	// HealthMQTT sends an MQTT 3.1.1 CONNECT (after a PROXY header when the
	// cluster uses one) and expects an accepting CONNACK.
	HealthMQTT HealthCheckType = "mqtt"
	// HealthTCP only opens a connection (and sends the PROXY header).
	HealthTCP HealthCheckType = "tcp"
	// HealthHTTP sends GET path to the broker's management port, on a
	// plain socket (no PROXY header), and expects one of the statuses.
	HealthHTTP HealthCheckType = "http"
	// HealthEMQX is HealthHTTP preset for EMQX 5's availability check,
	// which answers 503 while the node is being evacuated.
	HealthEMQX HealthCheckType = "emqx"
	HealthOff  HealthCheckType = "off"
)

// The EMQX 5 availability check: its dashboard listener answers 200, or
// 503 while the node is being evacuated, without authentication.
const (
	EMQXHealthPort = 18083
	EMQXHealthPath = "/api/v5/load_rebalance/availability_check"
)

// Duration is a time.Duration written as "5s" in JSON and YAML.
type Duration time.Duration

func (d Duration) MarshalJSON() ([]byte, error) {
	return []byte(`"` + time.Duration(d).String() + `"`), nil
}

func (d *Duration) UnmarshalJSON(b []byte) error {
	s := strings.Trim(string(b), `"`)
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("duration %s: %w (write it like \"5s\" or \"1m30s\")", b, err)
	}
	*d = Duration(v)
	return nil
}

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// HealthCheck configures active health checking of a cluster's brokers.
type HealthCheck struct {
	Type     HealthCheckType `json:"type"`
	Interval Duration        `json:"interval,omitempty"`
	// UnhealthyInterval is how often an unhealthy broker is probed; it is
	// short, so a broker that comes back gets clients again within about
	// a second. It defaults to the smaller of 1s and Interval.
	UnhealthyInterval  Duration `json:"unhealthy_interval,omitempty"`
	Timeout            Duration `json:"timeout,omitempty"`
	UnhealthyThreshold uint32   `json:"unhealthy_threshold,omitempty"`
	HealthyThreshold   uint32   `json:"healthy_threshold,omitempty"`
	// ClientIDPrefix starts the client ID of the MQTT probe; the Envoy node
	// ID follows, so every Envoy probes with its own ID.
	ClientIDPrefix string `json:"client_id_prefix,omitempty"`
	// Port, Path and Expect configure the http check (emqx presets them):
	// GET Path on each broker's Port answers one of the Expect statuses.
	Port   int    `json:"port,omitempty"`
	Path   string `json:"path,omitempty"`
	Expect []int  `json:"expect,omitempty"`
}

// IsHTTP reports whether the check probes a management port over HTTP.
func (h HealthCheck) IsHTTP() bool { return h.Type == HealthHTTP || h.Type == HealthEMQX }

// Discovery says where a cluster's endpoints come from when not from the
// config file and the API.
type Discovery struct {
	DNS *DNSDiscovery `json:"dns,omitempty"`
}

// DNSRecord is the record type DNS discovery queries.
type DNSRecord string

const (
	// RecordA queries A and AAAA records: every address is a broker on Port.
	RecordA DNSRecord = "a"
	// RecordSRV queries SRV records: every target is a broker, named by its
	// host name, on the port the record gives.
	RecordSRV DNSRecord = "srv"
)

// DNSDiscovery resolves a DNS name every Interval and serves the answer as
// the cluster's endpoints.
type DNSDiscovery struct {
	Name     string    `json:"name"`
	Port     int       `json:"port,omitempty"`
	Record   DNSRecord `json:"record,omitempty"`
	Interval Duration  `json:"interval,omitempty"`
	// Resolver is the DNS server, IP[:PORT]; empty means the first
	// nameserver of /etc/resolv.conf.
	Resolver string `json:"resolver,omitempty"`
}

// CircuitBreakers bound the connections Envoy opens to a cluster. Envoy's
// defaults (1024) suit short HTTP requests, not MQTT connections that stay
// open for days.
type CircuitBreakers struct {
	MaxConnections     uint32 `json:"max_connections,omitempty"`
	MaxPendingRequests uint32 `json:"max_pending_requests,omitempty"`
}

// Cluster is a set of brokers behind one consistent hash.
type Cluster struct {
	Name           string          `json:"name"`
	LBPolicy       LBPolicy        `json:"lb_policy,omitempty"`
	PointsPerHost  uint32          `json:"points_per_host,omitempty"`   // ring_hash: ring entries per broker
	MaglevTable    uint64          `json:"maglev_table_size,omitempty"` // maglev: prime table size
	HashBalance    uint32          `json:"hash_balance_factor,omitempty"`
	ProxyProtocol  ProxyProtocol   `json:"proxy_protocol,omitempty"`
	HealthCheck    HealthCheck     `json:"health_check"`
	CircuitBreaker CircuitBreakers `json:"circuit_breakers"`
	// IdleTimeout closes client and broker connections that carried no
	// bytes for this long. It must exceed 1.5 x the longest MQTT keepalive.
	IdleTimeout      Duration `json:"idle_timeout,omitempty"`
	ConnectTimeout   Duration `json:"connect_timeout,omitempty"`
	BufferLimitBytes uint32   `json:"buffer_limit_bytes,omitempty"`
	// HealthyPanicThreshold is Envoy's panic threshold in percent. The
	// default 0 disables panic mode: with hashing, panic mode would pin
	// the clients of a dead broker to it.
	HealthyPanicThreshold *uint32 `json:"healthy_panic_threshold,omitempty"`
	// Discovery, when set, supplies the endpoints: the API refuses to
	// change them by hand.
	Discovery *Discovery `json:"discovery,omitempty"`
	Endpoints []Endpoint `json:"endpoints"`
	// UpstreamTLS, when set, has Envoy speak TLS to the brokers (after the
	// PROXY header). See tls.go.
	UpstreamTLS *UpstreamTLS `json:"upstream_tls,omitempty"`
}

// Discovered reports whether the cluster's endpoints come from discovery.
func (c *Cluster) Discovered() bool { return c.Discovery != nil }

// Defaults.
const (
	DefaultListenerName   = "mqtt"
	DefaultClusterName    = "brokers"
	DefaultModuleName     = contract.ModuleName
	DefaultPointsPerHost  = 1024
	DefaultMaglevTable    = 65537
	DefaultWeight         = 1
	DefaultMaxConnections = 1_000_000
	DefaultMaxPending     = 100_000
	DefaultIdleTimeout    = Duration(time.Hour)
	DefaultConnectTimeout = Duration(5 * time.Second)
	DefaultHealthInterval = Duration(5 * time.Second)
	DefaultHealthTimeout  = Duration(2 * time.Second)
	DefaultUnhealthy      = 2
	DefaultHealthy        = 1
	DefaultHealthClientID = "mqtt-sticky-hc-"
	DefaultUnhealthyEvery = Duration(time.Second)
	DefaultDNSInterval    = Duration(5 * time.Second)
	minDNSInterval        = 100 * time.Millisecond
	DefaultListenerBuffer = 1 << 20
	DefaultClusterBuffer  = 1 << 20
	maxWeight             = 128
	maxRingSize           = 8 << 20 // Envoy's upper bound for a ring
	maxPointsPerHost      = 65536
	minHashBalanceFactor  = 100
	maxMaglevTable        = 5_000_011 // the largest table Envoy accepts is 5,000,011
	maxConnectionRate     = 1_000_000
	maxConnectionBurst    = 10_000_000
)

// Default returns the fleet `mqtt-sticky serve` runs without a config file:
// a listener on port 1883 and cluster "brokers" of three local brokers,
// Maglev, PROXY protocol v2, MQTT health checks.
func Default() *Model {
	m := &Model{
		Listeners: []Listener{{Name: DefaultListenerName, Address: "0.0.0.0", Port: 1883, Cluster: DefaultClusterName}},
		Clusters: []Cluster{{Name: DefaultClusterName, Endpoints: []Endpoint{
			{Address: "127.0.0.1", Port: 18831},
			{Address: "127.0.0.1", Port: 18832},
			{Address: "127.0.0.1", Port: 18833},
		}}},
	}
	m.SetDefaults()
	return m
}

// SetDefaults fills in every field left empty.
func (m *Model) SetDefaults() {
	for i := range m.Listeners {
		l := &m.Listeners[i]
		if l.Name == "" {
			l.Name = DefaultListenerName
		}
		if l.Cluster == "" {
			l.Cluster = DefaultClusterName
		}
		if l.Address == "" {
			l.Address = "0.0.0.0"
		}
		if l.ModuleName == "" {
			l.ModuleName = DefaultModuleName
		}
		if l.BufferLimitBytes == 0 {
			l.BufferLimitBytes = DefaultListenerBuffer
		}
		if l.Filter.DynamicMetadata == nil {
			// The access log is the only reader of the metadata in the
			// configuration the control plane serves; without it, the
			// metadata would cost memory for nothing.
			on := l.AccessLog
			l.Filter.DynamicMetadata = &on
		}
		l.Filter.SetDefaults()
		l.TLS.setDefaults()
		if r := l.ConnectionRateLimit; r != nil && r.Burst == 0 {
			r.Burst = r.ConnectionsPerSecond
		}
	}
	for i := range m.Clusters {
		c := &m.Clusters[i]
		if c.Name == "" {
			c.Name = DefaultClusterName
		}
		if c.LBPolicy == "" {
			c.LBPolicy = Maglev
		}
		if c.LBPolicy == RingHash && c.PointsPerHost == 0 {
			c.PointsPerHost = DefaultPointsPerHost
		}
		if c.LBPolicy == Maglev && c.MaglevTable == 0 {
			c.MaglevTable = DefaultMaglevTable
		}
		if c.ProxyProtocol == "" {
			c.ProxyProtocol = ProxyV2
		}
		h := &c.HealthCheck
		if h.Type == "" {
			h.Type = HealthMQTT
		}
		if h.Interval == 0 {
			h.Interval = DefaultHealthInterval
		}
		if h.Timeout == 0 {
			h.Timeout = DefaultHealthTimeout
		}
		if h.UnhealthyThreshold == 0 {
			h.UnhealthyThreshold = DefaultUnhealthy
		}
		if h.HealthyThreshold == 0 {
			h.HealthyThreshold = DefaultHealthy
		}
		if h.UnhealthyInterval == 0 {
			h.UnhealthyInterval = min(DefaultUnhealthyEvery, h.Interval)
		}
		h.setTypeDefaults()
		if d := c.Discovery; d != nil && d.DNS != nil {
			if d.DNS.Record == "" {
				d.DNS.Record = RecordA
			}
			if d.DNS.Interval == 0 {
				d.DNS.Interval = DefaultDNSInterval
			}
		}
		if c.CircuitBreaker.MaxConnections == 0 {
			c.CircuitBreaker.MaxConnections = DefaultMaxConnections
		}
		if c.CircuitBreaker.MaxPendingRequests == 0 {
			c.CircuitBreaker.MaxPendingRequests = DefaultMaxPending
		}
		if c.IdleTimeout == 0 {
			c.IdleTimeout = DefaultIdleTimeout
		}
		if c.ConnectTimeout == 0 {
			c.ConnectTimeout = DefaultConnectTimeout
		}
		if c.BufferLimitBytes == 0 {
			c.BufferLimitBytes = DefaultClusterBuffer
		}
		if c.HealthyPanicThreshold == nil {
			zero := uint32(0)
			c.HealthyPanicThreshold = &zero
		}
		for j := range c.Endpoints {
			c.Endpoints[j].SetDefaults()
		}
	}
}

// setTypeDefaults fills in what the check's type needs: the MQTT probe's
// client ID, or the HTTP check's path and statuses.
func (h *HealthCheck) setTypeDefaults() {
	switch h.Type {
	case HealthMQTT:
		if h.ClientIDPrefix == "" {
			h.ClientIDPrefix = DefaultHealthClientID
		}
	case HealthEMQX:
		if h.Port == 0 {
			h.Port = EMQXHealthPort
		}
		if h.Path == "" {
			h.Path = EMQXHealthPath
		}
	}
	if h.IsHTTP() && len(h.Expect) == 0 {
		h.Expect = []int{200}
	}
}

// ErrInvalid wraps every validation error.
var ErrInvalid = errors.New("invalid configuration")

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// Cluster returns the named cluster, or nil.
func (m *Model) Cluster(name string) *Cluster {
	for i := range m.Clusters {
		if m.Clusters[i].Name == name {
			return &m.Clusters[i]
		}
	}
	return nil
}

// Validate checks a model whose defaults are set. Errors name the listener,
// cluster or endpoint and say what is accepted.
func (m *Model) Validate() error {
	if len(m.Listeners) == 0 {
		return invalid("no listeners: define at least one")
	}
	if len(m.Clusters) == 0 {
		return invalid("no clusters: define at least one")
	}
	names := map[string]bool{}
	ports := map[string]string{}
	for _, l := range m.Listeners {
		what := fmt.Sprintf("listener %q", l.Name)
		if !validName(l.Name) || names["listener/"+l.Name] {
			return invalid("%s: names must be unique and use only letters, digits, '-', '_' and '.'", what)
		}
		names["listener/"+l.Name] = true
		if _, err := netip.ParseAddr(l.Address); err != nil {
			return invalid("%s: address %q is not an IP address", what, l.Address)
		}
		if l.Port < 1 || l.Port > 65535 {
			return invalid("%s: port %d is out of range 1-65535", what, l.Port)
		}
		bind := fmt.Sprintf("%s:%d", l.Address, l.Port)
		if other, dup := ports[bind]; dup {
			return invalid("%s: %s is already used by listener %q", what, bind, other)
		}
		ports[bind] = l.Name
		if m.Cluster(l.Cluster) == nil {
			return invalid("%s: cluster %q is not defined", what, l.Cluster)
		}
		if err := l.Filter.Validate(); err != nil {
			return invalid("%s: filter: %v", what, err)
		}
		if l.Filter.MaxConnectBytes > int(l.BufferLimitBytes) {
			return invalid("%s: filter max_connect_bytes %d exceeds buffer_limit_bytes %d: Envoy would stop reading before the CONNECT is complete",
				what, l.Filter.MaxConnectBytes, l.BufferLimitBytes)
		}
		if !validName(l.ModuleName) {
			return invalid("%s: module_name %q is not a valid module name", what, l.ModuleName)
		}
		if err := l.validateTLS(m.Cluster(l.Cluster)); err != nil {
			return invalid("%s: %v", what, err)
		}
		if r := l.ConnectionRateLimit; r != nil {
			if r.ConnectionsPerSecond < 1 || r.ConnectionsPerSecond > maxConnectionRate {
				return invalid("%s: connection_rate_limit.connections_per_second %d must be between 1 and %d", what, r.ConnectionsPerSecond, maxConnectionRate)
			}
			if r.Burst < 1 || r.Burst > maxConnectionBurst {
				return invalid("%s: connection_rate_limit.burst %d must be between 1 and %d", what, r.Burst, maxConnectionBurst)
			}
		}
	}
	for i := range m.Clusters {
		if err := m.Clusters[i].validate(names); err != nil {
			return err
		}
	}
	return nil
}

func (c *Cluster) validate(names map[string]bool) error {
	what := fmt.Sprintf("cluster %q", c.Name)
	if !validName(c.Name) || names["cluster/"+c.Name] {
		return invalid("%s: names must be unique and use only letters, digits, '-', '_' and '.'", what)
	}
	names["cluster/"+c.Name] = true
	switch c.LBPolicy {
	case Maglev:
		if c.PointsPerHost != 0 {
			return invalid("%s: points_per_host applies to ring_hash only", what)
		}
		if c.MaglevTable > maxMaglevTable || !big.NewInt(int64(c.MaglevTable)).ProbablyPrime(20) {
			return invalid("%s: maglev_table_size %d must be a prime no larger than %d (65537 is a good choice)", what, c.MaglevTable, maxMaglevTable)
		}
		if uint64(len(c.Endpoints))*100 > c.MaglevTable {
			return invalid("%s: maglev_table_size %d is too small for %d endpoints: use a prime of at least 100 x endpoints", what, c.MaglevTable, len(c.Endpoints))
		}
	case RingHash:
		if c.MaglevTable != 0 {
			return invalid("%s: maglev_table_size applies to maglev only", what)
		}
		if c.PointsPerHost < 1 || c.PointsPerHost > maxPointsPerHost {
			return invalid("%s: points_per_host %d must be between 1 and %d", what, c.PointsPerHost, maxPointsPerHost)
		}
		if total := uint64(c.PointsPerHost) * uint64(totalWeight(c.Endpoints)); total > maxRingSize {
			return invalid("%s: ring of %d entries exceeds Envoy's maximum of %d: lower points_per_host", what, total, maxRingSize)
		}
	default:
		return invalid("%s: lb_policy %q must be %q or %q", what, c.LBPolicy, Maglev, RingHash)
	}
	if c.HashBalance != 0 && c.HashBalance < minHashBalanceFactor {
		return invalid("%s: hash_balance_factor %d must be 0 (off) or at least %d", what, c.HashBalance, minHashBalanceFactor)
	}
	switch c.ProxyProtocol {
	case ProxyV1, ProxyV2, ProxyOff:
	default:
		return invalid("%s: proxy_protocol %q must be v1, v2 or off", what, c.ProxyProtocol)
	}
	if err := c.HealthCheck.validate(what); err != nil {
		return err
	}
	if err := c.Discovery.validate(what); err != nil {
		return err
	}
	if c.IdleTimeout.D() < time.Second {
		return invalid("%s: idle_timeout %v is shorter than 1s; it must exceed 1.5 x the longest MQTT keepalive", what, c.IdleTimeout.D())
	}
	if c.ConnectTimeout.D() < 10*time.Millisecond || c.ConnectTimeout.D() > time.Minute {
		return invalid("%s: connect_timeout %v must be between 10ms and 1m", what, c.ConnectTimeout.D())
	}
	if c.BufferLimitBytes < 1024 {
		return invalid("%s: buffer_limit_bytes %d must be at least 1024", what, c.BufferLimitBytes)
	}
	if c.HealthyPanicThreshold != nil && *c.HealthyPanicThreshold > 100 {
		return invalid("%s: healthy_panic_threshold %d is a percentage (0-100)", what, *c.HealthyPanicThreshold)
	}
	if err := c.UpstreamTLS.validate(); err != nil {
		return invalid("%s: upstream_tls: %v", what, err)
	}
	return ValidateEndpoints(c.Name, c.Endpoints)
}

func (h HealthCheck) validate(what string) error {
	switch h.Type {
	case HealthMQTT, HealthTCP, HealthHTTP, HealthEMQX:
	case HealthOff:
		return nil
	default:
		return invalid("%s: health_check.type %q must be mqtt, tcp, http, emqx or off", what, h.Type)
	}
	if h.Interval.D() < 100*time.Millisecond || h.Timeout.D() < 10*time.Millisecond || h.Timeout > h.Interval {
		return invalid("%s: health_check interval %v and timeout %v: need interval >= 100ms and 10ms <= timeout <= interval", what, h.Interval.D(), h.Timeout.D())
	}
	if h.UnhealthyInterval.D() < 100*time.Millisecond || h.UnhealthyInterval > h.Interval {
		return invalid("%s: health_check unhealthy_interval %v must be between 100ms and interval %v", what, h.UnhealthyInterval.D(), h.Interval.D())
	}
	if h.UnhealthyThreshold > 100 || h.HealthyThreshold > 100 {
		return invalid("%s: health_check thresholds must be at most 100", what)
	}
	if h.Type == HealthMQTT && (len(h.ClientIDPrefix) > 64 || !validName(strings.TrimRight(h.ClientIDPrefix, "-_"))) {
		return invalid("%s: health_check.client_id_prefix %q: use up to 64 letters, digits, '-', '_' or '.'", what, h.ClientIDPrefix)
	}
	if !h.IsHTTP() {
		if h.Port != 0 || h.Path != "" || len(h.Expect) != 0 {
			return invalid("%s: health_check port, path and expect apply to type http and emqx only", what)
		}
		return nil
	}
	if h.ClientIDPrefix != "" {
		return invalid("%s: health_check.client_id_prefix applies to type mqtt only", what)
	}
	if h.Port < 1 || h.Port > 65535 {
		return invalid("%s: health_check.port %d: an http check needs the brokers' management port (1-65535)", what, h.Port)
	}
	if !strings.HasPrefix(h.Path, "/") || len(h.Path) > 1024 || strings.ContainsFunc(h.Path, func(r rune) bool { return r <= ' ' || r > '~' }) {
		return invalid("%s: health_check.path %q must start with '/' and hold up to 1024 printable ASCII characters", what, h.Path)
	}
	if len(h.Expect) > 16 {
		return invalid("%s: health_check.expect lists %d statuses; at most 16", what, len(h.Expect))
	}
	for _, code := range h.Expect {
		if code < 100 || code > 599 {
			return invalid("%s: health_check.expect status %d is not an HTTP status (100-599)", what, code)
		}
	}
	return nil
}

func (d *Discovery) validate(what string) error {
	if d == nil {
		return nil
	}
	dns := d.DNS
	if dns == nil {
		return invalid("%s: discovery needs a dns block: {dns: {name, port, record, interval, resolver}}", what)
	}
	if !validDNSName(dns.Name) {
		return invalid("%s: discovery.dns.name %q is not a DNS name", what, dns.Name)
	}
	switch dns.Record {
	case RecordA:
		if dns.Port < 1 || dns.Port > 65535 {
			return invalid("%s: discovery.dns.port %d: A records carry no port, give the brokers' MQTT port (1-65535)", what, dns.Port)
		}
	case RecordSRV:
		if dns.Port != 0 {
			return invalid("%s: discovery.dns.port applies to record a only: SRV records carry the port", what)
		}
	default:
		return invalid("%s: discovery.dns.record %q must be a or srv", what, dns.Record)
	}
	if dns.Interval.D() < minDNSInterval || dns.Interval.D() > time.Hour {
		return invalid("%s: discovery.dns.interval %v must be between %v and 1h", what, dns.Interval.D(), minDNSInterval)
	}
	if dns.Resolver != "" {
		if _, err := ParseResolver(dns.Resolver); err != nil {
			return invalid("%s: discovery.dns.resolver: %v", what, err)
		}
	}
	return nil
}

// ParseResolver reads a DNS server address, IP or IP:PORT (port 53 when
// not given), and returns it as IP:PORT.
func ParseResolver(s string) (string, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil && ap.Port() != 0 {
		return ap.String(), nil
	}
	if a, err := netip.ParseAddr(s); err == nil && a.Zone() == "" {
		return netip.AddrPortFrom(a, 53).String(), nil
	}
	return "", fmt.Errorf("%q is not IP or IP:PORT", s)
}

// validDNSName accepts host names with an optional final dot, each label
// 1-63 characters.
func validDNSName(s string) bool {
	s = strings.TrimSuffix(s, ".")
	if s == "" || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 || !validName(label) {
			return false
		}
	}
	return true
}

func totalWeight(eps []Endpoint) uint32 {
	var w uint32
	for _, e := range eps {
		w += max(e.Weight, 1)
	}
	return w
}

func validName(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return false
		}
	}
	return true
}

// Clone returns a deep copy, so a change can be validated on the copy
// before it replaces the original.
func (m *Model) Clone() *Model {
	c := &Model{Listeners: slices.Clone(m.Listeners), Clusters: slices.Clone(m.Clusters)}
	for i := range c.Listeners {
		l := &c.Listeners[i]
		l.TLS = l.TLS.clone()
		if r := l.ConnectionRateLimit; r != nil {
			v := *r
			l.ConnectionRateLimit = &v
		}
		if m := l.Filter.DynamicMetadata; m != nil {
			v := *m
			l.Filter.DynamicMetadata = &v
		}
	}
	for i := range c.Clusters {
		c.Clusters[i].UpstreamTLS = c.Clusters[i].UpstreamTLS.clone()
		c.Clusters[i].Endpoints = slices.Clone(c.Clusters[i].Endpoints)
		c.Clusters[i].HealthCheck.Expect = slices.Clone(c.Clusters[i].HealthCheck.Expect)
		if d := c.Clusters[i].Discovery; d != nil {
			d2 := *d
			if d.DNS != nil {
				dns := *d.DNS
				d2.DNS = &dns
			}
			c.Clusters[i].Discovery = &d2
		}
		if t := c.Clusters[i].HealthyPanicThreshold; t != nil {
			v := *t
			c.Clusters[i].HealthyPanicThreshold = &v
		}
	}
	return c
}

// YAML 1.1 reads a bare `off` as the boolean false; accept it where "off" is
// a valid value, so `proxy_protocol: off` means what it says.

func (p *ProxyProtocol) UnmarshalJSON(b []byte) error { return unmarshalOff(b, (*string)(p)) }

func (h *HealthCheckType) UnmarshalJSON(b []byte) error { return unmarshalOff(b, (*string)(h)) }

func unmarshalOff(b []byte, s *string) error {
	if string(b) == "false" {
		*s = "off"
		return nil
	}
	return json.Unmarshal(b, s)
}
