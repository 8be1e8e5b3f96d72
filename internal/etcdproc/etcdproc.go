// Package etcdproc runs real etcd members as child processes on loopback,
// for the tests: a cluster of N members, each of which can be killed and
// started again on its own data directory. It waits on etcd's own /health
// endpoint, never on a timer.
package etcdproc

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/mqtt-sticky/mqtt-sticky/internal/envoyproc"
)

// ErrNoEtcd means no etcd binary was found.
var ErrNoEtcd = errors.New("etcd binary not found: install Debian's etcd-server (apt-get install etcd-server) or set ETCD_BIN")

// FindBinary returns $ETCD_BIN when set, otherwise etcd from PATH.
func FindBinary() (string, error) {
	if p := os.Getenv("ETCD_BIN"); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("ETCD_BIN=%s: %w", p, err)
		}
		return p, nil
	}
	p, err := exec.LookPath("etcd")
	if err != nil {
		return "", ErrNoEtcd
	}
	return p, nil
}

// Timing of the test clusters. etcd's defaults (100ms heartbeats, 1s
// elections) suit real networks; on loopback, shorter ones make losing
// and regaining a quorum, which the tests do on purpose, take a fraction
// of the time.
const (
	heartbeatMillis = 50
	electionMillis  = 500
)

// Member is one etcd process.
type Member struct {
	Name      string
	ClientURL string // http://127.0.0.1:PORT
	PeerURL   string
	DataDir   string
	LogPath   string

	bin     string
	cluster string // --initial-cluster
	token   string
	tls     *TLS
	client  *http.Client // for /health and the status
	cmd     *exec.Cmd
	exited  chan struct{}
}

// TLS makes the members serve clients over TLS only, and accept only
// clients with a certificate signed by the CA.
type TLS struct {
	CAFile, CertFile, KeyFile string // the CA; the members' certificate (for 127.0.0.1) and key
	// Client is how this package reaches the members' /health.
	Client *tls.Config
}

// Cluster is a set of members that form one etcd cluster.
type Cluster struct {
	Members []*Member
}

// StartCluster starts an n-member cluster with its data and logs under
// dir, on free ports of 127.0.0.1, and waits until every member reports
// healthy (the cluster has a leader).
func StartCluster(ctx context.Context, dir string, n int) (*Cluster, error) {
	return StartClusterTLS(ctx, dir, n, nil)
}

// StartClusterTLS is StartCluster with clients served over t (peers stay
// on plain HTTP).
func StartClusterTLS(ctx context.Context, dir string, n int, t *TLS) (*Cluster, error) {
	bin, err := FindBinary()
	if err != nil {
		return nil, err
	}
	scheme, client := "http", http.DefaultClient
	if t != nil {
		scheme, client = "https", &http.Client{Transport: &http.Transport{TLSClientConfig: t.Client}}
	}
	c := &Cluster{}
	var initial []string
	for i := range n {
		m := &Member{Name: fmt.Sprintf("etcd-%d", i+1), bin: bin, token: filepath.Base(dir), tls: t, client: client}
		for _, u := range []*string{&m.ClientURL, &m.PeerURL} {
			port, err := envoyproc.FreePort("127.0.0.1")
			if err != nil {
				return nil, err
			}
			*u = fmt.Sprintf("http://127.0.0.1:%d", port)
		}
		m.ClientURL = strings.Replace(m.ClientURL, "http", scheme, 1)
		m.DataDir = filepath.Join(dir, m.Name+".data")
		m.LogPath = filepath.Join(dir, m.Name+".log")
		initial = append(initial, m.Name+"="+m.PeerURL)
		c.Members = append(c.Members, m)
	}
	for _, m := range c.Members {
		m.cluster = strings.Join(initial, ",")
		if err := m.Start(); err != nil {
			c.Stop()
			return nil, err
		}
	}
	if err := c.WaitHealthy(ctx); err != nil {
		c.Stop()
		return nil, err
	}
	return c, nil
}

// Endpoints are the members' client URLs.
func (c *Cluster) Endpoints() []string {
	var out []string
	for _, m := range c.Members {
		out = append(out, m.ClientURL)
	}
	return out
}

// WaitHealthy waits until every running member reports healthy.
func (c *Cluster) WaitHealthy(ctx context.Context) error {
	for _, m := range c.Members {
		if !m.Running() {
			continue
		}
		if err := m.WaitHealthy(ctx); err != nil {
			return err
		}
	}
	return nil
}

// Leader returns the member that leads the cluster, as the running
// members report it.
func (c *Cluster) Leader(ctx context.Context) (*Member, error) {
	for _, m := range c.Members {
		if !m.Running() {
			continue
		}
		st, err := m.status(ctx)
		if err != nil {
			continue
		}
		for _, l := range c.Members {
			if lst, err := l.status(ctx); err == nil && l.Running() && lst.Header.MemberID == st.Leader {
				return l, nil
			}
		}
	}
	return nil, errors.New("no running member knows of a leader")
}

// Stop stops every member.
func (c *Cluster) Stop() {
	for _, m := range c.Members {
		m.Stop()
	}
}

// Start runs the member on its data directory: a new member the first
// time, the same member with its data afterwards.
func (m *Member) Start() error {
	if m.Running() {
		return fmt.Errorf("%s is already running", m.Name)
	}
	logf, err := os.OpenFile(m.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close() // the child keeps its own descriptor
	args := []string{
		"--name", m.Name,
		"--data-dir", m.DataDir,
		"--listen-client-urls", m.ClientURL,
		"--advertise-client-urls", m.ClientURL,
		"--listen-peer-urls", m.PeerURL,
		"--initial-advertise-peer-urls", m.PeerURL,
		"--initial-cluster", m.cluster,
		"--initial-cluster-token", m.token,
		"--initial-cluster-state", "new", // ignored once the data directory exists
		"--heartbeat-interval", fmt.Sprint(heartbeatMillis),
		"--election-timeout", fmt.Sprint(electionMillis),
		"--logger", "zap",
	}
	if m.tls != nil {
		args = append(args, "--cert-file", m.tls.CertFile, "--key-file", m.tls.KeyFile,
			"--trusted-ca-file", m.tls.CAFile, "--client-cert-auth")
	}
	cmd := exec.Command(m.bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// The kernel stops etcd if the test process dies without stopping it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", m.Name, err)
	}
	m.cmd, m.exited = cmd, make(chan struct{})
	go func(exited chan struct{}) { cmd.Wait(); close(exited) }(m.exited)
	return nil
}

// Running says whether the member's process is up.
func (m *Member) Running() bool {
	if m.exited == nil {
		return false
	}
	select {
	case <-m.exited:
		return false
	default:
		return true
	}
}

// Kill stops the member at once (SIGKILL), as a crash would.
func (m *Member) Kill() {
	if m.Running() {
		m.cmd.Process.Kill()
		<-m.exited
	}
}

// Stop stops the member cleanly (SIGTERM), or kills it after 10 seconds.
func (m *Member) Stop() {
	if !m.Running() {
		return
	}
	m.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-m.exited:
	case <-time.After(10 * time.Second):
		m.Kill()
	}
}

// WaitHealthy waits until the member answers /health with "true": it is
// up and its cluster has a leader.
func (m *Member) WaitHealthy(ctx context.Context) error {
	var last error
	for backoff := 5 * time.Millisecond; ; backoff = min(backoff*2, 100*time.Millisecond) {
		if last = m.health(ctx); last == nil {
			return nil
		}
		select {
		case <-m.exited:
			return fmt.Errorf("%s exited: see %s", m.Name, m.LogPath)
		case <-ctx.Done():
			return fmt.Errorf("%s not healthy: %v (log: %s)", m.Name, last, m.LogPath)
		case <-time.After(backoff):
		}
	}
}

func (m *Member) health(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, m.ClientURL+"/health", nil)
	resp, err := m.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var h struct {
		Health string `json:"health"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
		return err
	}
	if h.Health != "true" {
		return fmt.Errorf("health %q", h.Health)
	}
	return nil
}

// memberStatus is the part of etcd's maintenance status the tests need,
// from its JSON gateway (64-bit IDs are strings there).
type memberStatus struct {
	Header struct {
		MemberID string `json:"member_id"`
	} `json:"header"`
	Leader string `json:"leader"`
}

func (m *Member) status(ctx context.Context) (memberStatus, error) {
	var st memberStatus
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, m.ClientURL+"/v3/maintenance/status", strings.NewReader("{}"))
	resp, err := m.client.Do(req)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	err = json.NewDecoder(resp.Body).Decode(&st)
	return st, err
}
