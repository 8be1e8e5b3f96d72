package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/mqtt-sticky/mqtt-sticky/api"
	"github.com/mqtt-sticky/mqtt-sticky/internal/broker"
	"github.com/mqtt-sticky/mqtt-sticky/internal/etcdproc"
	"github.com/mqtt-sticky/mqtt-sticky/xds/store"
)

// startEtcd starts an etcd cluster of n members (Debian's etcd-server) on
// free ports of 127.0.0.1. A missing etcd fails the test.
func startEtcd(t *testing.T, n int) *etcdproc.Cluster {
	t.Helper()
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := etcdproc.StartCluster(ctx, dir, n)
	if err != nil {
		t.Fatalf("etcd: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, m := range c.Members {
				log, _ := os.ReadFile(m.LogPath)
				t.Logf("%s log, warnings and errors:\n%s", m.Name, lastLines(grepLines(string(log), `"level":"warn"`, `"level":"error"`), 10))
			}
		}
		c.Stop()
	})
	return c
}

// startReplica runs `mqtt-sticky serve --store etcd` as replica name.
func startReplica(t *testing.T, configPath, name string, etcd *etcdproc.Cluster) *controlPlane {
	t.Helper()
	cp := &controlPlane{
		name:       name,
		configPath: configPath,
		xdsAddr:    fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		apiAddr:    fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		storeArgs:  []string{"--store", "etcd", "--etcd-endpoints", strings.Join(etcd.Endpoints(), ","), "--replica-name", name},
	}
	cp.start(t)
	t.Cleanup(func() { cp.stop(t) })
	return cp
}

// replicaFleet is the topology of issue 11: a three-member etcd cluster,
// two control-plane replicas sharing it, and two Envoys (one state of the
// world, one delta) each bootstrapped with both replicas, in front of
// brokers that require PROXY protocol. The Envoys share the listener
// (SO_REUSEPORT): the kernel spreads connections over both, and their
// access logs say which served what.
type replicaFleet struct {
	etcd     *etcdproc.Cluster
	replicas []*controlPlane // replica-a, replica-b
	envoys   []*xdsEnvoy     // envoy-sotw, envoy-delta
	brokers  []*broker.Broker
	addr     string // the Envoys' MQTT listener
}

// startReplicaFleet starts the fleet with the first three of nBrokers
// brokers in the config file; the others are there to be added.
func startReplicaFleet(t *testing.T, nBrokers int, withEnvoys bool) *replicaFleet {
	t.Helper()
	f := &replicaFleet{brokers: startBrokers(t, nBrokers)}
	listenPort := freePort(t)
	f.addr = fmt.Sprintf("127.0.0.1:%d", listenPort)
	cfg := fleetConfig(t, listenPort, f.brokers[:3], healthOpts)
	f.etcd = startEtcd(t, 3)
	f.replicas = []*controlPlane{startReplica(t, cfg, "replica-a", f.etcd), startReplica(t, cfg, "replica-b", f.etcd)}
	if !withEnvoys {
		return f
	}
	a, b := f.replicas[0], f.replicas[1]
	f.envoys = []*xdsEnvoy{startXDSEnvoyTo(t, "envoy-sotw", false, a, b), startXDSEnvoyTo(t, "envoy-delta", true, b, a)}
	f.waitServed(t, a, f.brokers[:3])
	return f
}

// waitServed waits until every Envoy serves cp's version with exactly
// the wanted healthy brokers.
func (f *replicaFleet) waitServed(t *testing.T, cp *controlPlane, want []*broker.Broker) {
	t.Helper()
	for _, e := range f.envoys {
		e.waitHosts(t, cp, want, 20*time.Second)
	}
}

// connectedTo returns the replica the Envoy's ADS stream is on: the one
// whose own view (not the board) lists the node as connected.
func (f *replicaFleet) connectedTo(t *testing.T, e *xdsEnvoy, among []*controlPlane, within time.Duration) (*controlPlane, time.Duration) {
	t.Helper()
	start := time.Now()
	for {
		for _, cp := range among {
			st, err := cp.client.Status(context.Background())
			if err != nil {
				continue
			}
			for _, n := range st.Nodes {
				if n.ID == e.nodeID && n.Replica == cp.name && n.Connected {
					return cp, time.Since(start)
				}
			}
		}
		if time.Since(start) > within {
			t.Fatalf("%s is not connected to any of the replicas after %v", e.nodeID, within)
		}
		time.Sleep(2 * time.Millisecond) // polling interval of a readiness check
	}
}

// accessMarks are how many access-log lines each Envoy had written.
type accessMarks []int

func (f *replicaFleet) marks(t *testing.T) accessMarks {
	var m accessMarks
	for _, e := range f.envoys {
		m = append(m, len(accessLogLines(t, e.log)))
	}
	return m
}

// checkEnvoysAgree checks every connection logged since marks: each Envoy
// sent each client ID to the broker want names, and each served a fair
// share, so the comparison covers both. n is the number of connections
// made since marks; it waits until both logs hold that many.
func (f *replicaFleet) checkEnvoysAgree(t *testing.T, marks accessMarks, want map[string]string, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var lines [][]accessLine
		total := 0
		for i, e := range f.envoys {
			l := accessLogLines(t, e.log)[marks[i]:]
			lines, total = append(lines, l), total+len(l)
		}
		if total < n {
			if time.Now().After(deadline) {
				t.Fatalf("the access logs hold %d of %d connections", total, n)
			}
			time.Sleep(20 * time.Millisecond) // polling interval of a readiness check
			continue
		}
		for i, e := range f.envoys {
			for _, l := range lines[i] {
				if got := brokerByAddr(f.brokers, l.Broker); got != want[l.ClientID] {
					t.Errorf("%s sent %s to %s; it belongs on %s", e.nodeID, l.ClientID, got, want[l.ClientID])
				}
			}
			if len(lines[i]) < n/5 {
				t.Errorf("%s served %d of %d connections: the kernel did not spread them, the comparison proves little", e.nodeID, len(lines[i]), n)
			}
		}
		return
	}
}

// versions returns the Envoy's *.version_text stats: the xDS version each
// subscription last accepted.
func (e *xdsEnvoy) versions(t *testing.T) map[string]string {
	t.Helper()
	code, body, err := e.Get(context.Background(), "/stats?filter=version_text")
	if err != nil || code != 200 {
		t.Fatalf("GET /stats: %d %v", code, err)
	}
	out := map[string]string{}
	for _, line := range strings.Split(body, "\n") {
		if k, v, ok := strings.Cut(line, ": "); ok {
			out[k] = strings.Trim(v, `"`)
		}
	}
	return out
}

// hostSet returns the addresses of cluster "brokers", healthy or not.
func (e *xdsEnvoy) hostSet(t *testing.T) []string {
	var out []string
	for _, h := range e.hosts(t) {
		out = append(out, h.Address)
	}
	sort.Strings(out)
	return out
}

// waitHostSet waits until the Envoy's cluster "brokers" has exactly the
// given hosts (health aside: a new host is listed at once and probed), and
// returns how long that took.
func (e *xdsEnvoy) waitHostSet(t *testing.T, want []*broker.Broker, within time.Duration) time.Duration {
	t.Helper()
	var addrs []string
	for _, b := range want {
		addrs = append(addrs, b.Addr())
	}
	sort.Strings(addrs)
	start := time.Now()
	for {
		got := e.hostSet(t)
		if slices.Equal(got, addrs) {
			return time.Since(start)
		}
		if time.Since(start) > within {
			t.Fatalf("%s: hosts %v after %v, want %v", e.nodeID, got, within, addrs)
		}
		time.Sleep(time.Millisecond) // polling interval of a measurement
	}
}

// sameMapping reports the client IDs whose broker differs.
func sameMapping(t *testing.T, what string, before, after map[string]string) {
	t.Helper()
	moved := 0
	for _, id := range slices.Sorted(maps.Keys(before)) {
		if after[id] != before[id] {
			if moved < 5 {
				t.Errorf("%s: %s moved from %s to %s", what, id, before[id], after[id])
			}
			moved++
		}
	}
	if moved > 0 {
		t.Errorf("%s: %d of %d client IDs moved", what, moved, len(before))
	}
}

// percentile returns the p-th percentile (0-100) of ds.
func percentile(ds []time.Duration, p int) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[(len(s)-1)*p/100]
}

// waitStatus polls the replica's /v1/status until check returns "".
func waitStatus(t *testing.T, cp *controlPlane, check func(*api.Status) string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		st, err := cp.client.Status(context.Background())
		why := fmt.Sprint(err)
		if err == nil {
			if why = check(st); why == "" {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s /v1/status: %s", cp.name, why)
		}
		time.Sleep(20 * time.Millisecond) // polling interval of a readiness check
	}
}

// hasNode says whether st lists the node as connected to replica.
func hasNode(st *api.Status, id, replica string) bool {
	for _, n := range st.Nodes {
		if n.ID == id && n.Replica == replica && n.Connected {
			return true
		}
	}
	return false
}

// waitHealthz polls the replica's /healthz until its status is want.
func waitHealthz(t *testing.T, cp *controlPlane, want string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		h, err := cp.client.Health(context.Background())
		if err == nil && h.Status == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s /healthz: %+v %v, want %s", cp.name, h, err, want)
		}
		time.Sleep(20 * time.Millisecond) // polling interval of a readiness check
	}
}

// clientVersion is the version the control plane serves.
func (cp *controlPlane) clientVersion(t *testing.T) uint64 {
	t.Helper()
	h, err := cp.client.Health(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return h.Version
}

// storeShow reads the state etcd holds, with `mqtt-sticky store show`.
func storeShow(t *testing.T, f *replicaFleet) store.State {
	t.Helper()
	out, err := exec.Command(cliPath, "store", "show", "--from", "etcd:"+strings.Join(f.etcd.Endpoints(), ",")).Output()
	if err != nil {
		t.Fatalf("store show: %v\n%s", err, out)
	}
	var st store.State
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("store show: %v\n%s", err, out)
	}
	return st
}

// grepLines returns the lines of s that contain any of subs.
func grepLines(s string, subs ...string) string {
	var out []string
	for _, line := range strings.Split(s, "\n") {
		for _, sub := range subs {
			if strings.Contains(line, sub) {
				out = append(out, line)
				break
			}
		}
	}
	return strings.Join(out, "\n")
}
