// Package contract holds what the control plane and the Envoy module must
// agree on: the names that appear on both sides of an Envoy config, and the
// filter's own configuration. Package filter (inside Envoy) and package
// xds/translate (in the control plane) both import it, and nothing else of
// each other.
package contract

// ModuleName is the dynamic module's name: Envoy loads lib<ModuleName>.so
// from ENVOY_DYNAMIC_MODULES_SEARCH_PATH.
const ModuleName = "mqtt_sticky"

// FilterName is the filter_name the module answers to.
const FilterName = "mqtt_sticky"

// MetricsNamespace prefixes the filter's counters and gauges in Envoy's
// stats (mqtt_sticky.connect_mqtt311, ...).
const MetricsNamespace = "mqtt_sticky"

// FilterStateKey is the filter-state key the routing key is stored under,
// and the one tcp_proxy's hash_policy must read. It is also the name of the
// object factory that makes the stored value hashable: Envoy's typed
// filter-state setter finds the factory by the key's name, and a plain
// string would give tcp_proxy no hash at all.
const FilterStateKey = "envoy.hashable_string"

// MetadataNamespace is the dynamic metadata namespace the filter writes,
// e.g. %DYNAMIC_METADATA(mqtt:client_id)% in an access log.
const MetadataNamespace = "mqtt"

// The keys the filter sets under MetadataNamespace for a routed connection.
// The strings are escaped for logs; KeepAlive is a number.
const (
	MetadataClientID        = "client_id"
	MetadataProtocolVersion = "protocol_version"
	MetadataUsername        = "username"
	MetadataIdentity        = "identity"
	MetadataKeepAlive       = "keep_alive"
)

// The PROXY protocol v2 SSL TLV (type 0x20) that carries the client
// certificate's CN to the brokers, for proxy_protocol_cn. The filter builds
// its value and stores it as dynamic metadata under SSLTLVMetadataNamespace
// and SSLTLVMetadataKey; tcp_proxy's proxy_protocol_tlvs turns the
// metadata into the TLV with SSLTLVFormat, and the cluster's PROXY
// transport socket passes TLVs of type PP2TypeSSL through. The namespace is
// not MetadataNamespace, so an access log printing the whole mqtt namespace
// does not print these bytes.
const (
	PP2TypeSSL              = 0x20
	SSLTLVMetadataNamespace = "mqtt_sticky.proxy_protocol"
	SSLTLVMetadataKey       = "ssl_tlv"
	SSLTLVFormat            = "%DYNAMIC_METADATA(" + SSLTLVMetadataNamespace + ":" + SSLTLVMetadataKey + ")%"
)
