package discovery

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mqtt-sticky/mqtt-sticky/xds/model"
)

// zone is a DNS server on loopback (miekg/dns's server) answering from a
// map the test edits: name -> records. A name mapped to nil answers
// NXDOMAIN; an unknown name answers an empty NOERROR.
type zone struct {
	mu      sync.Mutex
	records map[string][]string // RR text lines
	extra   bool                // put A records for SRV targets in the additional section
	addr    string
}

func startZone(t *testing.T, records map[string][]string) *zone {
	t.Helper()
	z := &zone{records: records}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: z}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })
	z.addr = pc.LocalAddr().String()
	return z
}

func (z *zone) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	z.mu.Lock()
	defer z.mu.Unlock()
	m := new(dns.Msg)
	m.SetReply(req)
	q := req.Question[0]
	lines, known := z.records[strings.ToLower(q.Name)]
	if known && lines == nil {
		m.Rcode = dns.RcodeNameError
	}
	for _, l := range lines {
		rr, err := dns.NewRR(l)
		if err != nil {
			panic(err)
		}
		if rr.Header().Rrtype == q.Qtype || rr.Header().Rrtype == dns.TypeCNAME {
			m.Answer = append(m.Answer, rr)
		}
		if srv, ok := rr.(*dns.SRV); ok && z.extra {
			for _, el := range z.records[srv.Target] {
				if a, _ := dns.NewRR(el); a != nil && a.Header().Rrtype == dns.TypeA {
					m.Extra = append(m.Extra, a)
				}
			}
		}
	}
	// Follow one CNAME, as a recursive resolver would.
	for _, rr := range m.Answer {
		if c, ok := rr.(*dns.CNAME); ok {
			for _, l := range z.records[c.Target] {
				if a, _ := dns.NewRR(l); a != nil && a.Header().Rrtype == q.Qtype {
					m.Answer = append(m.Answer, a)
				}
			}
		}
	}
	w.WriteMsg(m)
}

func TestLookup(t *testing.T) {
	z := startZone(t, map[string][]string{
		"_mqtt._tcp.b.test.": {"_mqtt._tcp.b.test. 5 IN SRV 0 33 1883 b-1.b.test.", "_mqtt._tcp.b.test. 5 IN SRV 0 33 1884 b-0.b.test."},
		"b-0.b.test.":        {"b-0.b.test. 5 IN A 10.0.0.9", "b-0.b.test. 5 IN A 10.0.0.10"},
		"b-1.b.test.":        {"b-1.b.test. 5 IN AAAA fd00::1"},
		"all.b.test.":        {"all.b.test. 5 IN A 10.0.0.2", "all.b.test. 5 IN A 10.0.0.1", "all.b.test. 5 IN AAAA fd00::2"},
		"alias.b.test.":      {"alias.b.test. 5 IN CNAME all.b.test."},
		"gone.b.test.":       nil,
	})
	ctx := context.Background()
	ep := func(name, addr string, port int) model.Endpoint {
		return model.Endpoint{Name: name, Address: addr, Port: port}
	}
	for _, extra := range []bool{false, true} {
		z.mu.Lock()
		z.extra = extra
		z.mu.Unlock()
		got, err := lookup(ctx, z.addr, model.DNSDiscovery{Name: "_mqtt._tcp.b.test", Record: model.RecordSRV})
		want := []model.Endpoint{ep("b-1.b.test", "fd00::1", 1883), ep("b-0.b.test", "10.0.0.9", 1884)}
		if err != nil || fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("SRV (additional section %v): %v, %v; want %v", extra, got, err, want)
		}
	}
	for _, name := range []string{"all.b.test", "alias.b.test"} {
		got, err := lookup(ctx, z.addr, model.DNSDiscovery{Name: name, Record: model.RecordA, Port: 1883})
		want := []model.Endpoint{ep("", "10.0.0.1", 1883), ep("", "10.0.0.2", 1883), ep("", "fd00::2", 1883)}
		if err != nil || fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("A %s: %v, %v; want %v", name, got, err, want)
		}
	}
	if _, err := lookup(ctx, z.addr, model.DNSDiscovery{Name: "nothing.b.test", Record: model.RecordA, Port: 1}); !errors.Is(err, errEmpty) {
		t.Errorf("empty answer: %v, want errEmpty", err)
	}
	if _, err := lookup(ctx, z.addr, model.DNSDiscovery{Name: "gone.b.test", Record: model.RecordSRV}); err == nil || !strings.Contains(err.Error(), "NXDOMAIN") {
		t.Errorf("NXDOMAIN: %v", err)
	}
}

type setter struct {
	mu   sync.Mutex
	sets [][]model.Endpoint
}

func (s *setter) SetDiscovered(_ context.Context, _ string, eps []model.Endpoint) (uint64, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sets = append(s.sets, eps)
	return uint64(len(s.sets)), true, nil
}

// A failed lookup never reaches the setter: the cluster keeps what it
// has, and the status says why.
func TestFailureKeepsTheLastSet(t *testing.T) {
	z := startZone(t, map[string][]string{"b.test.": {"b.test. 5 IN A 10.0.0.1"}})
	m := &model.Model{Clusters: []model.Cluster{{Name: "brokers", Discovery: &model.Discovery{DNS: &model.DNSDiscovery{
		Name: "b.test", Record: model.RecordA, Port: 1883, Interval: model.Duration(time.Second), Resolver: z.addr}}}}}
	s := &setter{}
	r, err := New(m, s, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	r.refresh(ctx, r.targets[0])
	z.mu.Lock()
	z.records["b.test."] = nil
	z.mu.Unlock()
	r.refresh(ctx, r.targets[0])
	r.refresh(ctx, r.targets[0])
	st := r.Status()[0]
	if len(s.sets) != 1 || st.Failing != 2 || st.Records != 1 || !strings.Contains(st.LastError, "NXDOMAIN") || st.LastSuccess == nil {
		t.Errorf("sets %v, status %+v", s.sets, st)
	}
}
