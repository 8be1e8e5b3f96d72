package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// docs/benchmarks.md is made of sections, each written by one part of the
// benchmark (or inserted from a test's report) between markers, so that
// one part can be rerun without rerunning the others: a run replaces the
// sections it produced and keeps the rest.

// sectionOrder is the order sections appear in; others follow.
var sectionOrder = []string{"main", "concurrency", "module", "memory", "partial", "storms", "connections", "drains", "soak"}

func beginMarker(name string) string { return fmt.Sprintf("<!-- bench:%s -->", name) }
func endMarker(name string) string   { return fmt.Sprintf("<!-- /bench:%s -->", name) }

// parseSections splits a document into its marked sections, in order. A
// document without markers (an older report) is one section, "main".
func parseSections(doc string) (map[string]string, []string) {
	out := map[string]string{}
	var order []string
	rest := doc
	for {
		i := strings.Index(rest, "<!-- bench:")
		if i < 0 {
			break
		}
		j := strings.Index(rest[i:], " -->")
		if j < 0 {
			break
		}
		name := rest[i+len("<!-- bench:") : i+j]
		body := rest[i+j+len(" -->"):]
		k := strings.Index(body, endMarker(name))
		if k < 0 {
			break
		}
		out[name] = strings.Trim(body[:k], "\n")
		order = append(order, name)
		rest = body[k+len(endMarker(name)):]
	}
	if len(order) == 0 && strings.TrimSpace(doc) != "" {
		return map[string]string{"main": strings.TrimSpace(doc)}, []string{"main"}
	}
	return out, order
}

// writeSections replaces the given sections of the document at path (and
// adds the new ones), keeping every other section as it was.
func writeSections(path string, updated map[string]string) error {
	old, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	sections, order := parseSections(string(old))
	for name, text := range updated {
		if _, ok := sections[name]; !ok {
			order = append(order, name)
		}
		sections[name] = strings.Trim(text, "\n")
	}
	rank := func(name string) int {
		if i := slices.Index(sectionOrder, name); i >= 0 {
			return i
		}
		return len(sectionOrder) + slices.Index(order, name)
	}
	slices.SortStableFunc(order, func(a, b string) int { return rank(a) - rank(b) })
	var b strings.Builder
	for _, name := range order {
		fmt.Fprintf(&b, "%s\n%s\n%s\n\n", beginMarker(name), sections[name], endMarker(name))
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, []byte(strings.TrimRight(b.String(), "\n")+"\n"), 0o644)
}
