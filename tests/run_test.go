package tests

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mqtt-sticky/mqtt-sticky/api"
	"github.com/mqtt-sticky/mqtt-sticky/internal/envoyproc"
	"github.com/mqtt-sticky/mqtt-sticky/xds/model"
)

// `mqtt-sticky run --dns NAME` as `make run DNS=…` starts it: embedded
// brokers requiring PROXY, a local dnsmasq serving their SRV records, the
// control plane discovering them, and Envoy. Clients connect through it;
// removing a broker's line from the records file takes it out of the
// cluster; Ctrl-C stops everything, dnsmasq included.
func TestRunDiscoversFromItsOwnDNS(t *testing.T) {
	const name = "_mqtt._tcp.brokers.mqtt-sticky.local"
	dir := filepath.Join(t.TempDir(), "run")
	mqttPort, apiAddr := runPorts+52, fmt.Sprintf("127.0.0.1:%d", runPorts+49)
	r := startRun(t, "--dns", name, "--dir", dir, "--port", fmt.Sprint(mqttPort), "--api", apiAddr)
	waitFor(t, 90*time.Second, "run's banner", func() bool {
		if r.hasExited() {
			t.Fatalf("run exited before it was up: %v\n%s", r.waitErr, r.out.String())
		}
		return strings.Contains(r.out.String(), "mqtt-sticky is running.")
	})
	if !strings.Contains(r.out.String(), "dnsmasq on 127.0.0.1:") {
		t.Errorf("the banner does not say where the DNS server is:\n%s", r.out.String())
	}

	ctx := context.Background()
	client := &api.Client{BaseURL: "http://" + apiAddr}
	names := func() []string {
		eps, err := client.Endpoints(ctx, model.DefaultClusterName)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, e := range eps.Endpoints {
			out = append(out, e.Name)
		}
		slices.Sort(out)
		return out
	}
	three := []string{"broker-1.mqtt-sticky.local", "broker-2.mqtt-sticky.local", "broker-3.mqtt-sticky.local"}
	if got := names(); !slices.Equal(got, three) {
		t.Fatalf("discovered endpoints %v, want %v", got, three)
	}
	connectThrough(t, fmt.Sprintf("127.0.0.1:%d", mqttPort), "run-a", 20)

	records := filepath.Join(dir, "dns", "records.conf")
	raw, err := os.ReadFile(records)
	if err != nil {
		t.Fatal(err)
	}
	var kept []string
	for _, line := range strings.Split(string(raw), "\n") {
		if !strings.Contains(line, "broker-3.") {
			kept = append(kept, line)
		}
	}
	if err := os.WriteFile(records, []byte(strings.Join(kept, "\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "broker-3 to leave the cluster after its SRV line was removed", func() bool {
		return slices.Equal(names(), three[:2])
	})
	connectThrough(t, fmt.Sprintf("127.0.0.1:%d", mqttPort), "run-b", 20)

	r.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-r.exited:
		if r.waitErr != nil {
			t.Fatalf("run after Ctrl-C: %v\n%s", r.waitErr, r.out.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("run did not stop within 30s of SIGINT:\n%s", r.out.String())
	}
	if c, err := net.ListenPacket("udp", "127.0.0.1:18853"); err != nil {
		t.Errorf("the DNS port is still taken after run stopped (dnsmasq left behind?): %v", err)
	} else {
		c.Close()
	}
}

// When Envoy cannot open the MQTT port, run says why and exits, instead of
// printing its banner over a proxy that listens nowhere.
func TestRunFailsWhenItsPortIsTaken(t *testing.T) {
	taken, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	port := taken.Addr().(*net.TCPAddr).Port
	r := startRun(t, "--dir", filepath.Join(t.TempDir(), "run"), "--port", fmt.Sprint(port),
		"--api", fmt.Sprintf("127.0.0.1:%d", runPorts+49))
	select {
	case <-r.exited:
	case <-time.After(90 * time.Second):
		t.Fatalf("run still running after 90s with its port taken:\n%s", r.out.String())
	}
	out := r.out.String()
	if r.waitErr == nil || strings.Contains(out, "mqtt-sticky is running.") {
		t.Fatalf("run did not fail (exit: %v):\n%s", r.waitErr, out)
	}
	if want := fmt.Sprintf("Envoy refused listener mqtt: cannot bind '0.0.0.0:%d'", port); !strings.Contains(out, want) {
		t.Errorf("run's error does not say %q:\n%s", want, out)
	}
}

// runPorts is where the run tests' ports start: brokers on runPorts to +2
// (their cluster links 10,000 above), the API on +49, MQTT on +52. All are
// below Linux's ephemeral range (32768 up), so no outgoing connection can
// hold one between choosing it and binding it. run's xDS, admin and DNS
// ports are its own fixed ones.
const runPorts = 21831

// runProcess is `mqtt-sticky run` as a child process.
type runProcess struct {
	cmd     *exec.Cmd
	out     lockedBuffer
	exited  chan struct{}
	waitErr error // set once exited is closed
}

func (r *runProcess) hasExited() bool {
	select {
	case <-r.exited:
		return true
	default:
		return false
	}
}

// startRun starts `mqtt-sticky run` with this checkout's Envoy, module and
// bootstrap, no API token, and args; the test's end kills it.
func startRun(t *testing.T, args ...string) *runProcess {
	t.Helper()
	root, err := envoyproc.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	args = append([]string{"run", "--broker-port", fmt.Sprint(runPorts), "--envoy", envoyBinary(t),
		"--module-dir", moduleDir, "--bootstrap", filepath.Join(root, "envoy", "bootstrap.yaml")}, args...)
	r := &runProcess{cmd: exec.Command(cliPath, args...), exited: make(chan struct{})}
	r.cmd.Env = append(os.Environ(), api.TokenEnv+"=")
	r.cmd.Stdout, r.cmd.Stderr = &r.out, &r.out
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { r.waitErr = r.cmd.Wait(); close(r.exited) }()
	t.Cleanup(func() {
		r.cmd.Process.Kill()
		<-r.exited
	})
	return r
}

// connectThrough connects n MQTT 3.1.1 clients through addr, each until
// its CONNACK.
func connectThrough(t *testing.T, addr, prefix string, n int) {
	t.Helper()
	for i := range n {
		if _, err := connectPaho(context.Background(), addr, net.IPv4(127, 0, 0, byte(2+i)), fmt.Sprintf("%s-%d", prefix, i), 4); err != nil {
			t.Fatal(err)
		}
	}
}

// lockedBuffer is a bytes.Buffer a child process writes while the test
// reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
