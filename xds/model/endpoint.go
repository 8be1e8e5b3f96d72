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
	// Name is the broker's stable identity: when set, Envoy's consistent
	// hash uses it instead of the address, so a broker that returns on a
	// new address under the same name keeps its clients. DNS SRV discovery
	// sets it to the target host name.
	Name    string `json:"name,omitempty"`
	Address string `json:"address"`
	Port    int    `json:"port"`
	Weight  uint32 `json:"weight,omitempty"`
}

// maxEndpointName is a DNS name's longest text form.
const maxEndpointName = 253

// ParseEndpoint reads the text form of an endpoint, [NAME@]ADDRESS:PORT
// with an optional =WEIGHT; IPv6 addresses go in brackets:
// emqx-0@[fd00::1]:1883=2. Without a weight the result's Weight is 0,
// which SetDefaults makes 1. The values are validated as Validate does.
func ParseEndpoint(s string) (Endpoint, error) {
	name, rest, hasName := strings.Cut(s, "@")
	if !hasName {
		name, rest = "", s
	}
	spec, weight, hasWeight := strings.Cut(rest, "=")
	ap, err := netip.ParseAddrPort(spec)
	if err != nil || (hasName && name == "") {
		return Endpoint{}, invalid("endpoint %q: want [NAME@]ADDRESS:PORT[=WEIGHT], like 127.0.0.1:18831, emqx-0@127.0.0.1:18831=2 or [fd00::1]:1883", s)
	}
	e := Endpoint{Name: name, Address: ap.Addr().String(), Port: int(ap.Port())}
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

// ParseEndpointRef reads how an operator names an endpoint to remove: its
// text form (ParseEndpoint, without a weight) or its name alone. The
// result has only the parts given: Address is empty for a bare name.
func ParseEndpointRef(s string) (Endpoint, error) {
	if e, err := ParseEndpoint(s); err == nil {
		if e.Weight != 0 {
			return Endpoint{}, invalid("endpoint %q: name it as [NAME@]ADDRESS:PORT or NAME, without a weight", s)
		}
		return e, nil
	} else if strings.ContainsAny(s, ":@=") {
		return Endpoint{}, err
	}
	if _, err := netip.ParseAddr(s); err == nil || !validEndpointName(s) {
		return Endpoint{}, invalid("endpoint %q: want ADDRESS:PORT, NAME@ADDRESS:PORT or a broker name", s)
	}
	return Endpoint{Name: s}, nil
}

// Refers reports whether ref, from ParseEndpointRef, names e: the parts
// ref gives must all match.
func (e Endpoint) Refers(ref Endpoint) bool {
	if ref.Address != "" && (ref.Key() != e.Key()) {
		return false
	}
	return ref.Name == "" || ref.Name == e.Name
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
	if e.Name != "" {
		s = e.Name + "@" + s
	}
	if e.Weight > 1 {
		s += "=" + strconv.FormatUint(uint64(e.Weight), 10)
	}
	return s
}

// Key is an endpoint's address within a cluster: "address:port". The
// address must be valid (see Validate).
func (e Endpoint) Key() string {
	return netip.AddrPortFrom(netip.MustParseAddr(e.Address), uint16(e.Port)).String()
}

// KeyOrRaw is Key, or "address:port" as given when the address is not an
// IP address (for reading addresses from elsewhere, such as Envoy).
func (e Endpoint) KeyOrRaw() string {
	a, err := netip.ParseAddr(e.Address)
	if err != nil {
		return e.Address + ":" + strconv.Itoa(e.Port)
	}
	return netip.AddrPortFrom(a, uint16(e.Port)).String()
}

// HashKey is what Envoy's consistent hash identifies the endpoint by: its
// name when it has one, else its address (Envoy's own default).
func (e Endpoint) HashKey() string {
	if e.Name != "" {
		return e.Name
	}
	return e.Key()
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
		return fmt.Errorf("endpoint address %q is not an IP address (Envoy does not resolve names in EDS; give the broker a fixed IP, or use DNS discovery)", e.Address)
	}
	if why := notABroker(a); why != "" {
		return fmt.Errorf("endpoint address %s cannot be a broker address: %s", e.Address, why)
	}
	if e.Port < 1 || e.Port > 65535 {
		return fmt.Errorf("endpoint %s: port %d is out of range 1-65535", e.Address, e.Port)
	}
	if e.Weight < 1 || e.Weight > maxWeight {
		return fmt.Errorf("endpoint %s:%d: weight %d must be between 1 and %d", e.Address, e.Port, e.Weight, maxWeight)
	}
	if e.Name != "" && !validEndpointName(e.Name) {
		return fmt.Errorf("endpoint %s:%d: name %q must be up to %d letters, digits, '-', '_' or '.' (a host name)", e.Address, e.Port, e.Name, maxEndpointName)
	}
	return nil
}

// validEndpointName accepts host names, the names SRV records give.
func validEndpointName(s string) bool {
	if s == "" || len(s) > maxEndpointName || s[0] == '.' || s[0] == '-' {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return false
		}
	}
	return true
}

// broadcast is the IPv4 limited-broadcast address.
var broadcast = netip.AddrFrom4([4]byte{255, 255, 255, 255})

// notABroker says why an IP address cannot be a broker's, or "".
func notABroker(a netip.Addr) string {
	switch {
	case a.IsUnspecified():
		return "it is the unspecified address"
	case a.IsMulticast():
		return "it is a multicast address"
	case a == broadcast:
		return "it is the broadcast address"
	case a.IsLinkLocalUnicast():
		// 169.254.0.0/16 and fe80::/10 need a zone (an interface) to mean
		// anything, and 169.254.169.254 is where clouds serve instance
		// metadata and credentials.
		return "it is link-local (169.254.0.0/16, fe80::/10)"
	case a.Is4In6():
		// The same broker could be listed twice, once per form, and be
		// given two shares of the hash ring.
		return "it is an IPv4-mapped IPv6 address: write it as " + a.Unmap().String()
	}
	return ""
}

// ValidateEndpoints checks one cluster's endpoint set: IP addresses, ports
// in range, weights in range, no address and no name listed twice.
func ValidateEndpoints(cluster string, eps []Endpoint) error {
	seen := map[string]bool{}
	names := map[string]string{}
	for _, e := range eps {
		if err := e.Validate(); err != nil {
			return invalid("cluster %q: %v", cluster, err)
		}
		k := e.Key()
		if seen[k] {
			return invalid("cluster %q: endpoint %s is listed twice", cluster, k)
		}
		seen[k] = true
		if e.Name == "" {
			continue
		}
		if other, dup := names[e.Name]; dup {
			return invalid("cluster %q: endpoints %s and %s share the name %q: a name identifies one broker", cluster, other, k, e.Name)
		}
		names[e.Name] = k
	}
	return nil
}

// SortEndpoints puts endpoints in the order every output and version uses:
// unnamed endpoints by address then port, then named ones by name. A named
// broker that moves to a new address therefore keeps its place.
func SortEndpoints(eps []Endpoint) {
	slices.SortFunc(eps, compareEndpoints)
}

func compareEndpoints(a, b Endpoint) int {
	switch {
	case a.Name != "" && b.Name != "":
		if c := strings.Compare(a.Name, b.Name); c != 0 {
			return c
		}
	case a.Name != "":
		return 1
	case b.Name != "":
		return -1
	}
	aa, ba := netip.MustParseAddr(a.Address), netip.MustParseAddr(b.Address)
	if c := aa.Compare(ba); c != 0 {
		return c
	}
	return a.Port - b.Port
}
