package main

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// A mistyped --dir must not delete anything: run refuses a directory it
// did not create, and checks every other option before touching one.
func TestRunNeverEmptiesForeignDirectories(t *testing.T) {
	dir := t.TempDir()
	precious := filepath.Join(dir, "precious.txt")
	if err := os.WriteFile(precious, []byte("keep me"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := prepareWorkDir(dir); !errors.Is(err, errUsage) {
		t.Errorf("a foreign directory was accepted: %v", err)
	}
	if _, err := os.Stat(precious); err != nil {
		t.Fatalf("the foreign directory lost a file: %v", err)
	}

	// A directory run made is emptied, but only after the options pass.
	if err := os.Remove(precious); err != nil {
		t.Fatal(err)
	}
	if err := prepareWorkDir(dir); err != nil {
		t.Fatal(err)
	}
	old := filepath.Join(dir, "envoy.log")
	os.WriteFile(old, nil, 0o644)
	err := run(context.Background(), runOptions{workDir: dir, moduleDir: dir, proxy: "v9"}, io.Discard)
	if err == nil {
		t.Fatal("bad options accepted")
	}
	if _, err := os.Stat(old); err != nil {
		t.Errorf("run emptied its directory before refusing its options: %v", err)
	}
	if err := prepareWorkDir(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(old); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a directory run created was not emptied: %v", err)
	}
}
