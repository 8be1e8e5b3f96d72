package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/mqtt-sticky/mqtt-sticky/internal/dnsproc"
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
	*dnsproc.Server
	cancel context.CancelFunc
	done   chan struct{}
}

// startRunDNS writes the brokers' records and starts dnsmasq.
func startRunDNS(ctx context.Context, o runOptions, eps []model.Endpoint) (*runDNS, error) {
	if !strings.HasPrefix(o.dns, "_") {
		return nil, fmt.Errorf("%w: --dns %s: the local DNS server serves SRV records; use a name like _mqtt._tcp.brokers.%s, or give --dns-resolver", errUsage, o.dns, runDNSZone)
	}
	bin, err := dnsproc.FindBinary()
	if err != nil {
		return nil, fmt.Errorf("--dns without --dns-resolver runs a local dnsmasq: %w", err)
	}
	dir := filepath.Join(o.workDir, dnsDirName)
	if err := writeRunRecords(dir, o.dns, eps); err != nil {
		return nil, err
	}
	srv, err := dnsproc.Start(ctx, bin, runDNSAddr, dir, runDNSZone)
	if err != nil {
		return nil, err
	}
	wctx, cancel := context.WithCancel(ctx)
	d := &runDNS{Server: srv, cancel: cancel, done: make(chan struct{})}
	go d.watch(wctx)
	return d, nil
}

// writeRunRecords writes one SRV record for name per broker, with targets
// broker-N in the zone and their addresses in the hosts file.
func writeRunRecords(dir, name string, eps []model.Endpoint) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var hosts, records strings.Builder
	fmt.Fprintf(&records, "# SRV records for %s: one line per broker; save to apply.\n", name)
	for i, e := range eps {
		target := fmt.Sprintf("broker-%d.%s", i+1, runDNSZone)
		fmt.Fprintf(&hosts, "%s %s\n", e.Address, target)
		fmt.Fprintf(&records, "srv-host=%s,%s,%d\n", name, target, e.Port)
	}
	if err := os.WriteFile(filepath.Join(dir, dnsproc.HostsFile), []byte(hosts.String()), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, dnsproc.RecordsFile), []byte(records.String()), 0o644)
}

// watch applies edits of the record files until ctx ends.
func (d *runDNS) watch(ctx context.Context) {
	defer close(d.done)
	records, hosts := modTime(d.RecordsPath()), modTime(d.HostsPath())
	for {
		select {
		case <-ctx.Done():
			d.Stop()
			return
		case <-time.After(dnsFilePoll):
		}
		switch r, h := modTime(d.RecordsPath()), modTime(d.HostsPath()); {
		case !r.Equal(records):
			records, hosts = r, h
			if err := d.Restart(ctx); err != nil {
				fmt.Fprintln(os.Stderr, "mqtt-sticky run:", err)
			}
		case !h.Equal(hosts):
			hosts = h
			d.Reload()
		}
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
