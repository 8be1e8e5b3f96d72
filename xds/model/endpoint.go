package model

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Endpoint is one broker. The API, the CLI, the config file and the state
// file all read and write it in this form.
type Endpoint struct {
	Address string `json:"address"`
	Port    int    `json:"port"`
	Weight  uint32 `json:"weight,omitempty"`
}

// ParseEndpoint reads the text form of an endpoint, ADDRESS:PORT with an
// optional =WEIGHT; IPv6 addresses go in brackets: [fd00::1]:1883=2.
// Without a weight the result's Weight is 0, which SetDefaults makes 1.
// The values are validated as Validate does.
func ParseEndpoint(s string) (Endpoint, error) {
	spec, weight, hasWeight := strings.Cut(s, "=")
	ap, err := netip.ParseAddrPort(spec)
	if err != nil {
		return Endpoint{}, invalid("endpoint %q: want ADDRESS:PORT[=WEIGHT], like 127.0.0.1:18831, 127.0.0.1:18831=2 or [fd00::1]:1883", s)
	}
	e := Endpoint{Address: ap.Addr().String(), Port: int(ap.Port())}
	if hasWeight {
		w, err := strconv.ParseUint(weight, 10, 32)
		if err != nil {
			return Endpoint{}, invalid("endpoint %q: weight %q is not a whole number", s, weight)
		}
		e.Weight = uint32(w)
	}
	check := e
	check.SetDefaults()
	if err := check.Validate(); err != nil {
		return Endpoint{}, invalid("%v", err)
	}
	return e, nil
}

// ParseEndpoints reads a comma-separated list of endpoints in
// ParseEndpoint's form.
func ParseEndpoints(list string) ([]Endpoint, error) {
	var eps []Endpoint
	for _, s := range strings.Split(list, ",") {
		e, err := ParseEndpoint(strings.TrimSpace(s))
		if err != nil {
			return nil, err
		}
		eps = append(eps, e)
	}
	return eps, nil
}

// String is the endpoint's text form, as ParseEndpoint reads it.
func (e Endpoint) String() string {
	s := e.Key()
	if e.Weight > 1 {
		s += "=" + strconv.FormatUint(uint64(e.Weight), 10)
	}
	return s
}

// Key identifies an endpoint within a cluster: "address:port". The address
// must be valid (see Validate).
func (e Endpoint) Key() string {
	return netip.AddrPortFrom(netip.MustParseAddr(e.Address), uint16(e.Port)).String()
}

// SetDefaults gives an endpoint without a weight the default weight.
func (e *Endpoint) SetDefaults() {
	if e.Weight == 0 {
		e.Weight = DefaultWeight
	}
}

// Validate checks one endpoint whose defaults are set.
func (e Endpoint) Validate() error {
	a, err := netip.ParseAddr(e.Address)
	if err != nil || a.Zone() != "" {
		return fmt.Errorf("endpoint address %q is not an IP address (Envoy does not resolve names in EDS; give the broker a fixed IP)", e.Address)
	}
	if a.IsUnspecified() || a.IsMulticast() {
		return fmt.Errorf("endpoint address %s cannot be a broker address", e.Address)
	}
	if e.Port < 1 || e.Port > 65535 {
		return fmt.Errorf("endpoint %s: port %d is out of range 1-65535", e.Address, e.Port)
	}
	if e.Weight < 1 || e.Weight > maxWeight {
		return fmt.Errorf("endpoint %s:%d: weight %d must be between 1 and %d", e.Address, e.Port, e.Weight, maxWeight)
	}
	return nil
}

// ValidateEndpoints checks one cluster's endpoint set: IP addresses, ports
// in range, weights in range, no duplicates.
func ValidateEndpoints(cluster string, eps []Endpoint) error {
	seen := map[string]bool{}
	for _, e := range eps {
		if err := e.Validate(); err != nil {
			return invalid("cluster %q: %v", cluster, err)
		}
		k := e.Key()
		if seen[k] {
			return invalid("cluster %q: endpoint %s is listed twice", cluster, k)
		}
		seen[k] = true
	}
	return nil
}

// SortEndpoints orders endpoints by address then port, so output and
// versions do not depend on the order changes arrived in.
func SortEndpoints(eps []Endpoint) {
	slices.SortFunc(eps, func(a, b Endpoint) int {
		aa, ba := netip.MustParseAddr(a.Address), netip.MustParseAddr(b.Address)
		if c := aa.Compare(ba); c != 0 {
			return c
		}
		return a.Port - b.Port
	})
}
