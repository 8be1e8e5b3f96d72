package tests

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// dnsServer is a real dnsmasq on 127.0.0.1 serving the records a test
// writes. A records come from a hosts file (reloaded on SIGHUP); SRV and
// TXT records from a config file, which dnsmasq reads only at start, so
// changing those restarts it on the same port.
type dnsServer struct {
	bin, dir string
	port     int
	cmd      *exec.Cmd
	exited   chan struct{}
	records  dnsRecords
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
	bin, err := exec.LookPath("dnsmasq")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/dnsmasq"); serr != nil {
			t.Fatalf("dnsmasq not found (apt-get install dnsmasq; .ci/run installs it): %v", err)
		}
		bin = "/usr/sbin/dnsmasq"
	}
	d := &dnsServer{bin: bin, dir: t.TempDir(), port: freePort(t)}
	d.write(t, r)
	d.start(t)
	t.Cleanup(func() { d.stop(t) })
	return d
}

// Addr is the resolver address to configure.
func (d *dnsServer) Addr() string { return fmt.Sprintf("127.0.0.1:%d", d.port) }

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
	if err := os.WriteFile(filepath.Join(d.dir, "hosts"), []byte(hosts.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d.dir, "records.conf"), []byte(conf.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

func (d *dnsServer) start(t *testing.T) {
	t.Helper()
	d.cmd = exec.Command(d.bin, "--no-daemon", "--keep-in-foreground", fmt.Sprintf("--port=%d", d.port),
		"--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts",
		"--addn-hosts="+filepath.Join(d.dir, "hosts"), "--conf-file="+filepath.Join(d.dir, "records.conf"),
		"--local=/"+dnsDomain+"/", "--cache-size=0", "--user=root", "--pid-file=", "--log-facility=-")
	logf, err := os.Create(filepath.Join(d.dir, "dnsmasq.log"))
	if err != nil {
		t.Fatal(err)
	}
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logf.Close()
	d.exited = make(chan struct{})
	go func() { d.cmd.Wait(); close(d.exited) }()
	d.waitAnswering(t)
}

// waitAnswering polls until dnsmasq answers a query over UDP.
func (d *dnsServer) waitAnswering(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	m := new(dns.Msg)
	m.SetQuestion("ready."+dnsDomain+".", dns.TypeA)
	c := &dns.Client{Timeout: 100 * time.Millisecond}
	for {
		if _, _, err := c.Exchange(m, d.Addr()); err == nil {
			return
		}
		select {
		case <-d.exited:
			log, _ := os.ReadFile(filepath.Join(d.dir, "dnsmasq.log"))
			t.Fatalf("dnsmasq exited:\n%s", log)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("dnsmasq did not answer within 10s")
		}
		time.Sleep(10 * time.Millisecond) // polling interval of a readiness check
	}
}

func (d *dnsServer) stop(t *testing.T) {
	select {
	case <-d.exited:
		return
	default:
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(5 * time.Second):
		d.cmd.Process.Kill()
		<-d.exited
	}
}

// set replaces the records: a SIGHUP when only the hosts changed, a
// restart on the same port otherwise.
func (d *dnsServer) set(t *testing.T, r dnsRecords) {
	t.Helper()
	conf := fmt.Sprint(d.records.srv, d.records.txt)
	d.write(t, r)
	if conf == fmt.Sprint(r.srv, r.txt) {
		if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
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
