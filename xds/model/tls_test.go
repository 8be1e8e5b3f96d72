package model

import (
	"errors"
	"testing"
)

func TestInvalidTLS(t *testing.T) {
	cluster := "\nclusters: [{name: brokers, endpoints: [{address: 127.0.0.1, port: 18831}]}]"
	tests := []struct {
		name, yaml, want string
	}{
		{"no key", `
listeners: [{name: tls, port: 8883, tls: {cert_file: /etc/envoy/tls/server.crt}}]` + cluster,
			`invalid configuration: listener "tls": tls: cert_file and key_file are both required`},
		{"relative path", `
listeners: [{name: tls, port: 8883, tls: {cert_file: server.crt, key_file: server.key}}]` + cluster,
			`invalid configuration: listener "tls": tls: cert_file "server.crt" must be an absolute file path on the Envoy host`},
		{"two directories", `
listeners: [{name: tls, port: 8883, tls: {cert_file: /a/server.crt, key_file: /b/server.key}}]` + cluster,
			`invalid configuration: listener "tls": tls: cert_file and key_file must be in one directory (Envoy watches it to reload both together), not /a and /b`},
		{"control character", "\nlisteners: [{name: tls, port: 8883, tls: {cert_file: \"/a/s\\nx.crt\", key_file: /a/k}}]" + cluster,
			`invalid configuration: listener "tls": tls: cert_file "/a/s\nx.crt" contains control characters`},
		{"require without CA", `
listeners: [{name: tls, port: 8883, tls: {cert_file: /t/s.crt, key_file: /t/s.key, require_client_cert: true}}]` + cluster,
			`invalid configuration: listener "tls": tls: require_client_cert needs client_ca_file, the CAs client certificates are verified against`},
		{"version", `
listeners: [{name: tls, port: 8883, tls: {cert_file: /t/s.crt, key_file: /t/s.key, min_version: "1.1"}}]` + cluster,
			`invalid configuration: listener "tls": tls: min_version "1.1" must be "1.2" or "1.3"`},
		{"version as a number", `
listeners: [{name: tls, port: 8883, tls: {cert_file: /t/s.crt, key_file: /t/s.key, min_version: 1.1}}]` + cluster,
			`invalid configuration: listener "tls": tls: min_version "1.1" must be "1.2" or "1.3"`},
		{"alpn", `
listeners: [{name: tls, port: 8883, tls: {cert_file: /t/s.crt, key_file: /t/s.key, alpn: ["mqtt", "a b"]}}]` + cluster,
			`invalid configuration: listener "tls": tls: alpn protocol "a b" must be 1-255 printable ASCII characters without spaces`},
		{"certificate hash on plaintext", `
listeners: [{name: mqtt, port: 1883, filter: {hash_key: cert_cn}}]` + cluster,
			`invalid configuration: listener "mqtt": filter hash_key cert_cn needs a client certificate, but the listener has no tls: every connection would be refused`},
		{"binding without a client CA", `
listeners: [{name: tls, port: 8883, tls: {cert_file: /t/s.crt, key_file: /t/s.key}, filter: {identity_binding: client_id, proxy_protocol_cn: true}}]` + cluster,
			`invalid configuration: listener "tls": filter identity_binding client_id and proxy_protocol_cn needs a verified client certificate: set tls.client_ca_file (and usually tls.require_client_cert)`},
		{"CN TLV without PROXY v2", `
listeners: [{name: tls, port: 8883, tls: {cert_file: /t/s.crt, key_file: /t/s.key, client_ca_file: /t/ca.crt}, filter: {proxy_protocol_cn: true}}]
clusters: [{name: brokers, proxy_protocol: v1}]`,
			`invalid configuration: listener "tls": filter proxy_protocol_cn needs a cluster with proxy_protocol v2: the CN travels in a PROXY v2 TLV`},
		{"upstream without CA", `
listeners: [{name: mqtt, port: 1883}]
clusters: [{name: brokers, upstream_tls: {sni: emqx.example}}]`,
			`invalid configuration: cluster "brokers": upstream_tls: ca_file is required: Envoy must verify the brokers' certificates`},
		{"upstream SNI", `
listeners: [{name: mqtt, port: 1883}]
clusters: [{name: brokers, upstream_tls: {ca_file: /t/ca.crt, sni: "emqx..example"}}]`,
			`invalid configuration: cluster "brokers": upstream_tls: sni "emqx..example" is not a DNS name`},
		{"upstream half a client certificate", `
listeners: [{name: mqtt, port: 1883}]
clusters: [{name: brokers, upstream_tls: {ca_file: /t/ca.crt, cert_file: /t/c.crt}}]`,
			`invalid configuration: cluster "brokers": upstream_tls: cert_file and key_file go together: set both or neither`},
		{"upstream unknown key", `
listeners: [{name: mqtt, port: 1883}]
clusters: [{name: brokers, upstream_tls: {ca_file: /t/ca.crt, verify: false}}]`,
			`invalid configuration: error unmarshaling JSON: while decoding JSON: json: unknown field "verify"`},
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

func TestValidTLS(t *testing.T) {
	f, err := ParseFile([]byte(`
listeners:
- {name: mqtt, port: 1883}
- name: mqtts
  port: 8883
  tls: {cert_file: /etc/envoy/tls/server.crt, key_file: /etc/envoy/tls/server.key, client_ca_file: /etc/envoy/ca/ca.crt, require_client_cert: true, alpn: [mqtt], min_version: 1.3}
  filter: {hash_key: cert_uri_san, identity_binding: client_id, proxy_protocol_cn: true}
clusters:
- name: brokers
  upstream_tls: {ca_file: /etc/envoy/brokers/ca.crt, sni: emqx.example, cert_file: /etc/envoy/client/c.crt, key_file: /etc/envoy/client/c.key}
  endpoints: [{address: 127.0.0.1, port: 8883}]
`))
	if err != nil {
		t.Fatal(err)
	}
	if v := f.Listeners[1].TLS.MinVersion; v != TLS13 {
		t.Errorf("min_version: 1.3 read as %q", v)
	}
	c := f.Model.Clone()
	c.Listeners[1].TLS.ALPN[0] = "changed"
	c.Clusters[0].UpstreamTLS.SNI = "changed.example"
	if f.Listeners[1].TLS.ALPN[0] != "mqtt" || f.Clusters[0].UpstreamTLS.SNI != "emqx.example" {
		t.Error("Clone shares TLS settings with the original")
	}
}
