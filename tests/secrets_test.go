package tests

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mqtt-sticky/mqtt-sticky/api"
	"github.com/mqtt-sticky/mqtt-sticky/internal/envoyproc"
)

// An Envoy started with DropEnv, as `mqtt-sticky run` starts its Envoy,
// does not have the API token in its environment (/proc/PID/environ),
// although the process that started it does.
func TestEnvoyDoesNotInheritTheToken(t *testing.T) {
	const token = "token-that-must-stay-home-0123"
	t.Setenv(api.TokenEnv, token)
	adminPort := freePort(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "envoy.yaml")
	os.WriteFile(cfg, fmt.Appendf(nil, "admin:\n  address: {socket_address: {address: 127.0.0.1, port_value: %d}}\n", adminPort), 0o644)
	p := startEnvoy(t, envoyproc.Options{
		ConfigPath: cfg,
		AdminAddr:  fmt.Sprintf("127.0.0.1:%d", adminPort),
		LogPath:    filepath.Join(dir, "envoy.log"),
		DropEnv:    []string{api.TokenEnv},
	})
	environ, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", p.Pid()))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(environ), token) || strings.Contains(string(environ), api.TokenEnv+"=") {
		t.Errorf("Envoy's environment holds the API token")
	}
	if !strings.Contains(string(environ), "ENVOY_DYNAMIC_MODULES_SEARCH_PATH=") {
		t.Errorf("Envoy's environment lacks what it needs: %q", environ)
	}
}
