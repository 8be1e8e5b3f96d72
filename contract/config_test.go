package contract

import (
	"strings"
	"testing"
)

func TestParseConfigDefaults(t *testing.T) {
	for _, in := range []string{"", "  ", "{}"} {
		c, err := ParseConfig([]byte(in))
		if err != nil {
			t.Fatalf("%q: %v", in, err)
		}
		if c.HashKey != KeyClientID || c.EmptyKey != EmptyAny || c.MaxConnectBytes != 4096 || c.ConnectTimeoutMs != 5000 || !c.Metadata() ||
			c.IdentityBinding != BindingOff || c.IdentitySource != IdentityCN {
			t.Errorf("%q: %+v, want the defaults", in, *c)
		}
	}
}

func TestParseConfigValues(t *testing.T) {
	c, err := ParseConfig([]byte(`{"hash_key":"username","empty_key":"reject","max_connect_bytes":1024,"connect_timeout_ms":500}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.HashKey != KeyUsername || c.EmptyKey != EmptyReject || c.MaxConnectBytes != 1024 || c.ConnectTimeout().Milliseconds() != 500 {
		t.Errorf("%+v", *c)
	}
}

func TestNeedsCertificate(t *testing.T) {
	for in, want := range map[string]bool{
		`{}`:                               false,
		`{"hash_key": "username"}`:         false,
		`{"identity_source": "uri_san"}`:   false,
		`{"hash_key": "cert_dns_san"}`:     true,
		`{"identity_binding": "username"}`: true,
		`{"proxy_protocol_cn": true}`:      true,
	} {
		c, err := ParseConfig([]byte(in))
		if err != nil {
			t.Fatal(err)
		}
		if c.NeedsCertificate() != want {
			t.Errorf("%s: NeedsCertificate() = %v", in, !want)
		}
	}
}

func TestParseConfigErrors(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{`{"hash_keys": "client_id"}`, `unknown field "hash_keys"`},
		{`{"hash_key": "ip"}`, `hash_key "ip": must be "client_id", "username", "cert_cn", "cert_uri_san" or "cert_dns_san"`},
		{`{"identity_binding": "cn"}`, `identity_binding "cn": must be "off", "client_id" or "username"`},
		{`{"identity_source": "subject"}`, `identity_source "subject": must be "cn", "uri_san" or "dns_san"`},
		{`{"proxy_protocol_cn": "yes"}`, `cannot unmarshal string`},
		{`{"empty_key": "drop"}`, `empty_key "drop": must be "any", "source_ip" or "reject"`},
		{`{"max_connect_bytes": 63}`, `max_connect_bytes 63: must be between 64 and 268435460`},
		{`{"max_connect_bytes": 300000000}`, `max_connect_bytes 300000000: must be between`},
		{`{"connect_timeout_ms": -1}`, `connect_timeout_ms -1: must be between 1 and 600000`},
		{`{"connect_timeout_ms": 600001}`, `connect_timeout_ms 600001: must be between`},
		{`{"connect_timeout_ms": "10s"}`, `cannot unmarshal string`},
		{`{} {}`, `data after the JSON object`},
		{`[`, `not valid JSON`},
	} {
		_, err := ParseConfig([]byte(tt.in))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("ParseConfig(%s) = %v, want an error containing %q", tt.in, err, tt.want)
		}
	}
}

// dynamic_metadata is on unless turned off.
func TestDynamicMetadata(t *testing.T) {
	for in, want := range map[string]bool{"{}": true, `{"dynamic_metadata": true}`: true, `{"dynamic_metadata": false}`: false} {
		c, err := ParseConfig([]byte(in))
		if err != nil {
			t.Fatal(err)
		}
		if c.Metadata() != want {
			t.Errorf("%s: metadata %v, want %v", in, c.Metadata(), want)
		}
	}
}
