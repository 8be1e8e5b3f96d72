package tests

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mqtt-sticky/mqtt-sticky/bench/loadgen"
	"github.com/mqtt-sticky/mqtt-sticky/filter/mqtt"
	"github.com/mqtt-sticky/mqtt-sticky/internal/envoyproc"
	"github.com/mqtt-sticky/mqtt-sticky/internal/procstat"
)

// Hot restart timings of this test: the parent stops accepting at once,
// drains for hotDrain, and exits at hotParentShutdown.
const (
	hotDrain          = 2 * time.Second
	hotParentShutdown = 6 * time.Second
)

// Envoy's hot restart with the module loaded in both processes: a new
// Envoy (epoch 1) takes over the listen sockets of the running one (epoch
// 0), which keeps its connections until --parent-shutdown-time-s and then
// exits. New connections go to the new process. Each process runs its own
// Go runtime: the old one still completes a CONNECT that was half sent
// before the restart, the new one routes new clients.
func TestHotRestart(t *testing.T) {
	brokers := startBrokers(t, 3)
	path, listenPort, adminPort := renderStatic(t, brokers, "")
	dir := t.TempDir()
	addr := fmt.Sprintf("127.0.0.1:%d", listenPort)
	epoch := func(n int) *envoyproc.Process {
		opts := envoyproc.Options{
			Binary:     envoyBinary(t),
			ConfigPath: path,
			AdminAddr:  fmt.Sprintf("127.0.0.1:%d", adminPort),
			LogPath:    filepath.Join(dir, fmt.Sprintf("envoy-%d.log", n)),
			ModuleDir:  moduleDir,
			HotRestart: &envoyproc.HotRestart{Epoch: n, BaseIDPath: filepath.Join(dir, "base-id")},
			LogLevel:   os.Getenv("MQTT_STICKY_TEST_ENVOY_LOG_LEVEL"),
			ExtraArgs: []string{"--concurrency", "2", "--drain-time-s", strconv.Itoa(int(hotDrain.Seconds())),
				"--parent-shutdown-time-s", strconv.Itoa(int(hotParentShutdown.Seconds()))},
		}
		p, err := envoyproc.Start(opts)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			p.Stop(10 * time.Second)
			if t.Failed() {
				t.Logf("epoch %d log:\n%s", n, p.LogTail(40))
			}
		})
		// The admin address passes to the new epoch with the listeners:
		// ready means the new process answers there.
		waitFor(t, 30*time.Second, fmt.Sprintf("epoch %d answers on the admin address", n), func() bool {
			select {
			case <-p.Exited():
				t.Fatalf("epoch %d exited:\n%s", n, p.LogTail(40))
			default:
			}
			code, body, err := p.Get(context.Background(), "/ready")
			return err == nil && code == 200 && strings.TrimSpace(body) == "LIVE" && restartEpoch(t, p) == n
		})
		return p
	}
	parent := epoch(0)
	waitFor(t, 10*time.Second, "brokers healthy", func() bool {
		return envoyStats(t, parent, "cluster.brokers.membership_healthy")["cluster.brokers.membership_healthy"] == 3
	})

	ctx := context.Background()
	old, err := loadgen.Connect(ctx, loadgen.Options{Addr: addr, IDPrefix: "before-restart", KeepAlive: 30 * time.Second}, 30)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(old.Close)
	// Half a CONNECT, held in the parent's Go filter across the restart.
	half, err := dialFrom(ctx, source(7), addr)
	if err != nil {
		t.Fatal(err)
	}
	defer half.Close()
	pkt := rawConnect(mqtt.Level311, "half-sent-before-restart")
	if _, err := half.Write(pkt[:len(pkt)/2]); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the parent holds the half CONNECT", func() bool {
		return filterStats(t, parent)["mqtt_sticky.waiting_for_connect"] == 1
	})

	restarted := time.Now()
	child := epoch(1)
	for _, p := range []*envoyproc.Process{parent, child} {
		if !strings.Contains(p.LogTail(1000), "mqtt_sticky: filter config loaded") {
			t.Errorf("pid %d did not load the module's filter config", p.Pid())
		}
	}

	if n, err := old.Ping(ctx, 5*time.Second); err != nil || n != old.Len() {
		st := old.Status(0)
		t.Fatalf("after the restart, %d of %d old clients answered (%d lost, %d connected): %v; client 0 lost its connection %v after the restart: %v",
			n, old.Len(), old.Lost(), old.Connected(), err, st.LostAt.Sub(restarted), st.LostErr)
	}
	// The old process's Go runtime still works: the half CONNECT completes
	// there and is routed.
	if _, err := half.Write(pkt[len(pkt)/2:]); err != nil {
		t.Fatal(err)
	}
	half.SetReadDeadline(time.Now().Add(5 * time.Second))
	if typ, body, err := readPacket(bufio.NewReader(half)); err != nil || typ != 0x20 || len(body) != 2 || body[1] != 0 {
		t.Fatalf("half CONNECT completed after the restart: %#x % x %v; want an accepting CONNACK", typ, body, err)
	}
	if owner := socketOwner(t, half.LocalAddr().String(), parent.Pid(), child.Pid()); owner != parent.Pid() {
		t.Errorf("the half-sent connection is held by pid %d, want the parent %d", owner, parent.Pid())
	}

	// New clients go to the new process, whose Go runtime routes them.
	fresh, err := loadgen.Connect(ctx, loadgen.Options{Addr: addr, IDPrefix: "after-restart", KeepAlive: 30 * time.Second, Source: func(i int) net.IP { return source(100 + i) }}, 30)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fresh.Close)
	for i := range fresh.Len() {
		if owner := socketOwner(t, fresh.Status(i).Local, parent.Pid(), child.Pid()); owner != child.Pid() {
			t.Fatalf("new client %d is held by pid %d, want the child %d", i, owner, child.Pid())
		}
	}

	// The old connections stay through the drain time, until the parent
	// shuts down; then they close together.
	if n, err := old.Ping(ctx, 5*time.Second); err != nil || n != old.Len() {
		t.Fatalf("after the restart, %d of %d old clients answered (%d lost, %d connected): %v", n, old.Len(), old.Lost(), old.Connected(), err)
	}
	select {
	case <-parent.Exited():
	case <-time.After(hotParentShutdown + 10*time.Second):
		t.Fatalf("the parent did not exit within %v of the restart", hotParentShutdown+10*time.Second)
	}
	exited := time.Since(restarted)
	waitFor(t, 5*time.Second, "the parent's connections close", func() bool { return old.Lost() == int64(old.Len()) })
	var first time.Time
	for i := range old.Len() {
		if at := old.Status(i).LostAt; first.IsZero() || at.Before(first) {
			first = at
		}
	}
	t.Logf("parent exited %v after the restart (drain %v, parent shutdown %v); its first connection closed after %v",
		exited.Round(100*time.Millisecond), hotDrain, hotParentShutdown, first.Sub(restarted).Round(100*time.Millisecond))
	if first.Sub(restarted) < hotDrain {
		t.Errorf("an old connection closed %v after the restart, before the drain time %v", first.Sub(restarted), hotDrain)
	}
	if n, err := fresh.Ping(ctx, 5*time.Second); err != nil || n != fresh.Len() || fresh.Lost() != 0 {
		t.Errorf("after the parent exited, %d of %d new clients answered (%d lost): %v", n, fresh.Len(), fresh.Lost(), err)
	}
	checkFilterCounters(t, filterStats(t, child))
}

// restartEpoch is the --restart-epoch of the Envoy answering on p's admin
// address.
func restartEpoch(t *testing.T, p *envoyproc.Process) int {
	t.Helper()
	code, body, err := p.Get(context.Background(), "/server_info")
	if err != nil || code != 200 {
		return -1 // between the two processes' admin servers
	}
	var info struct {
		CommandLineOptions struct {
			RestartEpoch int `json:"restart_epoch"`
		} `json:"command_line_options"`
	}
	if err := json.Unmarshal([]byte(body), &info); err != nil {
		t.Fatal(err)
	}
	return info.CommandLineOptions.RestartEpoch
}

// socketOwner returns which of pids holds the server side of the TCP
// connection whose client end is clientAddr.
func socketOwner(t *testing.T, clientAddr string, pids ...int) int {
	t.Helper()
	owner, err := procstat.SocketOwner(netip.MustParseAddrPort(clientAddr), pids...)
	if err != nil {
		t.Fatalf("server-side socket for client %s: %v", clientAddr, err)
	}
	return owner
}
