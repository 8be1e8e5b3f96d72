// Package tlsfiles serves TLS from PEM files that are replaced while the
// server runs: certificates are rotated without a restart.
//
// Each handshake checks the files' modification times and sizes (os.Stat
// follows the symlinks of a Kubernetes-style secret volume) and loads them
// again when one changed. A set that does not load (a key that does not
// match its certificate while the files are being replaced one by one) is
// logged, and the last good one stays in use until the next handshake
// tries again.
package tlsfiles

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"syscall"
	"time"
)

// Files name a server's certificate and key, and optionally the CA that
// signs its clients' certificates.
type Files struct {
	CertFile string `json:"cert_file,omitempty"`
	KeyFile  string `json:"key_file,omitempty"`
	// ClientCAFile, when set, makes the server verify client certificates
	// against it: every client must present one when RequireClientCert is
	// set, and any client that presents one otherwise.
	ClientCAFile      string `json:"client_ca_file,omitempty"`
	RequireClientCert bool   `json:"require_client_cert,omitempty"`
}

// Enabled reports whether any TLS setting is given.
func (f Files) Enabled() bool { return f != Files{} }

// Check reports a settings mistake: a certificate without its key, or the
// reverse, or client certificates required without a CA to check them.
func (f Files) Check() error {
	switch {
	case !f.Enabled():
		return nil
	case f.CertFile == "" || f.KeyFile == "":
		return errors.New("TLS needs both a certificate file and a key file")
	case f.RequireClientCert && f.ClientCAFile == "":
		return errors.New("requiring client certificates needs a client CA file to check them against")
	}
	return nil
}

// ServerConfig loads the files and returns a TLS configuration that
// reloads them when they change. It fails when they do not load now.
func (f Files) ServerConfig(log *slog.Logger) (*tls.Config, error) {
	if err := f.Check(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	r := &reloader{files: f, log: log}
	if err := r.reload(); err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) { return r.config(), nil },
	}, nil
}

// reloader holds the configuration last loaded from the files.
type reloader struct {
	files Files
	log   *slog.Logger

	mu      sync.Mutex
	current *tls.Config
	stamps  []stamp // of the files current was loaded from
}

// stamp is what tells that a file changed: a new file renamed over the
// old one has another inode, a file rewritten in place another mtime or
// size.
type stamp struct {
	mod   time.Time
	size  int64
	inode uint64
}

// config returns the configuration for a new handshake, loading the files
// again first if they changed.
func (r *reloader) config() *tls.Config {
	r.mu.Lock()
	defer r.mu.Unlock()
	if stamps, err := r.stat(); err == nil && !equal(stamps, r.stamps) {
		if err := r.load(stamps); err != nil {
			r.log.Warn("tls: the changed certificate files do not load; keeping the previous ones", "err", err)
		} else {
			r.log.Info("tls: certificate files reloaded", "cert_file", r.files.CertFile)
		}
	}
	return r.current
}

func (r *reloader) reload() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	stamps, err := r.stat()
	if err != nil {
		return err
	}
	return r.load(stamps)
}

func (r *reloader) paths() []string {
	p := []string{r.files.CertFile, r.files.KeyFile}
	if r.files.ClientCAFile != "" {
		p = append(p, r.files.ClientCAFile)
	}
	return p
}

func (r *reloader) stat() ([]stamp, error) {
	var out []stamp
	for _, p := range r.paths() {
		fi, err := os.Stat(p)
		if err != nil {
			return nil, err
		}
		st := stamp{mod: fi.ModTime(), size: fi.Size()}
		if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
			st.inode = sys.Ino
		}
		out = append(out, st)
	}
	return out, nil
}

func equal(a, b []stamp) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !a[i].mod.Equal(b[i].mod) || a[i].size != b[i].size || a[i].inode != b[i].inode {
			return false
		}
	}
	return true
}

// load reads the files and, when they make a valid configuration,
// replaces the current one.
func (r *reloader) load(stamps []stamp) error {
	cert, err := tls.LoadX509KeyPair(r.files.CertFile, r.files.KeyFile)
	if err != nil {
		return fmt.Errorf("loading %s and %s: %w", r.files.CertFile, r.files.KeyFile, err)
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	if r.files.ClientCAFile != "" {
		pem, err := os.ReadFile(r.files.ClientCAFile)
		if err != nil {
			return err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("%s holds no PEM certificate", r.files.ClientCAFile)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.VerifyClientCertIfGiven
		if r.files.RequireClientCert {
			cfg.ClientAuth = tls.RequireAndVerifyClientCert
		}
	}
	r.current, r.stamps = cfg, stamps
	return nil
}
