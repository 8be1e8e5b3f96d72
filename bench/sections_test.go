package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A run replaces its own sections, keeps the others, and puts them in
// the document's order; an old report without markers becomes "main".
func TestWriteSections(t *testing.T) {
	path := filepath.Join(t.TempDir(), "b.md")
	os.WriteFile(path, []byte("# Benchmarks\n\nold report\n"), 0o644)
	if err := writeSections(path, map[string]string{"storms": "## Storms\n\nfirst"}); err != nil {
		t.Fatal(err)
	}
	if err := writeSections(path, map[string]string{"custom": "## Custom", "concurrency": "## Two workers"}); err != nil {
		t.Fatal(err)
	}
	if err := writeSections(path, map[string]string{"storms": "## Storms\n\nsecond"}); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(path)
	doc := string(got)
	for _, want := range []string{"old report", "## Two workers", "second", "## Custom"} {
		if !strings.Contains(doc, want) {
			t.Errorf("missing %q in\n%s", want, doc)
		}
	}
	if strings.Contains(doc, "first") {
		t.Error("the replaced section is still there")
	}
	order := []int{strings.Index(doc, "old report"), strings.Index(doc, "## Two workers"), strings.Index(doc, "## Storms"), strings.Index(doc, "## Custom")}
	for i := 1; i < len(order); i++ {
		if order[i] < order[i-1] {
			t.Errorf("sections out of order: %v\n%s", order, doc)
		}
	}
}

// A version command's first non-empty line, from "version: " on when it
// has one: Envoy prints an empty line and its binary's path first.
func TestCommandOutput(t *testing.T) {
	for script, want := range map[string]string{
		`printf '\n/x/envoy  version: abc/1.40.0/Clean/RELEASE/BoringSSL\n'`: "abc/1.40.0/Clean/RELEASE/BoringSSL",
		`printf 'HAProxy version 2.6.12 2026/10/17\nStatus: LTS\n'`:          "HAProxy version 2.6.12 2026/10/17",
		`exit 3`: "unknown",
	} {
		if got := commandOutput("sh", "-c", script); got != want {
			t.Errorf("%s: %q, want %q", script, got, want)
		}
	}
}
