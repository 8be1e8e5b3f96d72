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
		{"emqx-0@10.0.0.1:1883", Endpoint{Name: "emqx-0", Address: "10.0.0.1", Port: 1883}},
		{"emqx-0.emqx.ns.svc@[fd00::1]:1883=2", Endpoint{Name: "emqx-0.emqx.ns.svc", Address: "fd00::1", Port: 1883, Weight: 2}},
	} {
		got, err := ParseEndpoint(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("ParseEndpoint(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
}

func TestParseEndpointRefusesBadInput(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"", "want [NAME@]ADDRESS:PORT[=WEIGHT]"},
		{"127.0.0.1", "want [NAME@]ADDRESS:PORT[=WEIGHT]"},
		{"broker-1:1883", "want [NAME@]ADDRESS:PORT[=WEIGHT]"},
		{"fd00::1:1883", "want [NAME@]ADDRESS:PORT[=WEIGHT]"},
		{"127.0.0.1:", "want [NAME@]ADDRESS:PORT[=WEIGHT]"},
		{"127.0.0.1:65536", "want [NAME@]ADDRESS:PORT[=WEIGHT]"},
		{"127.0.0.1:0", "port 0 is out of range"},
		{"127.0.0.1:1883=", `weight "" is not a whole number`},
		{"127.0.0.1:1883=x", `weight "x" is not a whole number`},
		{"127.0.0.1:1883=-1", `weight "-1" is not a whole number`},
		{"127.0.0.1:1883=129", "weight 129 must be between 1 and 128"},
		{"0.0.0.0:1883", "cannot be a broker address: it is the unspecified address"},
		{"[::]:1883", "cannot be a broker address: it is the unspecified address"},
		{"[fe80::1%eth0]:1883", "is not an IP address"},
		{"@127.0.0.1:1883", "want [NAME@]ADDRESS:PORT[=WEIGHT]"},
		{"b 1@127.0.0.1:1883", `name "b 1" must be`},
		{"a@b@127.0.0.1:1883", "want [NAME@]ADDRESS:PORT[=WEIGHT]"},
		{"224.0.0.1:1883", "cannot be a broker address: it is a multicast address"},
		{"[ff02::1]:1883", "cannot be a broker address: it is a multicast address"},
		{"255.255.255.255:1883", "cannot be a broker address: it is the broadcast address"},
		{"169.254.169.254:80", "cannot be a broker address: it is link-local"},
		{"169.254.0.1:1883", "cannot be a broker address: it is link-local"},
		{"[fe80::1]:1883", "cannot be a broker address: it is link-local"},
		{"[febf::1]:1883", "cannot be a broker address: it is link-local"},
		{"[::ffff:127.0.0.1]:18831", "IPv4-mapped IPv6 address: write it as 127.0.0.1"},
		{"[::ffff:10.0.0.1]:1883", "IPv4-mapped IPv6 address: write it as 10.0.0.1"},
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
	for _, s := range []string{"127.0.0.1:18831", "127.0.0.1:18831=3", "[fd00::1]:1883=2", "b-1@127.0.0.1:18831=3"} {
		e, err := ParseEndpoint(s)
		if err != nil {
			t.Fatal(err)
		}
		if e.String() != s {
			t.Errorf("%q -> %+v -> %q", s, e, e.String())
		}
	}
}

func TestParseEndpointRef(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want Endpoint
	}{
		{"127.0.0.1:1883", Endpoint{Address: "127.0.0.1", Port: 1883}},
		{"emqx-0@127.0.0.1:1883", Endpoint{Name: "emqx-0", Address: "127.0.0.1", Port: 1883}},
		{"emqx-0.emqx-headless.ns.svc", Endpoint{Name: "emqx-0.emqx-headless.ns.svc"}},
	} {
		got, err := ParseEndpointRef(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("ParseEndpointRef(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
	for _, bad := range []string{"", "127.0.0.1:1883=2", "broker:1883", "b 1", "-x"} {
		if _, err := ParseEndpointRef(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseEndpointRef(%q) = %v, want an invalid-configuration error", bad, err)
		}
	}
	e := Endpoint{Name: "b1", Address: "127.0.0.1", Port: 1}
	for _, tt := range []struct {
		ref  Endpoint
		want bool
	}{
		{Endpoint{Name: "b1"}, true},
		{Endpoint{Address: "127.0.0.1", Port: 1}, true},
		{Endpoint{Name: "b1", Address: "127.0.0.1", Port: 1}, true},
		{Endpoint{Name: "b2"}, false},
		{Endpoint{Name: "b2", Address: "127.0.0.1", Port: 1}, false},
		{Endpoint{Address: "127.0.0.1", Port: 2}, false},
	} {
		if got := e.Refers(tt.ref); got != tt.want {
			t.Errorf("%v refers to %v: %v, want %v", tt.ref, e, got, tt.want)
		}
	}
}

// Named endpoints sort by name, after the unnamed ones, so a broker that
// moves keeps its place; unnamed ones sort by address as before.
func TestSortEndpoints(t *testing.T) {
	eps := []Endpoint{
		{Name: "b", Address: "10.0.0.1", Port: 1},
		{Address: "10.0.0.10", Port: 1},
		{Name: "a", Address: "10.0.0.9", Port: 1},
		{Address: "10.0.0.9", Port: 2},
	}
	SortEndpoints(eps)
	var got []string
	for _, e := range eps {
		got = append(got, e.String())
	}
	want := "10.0.0.9:2 10.0.0.10:1 a@10.0.0.9:1 b@10.0.0.1:1"
	if strings.Join(got, " ") != want {
		t.Errorf("sorted %v, want %s", got, want)
	}
}
