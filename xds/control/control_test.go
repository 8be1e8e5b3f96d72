package control

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mqtt-sticky/mqtt-sticky/xds/model"
	"github.com/mqtt-sticky/mqtt-sticky/xds/server"
	"github.com/mqtt-sticky/mqtt-sticky/xds/store"
)

var ctx = context.Background()

// start returns a controller over a real xDS server and a file store.
func start(t *testing.T, st store.Store) (*Controller, *server.Server) {
	t.Helper()
	srv := server.New(server.Options{Registerer: prometheus.NewRegistry()})
	c := New(model.Default(), st, srv, nil)
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return c, srv
}

func TestChangesArePersistedAndRestored(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	c, _ := start(t, store.NewFile(path))
	if _, err := c.AddEndpoint(ctx, "brokers", model.Endpoint{Address: "127.0.0.1", Port: 18834, Weight: 2}, AnyVersion); err != nil {
		t.Fatal(err)
	}
	v, err := c.RemoveEndpoint(ctx, "brokers", model.Endpoint{Address: "127.0.0.1", Port: 18831}, AnyVersion)
	if err != nil || v != 3 || c.Version() != 3 {
		t.Fatalf("version %d, served %d, %v", v, c.Version(), err)
	}
	restarted, _ := start(t, store.NewFile(path))
	eps, version, _ := restarted.Endpoints("brokers")
	want := []model.Endpoint{{Address: "127.0.0.1", Port: 18832, Weight: 1}, {Address: "127.0.0.1", Port: 18833, Weight: 1}, {Address: "127.0.0.1", Port: 18834, Weight: 2}}
	if diff := cmp.Diff(want, eps); diff != "" || version != 3 {
		t.Errorf("restored version %d, endpoints (-want +got):\n%s", version, diff)
	}
}

// Invalid changes are refused with the right error and change nothing:
// not the served model, not the version, not the state file.
func TestInvalidChangesChangeNothing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	c, _ := start(t, store.NewFile(path))
	if _, err := c.SetEndpoints(ctx, "brokers", []model.Endpoint{{Address: "127.0.0.1", Port: 1}}, AnyVersion); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(path)
	ep := func(addr string, port int) model.Endpoint { return model.Endpoint{Address: addr, Port: port} }
	for _, tt := range []struct {
		name string
		do   func() error
		want error
	}{
		{"unknown cluster", func() error { _, err := c.AddEndpoint(ctx, "nope", ep("127.0.0.1", 2), AnyVersion); return err }, ErrNotFound},
		{"duplicate", func() error { _, err := c.AddEndpoint(ctx, "brokers", ep("127.0.0.1", 1), AnyVersion); return err }, ErrConflict},
		{"bad address", func() error { _, err := c.AddEndpoint(ctx, "brokers", ep("broker-1", 2), AnyVersion); return err }, model.ErrInvalid},
		{"bad port", func() error { _, err := c.AddEndpoint(ctx, "brokers", ep("127.0.0.1", 65536), AnyVersion); return err }, model.ErrInvalid},
		{"duplicate in a set", func() error {
			_, err := c.SetEndpoints(ctx, "brokers", []model.Endpoint{ep("127.0.0.1", 5), ep("127.0.0.1", 5)}, AnyVersion)
			return err
		}, model.ErrInvalid},
		{"remove missing", func() error { _, err := c.RemoveEndpoint(ctx, "brokers", ep("127.0.0.1", 9), AnyVersion); return err }, ErrNotFound},
	} {
		if err := tt.do(); !errors.Is(err, tt.want) {
			t.Errorf("%s: %v, want %v", tt.name, err, tt.want)
		}
	}
	after, _ := os.ReadFile(path)
	if string(before) != string(after) || c.Version() != 2 {
		t.Errorf("state changed: version %d", c.Version())
	}
}

// When the store cannot persist a change, it is not served.
func TestUnpersistedChangeIsNotServed(t *testing.T) {
	c, srv := start(t, store.NewFile(filepath.Join(t.TempDir(), "missing-dir", "state.json")))
	if _, err := c.AddEndpoint(ctx, "brokers", model.Endpoint{Address: "127.0.0.1", Port: 2}, AnyVersion); err == nil {
		t.Fatal("accepted")
	}
	if m, v := srv.Served(); v != 1 || len(m.Cluster("brokers").Endpoints) != 3 {
		t.Errorf("served version %d with %v", v, m.Cluster("brokers").Endpoints)
	}
}

// refusingServer refuses every change; it stands for a server that finds
// a model it cannot translate.
type refusingServer struct{ *server.Server }

func (refusingServer) Prepare(*model.Model, uint64) (func(), error) {
	return nil, errors.New("refused")
}

// When the server refuses a change, the store is not written.
func TestRefusedChangeIsNotPersisted(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	_, srv := start(t, store.NewFile(path))
	c := New(model.Default(), store.NewFile(path), refusingServer{srv}, nil)
	if _, err := c.AddEndpoint(ctx, "brokers", model.Endpoint{Address: "127.0.0.1", Port: 2}, AnyVersion); err == nil {
		t.Fatal("accepted")
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state file written after a refused change: %v", err)
	}
}

// sharedStore is a memory store written by another replica, which the
// controller hears of through Watch.
type sharedStore struct {
	*store.File
	changes chan store.State
}

func (s sharedStore) Watch(context.Context) <-chan store.State { return s.changes }

// A change another writer stored is served at the stored version; one
// this replica cannot serve is skipped, and the last good one stays.
func TestChangesMadeElsewhereAreServed(t *testing.T) {
	st := sharedStore{store.NewFile(""), make(chan store.State)}
	c, srv := start(t, st)
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	st.changes <- store.State{Version: 7, Clusters: map[string][]model.Endpoint{"brokers": {{Address: "127.0.0.9", Port: 9}}}}
	st.changes <- store.State{Version: 8, Clusters: map[string][]model.Endpoint{"brokers": {{Address: "not-an-ip", Port: 9}}}}
	st.changes <- store.State{Version: 6, Clusters: map[string][]model.Endpoint{"brokers": {}}}
	close(st.changes)
	<-done
	m, v := srv.Served()
	if v != 7 || len(m.Cluster("brokers").Endpoints) != 1 || m.Cluster("brokers").Endpoints[0].Address != "127.0.0.9" {
		t.Errorf("served version %d: %+v", v, m.Cluster("brokers").Endpoints)
	}
}

// Names identify brokers: a second endpoint with a taken name conflicts,
// and an endpoint can be removed by its name alone.
func TestEndpointNames(t *testing.T) {
	c, _ := start(t, store.NewFile(""))
	b1 := model.Endpoint{Name: "b1", Address: "127.0.0.1", Port: 18834}
	if _, err := c.AddEndpoint(ctx, "brokers", b1, AnyVersion); err != nil {
		t.Fatal(err)
	}
	if _, err := c.AddEndpoint(ctx, "brokers", model.Endpoint{Name: "b1", Address: "127.0.0.1", Port: 18835}, AnyVersion); !errors.Is(err, ErrConflict) {
		t.Errorf("second endpoint named b1: %v, want a conflict", err)
	}
	if _, err := c.RemoveEndpoint(ctx, "brokers", model.Endpoint{Name: "b2"}, AnyVersion); !errors.Is(err, ErrNotFound) {
		t.Errorf("removing unknown name b2: %v, want not found", err)
	}
	if _, err := c.RemoveEndpoint(ctx, "brokers", model.Endpoint{Name: "b1"}, AnyVersion); err != nil {
		t.Fatal(err)
	}
	eps, _, _ := c.Endpoints("brokers")
	if len(eps) != 3 {
		t.Errorf("after removing b1 by name: %v", eps)
	}
}

// A discovered cluster takes discovery's sets; an equal set makes no new
// version; hand edits are refused with a conflict and change nothing.
func TestDiscoveredCluster(t *testing.T) {
	base := model.Default()
	base.Clusters[0].Endpoints = nil
	base.Clusters[0].Discovery = &model.Discovery{DNS: &model.DNSDiscovery{Name: "brokers.example.com", Port: 1883}}
	base.SetDefaults()
	srv := server.New(server.Options{Registerer: prometheus.NewRegistry()})
	c := New(base, store.NewFile(""), srv, nil)
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	set := []model.Endpoint{{Address: "10.0.0.2", Port: 1883}, {Address: "10.0.0.1", Port: 1883}}
	v, changed, err := c.SetDiscovered(ctx, "brokers", set)
	if err != nil || !changed || v != 2 {
		t.Fatalf("first set: version %d, changed %v, %v", v, changed, err)
	}
	// The same set in another order, weights given or not: no new version.
	same := []model.Endpoint{{Address: "10.0.0.1", Port: 1883, Weight: 1}, {Address: "10.0.0.2", Port: 1883}}
	if v, changed, err := c.SetDiscovered(ctx, "brokers", same); err != nil || changed || v != 2 || c.Version() != 2 {
		t.Fatalf("same set: version %d, changed %v, served %d, %v", v, changed, c.Version(), err)
	}
	for name, edit := range map[string]func() error{
		"set": func() error { _, err := c.SetEndpoints(ctx, "brokers", nil, AnyVersion); return err },
		"add": func() error {
			_, err := c.AddEndpoint(ctx, "brokers", model.Endpoint{Address: "10.0.0.3", Port: 1883}, AnyVersion)
			return err
		},
		"remove": func() error {
			_, err := c.RemoveEndpoint(ctx, "brokers", model.Endpoint{Address: "10.0.0.1", Port: 1883}, AnyVersion)
			return err
		},
	} {
		if err := edit(); !errors.Is(err, ErrConflict) {
			t.Errorf("%s on a discovered cluster: %v, want a conflict", name, err)
		}
	}
	if c.Version() != 2 {
		t.Errorf("refused edits moved the version to %d", c.Version())
	}
	// An invalid discovered set (a duplicate) is refused and changes nothing.
	if _, _, err := c.SetDiscovered(ctx, "brokers", append(same, same[0])); !errors.Is(err, model.ErrInvalid) || c.Version() != 2 {
		t.Errorf("duplicate in a discovered set: %v, version %d", err, c.Version())
	}
}

// A conditional change applies only at the version it was made against:
// a stale expectation is refused and changes nothing, whether the
// controller or the store notices.
func TestConditionalChanges(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	c, _ := start(t, store.NewFile(path))
	ep := model.Endpoint{Address: "127.0.0.1", Port: 18834}
	if v, err := c.AddEndpoint(ctx, "brokers", ep, 1); err != nil || v != 2 {
		t.Fatalf("change against the current version: %d %v", v, err)
	}
	before, _ := os.ReadFile(path)
	if _, err := c.RemoveEndpoint(ctx, "brokers", ep, 1); !errors.Is(err, ErrVersionMismatch) {
		t.Errorf("change against version 1 at version 2: %v, want ErrVersionMismatch", err)
	}
	if after, _ := os.ReadFile(path); string(after) != string(before) || c.Version() != 2 {
		t.Errorf("a refused conditional change changed the state: version %d", c.Version())
	}

	// The store moved on behind the controller's back (another replica):
	// the compare-and-swap fails, and a conditional change reports a
	// mismatch.
	st := &staleStore{store.NewFile("")}
	c2, _ := start(t, st)
	if _, err := c2.SetEndpoints(ctx, "brokers", nil, 1); !errors.Is(err, ErrVersionMismatch) || !errors.Is(err, store.ErrStale) {
		t.Errorf("stale store under a conditional change: %v, want ErrVersionMismatch and ErrStale", err)
	}
	if _, err := c2.SetEndpoints(ctx, "brokers", nil, AnyVersion); errors.Is(err, ErrVersionMismatch) || !errors.Is(err, store.ErrStale) {
		t.Errorf("stale store under an unconditional change: %v, want ErrStale alone", err)
	}
}

// staleStore fails every write as if another writer had stored first.
type staleStore struct{ *store.File }

func (staleStore) CompareAndSwap(context.Context, uint64, store.State) error {
	return fmt.Errorf("%w: someone else wrote", store.ErrStale)
}

// A state file at the last version loads and is served, but no change can
// follow it: version MaxUint64+1 would wrap to 0.
func TestVersionCannotWrap(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	state := fmt.Sprintf(`{"version": %d, "clusters": {"brokers": [{"address": "127.0.0.1", "port": 18831, "weight": 1}]}}`, uint64(math.MaxUint64))
	if err := os.WriteFile(path, []byte(state), 0o644); err != nil {
		t.Fatal(err)
	}
	c, srv := start(t, store.NewFile(path))
	if v := c.Version(); v != math.MaxUint64 {
		t.Fatalf("served version %d", v)
	}
	_, err := c.AddEndpoint(ctx, "brokers", model.Endpoint{Address: "127.0.0.1", Port: 18832}, AnyVersion)
	if !errors.Is(err, ErrVersionExhausted) || !strings.Contains(err.Error(), "state file") {
		t.Errorf("change at MaxUint64: %v, want ErrVersionExhausted saying what to do", err)
	}
	if _, v := srv.Served(); v != math.MaxUint64 {
		t.Errorf("served version %d after a refused change", v)
	}
	if after, _ := os.ReadFile(path); string(after) != state {
		t.Errorf("state file rewritten: %s", after)
	}
}
