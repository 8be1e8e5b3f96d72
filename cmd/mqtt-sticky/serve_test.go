package main

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/mqtt-sticky/mqtt-sticky/api"
	"github.com/mqtt-sticky/mqtt-sticky/internal/tlsfiles"
)

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(&bytes.Buffer{}, nil)) }

// The API beyond loopback needs a token of at least 16 bytes: the compose
// file's "change-me" (9 bytes), and no token at all, are refused before
// anything listens.
func TestRemoteAPINeedsAStrongToken(t *testing.T) {
	for _, tt := range []struct {
		name  string
		o     serveOptions
		want  string
		token string
	}{
		{"no token", serveOptions{apiListen: "0.0.0.0:8080"}, "set --api-token-file", ""},
		{"change-me", serveOptions{apiListen: "0.0.0.0:8080", token: "change-me"}, "its token has 9 bytes: use at least 16", ""},
		{"15 bytes", serveOptions{apiListen: "[::]:8080", token: strings.Repeat("x", 15)}, "at least 16", ""},
		{"16 bytes", serveOptions{apiListen: "0.0.0.0:8080", token: strings.Repeat("x", 16)}, "", strings.Repeat("x", 16)},
		{"loopback without a token", serveOptions{apiListen: "127.0.0.1:8080"}, "", ""},
		{"a space in the token", serveOptions{token: "abc def ghi jkl mno"}, "spaces or control characters", ""},
		{"metrics behind no token", serveOptions{metricsAuth: true}, "needs an API token", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tt.o.noState = true
			c, err := tt.o.resolve(quietLog())
			if tt.want == "" {
				if err != nil || c.token != tt.token {
					t.Fatalf("%v, token %q", err, c.token)
				}
				return
			}
			if !errors.Is(err, errUsage) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("%v, want a usage error containing %q", err, tt.want)
			}
		})
	}
}

// The token can come from a file (--api-token-file or api_token_file),
// which keeps it out of ps; from one source only; and --api-token, which
// shows it in ps, is warned about.
func TestAPITokenSources(t *testing.T) {
	path := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(path, []byte("0123456789abcdef0123\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := serveOptions{apiListen: "0.0.0.0:8080", tokenFile: path, noState: true}.resolve(quietLog())
	if err != nil || c.token != "0123456789abcdef0123" {
		t.Fatalf("token file: %v %+v", err, c)
	}
	if _, err := (serveOptions{tokenFile: path, token: "from-the-environment", noState: true}).resolve(quietLog()); !errors.Is(err, errUsage) {
		t.Errorf("two sources: %v", err)
	}
	os.WriteFile(path, []byte("\n"), 0o600)
	if _, err := (serveOptions{tokenFile: path, noState: true}).resolve(quietLog()); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Errorf("empty file: %v", err)
	}
	var logs bytes.Buffer
	if _, err := (serveOptions{token: "0123456789abcdef0123", tokenOnArgv: true, noState: true}).resolve(slog.New(slog.NewTextHandler(&logs, nil))); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "--api-token shows the token") {
		t.Errorf("no warning about --api-token:\n%s", logs.String())
	}
}

// xDS beyond loopback needs TLS; TLS settings must be complete.
func TestRemoteXDSNeedsTLS(t *testing.T) {
	for _, tt := range []struct {
		name string
		o    serveOptions
		want string
	}{
		{"all interfaces", serveOptions{xdsListen: "0.0.0.0:18000"}, "without TLS"},
		{"empty host", serveOptions{xdsListen: ":18000"}, "without TLS"},
		{"a name", serveOptions{xdsListen: "xds.example:18000"}, "without TLS"},
		{"a key without a certificate", serveOptions{xdsTLS: tlsfiles.Files{KeyFile: "k"}}, "both a certificate file and a key file"},
		{"client certificates without a CA", serveOptions{xdsTLS: tlsfiles.Files{CertFile: "c", KeyFile: "k", RequireClientCert: true}}, "client CA"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tt.o.noState = true
			if _, err := tt.o.resolve(quietLog()); !errors.Is(err, errUsage) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("%v, want %q", err, tt.want)
			}
		})
	}
	for _, addr := range []string{"127.0.0.1:18000", "localhost:18000", "[::1]:18000"} {
		if _, err := (serveOptions{xdsListen: addr, noState: true}).resolve(quietLog()); err != nil {
			t.Errorf("%s: %v", addr, err)
		}
	}
	var logs bytes.Buffer
	if _, err := (serveOptions{xdsListen: "0.0.0.0:18000", xdsTLS: tlsfiles.Files{CertFile: "c", KeyFile: "k"}, noState: true}).resolve(slog.New(slog.NewTextHandler(&logs, nil))); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "without requiring client certificates") {
		t.Errorf("TLS without client certificates beyond loopback is not warned about:\n%s", logs.String())
	}
}

// The Envoy that `mqtt-sticky run` starts does not inherit the API token.
func TestRunKeepsTheTokenFromEnvoy(t *testing.T) {
	opts, err := envoyOptions(runOptions{moduleDir: "build", workDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(opts.DropEnv, api.TokenEnv) {
		t.Errorf("Envoy inherits %s: DropEnv %v", api.TokenEnv, opts.DropEnv)
	}
}
