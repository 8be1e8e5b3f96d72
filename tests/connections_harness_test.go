package tests

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mqtt-sticky/mqtt-sticky/xds/model"
)

// brokerProc is an `mqtt-sticky broker` child process. Brokers that hold
// thousands of clients run as their own processes, so that no process
// holds more sockets than the machine's open-file limit allows.
type brokerProc struct {
	name, addr string
	cmd        *exec.Cmd
	log        string
	exited     chan struct{}
}

// startBrokerProc starts a broker that requires PROXY protocol on addr and
// returns once it listens.
func startBrokerProc(t testing.TB, name, addr string) *brokerProc {
	t.Helper()
	b := &brokerProc{name: name, addr: addr, log: filepath.Join(t.TempDir(), name+".log")}
	logf, err := os.Create(b.log)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	b.cmd = exec.Command(cliPath, "broker", "--listen", addr, "--name", name, "--proxy-protocol", "required", "--log-level", "warn")
	b.cmd.Stdout, b.cmd.Stderr = logf, logf
	b.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := b.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	b.exited = make(chan struct{})
	go func() { b.cmd.Wait(); close(b.exited) }()
	t.Cleanup(func() { b.kill() })
	waitFor(t, 20*time.Second, "broker "+name+" listens on "+addr, func() bool {
		select {
		case <-b.exited:
			log, _ := os.ReadFile(b.log)
			t.Fatalf("broker %s exited:\n%s", name, log)
		default:
		}
		c, err := dialFrom(t.Context(), nil, addr)
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
	return b
}

// kill stops the broker at once, as a crash would: its clients' connections
// are reset.
func (b *brokerProc) kill() {
	select {
	case <-b.exited:
		return
	default:
	}
	b.cmd.Process.Kill()
	<-b.exited
}

// writeFleet writes a control-plane config file (JSON is YAML).
func writeFleet(t testing.TB, path string, f *model.File) {
	t.Helper()
	raw, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, raw, 0o644); err != nil {
		t.Fatal(err)
	}
}

// envCount reads a positive count from the environment, or returns def.
func envCount(t testing.TB, name string, def int) int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		t.Fatalf("%s=%q: want a positive number", name, v)
	}
	return n
}

// envDuration reads a duration from the environment, or returns def.
func envDuration(t testing.TB, name string, def time.Duration) time.Duration {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		t.Fatalf("%s=%q: want a duration such as 30m", name, v)
	}
	return d
}

// markdownTable renders rows under a header, for the reports the long
// versions of the tests write into docs/benchmarks.md.
func markdownTable(header []string, rows [][]string) string {
	var b strings.Builder
	b.WriteString("| " + strings.Join(header, " | ") + " |\n|")
	for range header {
		b.WriteString("---|")
	}
	b.WriteString("\n")
	for _, r := range rows {
		b.WriteString("| " + strings.Join(r, " | ") + " |\n")
	}
	return b.String()
}

// writeReport writes a markdown fragment to $MQTT_STICKY_REPORT_DIR/name
// when that variable is set (the `make bench-*` targets set it).
func writeReport(t testing.TB, name, text string) {
	t.Helper()
	dir := os.Getenv("MQTT_STICKY_REPORT_DIR")
	if dir == "" {
		return
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("report written to %s", filepath.Join(dir, name))
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

func plural(n int, one, many string) string {
	if n == 1 {
		return fmt.Sprintf("%d %s", n, one)
	}
	return fmt.Sprintf("%d %s", n, many)
}
