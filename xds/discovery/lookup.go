package discovery

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/miekg/dns"

	"github.com/mqtt-sticky/mqtt-sticky/xds/model"
)

// errEmpty is an answer without records: it never empties a cluster.
var errEmpty = errors.New("the answer holds no records")

// maxRecords bounds the endpoints one answer may give: more is refused
// rather than served.
const maxRecords = 1000

// lookup resolves d against the resolver. A and AAAA records give one
// endpoint per address on d.Port; SRV records give one named endpoint
// per target, on the record's port, at the target's lowest address.
func lookup(ctx context.Context, resolver string, d model.DNSDiscovery) ([]model.Endpoint, error) {
	name := dns.Fqdn(d.Name)
	var eps []model.Endpoint
	switch d.Record {
	case model.RecordSRV:
		srvs, extra, err := query(ctx, resolver, name, dns.TypeSRV)
		if err != nil {
			return nil, err
		}
		seen := map[string]bool{}
		for _, rr := range srvs {
			srv, ok := rr.(*dns.SRV)
			if !ok || seen[srv.Target] {
				continue
			}
			seen[srv.Target] = true
			addr, err := targetAddress(ctx, resolver, srv.Target, extra)
			if err != nil {
				return nil, err
			}
			eps = append(eps, model.Endpoint{Name: strings.TrimSuffix(srv.Target, "."), Address: addr.String(), Port: int(srv.Port)})
		}
	default:
		addrs, err := addresses(ctx, resolver, name, nil)
		if err != nil {
			return nil, err
		}
		for _, a := range addrs {
			eps = append(eps, model.Endpoint{Address: a.String(), Port: d.Port})
		}
	}
	if len(eps) == 0 {
		return nil, fmt.Errorf("%s %s: %w", strings.ToUpper(string(d.Record)), d.Name, errEmpty)
	}
	if len(eps) > maxRecords {
		return nil, fmt.Errorf("%s %s: %d records, more than the %d a cluster takes", strings.ToUpper(string(d.Record)), d.Name, len(eps), maxRecords)
	}
	return eps, nil
}

// targetAddress is an SRV target's lowest address, from the answer's
// additional section when it has one, else from a lookup of its own.
func targetAddress(ctx context.Context, resolver, target string, extra []dns.RR) (netip.Addr, error) {
	addrs, err := addresses(ctx, resolver, target, extra)
	if err != nil {
		return netip.Addr{}, err
	}
	if len(addrs) == 0 {
		return netip.Addr{}, fmt.Errorf("SRV target %s has no address", target)
	}
	return addrs[0], nil
}

// addresses returns name's A and AAAA addresses, sorted: from known when
// it holds any for name, else by querying.
func addresses(ctx context.Context, resolver, name string, known []dns.RR) ([]netip.Addr, error) {
	out := addrsOf(known, name)
	if len(out) == 0 {
		for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA} {
			rrs, _, err := query(ctx, resolver, name, qtype)
			if err != nil {
				return nil, err
			}
			out = append(out, addrsOf(rrs, "")...) // any name: a CNAME chain ends elsewhere
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out), nil
}

// addrsOf returns the addresses rrs give name, or any name when name is "".
func addrsOf(rrs []dns.RR, name string) []netip.Addr {
	var out []netip.Addr
	for _, rr := range rrs {
		if name != "" && !strings.EqualFold(rr.Header().Name, name) {
			continue
		}
		var ip []byte
		switch r := rr.(type) {
		case *dns.A:
			ip = r.A.To4()
		case *dns.AAAA:
			ip = r.AAAA
		}
		if a, ok := netip.AddrFromSlice(ip); ok {
			out = append(out, a.Unmap())
		}
	}
	return out
}

// query asks the resolver one question, over UDP and again over TCP when
// the answer was truncated. An answer other than NOERROR is an error; an
// empty NOERROR answer is not.
func query(ctx context.Context, resolver, name string, qtype uint16) (answer, extra []dns.RR, err error) {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.RecursionDesired = true
	resp, _, err := new(dns.Client).ExchangeContext(ctx, m, resolver)
	if err == nil && resp.Truncated {
		resp, _, err = (&dns.Client{Net: "tcp"}).ExchangeContext(ctx, m, resolver)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("%s %s via %s: %w", dns.TypeToString[qtype], name, resolver, err)
	}
	if resp.Rcode != dns.RcodeSuccess {
		return nil, nil, fmt.Errorf("%s %s via %s: %s", dns.TypeToString[qtype], name, resolver, dns.RcodeToString[resp.Rcode])
	}
	return resp.Answer, resp.Extra, nil
}
