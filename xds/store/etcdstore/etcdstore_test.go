package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/mqtt-sticky/mqtt-sticky/internal/etcdproc"
	"github.com/mqtt-sticky/mqtt-sticky/xds/model"
	"github.com/mqtt-sticky/mqtt-sticky/xds/server"
	"github.com/mqtt-sticky/mqtt-sticky/xds/store"
)

var ctx = context.Background()

// shared is a one-member etcd cluster the tests share, each under its own
// key prefix. A missing etcd fails the tests; it never skips them.
var shared *etcdproc.Cluster

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "etcdstore-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	c, cancel := context.WithTimeout(ctx, 30*time.Second)
	shared, err = etcdproc.StartCluster(c, dir, 1)
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "starting etcd:", err)
		os.Exit(1)
	}
	code := m.Run()
	shared.Stop()
	os.RemoveAll(dir)
	os.Exit(code)
}

// open returns a store on the shared cluster under the test's own prefix.
func open(t *testing.T, c *etcdproc.Cluster) *Store {
	t.Helper()
	s, err := New(Config{Endpoints: c.Endpoints(), Prefix: "/" + t.Name() + "/"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// ignoreWriter compares states by what is served.
var ignoreWriter = cmpopts.IgnoreFields(store.State{}, "Writer")

func state(version uint64, ports ...int) store.State {
	st := store.State{Version: version, Clusters: map[string][]model.Endpoint{"brokers": {}}}
	for _, p := range ports {
		st.Clusters["brokers"] = append(st.Clusters["brokers"], model.Endpoint{Address: "127.0.0.1", Port: p, Weight: 1})
	}
	return st
}

func mustLoad(t *testing.T, s *Store) store.State {
	t.Helper()
	st, err := s.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func TestEmptyThenSwapThenStale(t *testing.T) {
	a, b := open(t, shared), open(t, shared)
	if st := mustLoad(t, a); st.Version != store.EmptyVersion || len(st.Clusters) != 0 {
		t.Fatalf("empty store: %+v", st)
	}
	mustLoad(t, b)
	if err := a.CompareAndSwap(ctx, 1, state(2, 1)); err != nil {
		t.Fatal(err)
	}
	// b read the empty store: its write, based on version 1, is refused
	// by etcd and leaves a's state in place.
	if err := b.CompareAndSwap(ctx, 1, state(2, 2)); !errors.Is(err, store.ErrStale) {
		t.Fatalf("write based on a replaced version: %v", err)
	}
	got := mustLoad(t, b)
	if diff := cmp.Diff(state(2, 1), got, ignoreWriter); diff != "" {
		t.Errorf("stored (-want +got):\n%s", diff)
	}
	// Having read version 2, b can build on it.
	if err := b.CompareAndSwap(ctx, 2, state(3, 1, 2)); err != nil {
		t.Fatal(err)
	}
	if err := a.CompareAndSwap(ctx, 3, state(3)); err == nil || errors.Is(err, store.ErrStale) {
		t.Errorf("a version that does not grow: %v", err)
	}
}

// Two writers that read the same version race: exactly one wins, and the
// stored state is the winner's.
func TestConcurrentWritersOneWins(t *testing.T) {
	for round := range 20 {
		a, b := open(t, shared), open(t, shared)
		base := mustLoad(t, a).Version
		if mustLoad(t, b).Version != base {
			t.Fatal("the two stores read different versions")
		}
		// Half the rounds the two write the very same state: still, only
		// one of them stored it.
		candidates := []store.State{state(base+1, 100+round), state(base+1, 200+round)}
		if round%2 == 1 {
			candidates[1] = candidates[0]
		}
		errs := make([]error, 2)
		var wg sync.WaitGroup
		for i, s := range []*Store{a, b} {
			wg.Go(func() { errs[i] = s.CompareAndSwap(ctx, base, candidates[i]) })
		}
		wg.Wait()
		winners := 0
		var winner store.State
		for i, err := range errs {
			switch {
			case err == nil:
				winners++
				winner = candidates[i]
			case !errors.Is(err, store.ErrStale):
				t.Fatalf("round %d: %v", round, err)
			}
		}
		if winners != 1 {
			t.Fatalf("round %d: %d winners (%v)", round, winners, errs)
		}
		if diff := cmp.Diff(winner, mustLoad(t, open(t, shared)), ignoreWriter); diff != "" {
			t.Fatalf("round %d: stored is not the winner's (-winner +stored):\n%s", round, diff)
		}
	}
}

// Watch delivers what another writer stores, in order, and then lets
// this store build on it.
func TestWatchDeliversOtherWrites(t *testing.T) {
	a, b := open(t, shared), open(t, shared)
	mustLoad(t, a)
	mustLoad(t, b)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	states := a.Watch(wctx)
	for v := uint64(2); v <= 4; v++ {
		if err := b.CompareAndSwap(ctx, v-1, state(v, int(v))); err != nil {
			t.Fatal(err)
		}
	}
	for v := uint64(2); v <= 4; v++ {
		if got := next(t, states); got.Version != v {
			t.Fatalf("delivered version %d, want %d", got.Version, v)
		}
	}
	if err := a.CompareAndSwap(ctx, 4, state(5)); err != nil {
		t.Fatalf("after watching version 4: %v", err)
	}
}

func next(t *testing.T, states <-chan store.State) store.State {
	t.Helper()
	select {
	case st, ok := <-states:
		if !ok {
			t.Fatal("watch channel closed")
		}
		return st
	case <-time.After(10 * time.Second):
		t.Fatal("no state delivered within 10s")
	}
	return store.State{}
}

// When the revisions a watch needs were compacted away, the store loads
// the key again and delivers the current state: later states are never
// lost, earlier ones may be skipped.
func TestWatchRecoversFromCompaction(t *testing.T) {
	a, b := open(t, shared), open(t, shared)
	mustLoad(t, a) // a will watch from here
	mustLoad(t, b)
	for v := uint64(2); v <= 4; v++ {
		if err := b.CompareAndSwap(ctx, v-1, state(v, int(v))); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := b.cli.Get(ctx, b.key)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.cli.Compact(ctx, resp.Header.Revision); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if got := next(t, a.Watch(wctx)); !cmp.Equal(got, state(4, 4), ignoreWriter) {
		t.Errorf("after compaction, delivered %+v, want version 4", got)
	}
	if err := a.CompareAndSwap(ctx, 4, state(5)); err != nil {
		t.Errorf("after the reload: %v", err)
	}
}

// A key that does not hold a state is an error that says how to fix it,
// never an empty state.
func TestCorruptKeyIsAnError(t *testing.T) {
	s := open(t, shared)
	if _, err := s.cli.Put(ctx, s.key, `{"version": 3}`); err != nil {
		t.Fatal(err)
	}
	_, err := s.Load(ctx)
	if err == nil || errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("corrupt key: %v", err)
	}
	t.Log(err)
}

// Each replica's nodes are listed with its name; a replica that stops
// withdraws its entries.
func TestBoardListsEveryReplica(t *testing.T) {
	s := open(t, shared)
	actx, stopA := context.WithCancel(ctx)
	bctx, stopB := context.WithCancel(ctx)
	defer stopB()
	aDone := make(chan struct{})
	go func() {
		s.Board("replica-a").Publish(actx, func() []server.NodeStatus { return []server.NodeStatus{{ID: "envoy-1", Connected: true}} })
		close(aDone)
	}()
	go s.Board("replica/b").Publish(bctx, func() []server.NodeStatus {
		return []server.NodeStatus{{ID: "envoy-2", Connected: true}, {ID: "envoy/3"}}
	})
	want := map[string]string{"envoy-1": "replica-a", "envoy-2": "replica/b", "envoy/3": "replica/b"}
	waitNodes(t, s, want)
	stopA()
	<-aDone
	delete(want, "envoy-1")
	waitNodes(t, s, want)
}

func waitNodes(t *testing.T, s *Store, want map[string]string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		nodes, err := s.Board("reader").Nodes(ctx)
		got := map[string]string{}
		for _, n := range nodes {
			got[n.ID] = n.Replica
		}
		if err == nil && cmp.Equal(want, got) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("board lists %v (%v), want %v", got, err, want)
		}
		time.Sleep(20 * time.Millisecond) // polling interval of a readiness check
	}
}

// A write right after the leader died reaches the new leader: one member
// down costs an election, not a refused change.
func TestLeaderLossCostsOnlyAnElection(t *testing.T) {
	c, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cluster, err := etcdproc.StartCluster(c, t.TempDir(), 3)
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Stop()
	s := open(t, cluster)
	mustLoad(t, s)
	for v := uint64(2); v <= 3; v++ {
		leader, err := cluster.Leader(c)
		if err != nil {
			t.Fatal(err)
		}
		leader.Kill()
		start := time.Now()
		if err := s.CompareAndSwap(ctx, v-1, state(v, int(v))); err != nil {
			t.Fatalf("write after the leader %s died: %v", leader.Name, err)
		}
		t.Logf("write after the leader %s died took %v", leader.Name, time.Since(start))
		if err := leader.Start(); err != nil {
			t.Fatal(err)
		}
		if err := cluster.WaitHealthy(c); err != nil {
			t.Fatal(err)
		}
	}
}

// With two of three members down, writes and checks fail with
// ErrUnavailable, saying why, within the request timeout. A refused
// write may still have been proposed to the surviving member and be
// committed when the quorum returns: then it is exactly the state that
// was written, never a mix. Once a member is back, writes succeed again.
func TestNoQuorumIsUnavailable(t *testing.T) {
	c, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cluster, err := etcdproc.StartCluster(c, t.TempDir(), 3)
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Stop()
	s := open(t, cluster)
	mustLoad(t, s)
	if err := s.CompareAndSwap(ctx, 1, state(2, 1)); err != nil {
		t.Fatal(err)
	}
	cluster.Members[0].Kill()
	if err := s.CompareAndSwap(ctx, 2, state(3, 1, 2)); err != nil {
		t.Fatalf("one member down: %v", err)
	}
	cluster.Members[1].Kill()
	start := time.Now()
	refused := state(4, 4)
	err = s.CompareAndSwap(ctx, 3, refused)
	if !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("two members down: %v", err)
	}
	t.Logf("write refused after %v: %v", time.Since(start), err)
	if took := time.Since(start); took > requestTimeout+time.Second {
		t.Errorf("the refusal took %v", took)
	}
	if err := s.Check(ctx); !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("check with two members down: %v", err)
	}
	if err := cluster.Members[1].Start(); err != nil {
		t.Fatal(err)
	}
	if err := cluster.WaitHealthy(c); err != nil {
		t.Fatal(err)
	}
	if err := s.Check(ctx); err != nil {
		t.Errorf("check with the quorum back: %v", err)
	}
	got := mustLoad(t, s)
	switch {
	case got.Version == 3:
		t.Log("the refused write was not applied")
	case cmp.Equal(got, refused, ignoreWriter):
		t.Log("the refused write was applied when the quorum returned")
	default:
		t.Errorf("after the outage: %+v, want version 3 or exactly the refused write", got)
	}
	if err := s.CompareAndSwap(ctx, got.Version, state(got.Version+1)); err != nil {
		t.Errorf("with the quorum back: %v", err)
	}
}

// compile-time checks: the store is a store.Store and a store.Checker.
var (
	_ store.Store   = (*Store)(nil)
	_ store.Checker = (*Store)(nil)
)
