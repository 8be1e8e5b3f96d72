package model

import (
	"errors"
	"strings"
	"testing"
)

func TestParseEndpoint(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want Endpoint
	}{
		{"127.0.0.1:18831", Endpoint{Address: "127.0.0.1", Port: 18831}},
		{"127.0.0.1:18831=3", Endpoint{Address: "127.0.0.1", Port: 18831, Weight: 3}},
		{"10.0.0.1:1", Endpoint{Address: "10.0.0.1", Port: 1}},
		{"[fd00::1]:1883", Endpoint{Address: "fd00::1", Port: 1883}},
		{"[FD00:0::1]:1883=128", Endpoint{Address: "fd00::1", Port: 1883, Weight: 128}},
	} {
		got, err := ParseEndpoint(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("ParseEndpoint(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
}

func TestParseEndpointRefusesBadInput(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"", "want ADDRESS:PORT[=WEIGHT]"},
		{"127.0.0.1", "want ADDRESS:PORT[=WEIGHT]"},
		{"broker-1:1883", "want ADDRESS:PORT[=WEIGHT]"},
		{"fd00::1:1883", "want ADDRESS:PORT[=WEIGHT]"},
		{"127.0.0.1:", "want ADDRESS:PORT[=WEIGHT]"},
		{"127.0.0.1:65536", "want ADDRESS:PORT[=WEIGHT]"},
		{"127.0.0.1:0", "port 0 is out of range"},
		{"127.0.0.1:1883=", `weight "" is not a whole number`},
		{"127.0.0.1:1883=x", `weight "x" is not a whole number`},
		{"127.0.0.1:1883=-1", `weight "-1" is not a whole number`},
		{"127.0.0.1:1883=129", "weight 129 must be between 1 and 128"},
		{"0.0.0.0:1883", "cannot be a broker address"},
		{"[fe80::1%eth0]:1883", "is not an IP address"},
		{"224.0.0.1:1883", "cannot be a broker address"},
	} {
		_, err := ParseEndpoint(tt.in)
		if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("ParseEndpoint(%q) = %v; want an invalid-configuration error containing %q", tt.in, err, tt.want)
		}
	}
}

func TestParseEndpoints(t *testing.T) {
	eps, err := ParseEndpoints("127.0.0.1:1, [::1]:2=5")
	if err != nil || len(eps) != 2 || eps[1] != (Endpoint{Address: "::1", Port: 2, Weight: 5}) {
		t.Fatalf("%+v, %v", eps, err)
	}
	if _, err := ParseEndpoints("127.0.0.1:1,,127.0.0.1:2"); err == nil {
		t.Error("an empty item was accepted")
	}
}

func TestEndpointStringRoundTrips(t *testing.T) {
	for _, s := range []string{"127.0.0.1:18831", "127.0.0.1:18831=3", "[fd00::1]:1883=2"} {
		e, err := ParseEndpoint(s)
		if err != nil {
			t.Fatal(err)
		}
		if e.String() != s {
			t.Errorf("%q -> %+v -> %q", s, e, e.String())
		}
	}
}
