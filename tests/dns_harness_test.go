package tests

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/mqtt-sticky/mqtt-sticky/internal/dnsproc"
)

// dnsServer is a real dnsmasq on 127.0.0.1 (internal/dnsproc) serving the
// records a test writes. A records come from a hosts file (reloaded on
// SIGHUP); SRV and TXT records from a config file, which dnsmasq reads
// only at start, so changing those restarts it on the same port.
type dnsServer struct {
	bin, dir, addr string
	srv            *dnsproc.Server
	records        dnsRecords
}

// dnsRecords are the zone's contents.
type dnsRecords struct {
	hosts map[string][]string // name -> addresses
	srv   map[string][]srvRecord
	txt   []string // names that exist with a TXT record only
}

type srvRecord struct {
	target string
	port   int
}

// dnsDomain is the test zone; dnsmasq answers for it alone.
const dnsDomain = "mqtt-sticky.test"

// startDNS starts dnsmasq; a missing dnsmasq fails the test (`.ci/run`
// installs it).
func startDNS(t *testing.T, r dnsRecords) *dnsServer {
	t.Helper()
	bin, err := dnsproc.FindBinary()
	if err != nil {
		t.Fatalf("%v (.ci/run installs it)", err)
	}
	d := &dnsServer{bin: bin, dir: t.TempDir(), addr: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
	d.write(t, r)
	d.start(t)
	t.Cleanup(func() { d.stop(t) })
	return d
}

// Addr is the resolver address to configure.
func (d *dnsServer) Addr() string { return d.addr }

func (d *dnsServer) write(t *testing.T, r dnsRecords) {
	t.Helper()
	d.records = r
	var hosts, conf strings.Builder
	for name, addrs := range r.hosts {
		for _, a := range addrs {
			fmt.Fprintf(&hosts, "%s %s\n", a, name)
		}
	}
	for name, recs := range r.srv {
		for _, s := range recs {
			fmt.Fprintf(&conf, "srv-host=%s,%s,%d\n", name, s.target, s.port)
		}
	}
	for _, name := range r.txt {
		fmt.Fprintf(&conf, "txt-record=%s,\"none\"\n", name)
	}
	if err := os.WriteFile(filepath.Join(d.dir, dnsproc.HostsFile), []byte(hosts.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d.dir, dnsproc.RecordsFile), []byte(conf.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

// start starts dnsmasq on the server's address and waits until it answers.
func (d *dnsServer) start(t *testing.T) {
	t.Helper()
	srv, err := dnsproc.Start(context.Background(), d.bin, d.addr, d.dir, dnsDomain)
	if err != nil {
		t.Fatal(err)
	}
	d.srv = srv
}

func (d *dnsServer) stop(*testing.T) { d.srv.Stop() }

// reload makes dnsmasq reread the hosts file.
func (d *dnsServer) reload(t *testing.T) {
	t.Helper()
	if err := d.srv.Reload(); err != nil {
		t.Fatal(err)
	}
}

// set replaces the records: a SIGHUP when only the hosts changed, a
// restart on the same port otherwise.
func (d *dnsServer) set(t *testing.T, r dnsRecords) {
	t.Helper()
	conf := fmt.Sprint(d.records.srv, d.records.txt)
	d.write(t, r)
	if conf == fmt.Sprint(r.srv, r.txt) {
		d.reload(t)
		return
	}
	d.stop(t)
	d.start(t)
}

// resolveA asks dnsmasq for name's A records, to know a SIGHUP took effect.
func (d *dnsServer) resolveA(ctx context.Context, name string) ([]string, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeA)
	resp, _, err := (&dns.Client{Timeout: time.Second}).ExchangeContext(ctx, m, d.Addr())
	if err != nil {
		return nil, err
	}
	var out []string
	for _, rr := range resp.Answer {
		if a, ok := rr.(*dns.A); ok {
			out = append(out, a.A.String())
		}
	}
	return out, nil
}
