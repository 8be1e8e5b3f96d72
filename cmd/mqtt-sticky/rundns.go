package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/miekg/dns"

	"github.com/mqtt-sticky/mqtt-sticky/xds/model"
)

// `mqtt-sticky run --dns NAME` with embedded brokers serves NAME itself: a
// dnsmasq on runDNSAddr answers SRV records for the brokers, read from
// files in <dir>/dns. Editing records.conf (a srv-host line per broker)
// restarts dnsmasq, since it reads SRV records only at start; editing hosts
// (the targets' addresses) makes it reload them (SIGHUP).
const (
	dnsDirName  = "dns"
	runDNSAddr  = "127.0.0.1:18853"
	runDNSZone  = "mqtt-sticky.local"
	dnsFilePoll = 500 * time.Millisecond
)

type runDNS struct {
	addr, dir, bin string
	cmd            *exec.Cmd
	exited         chan struct{}
	cancel         context.CancelFunc
	done           chan struct{}
}

func (d *runDNS) recordsPath() string { return filepath.Join(d.dir, "records.conf") }
func (d *runDNS) hostsPath() string   { return filepath.Join(d.dir, "hosts") }

// startRunDNS writes the brokers' records and starts dnsmasq.
func startRunDNS(ctx context.Context, o runOptions, eps []model.Endpoint) (*runDNS, error) {
	if !strings.HasPrefix(o.dns, "_") {
		return nil, fmt.Errorf("%w: --dns %s: the local DNS server serves SRV records; use a name like _mqtt._tcp.brokers.%s, or give --dns-resolver", errUsage, o.dns, runDNSZone)
	}
	bin, err := exec.LookPath("dnsmasq")
	if err != nil {
		return nil, fmt.Errorf("--dns without --dns-resolver runs a local dnsmasq, which is not installed (apt-get install dnsmasq): %w", err)
	}
	d := &runDNS{addr: runDNSAddr, dir: filepath.Join(o.workDir, dnsDirName), bin: bin, done: make(chan struct{})}
	if err := os.MkdirAll(d.dir, 0o755); err != nil {
		return nil, err
	}
	var hosts, records strings.Builder
	fmt.Fprintf(&records, "# SRV records for %s: one line per broker; save to apply.\n", o.dns)
	for i, e := range eps {
		target := fmt.Sprintf("broker-%d.%s", i+1, runDNSZone)
		fmt.Fprintf(&hosts, "%s %s\n", e.Address, target)
		fmt.Fprintf(&records, "srv-host=%s,%s,%d\n", o.dns, target, e.Port)
	}
	if err := os.WriteFile(d.hostsPath(), []byte(hosts.String()), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(d.recordsPath(), []byte(records.String()), 0o644); err != nil {
		return nil, err
	}
	if err := d.start(); err != nil {
		return nil, err
	}
	if err := d.waitAnswering(ctx); err != nil {
		d.halt()
		return nil, err
	}
	wctx, cancel := context.WithCancel(ctx)
	d.cancel = cancel
	go d.watch(wctx)
	return d, nil
}

func (d *runDNS) start() error {
	_, port, _ := strings.Cut(d.addr, ":")
	d.cmd = exec.Command(d.bin, "--no-daemon", "--keep-in-foreground", "--port="+port, "--listen-address=127.0.0.1",
		"--bind-interfaces", "--no-resolv", "--no-hosts", "--addn-hosts="+d.hostsPath(), "--conf-file="+d.recordsPath(),
		"--local=/"+runDNSZone+"/", "--cache-size=0", "--pid-file=", "--log-facility=-")
	if os.Geteuid() == 0 {
		d.cmd.Args = append(d.cmd.Args, "--user=root") // read files in a root-owned directory
	}
	logf, err := os.OpenFile(filepath.Join(d.dir, "dnsmasq.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	if err := d.cmd.Start(); err != nil {
		return fmt.Errorf("starting dnsmasq: %w", err)
	}
	exited := make(chan struct{})
	go func() { d.cmd.Wait(); close(exited) }()
	d.exited = exited
	return nil
}

// waitAnswering polls until dnsmasq answers, so the first lookup works.
func (d *runDNS) waitAnswering(ctx context.Context) error {
	m := new(dns.Msg)
	m.SetQuestion("ready."+runDNSZone+".", dns.TypeA)
	c := &dns.Client{Timeout: 100 * time.Millisecond}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, _, err := c.ExchangeContext(ctx, m, d.addr); err == nil {
			return nil
		}
		select {
		case <-d.exited:
			return fmt.Errorf("dnsmasq exited at start; see %s", filepath.Join(d.dir, "dnsmasq.log"))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("dnsmasq did not answer on %s within 10s; see %s", d.addr, filepath.Join(d.dir, "dnsmasq.log"))
		}
	}
}

// watch applies edits of the record files until ctx ends.
func (d *runDNS) watch(ctx context.Context) {
	defer close(d.done)
	records, hosts := modTime(d.recordsPath()), modTime(d.hostsPath())
	for {
		select {
		case <-ctx.Done():
			d.halt()
			return
		case <-time.After(dnsFilePoll):
		}
		switch r, h := modTime(d.recordsPath()), modTime(d.hostsPath()); {
		case !r.Equal(records):
			records, hosts = r, h
			d.halt()
			if err := d.start(); err != nil {
				fmt.Fprintln(os.Stderr, "mqtt-sticky run:", err)
			}
		case !h.Equal(hosts):
			hosts = h
			d.cmd.Process.Signal(syscall.SIGHUP)
		}
	}
}

func (d *runDNS) halt() {
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(5 * time.Second):
		d.cmd.Process.Kill()
		<-d.exited
	}
}

func (d *runDNS) stop() {
	d.cancel()
	<-d.done
}

func modTime(path string) time.Time {
	st, err := os.Stat(path)
	if err != nil {
		return time.Time{}
	}
	return st.ModTime()
}
