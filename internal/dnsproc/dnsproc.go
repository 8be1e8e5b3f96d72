// Package dnsproc runs a real dnsmasq on loopback that answers for one zone
// from two files in its directory: hosts (A and AAAA records, which dnsmasq
// rereads on SIGHUP) and records.conf (SRV and TXT lines, which it reads
// only at start, so changing them takes a restart on the same port).
// `mqtt-sticky run --dns` and the end-to-end tests both use it; it waits for
// dnsmasq to answer a query, never on a timer.
package dnsproc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/miekg/dns"
)

// ErrNoDnsmasq means no dnsmasq binary was found.
var ErrNoDnsmasq = errors.New("dnsmasq not found: install Debian's dnsmasq-base (apt-get install dnsmasq-base)")

// FindBinary returns dnsmasq from PATH, or from /usr/sbin, which a
// non-root PATH often leaves out.
func FindBinary() (string, error) {
	if p, err := exec.LookPath("dnsmasq"); err == nil {
		return p, nil
	}
	if _, err := os.Stat("/usr/sbin/dnsmasq"); err == nil {
		return "/usr/sbin/dnsmasq", nil
	}
	return "", ErrNoDnsmasq
}

// The files a Server serves, in its directory.
const (
	HostsFile   = "hosts"        // A and AAAA records, in hosts format
	RecordsFile = "records.conf" // srv-host and txt-record lines
)

// Server is one dnsmasq process.
type Server struct {
	Addr string // 127.0.0.1:PORT, UDP and TCP
	Dir  string // holds hosts, records.conf and dnsmasq.log
	Zone string // the only zone it answers for

	bin    string
	cmd    *exec.Cmd
	exited chan struct{}
	// nonce is served as the TXT record of readyName: an answer carrying it
	// comes from this process, not from another dnsmasq already on the port.
	nonce string
}

// readyLabel names the record the readiness check asks for.
const readyLabel = "_mqtt-sticky-ready"

// HostsPath is the file of A and AAAA records.
func (s *Server) HostsPath() string { return filepath.Join(s.Dir, HostsFile) }

// RecordsPath is the file of SRV and TXT records.
func (s *Server) RecordsPath() string { return filepath.Join(s.Dir, RecordsFile) }

// LogPath is where dnsmasq writes its log.
func (s *Server) LogPath() string { return filepath.Join(s.Dir, "dnsmasq.log") }

// Start starts dnsmasq on addr (a 127.0.0.1 address) for zone, serving the
// files in dir, which the caller has written, and waits until it answers.
func Start(ctx context.Context, bin, addr, dir, zone string) (*Server, error) {
	s := &Server{Addr: addr, Dir: dir, Zone: zone, bin: bin}
	if err := s.start(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// Reload makes dnsmasq reread the hosts file.
func (s *Server) Reload() error { return s.cmd.Process.Signal(syscall.SIGHUP) }

// Restart stops dnsmasq and starts it again on the same address, to read
// a changed records file.
func (s *Server) Restart(ctx context.Context) error {
	s.Stop()
	return s.start(ctx)
}

// Exited is closed when the process has exited.
func (s *Server) Exited() <-chan struct{} { return s.exited }

// Stop stops dnsmasq: SIGTERM, then SIGKILL after 5 seconds.
func (s *Server) Stop() {
	select {
	case <-s.exited:
		return
	default:
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(5 * time.Second):
		s.cmd.Process.Kill()
		<-s.exited
	}
}

func (s *Server) start(ctx context.Context) error {
	_, port, ok := strings.Cut(s.Addr, ":")
	if !ok {
		return fmt.Errorf("dnsmasq address %q: want 127.0.0.1:PORT", s.Addr)
	}
	s.nonce = fmt.Sprintf("%d-%d", os.Getpid(), time.Now().UnixNano())
	s.cmd = exec.Command(s.bin, "--no-daemon", "--keep-in-foreground", "--port="+port, "--listen-address=127.0.0.1",
		"--bind-interfaces", "--no-resolv", "--no-hosts", "--addn-hosts="+s.HostsPath(), "--conf-file="+s.RecordsPath(),
		"--local=/"+s.Zone+"/", "--cache-size=0", "--pid-file=", "--log-facility=-",
		"--txt-record="+readyLabel+"."+s.Zone+","+s.nonce)
	// The kernel stops dnsmasq if this process dies without stopping it;
	// its own process group keeps a terminal's Ctrl-C away from it.
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM, Setpgid: true}
	if os.Geteuid() == 0 {
		s.cmd.Args = append(s.cmd.Args, "--user=root") // read files in a root-owned directory
	}
	logf, err := os.OpenFile(s.LogPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	if err := s.cmd.Start(); err != nil {
		return fmt.Errorf("starting dnsmasq: %w", err)
	}
	exited := make(chan struct{})
	go func() { s.cmd.Wait(); close(exited) }()
	s.exited = exited
	if err := s.waitAnswering(ctx); err != nil {
		s.Stop()
		return err
	}
	return nil
}

// waitAnswering polls until this dnsmasq answers a query, so the first
// lookup works.
func (s *Server) waitAnswering(ctx context.Context) error {
	m := new(dns.Msg)
	m.SetQuestion(readyLabel+"."+s.Zone+".", dns.TypeTXT)
	c := &dns.Client{Timeout: 100 * time.Millisecond}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if resp, _, err := c.ExchangeContext(ctx, m, s.Addr); err == nil && s.isOurs(resp) {
			return nil
		}
		select {
		case <-s.exited:
			log, _ := os.ReadFile(s.LogPath())
			return fmt.Errorf("dnsmasq exited at start (%s):\n%s", s.LogPath(), log)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("dnsmasq did not answer on %s within 10s; see %s", s.Addr, s.LogPath())
		}
	}
}

// isOurs reports whether a readiness answer carries this process's nonce.
func (s *Server) isOurs(resp *dns.Msg) bool {
	for _, rr := range resp.Answer {
		if txt, ok := rr.(*dns.TXT); ok && slices.Contains(txt.Txt, s.nonce) {
			return true
		}
	}
	return false
}
