package tests

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A subscriber and a publisher whose client IDs hash to different brokers
// still exchange messages through Envoy, each exactly once: the embedded
// brokers behave as one cluster, like EMQX nodes.
func TestClusterAcrossBrokersThroughEnvoy(t *testing.T) {
	bs := startBrokerSet(t, 3, true)
	s := startStatic(t, bs, "")
	subID, pubID := differentBrokerIDs(t, s, "cluster-sub", "cluster-pub")
	on := landedOn(bs)
	t.Logf("subscriber %s on %s, publisher %s on %s", subID, on[subID], pubID, on[pubID])
	ps := newPubSub(t, s.addr, subID, pubID, "fleet/telemetry")
	if got := landedOn(bs); got[subID] == got[pubID] {
		t.Fatalf("subscriber and publisher share broker %s", got[subID])
	}
	const n = 50
	for i := range n {
		if err := ps.roundTrip(fmt.Sprintf("reading %d", i)); err != nil {
			t.Fatal(err)
		}
	}
	// A last message; anything duplicated would have arrived before it.
	if err := ps.roundTrip("last"); err != nil {
		t.Fatal(err)
	}
	select {
	case extra := <-ps.got:
		t.Fatalf("received %q more than once", extra)
	default:
	}
}

// The same across processes: three `mqtt-sticky broker` processes, linked
// as peers, behind Envoy.
func TestClusterAcrossProcesses(t *testing.T) {
	var peers, logs []string
	for i := range 3 {
		peers = append(peers, peerAddr(i+1))
	}
	dir := t.TempDir()
	var addrs []string
	for i := range 3 {
		addr := brokerAddr(i + 1)
		addrs = append(addrs, addr)
		logPath := filepath.Join(dir, fmt.Sprintf("b%d.log", i+1))
		logs = append(logs, logPath)
		f, err := os.Create(logPath)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(cliPath, "broker", "--listen", addr, "--name", fmt.Sprintf("b%d", i+1),
			"--cluster-listen", peers[i], "--peers", strings.Join(peers, ","))
		cmd.Stdout, cmd.Stderr = f, f
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		f.Close()
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	}
	waitLog := func(path, needle string, count int) {
		deadline := time.Now().Add(15 * time.Second)
		for {
			data, _ := os.ReadFile(path)
			if strings.Count(string(data), needle) >= count {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %q seen %d times, want %d:\n%s", path, needle, strings.Count(string(data), needle), count, data)
			}
			time.Sleep(10 * time.Millisecond) // polling interval of a readiness check
		}
	}
	for _, l := range logs {
		waitLog(l, "peer link up", 2) // ready: linked to both other brokers
	}
	s := startStatic(t, nil, "", func(cfg map[string]any) {
		var eps []any
		for _, a := range addrs {
			host, port := splitHostPort(t, a)
			eps = append(eps, map[string]any{"endpoint": map[string]any{"address": map[string]any{
				"socket_address": map[string]any{"address": host, "port_value": port}}}})
		}
		set(t, cfg, eps, "static_resources", "clusters", 0, "load_assignment", "endpoints", 0, "lb_endpoints")
	})
	// Which broker a client reached: from the brokers' own logs.
	brokerOf := func(id string) string {
		for i, l := range logs {
			f, _ := os.Open(l)
			sc := bufio.NewScanner(f)
			for sc.Scan() {
				if strings.Contains(sc.Text(), "client_id="+id+" ") {
					f.Close()
					return fmt.Sprintf("b%d", i+1)
				}
			}
			f.Close()
		}
		return ""
	}
	ctx := context.Background()
	var subID, pubID string
	for i := 0; subID == "" || pubID == ""; i++ {
		if i > 200 {
			t.Fatal("could not find two IDs on different brokers")
		}
		id := fmt.Sprintf("proc-%d", i)
		if _, err := connectPaho(ctx, s.addr, source(i), id, 4); err != nil {
			t.Fatal(err)
		}
		switch b := brokerOf(id); {
		case b == "":
			t.Fatalf("no broker logged client %s", id)
		case subID == "":
			subID = id
		case b != brokerOf(subID):
			pubID = id
		}
	}
	ps := newPubSub(t, s.addr, subID, pubID, "proc/topic")
	for i := range 20 {
		if err := ps.roundTrip(fmt.Sprintf("p%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case extra := <-ps.got:
		t.Fatalf("received %q more than once", extra)
	default:
	}
	t.Logf("subscriber %s on %s, publisher %s on %s, in separate processes", subID, brokerOf(subID), pubID, brokerOf(pubID))
}
