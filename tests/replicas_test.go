package tests

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/mqtt-sticky/mqtt-sticky/api"
	"github.com/mqtt-sticky/mqtt-sticky/internal/etcdproc"
	"github.com/mqtt-sticky/mqtt-sticky/xds/control"
	"github.com/mqtt-sticky/mqtt-sticky/xds/model"
)

// A change made through replica A reaches both Envoys, whichever replica
// each is connected to, and both Envoys map 1,000 client IDs the same
// before and after. Every replica's /v1/status lists both Envoys. Then 50
// changes through one replica are timed until an Envoy connected to the
// other serves them.
func TestReplicasShareOneTruth(t *testing.T) {
	f := startReplicaFleet(t, 4, true)
	a, b := f.replicas[0], f.replicas[1]
	ctx := context.Background()

	// Fleet-wide status: each replica lists both nodes, each with the
	// replica it is connected to.
	onReplica := map[string]*controlPlane{}
	for _, e := range f.envoys {
		cp, _ := f.connectedTo(t, e, f.replicas, 10*time.Second)
		onReplica[e.nodeID] = cp
		t.Logf("%s is connected to %s", e.nodeID, cp.name)
	}
	for _, cp := range f.replicas {
		waitStatus(t, cp, func(st *api.Status) string {
			for _, e := range f.envoys {
				if !hasNode(st, e.nodeID, onReplica[e.nodeID].name) {
					return fmt.Sprintf("%s not listed as connected to %s", e.nodeID, onReplica[e.nodeID].name)
				}
			}
			return ""
		})
	}

	ids := clientIDs(1000, "replicas")
	marks := f.marks(t)
	before := connectAll(t, f.addr, f.brokers, ids, 0)
	f.checkEnvoysAgree(t, marks, before, len(ids))

	if _, err := a.client.AddEndpoint(ctx, "brokers", toAPI(f.brokers[3])[0], control.AnyVersion); err != nil {
		t.Fatal(err)
	}
	f.waitServed(t, a, f.brokers)
	for _, cp := range f.replicas {
		if eps, err := cp.client.Endpoints(ctx, "brokers"); err != nil || len(eps.Endpoints) != 4 || eps.Version != 2 {
			t.Errorf("%s after the change: %+v, %v", cp.name, eps, err)
		}
	}
	marks = f.marks(t)
	after := connectAll(t, f.addr, f.brokers, ids, 1)
	f.checkEnvoysAgree(t, marks, after, len(ids))
	moved := 0
	for _, id := range ids {
		if after[id] != before[id] {
			moved++
			if after[id] != f.brokers[3].Name() {
				t.Errorf("%s moved from %s to %s, not to the new broker", id, before[id], after[id])
			}
		}
	}
	t.Logf("adding a fourth broker moved %d of %d client IDs", moved, len(ids))

	// Update to served, through the replica the Envoy is not connected to.
	e := f.envoys[0]
	writer := a
	if onReplica[e.nodeID] == a {
		writer = b
	}
	var took, wrote []time.Duration
	for i := range 50 {
		want := f.brokers
		start := time.Now()
		var err error
		if i%2 == 0 {
			want = f.brokers[:3]
			_, err = writer.client.RemoveEndpoint(ctx, "brokers", toAPI(f.brokers[3])[0], control.AnyVersion)
		} else {
			_, err = writer.client.AddEndpoint(ctx, "brokers", toAPI(f.brokers[3])[0], control.AnyVersion)
		}
		if err != nil {
			t.Fatal(err)
		}
		wrote = append(wrote, time.Since(start))
		e.waitHostSet(t, want, 10*time.Second)
		took = append(took, time.Since(start))
	}
	t.Logf("update to served (%d changes through %s, served by %s connected to %s): median %v, max %v; "+
		"the API answered (the change stored in etcd) after median %v, max %v",
		len(took), writer.name, e.nodeID, onReplica[e.nodeID].name, percentile(took, 50), percentile(took, 100),
		percentile(wrote, 50), percentile(wrote, 100))
	if v := a.clientVersion(t); v != b.clientVersion(t) || v != 52 {
		t.Errorf("replicas serve versions %d and %d, want 52", a.clientVersion(t), b.clientVersion(t))
	}
}

// Two conflicting writes through A and B at the same moment: exactly one
// wins and the other gets 409; nothing is lost (every change that was
// acknowledged is stored, and nothing else), and both replicas serve what
// etcd holds.
func TestReplicasConflictingWrites(t *testing.T) {
	f := startReplicaFleet(t, 3, false)
	a, b := f.replicas[0], f.replicas[1]
	ctx := context.Background()
	ep := func(round, i int) model.Endpoint {
		return model.Endpoint{Address: fmt.Sprintf("%s.%d", brokerNet(), 100+round), Port: 20000 + i, Weight: 1}
	}
	// both runs one change on each replica, released together.
	both := func(change func(cp *controlPlane, i int) error) [2]error {
		var errs [2]error
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i, cp := range []*controlPlane{a, b} {
			wg.Go(func() {
				<-start
				errs[i] = change(cp, i)
			})
		}
		close(start)
		wg.Wait()
		return errs
	}
	want := map[string]bool{} // endpoints acknowledged
	for _, e := range f.brokers {
		want[e.Addr()] = true
	}
	stale := 0
	for round := range 20 {
		// The same endpoint through both: one adds it, the other is told
		// it conflicts, whether it lost the race in etcd (stale) or came
		// second (already there).
		same := ep(round, 0)
		errs := both(func(cp *controlPlane, _ int) error {
			_, err := cp.client.AddEndpoint(ctx, "brokers", same, control.AnyVersion)
			return err
		})
		if wins := winners(t, errs); wins != 1 {
			t.Fatalf("round %d, same endpoint: %d winners (%v)", round, wins, errs)
		}
		want[same.Key()] = true
		stale += staleConflicts(errs)

		// Different endpoints through each: a change refused with 409 is
		// not stored, one acknowledged is, whichever came first.
		errs = both(func(cp *controlPlane, i int) error {
			_, err := cp.client.AddEndpoint(ctx, "brokers", ep(round, i+1), control.AnyVersion)
			return err
		})
		for i, err := range errs {
			if err == nil {
				want[ep(round, i+1).Key()] = true
			}
		}
		if winners(t, errs) == 0 {
			t.Fatalf("round %d, different endpoints: no winner (%v)", round, errs)
		}
		stale += staleConflicts(errs)
	}
	t.Logf("%d of 40 races were decided by etcd's compare-and-swap (the rest were serialised before it)", stale)

	// Both replicas and etcd hold exactly the acknowledged changes.
	stored := storeShow(t, f)
	for _, cp := range f.replicas {
		waitStatus(t, cp, func(st *api.Status) string {
			if st.Version != stored.Version {
				return fmt.Sprintf("serving version %d, etcd holds %d", st.Version, stored.Version)
			}
			return ""
		})
		eps, err := cp.client.Endpoints(ctx, "brokers")
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]bool{}
		for _, e := range eps.Endpoints {
			got[e.Key()] = true
		}
		if len(got) != len(want) {
			t.Errorf("%s serves %d endpoints, %d were acknowledged", cp.name, len(got), len(want))
		}
		for k := range want {
			if !got[k] {
				t.Errorf("%s lost the acknowledged endpoint %s", cp.name, k)
			}
		}
	}
	if len(stored.Clusters["brokers"]) != len(want) {
		t.Errorf("etcd holds %d endpoints, %d were acknowledged", len(stored.Clusters["brokers"]), len(want))
	}
}

func winners(t *testing.T, errs [2]error) int {
	t.Helper()
	n := 0
	for _, err := range errs {
		var apiErr *api.APIError
		switch {
		case err == nil:
			n++
		case errors.As(err, &apiErr) && apiErr.Status == http.StatusConflict:
		default:
			t.Fatalf("a write failed other than with 409: %v", err)
		}
	}
	return n
}

func staleConflicts(errs [2]error) int {
	n := 0
	for _, err := range errs {
		if err != nil && strings.Contains(err.Error(), "another writer") {
			n++
		}
	}
	return n
}

// Killing the replica an Envoy is connected to: the Envoy reconnects to
// the other within a second or two, keeps the version it acknowledged (no
// cluster, listener or endpoint set is modified), and no client ID moves. Round 1 kills the replica of the SotW Envoy;
// round 2 brings it back and kills the other, which by then serves both
// Envoys. Changes through the survivor keep flowing, and the dead
// replica's entries leave /v1/status when its lease expires.
func TestReplicaFailover(t *testing.T) {
	f := startReplicaFleet(t, 3, true)
	ctx := context.Background()
	ids := clientIDs(1000, "failover")
	before := connectAll(t, f.addr, f.brokers, ids, 0)
	other := func(cp *controlPlane) *controlPlane {
		if cp == f.replicas[0] {
			return f.replicas[1]
		}
		return f.replicas[0]
	}
	var victim, survivor *controlPlane
	for round, e := range f.envoys {
		if victim != nil {
			victim.start(t) // the last round's victim, back on its addresses
		}
		victim, _ = f.connectedTo(t, e, f.replicas, 10*time.Second)
		survivor = other(victim)
		var moving []*xdsEnvoy
		was := map[string]envoyState{}
		for _, x := range f.envoys {
			if cp, _ := f.connectedTo(t, x, f.replicas, 10*time.Second); cp == victim {
				moving = append(moving, x)
				was[x.nodeID] = stateOf(t, x)
			}
		}
		version := fmt.Sprint(survivor.clientVersion(t))

		victim.kill(t)
		for _, x := range moving {
			_, took := f.connectedTo(t, x, []*controlPlane{survivor}, 15*time.Second)
			t.Logf("round %d: %s connected to %s %v after %s was killed", round+1, x.nodeID, survivor.name, took, victim.name)
		}
		for _, x := range moving {
			now := stateOf(t, x)
			if diff := cmp.Diff(was[x.nodeID], now); diff != "" {
				t.Errorf("round %d: %s changed state on failover (-before +after):\n%s", round+1, x.nodeID, diff)
			}
			if v := now.Versions["cluster_manager.cds.version_text"]; v != version {
				t.Errorf("round %d: %s runs version %q, want %q", round+1, x.nodeID, v, version)
			}
			if x.delta {
				continue // a delta request names resource versions, not the version
			}
			waitStatus(t, survivor, func(st *api.Status) string {
				for _, n := range st.Nodes {
					if n.ID == x.nodeID && (n.Resources["clusters"].AckedVersion != version || n.Resources["endpoints"].AckedVersion != version) {
						return fmt.Sprintf("%s acknowledged %+v, want version %s", n.ID, n.Resources, version)
					}
				}
				return ""
			})
		}
		during := connectAll(t, f.addr, f.brokers, ids, round+1)
		sameMapping(t, fmt.Sprintf("round %d, after failover", round+1), before, during)
	}

	// Changes through the survivor reach both Envoys.
	if _, err := survivor.client.RemoveEndpoint(ctx, "brokers", toAPI(f.brokers[2])[0], control.AnyVersion); err != nil {
		t.Fatal(err)
	}
	f.waitServed(t, survivor, f.brokers[:2])
	after := connectAll(t, f.addr, f.brokers[:2], ids, 3)
	for _, id := range ids {
		if before[id] != f.brokers[2].Name() && after[id] != before[id] {
			t.Errorf("%s moved from %s to %s although its broker stayed", id, before[id], after[id])
		}
	}

	// The dead replica's entries expire with its lease.
	waitStatus(t, survivor, func(st *api.Status) string {
		for _, n := range st.Nodes {
			if n.Replica == victim.name {
				return fmt.Sprintf("%s still listed on the dead %s", n.ID, victim.name)
			}
		}
		return ""
	})
}

// envoyState is what an Envoy must keep across a failover: the versions
// it accepted, and counters that move when it applies anything new. The
// replica it moves to sends a state-of-the-world Envoy the same resources
// again under the same version, and a delta Envoy (which names the
// versions it has) an update of its wildcard listeners and clusters with
// nothing new in it: Envoy counts these as updates, and applies nothing.
type envoyState struct {
	Versions map[string]string
	Counters map[string]int64
}

func stateOf(t *testing.T, x *xdsEnvoy) envoyState {
	t.Helper()
	c, err := x.Stats(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	names := []string{"cluster_manager.cluster_modified", "cluster_manager.cluster_added", "listener_manager.listener_modified",
		"listener_manager.listener_in_place_updated", "listener_manager.listener_added", "cluster.brokers.membership_change",
		"cluster_manager.cds.update_rejected", "listener_manager.lds.update_rejected", "cluster.brokers.update_rejected"}
	keep := map[string]int64{}
	for _, k := range names {
		keep[k] = c[k]
	}
	return envoyState{Versions: x.versions(t), Counters: keep}
}

// One etcd member down (the leader, the harder case): writes succeed.
// Two down: writes fail with 503 and say why, /healthz says degraded,
// and Envoy keeps serving the last version. Both back: writes resume,
// and the replicas converge on what etcd holds.
func TestEtcdQuorumLoss(t *testing.T) {
	f := startReplicaFleet(t, 4, true)
	a, b := f.replicas[0], f.replicas[1]
	ctx := context.Background()
	ids := clientIDs(500, "quorum")
	before := connectAll(t, f.addr, f.brokers[:3], ids, 0)

	leader, err := f.etcd.Leader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	leader.Kill()
	if _, err := a.client.AddEndpoint(ctx, "brokers", toAPI(f.brokers[3])[0], control.AnyVersion); err != nil {
		t.Fatalf("write with the etcd leader %s down: %v", leader.Name, err)
	}
	f.waitServed(t, b, f.brokers)
	if _, err := b.client.RemoveEndpoint(ctx, "brokers", toAPI(f.brokers[3])[0], control.AnyVersion); err != nil {
		t.Fatalf("write through B with one etcd member down: %v", err)
	}
	f.waitServed(t, a, f.brokers[:3])
	served := a.clientVersion(t)

	var second *etcdproc.Member
	for _, m := range f.etcd.Members {
		if m.Running() {
			second = m
			break
		}
	}
	second.Kill()
	for _, cp := range f.replicas {
		waitHealthz(t, cp, "degraded")
	}
	start := time.Now()
	_, err = a.client.AddEndpoint(ctx, "brokers", toAPI(f.brokers[3])[0], control.AnyVersion)
	var apiErr *api.APIError
	if !errors.As(err, &apiErr) || apiErr.Status != http.StatusServiceUnavailable || !strings.Contains(apiErr.Message, "etcd") {
		t.Fatalf("write without an etcd quorum: %v", err)
	}
	t.Logf("write without a quorum refused after %v: %s", time.Since(start), apiErr.Message)
	h, _ := b.client.Health(ctx)
	t.Logf("/healthz on %s: %+v", b.name, h)
	// Serving continues: the Envoys keep the last version and route as
	// before; /v1/status still answers.
	for _, cp := range f.replicas {
		if v := cp.clientVersion(t); v != served {
			t.Errorf("%s serves version %d during the outage, want %d", cp.name, v, served)
		}
	}
	during := connectAll(t, f.addr, f.brokers[:3], ids, 1)
	sameMapping(t, "without an etcd quorum", before, during)

	// Bring both back.
	for _, m := range []*etcdproc.Member{leader, second} {
		if err := m.Start(); err != nil {
			t.Fatal(err)
		}
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := f.etcd.WaitHealthy(wctx); err != nil {
		t.Fatal(err)
	}
	for _, cp := range f.replicas {
		waitHealthz(t, cp, "ok")
	}
	// The refused write may have reached etcd before the quorum went, and
	// be applied now: the replicas serve whatever etcd holds, together.
	stored := storeShow(t, f)
	for _, cp := range f.replicas {
		waitStatus(t, cp, func(st *api.Status) string {
			if st.Version != stored.Version {
				return fmt.Sprintf("serving %d, etcd holds %d", st.Version, stored.Version)
			}
			return ""
		})
	}
	t.Logf("after the outage etcd holds version %d (%d before it; the refused write was %s)", stored.Version, served,
		map[bool]string{true: "applied when the quorum returned", false: "not applied"}[stored.Version > served])
	// Writes resume, through either replica: broker 4 goes in (or out,
	// if the refused write was applied) through B, and back through A.
	has4 := slices.ContainsFunc(stored.Clusters["brokers"], func(e model.Endpoint) bool { return e.Key() == f.brokers[3].Addr() })
	for i, cp := range []*controlPlane{b, a} {
		var err error
		want := f.brokers
		if has4 {
			_, err = cp.client.RemoveEndpoint(ctx, "brokers", toAPI(f.brokers[3])[0], control.AnyVersion)
			want = f.brokers[:3]
		} else {
			_, err = cp.client.AddEndpoint(ctx, "brokers", toAPI(f.brokers[3])[0], control.AnyVersion)
		}
		if err != nil {
			t.Fatalf("write %d through %s after the quorum returned: %v", i+1, cp.name, err)
		}
		has4 = !has4
		f.waitServed(t, a, want)
		if a.clientVersion(t) != b.clientVersion(t) {
			t.Errorf("replicas serve %d and %d", a.clientVersion(t), b.clientVersion(t))
		}
	}
	if !has4 {
		after := connectAll(t, f.addr, f.brokers[:3], ids, 2)
		sameMapping(t, "after the quorum returned", before, after)
	}
}

// Everything stopped and started again from etcd's data directories (etcd
// members, replicas, Envoys): the same version, the same mapping.
func TestRestartEverythingFromEtcd(t *testing.T) {
	f := startReplicaFleet(t, 3, true)
	ctx := context.Background()
	if _, err := f.replicas[1].client.RemoveEndpoint(ctx, "brokers", toAPI(f.brokers[2])[0], control.AnyVersion); err != nil {
		t.Fatal(err)
	}
	f.waitServed(t, f.replicas[0], f.brokers[:2])
	version := f.replicas[0].clientVersion(t)
	ids := clientIDs(1000, "restart-all")
	before := connectAll(t, f.addr, f.brokers, ids, 0)

	for _, e := range f.envoys {
		if err := e.Stop(10 * time.Second); err != nil {
			t.Fatal(err)
		}
	}
	for _, cp := range f.replicas {
		cp.stop(t)
	}
	f.etcd.Stop()

	for _, m := range f.etcd.Members {
		if err := m.Start(); err != nil {
			t.Fatal(err)
		}
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := f.etcd.WaitHealthy(wctx); err != nil {
		t.Fatal(err)
	}
	for _, cp := range f.replicas {
		cp.start(t)
		if v := cp.clientVersion(t); v != version {
			t.Errorf("%s restarted at version %d, want %d", cp.name, v, version)
		}
	}
	a, b := f.replicas[0], f.replicas[1]
	f.envoys = []*xdsEnvoy{startXDSEnvoyTo(t, "envoy-sotw", false, a, b), startXDSEnvoyTo(t, "envoy-delta", true, b, a)}
	f.waitServed(t, a, f.brokers[:2])
	for _, e := range f.envoys {
		if v := e.versions(t)["cluster_manager.cds.version_text"]; v != fmt.Sprint(version) {
			t.Errorf("%s accepted version %q, want %d", e.nodeID, v, version)
		}
	}
	after := connectAll(t, f.addr, f.brokers, ids, 1)
	sameMapping(t, "after restarting everything", before, after)
}

// A single control plane's state file moves into etcd with `mqtt-sticky
// store copy`, keeping its version, so replicas started on etcd serve
// what it served; the copy refuses to overwrite, and goes back to a file.
func TestStoreCopyBetweenFileAndEtcd(t *testing.T) {
	brokers := startBrokers(t, 3)
	listenPort := freePort(t)
	cfg := fleetConfig(t, listenPort, brokers, healthOpts)
	dir := t.TempDir()
	statePath := filepath.Join(dir, "state.json")
	single := startControlPlane(t, cfg, statePath)
	ctx := context.Background()
	if _, err := single.client.RemoveEndpoint(ctx, "brokers", toAPI(brokers[2])[0], control.AnyVersion); err != nil {
		t.Fatal(err)
	}
	e := model.Endpoint{Address: brokers[2].Addr()[:strings.LastIndex(brokers[2].Addr(), ":")], Port: 18831, Weight: 3}
	if _, err := single.client.AddEndpoint(ctx, "brokers", e, control.AnyVersion); err != nil {
		t.Fatal(err)
	}
	want, err := single.client.Endpoints(ctx, "brokers")
	if err != nil {
		t.Fatal(err)
	}
	single.stop(t)

	etcd := startEtcd(t, 1)
	to := "etcd:" + strings.Join(etcd.Endpoints(), ",")
	if out, code := runStoreCLI(t, "copy", "--from", "file:"+statePath, "--to", to); code != 0 || !strings.Contains(out, fmt.Sprintf("copied version %d", want.Version)) {
		t.Fatalf("store copy: exit %d\n%s", code, out)
	}
	if out, code := runStoreCLI(t, "copy", "--from", "file:"+statePath, "--to", to); code != 2 || !strings.Contains(out, "refusing to overwrite") {
		t.Errorf("second copy without --force: exit %d\n%s", code, out)
	}
	replica := startReplica(t, cfg, "replica-a", etcd)
	got, err := replica.client.Endpoints(ctx, "brokers")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("the replica serves (-single +replica):\n%s", diff)
	}

	back := filepath.Join(dir, "back.json")
	if out, code := runStoreCLI(t, "copy", "--from", to, "--to", "file:"+back); code != 0 {
		t.Fatalf("copy back: exit %d\n%s", code, out)
	}
	again := startControlPlane(t, cfg, back)
	if got, err := again.client.Endpoints(ctx, "brokers"); err != nil || cmp.Diff(want, got) != "" {
		t.Errorf("copied back: %+v, %v; want %+v", got, err, want)
	}
}

func runStoreCLI(t *testing.T, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(cliPath, append([]string{"store"}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), cmd.ProcessState.ExitCode()
	}
	return string(out), 0
}
