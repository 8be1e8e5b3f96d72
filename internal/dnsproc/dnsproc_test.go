package dnsproc

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/mqtt-sticky/mqtt-sticky/internal/envoyproc"
)

// A real dnsmasq answers A records from the hosts file, rereads it on
// Reload, and reads changed SRV records on Restart, on the same address.
func TestServeReloadRestart(t *testing.T) {
	bin, err := FindBinary()
	if err != nil {
		t.Fatalf("%v (.ci/run installs it)", err)
	}
	dir := t.TempDir()
	writeIn := func(dir, hosts, records string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, HostsFile), []byte(hosts), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, RecordsFile), []byte(records), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write := func(hosts, records string) { writeIn(dir, hosts, records) }
	write("127.0.0.7 b1.zone.test\n", "")
	ctx := context.Background()
	port, err := envoyproc.FreePort("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	s, err := Start(ctx, bin, fmt.Sprintf("127.0.0.1:%d", port), dir, "zone.test")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()

	if got := lookup(t, s.Addr, "b1.zone.test", dns.TypeA); !slices.Equal(got, []string{"127.0.0.7"}) {
		t.Fatalf("A b1: %v", got)
	}
	// A second dnsmasq on the same address cannot bind it; the first one's
	// answers must not pass for the second's readiness.
	other := t.TempDir()
	writeIn(other, "127.0.0.9 b1.zone.test\n", "")
	if s2, err := Start(ctx, bin, s.Addr, other, "zone.test"); err == nil {
		s2.Stop()
		t.Fatal("a dnsmasq that could not bind its address was reported ready")
	}
	write("127.0.0.8 b1.zone.test\n", "")
	if err := s.Reload(); err != nil {
		t.Fatal(err)
	}
	// dnsmasq rereads the file when it handles the signal: poll for it.
	deadline := time.Now().Add(10 * time.Second)
	for !slices.Equal(lookup(t, s.Addr, "b1.zone.test", dns.TypeA), []string{"127.0.0.8"}) {
		select {
		case <-s.Exited():
			t.Fatal("dnsmasq exited after SIGHUP")
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("the new A record was not served within 10s of SIGHUP")
		}
	}
	write("127.0.0.8 b1.zone.test\n", "srv-host=_mqtt._tcp.zone.test,b1.zone.test,1883\n")
	if err := s.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if got := lookup(t, s.Addr, "_mqtt._tcp.zone.test", dns.TypeSRV); !slices.Equal(got, []string{"b1.zone.test.:1883"}) {
		t.Fatalf("SRV after restart: %v", got)
	}
	s.Stop()
	select {
	case <-s.Exited():
	default:
		t.Fatal("still running after Stop")
	}
}

func lookup(t *testing.T, addr, name string, typ uint16) []string {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), typ)
	resp, _, err := new(dns.Client).Exchange(m, addr)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, rr := range resp.Answer {
		switch rr := rr.(type) {
		case *dns.A:
			out = append(out, rr.A.String())
		case *dns.SRV:
			out = append(out, fmt.Sprintf("%s:%d", rr.Target, rr.Port))
		}
	}
	return out
}
