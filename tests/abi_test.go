package tests

import (
	"debug/elf"
	"path/filepath"
	"strings"
	"testing"
)

// Every Envoy callback the module imports must be one the Envoy binary
// exports. Envoy 1.40 loads modules with RTLD_NOW, so a typo or a callback
// missing from this Envoy version would otherwise show only when Envoy
// loads the filter config, as a refused config with a dlopen error; this
// test names the symbol before any Envoy runs.
func TestModuleImportsOnlyEnvoyExports(t *testing.T) {
	exported := map[string]bool{}
	for _, s := range dynamicSymbols(t, envoyBinary(t)) {
		if s.Section != elf.SHN_UNDEF {
			exported[s.Name] = true
		}
	}
	var imported, hooks []string
	for _, s := range dynamicSymbols(t, filepath.Join(moduleDir, "libmqtt_sticky.so")) {
		switch {
		case s.Section == elf.SHN_UNDEF && strings.HasPrefix(s.Name, "envoy_"):
			imported = append(imported, s.Name)
			if !exported[s.Name] {
				t.Errorf("the module calls %s, which this Envoy does not export", s.Name)
			}
		case s.Section != elf.SHN_UNDEF && strings.HasPrefix(s.Name, "envoy_dynamic_module_on_"):
			hooks = append(hooks, s.Name)
		}
	}
	if len(imported) == 0 {
		t.Fatal("the module imports no Envoy callbacks: is it built from this checkout?")
	}
	for _, required := range []string{
		"envoy_dynamic_module_on_program_init",
		"envoy_dynamic_module_on_network_filter_config_new",
		"envoy_dynamic_module_on_network_filter_config_destroy",
		"envoy_dynamic_module_on_network_filter_new",
		"envoy_dynamic_module_on_network_filter_new_connection",
		"envoy_dynamic_module_on_network_filter_read",
		"envoy_dynamic_module_on_network_filter_write",
		"envoy_dynamic_module_on_network_filter_event",
		"envoy_dynamic_module_on_network_filter_destroy",
		"envoy_dynamic_module_on_network_filter_scheduled",
	} {
		if !contains(strings.Join(hooks, " ")+" ", required+" ") {
			t.Errorf("the module does not export %s", required)
		}
	}
	t.Logf("module imports %d Envoy callbacks and exports %d hooks", len(imported), len(hooks))
}

func dynamicSymbols(t *testing.T, path string) []elf.Symbol {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	syms, err := f.DynamicSymbols()
	if err != nil {
		t.Fatal(err)
	}
	return syms
}
