package main

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/mqtt-sticky/mqtt-sticky/xds/model"
	"github.com/mqtt-sticky/mqtt-sticky/xds/store"
)

// copy keeps the version into an empty destination, refuses to overwrite
// a state without --force, and a forced copy lands above both versions.
// (The etcd side is exercised end to end in tests/.)
func TestCopyState(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	src, dst := store.NewFile(filepath.Join(dir, "src.json")), store.NewFile(filepath.Join(dir, "dst.json"))
	if _, err := copyState(ctx, src, dst, false); !errors.Is(err, errNothingToCopy) {
		t.Fatalf("empty source: %v", err)
	}
	state := func(v uint64, port int) store.State {
		return store.State{Version: v, Clusters: map[string][]model.Endpoint{"brokers": {{Address: "127.0.0.1", Port: port, Weight: 1}}}}
	}
	if err := src.CompareAndSwap(ctx, 1, state(5, 1)); err != nil {
		t.Fatal(err)
	}
	if got, err := copyState(ctx, src, dst, false); err != nil || got.Version != 5 {
		t.Fatalf("into an empty destination: %+v, %v", got, err)
	}
	if err := src.CompareAndSwap(ctx, 5, state(6, 2)); err != nil {
		t.Fatal(err)
	}
	if _, err := copyState(ctx, src, dst, false); !errors.Is(err, errUsage) {
		t.Fatalf("over a state without --force: %v", err)
	}
	if got, _ := store.NewFile(filepath.Join(dir, "dst.json")).Load(ctx); got.Version != 5 || got.Clusters["brokers"][0].Port != 1 {
		t.Fatalf("a refused copy changed the destination: %+v", got)
	}
	// The destination moves on to 9; a forced copy of version 6 is stored
	// as 10, so replicas serving 9 take it.
	if err := dst.CompareAndSwap(ctx, 5, state(9, 3)); err != nil {
		t.Fatal(err)
	}
	if got, err := copyState(ctx, src, dst, true); err != nil || got.Version != 10 || got.Clusters["brokers"][0].Port != 2 {
		t.Fatalf("forced copy: %+v, %v", got, err)
	}
}
