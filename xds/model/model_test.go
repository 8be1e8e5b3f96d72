package model

import (
	"errors"
	"testing"
)

// Invalid models are refused before anything is built, with a message that
// names the problem.
func TestInvalidModels(t *testing.T) {
	base := `
listeners: [{name: mqtt, port: 1883}]
clusters: [{name: brokers, endpoints: [{address: 127.0.0.1, port: 18831}]}]
`
	tests := []struct {
		name, yaml, want string
	}{
		{"no listeners", `clusters: [{name: brokers}]`, "invalid configuration: no listeners: define at least one"},
		{"unknown key", base + "listner: x\n", `invalid configuration: error unmarshaling JSON: while decoding JSON: json: unknown field "listner"`},
		{"listener port", `
listeners: [{name: mqtt, port: 70000}]
clusters: [{name: brokers}]`, `invalid configuration: listener "mqtt": port 70000 is out of range 1-65535`},
		{"unknown cluster", `
listeners: [{name: mqtt, port: 1883, cluster: nowhere}]
clusters: [{name: brokers}]`, `invalid configuration: listener "mqtt": cluster "nowhere" is not defined`},
		{"duplicate bind", `
listeners: [{name: a, port: 1883}, {name: b, port: 1883}]
clusters: [{name: brokers}]`, `invalid configuration: listener "b": 0.0.0.0:1883 is already used by listener "a"`},
		{"filter option", `
listeners: [{name: mqtt, port: 1883, filter: {empty_key: drop}}]
clusters: [{name: brokers}]`, `invalid configuration: listener "mqtt": filter: empty_key "drop": must be "any", "source_ip" or "reject"`},
		{"hostname endpoint", `
listeners: [{name: mqtt, port: 1883}]
clusters: [{name: brokers, endpoints: [{address: emqx1, port: 1883}]}]`, `invalid configuration: cluster "brokers": endpoint address "emqx1" is not an IP address (Envoy does not resolve names in EDS; give the broker a fixed IP, or use DNS discovery)`},
		{"endpoint port", `
listeners: [{name: mqtt, port: 1883}]
clusters: [{name: brokers, endpoints: [{address: 127.0.0.1, port: 0}]}]`, `invalid configuration: cluster "brokers": endpoint 127.0.0.1: port 0 is out of range 1-65535`},
		{"duplicate endpoint", `
listeners: [{name: mqtt, port: 1883}]
clusters: [{name: brokers, endpoints: [{address: 127.0.0.1, port: 1}, {address: 127.0.0.1, port: 1, weight: 3}]}]`, `invalid configuration: cluster "brokers": endpoint 127.0.0.1:1 is listed twice`},
		{"weight", `
listeners: [{name: mqtt, port: 1883}]
clusters: [{name: brokers, endpoints: [{address: 127.0.0.1, port: 1, weight: 500}]}]`, `invalid configuration: cluster "brokers": endpoint 127.0.0.1:1: weight 500 must be between 1 and 128`},
		{"lb policy", `
listeners: [{name: mqtt, port: 1883}]
clusters: [{name: brokers, lb_policy: round_robin}]`, `invalid configuration: cluster "brokers": lb_policy "round_robin" must be "maglev" or "ring_hash"`},
		{"maglev table not prime", `
listeners: [{name: mqtt, port: 1883}]
clusters: [{name: brokers, maglev_table_size: 65536}]`, `invalid configuration: cluster "brokers": maglev_table_size 65536 must be a prime no larger than 5000011 (65537 is a good choice)`},
		{"points on maglev", `
listeners: [{name: mqtt, port: 1883}]
clusters: [{name: brokers, points_per_host: 10}]`, `invalid configuration: cluster "brokers": points_per_host applies to ring_hash only`},
		{"hash balance", `
listeners: [{name: mqtt, port: 1883}]
clusters: [{name: brokers, hash_balance_factor: 50}]`, `invalid configuration: cluster "brokers": hash_balance_factor 50 must be 0 (off) or at least 100`},
		{"proxy protocol", `
listeners: [{name: mqtt, port: 1883}]
clusters: [{name: brokers, proxy_protocol: v3}]`, `invalid configuration: cluster "brokers": proxy_protocol "v3" must be v1, v2 or off`},
		{"health timeout", `
listeners: [{name: mqtt, port: 1883}]
clusters: [{name: brokers, health_check: {type: mqtt, interval: 1s, timeout: 2s}}]`, `invalid configuration: cluster "brokers": health_check interval 1s and timeout 2s: need interval >= 100ms and 10ms <= timeout <= interval`},
		{"bad duration", `
listeners: [{name: mqtt, port: 1883}]
clusters: [{name: brokers, idle_timeout: forever}]`, `invalid configuration: error unmarshaling JSON: while decoding JSON: duration "forever": time: invalid duration "forever" (write it like "5s" or "1m30s")`},
		{"idle timeout", `
listeners: [{name: mqtt, port: 1883}]
clusters: [{name: brokers, idle_timeout: 10ms}]`, `invalid configuration: cluster "brokers": idle_timeout 10ms is shorter than 1s; it must exceed 1.5 x the longest MQTT keepalive`},
		{"connect bigger than buffer", `
listeners: [{name: mqtt, port: 1883, buffer_limit_bytes: 4096, filter: {max_connect_bytes: 8192}}]
clusters: [{name: brokers}]`, `invalid configuration: listener "mqtt": filter max_connect_bytes 8192 exceeds buffer_limit_bytes 4096: Envoy would stop reading before the CONNECT is complete`},
		{"ring too big", `
listeners: [{name: mqtt, port: 1883}]
clusters: [{name: brokers, lb_policy: ring_hash, points_per_host: 65536, endpoints: [{address: 10.0.0.1, port: 1, weight: 128}, {address: 10.0.0.2, port: 1}]}]`, `invalid configuration: cluster "brokers": ring of 8454144 entries exceeds Envoy's maximum of 8388608: lower points_per_host`},
		{"store type", base + "store: {type: consul}\n", `invalid configuration: store: type "consul": use file or etcd`},
		{"etcd without endpoints", base + "store: {type: etcd}\n", `invalid configuration: store: type etcd needs etcd.endpoints`},
		{"etcd settings on the file store", base + "store: {etcd: {endpoints: [http://127.0.0.1:2379]}}\n",
			`invalid configuration: store: etcd settings and replica_name need type: etcd`},
		{"state file with etcd", base + "state_file: s.json\nstore: {type: etcd, etcd: {endpoints: [http://127.0.0.1:2379]}}\n",
			`invalid configuration: state_file is for the file store; with type etcd the state lives in etcd`},
		{"etcd cert without key", base + "store: {type: etcd, etcd: {endpoints: [https://127.0.0.1:2379], cert_file: c.pem}}\n",
			`invalid configuration: store: etcd.cert_file and etcd.key_file go together`},
		{"etcd password without user", base + "store: {type: etcd, etcd: {endpoints: [http://127.0.0.1:2379], password_file: p}}\n",
			`invalid configuration: store: etcd.password_file needs etcd.username`},
		{"panic threshold", `
listeners: [{name: mqtt, port: 1883}]
clusters: [{name: brokers, healthy_panic_threshold: 120}]`, `invalid configuration: cluster "brokers": healthy_panic_threshold 120 is a percentage (0-100)`},
		{"duplicate name", `
listeners: [{name: mqtt, port: 1883}]
clusters: [{name: brokers, endpoints: [{name: b1, address: 127.0.0.1, port: 1}, {name: b1, address: 127.0.0.2, port: 1}]}]`, `invalid configuration: cluster "brokers": endpoints 127.0.0.1:1 and 127.0.0.2:1 share the name "b1": a name identifies one broker`},
		{"bad endpoint name", `
listeners: [{name: mqtt, port: 1883}]
clusters: [{name: brokers, endpoints: [{name: 'b 1', address: 127.0.0.1, port: 1}]}]`, `invalid configuration: cluster "brokers": endpoint 127.0.0.1:1: name "b 1" must be up to 253 letters, digits, '-', '_' or '.' (a host name)`},
		{"health type", `
listeners: [{name: mqtt, port: 1883}]
clusters: [{name: brokers, health_check: {type: grpc}}]`, `invalid configuration: cluster "brokers": health_check.type "grpc" must be mqtt, tcp, http, emqx or off`},
		{"http without port", `
listeners: [{name: mqtt, port: 1883}]
clusters: [{name: brokers, health_check: {type: http, path: /}}]`, `invalid configuration: cluster "brokers": health_check.port 0: an http check needs the brokers' management port (1-65535)`},
		{"http bad path", `
listeners: [{name: mqtt, port: 1883}]
clusters: [{name: brokers, health_check: {type: http, port: 80, path: ready}}]`, `invalid configuration: cluster "brokers": health_check.path "ready" must start with '/' and hold up to 1024 printable ASCII characters`},
		{"http bad status", `
listeners: [{name: mqtt, port: 1883}]
clusters: [{name: brokers, health_check: {type: emqx, expect: [700]}}]`, `invalid configuration: cluster "brokers": health_check.expect status 700 is not an HTTP status (100-599)`},
		{"port on mqtt check", `
listeners: [{name: mqtt, port: 1883}]
clusters: [{name: brokers, health_check: {type: mqtt, port: 18083}}]`, `invalid configuration: cluster "brokers": health_check port, path and expect apply to type http and emqx only`},
		{"client id on http check", `
listeners: [{name: mqtt, port: 1883}]
clusters: [{name: brokers, health_check: {type: emqx, client_id_prefix: x}}]`, `invalid configuration: cluster "brokers": health_check.client_id_prefix applies to type mqtt only`},
		{"unhealthy interval", `
listeners: [{name: mqtt, port: 1883}]
clusters: [{name: brokers, health_check: {interval: 1s, timeout: 500ms, unhealthy_interval: 2s}}]`, `invalid configuration: cluster "brokers": health_check unhealthy_interval 2s must be between 100ms and interval 1s`},
		{"discovery without dns", `
listeners: [{name: mqtt, port: 1883}]
clusters: [{name: brokers, discovery: {}}]`, `invalid configuration: cluster "brokers": discovery needs a dns block: {dns: {name, port, record, interval, resolver}}`},
		{"dns name", `
listeners: [{name: mqtt, port: 1883}]
clusters: [{name: brokers, discovery: {dns: {name: 'bad name', port: 1883}}}]`, `invalid configuration: cluster "brokers": discovery.dns.name "bad name" is not a DNS name`},
		{"dns a without port", `
listeners: [{name: mqtt, port: 1883}]
clusters: [{name: brokers, discovery: {dns: {name: brokers.example.com}}}]`, `invalid configuration: cluster "brokers": discovery.dns.port 0: A records carry no port, give the brokers' MQTT port (1-65535)`},
		{"dns srv with port", `
listeners: [{name: mqtt, port: 1883}]
clusters: [{name: brokers, discovery: {dns: {name: _mqtt._tcp.example.com, record: srv, port: 1883}}}]`, `invalid configuration: cluster "brokers": discovery.dns.port applies to record a only: SRV records carry the port`},
		{"dns record", `
listeners: [{name: mqtt, port: 1883}]
clusters: [{name: brokers, discovery: {dns: {name: example.com, record: mx, port: 1}}}]`, `invalid configuration: cluster "brokers": discovery.dns.record "mx" must be a or srv`},
		{"dns interval", `
listeners: [{name: mqtt, port: 1883}]
clusters: [{name: brokers, discovery: {dns: {name: example.com, port: 1, interval: 10ms}}}]`, `invalid configuration: cluster "brokers": discovery.dns.interval 10ms must be between 100ms and 1h`},
		{"dns resolver", `
listeners: [{name: mqtt, port: 1883}]
clusters: [{name: brokers, discovery: {dns: {name: example.com, port: 1, resolver: 'dns.example.com:53'}}}]`, `invalid configuration: cluster "brokers": discovery.dns.resolver: "dns.example.com:53" is not IP or IP:PORT`},
		{"dns and endpoints", `
listeners: [{name: mqtt, port: 1883}]
clusters: [{name: brokers, discovery: {dns: {name: example.com, port: 1}}, endpoints: [{address: 127.0.0.1, port: 1}]}]`, `invalid configuration: cluster "brokers": its endpoints come from discovery; remove the endpoints list`},
		{"connection rate zero", `
listeners: [{name: mqtt, port: 1883, connection_rate_limit: {connections_per_second: 0}}]
clusters: [{name: brokers}]`, `invalid configuration: listener "mqtt": connection_rate_limit.connections_per_second 0 must be between 1 and 1000000`},
		{"connection burst too large", `
listeners: [{name: mqtt, port: 1883, connection_rate_limit: {connections_per_second: 100, burst: 20000000}}]
clusters: [{name: brokers}]`, `invalid configuration: listener "mqtt": connection_rate_limit.burst 20000000 must be between 1 and 10000000`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseFile([]byte(tt.yaml))
			if err == nil {
				t.Fatalf("accepted; want %q", tt.want)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error %v does not wrap ErrInvalid", err)
			}
			if err.Error() != tt.want {
				t.Errorf("error:\n got %s\nwant %s", err, tt.want)
			}
		})
	}
}

// The burst defaults to one second's worth of connections, and a clone
// does not share the rate limit with its original.
func TestConnectionRateLimitDefaultsAndClone(t *testing.T) {
	f, err := ParseFile([]byte(`
listeners: [{name: mqtt, port: 1883, connection_rate_limit: {connections_per_second: 500}}]
clusters: [{name: brokers}]`))
	if err != nil {
		t.Fatal(err)
	}
	r := f.Listeners[0].ConnectionRateLimit
	if r.Burst != 500 {
		t.Errorf("burst %d, want 500", r.Burst)
	}
	c := f.Model.Clone()
	c.Listeners[0].ConnectionRateLimit.Burst = 7
	if r.Burst != 500 {
		t.Error("the clone shares the rate limit")
	}
}
