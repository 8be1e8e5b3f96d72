package store

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/mqtt-sticky/mqtt-sticky/xds/model"
)

var ctx = context.Background()

func TestFileStartsEmptyAtVersion1(t *testing.T) {
	for _, path := range []string{"", filepath.Join(t.TempDir(), "state.json")} {
		st, err := NewFile(path).Load(ctx)
		if err != nil || st.Version != EmptyVersion || len(st.Clusters) != 0 {
			t.Errorf("%q: %+v, %v", path, st, err)
		}
	}
}

func TestFileSwapsAndReloads(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	f := NewFile(path)
	next := State{Version: 2, Clusters: map[string][]model.Endpoint{"brokers": {{Address: "127.0.0.1", Port: 1, Weight: 1}}}}
	if err := f.CompareAndSwap(ctx, 1, next); err != nil {
		t.Fatal(err)
	}
	got, err := NewFile(path).Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(next, got); diff != "" {
		t.Errorf("reloaded state (-stored +loaded):\n%s", diff)
	}
}

// A write based on an outdated version is refused and leaves the file as
// it was.
func TestFileRefusesStaleWrites(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	f := NewFile(path)
	if err := f.CompareAndSwap(ctx, 1, State{Version: 2, Clusters: map[string][]model.Endpoint{}}); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(path)
	err := f.CompareAndSwap(ctx, 1, State{Version: 2, Clusters: map[string][]model.Endpoint{"x": nil}})
	if !errors.Is(err, ErrStale) {
		t.Fatalf("stale write: %v", err)
	}
	if err := f.CompareAndSwap(ctx, 2, State{Version: 2}); err == nil || errors.Is(err, ErrStale) {
		t.Fatalf("a version that does not grow: %v", err)
	}
	if after, _ := os.ReadFile(path); string(after) != string(before) {
		t.Error("a refused write changed the file")
	}
}

func TestFileRefusesBadStateFiles(t *testing.T) {
	for _, tt := range []struct{ content, want string }{
		{"{not json", "is corrupt"},
		{"null", "holds no state"},
		{"{}", "holds no state"},
		{`{"version": 0, "clusters": {}}`, "holds no state"},
		{`{"version": 3, "clusters": {}, "extra": 1}`, `unknown object member name "extra"`},
		{`{"version": 3, "clusters": {}}}}]]`, "is corrupt"},
		{`{"version": 3, "version": 4, "clusters": {}}`, `duplicate object member name "version"`},
		{`{"Version": 3, "clusters": {}}`, `unknown object member name "Version"`},
	} {
		path := filepath.Join(t.TempDir(), "state.json")
		os.WriteFile(path, []byte(tt.content), 0o644)
		if _, err := NewFile(path).Load(ctx); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want an error containing %q", tt.content, err, tt.want)
		}
	}
}

func TestApplyTakesEndpointsOfKnownClusters(t *testing.T) {
	st := State{Version: 4, Clusters: map[string][]model.Endpoint{
		"brokers": {{Address: "127.0.0.2", Port: 2}, {Address: "127.0.0.1", Port: 1}},
		"gone":    {{Address: "127.0.0.1", Port: 3}},
	}}
	m, err := st.Apply(model.Default())
	if err != nil {
		t.Fatal(err)
	}
	want := []model.Endpoint{{Address: "127.0.0.1", Port: 1, Weight: 1}, {Address: "127.0.0.2", Port: 2, Weight: 1}}
	if diff := cmp.Diff(want, m.Cluster("brokers").Endpoints); diff != "" {
		t.Errorf("endpoints (-want +got):\n%s", diff)
	}
	if m.Cluster("gone") != nil {
		t.Error("a cluster the config does not define appeared")
	}
	st.Clusters["brokers"] = []model.Endpoint{{Address: "nope", Port: 1}}
	if _, err := st.Apply(model.Default()); !errors.Is(err, model.ErrInvalid) {
		t.Errorf("invalid stored endpoints: %v", err)
	}
}
