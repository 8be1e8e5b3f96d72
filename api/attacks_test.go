package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mqtt-sticky/mqtt-sticky/xds/control"
	"github.com/mqtt-sticky/mqtt-sticky/xds/model"
	"github.com/mqtt-sticky/mqtt-sticky/xds/server"
	"github.com/mqtt-sticky/mqtt-sticky/xds/store"
)

// The attacks of issue 9 on the management API, each repeated here: every
// one must be refused and change nothing.

// unchanged fails the test when the served endpoints or version moved.
func (f *fixture) unchanged(t *testing.T) func() {
	t.Helper()
	before, version, _ := f.st.Endpoints("brokers")
	return func() {
		t.Helper()
		after, v, _ := f.st.Endpoints("brokers")
		if v != version || len(after) != len(before) {
			t.Errorf("the attack changed the endpoints: version %d -> %d, %v -> %v", version, v, before, after)
		}
	}
}

func errorOf(t *testing.T, body []byte) string {
	t.Helper()
	var e Error
	if err := json.Unmarshal(body, &e); err != nil || e.Error == "" {
		t.Errorf("not a JSON error: %s", body)
	}
	return e.Error
}

// A web page on any site could make a browser on the operator's machine
// send a "simple" cross-origin POST (text/plain, no preflight) to the
// tokenless loopback API; it added a broker that would then have received
// clients' CONNECTs, credentials included.
func TestBrowserCannotChangeEndpoints(t *testing.T) {
	f := newFixture(t, "")
	checkUnchanged := f.unchanged(t)
	attack := `{"address":"203.0.113.7","port":1883}`
	for _, tt := range []struct {
		name    string
		headers map[string]string
		code    int
		msg     string
	}{
		{"simple POST from another site", map[string]string{"Content-Type": "text/plain", "Origin": "http://evil.example"}, 403, "cross-origin"},
		{"JSON from another site", map[string]string{"Content-Type": "application/json", "Origin": "http://evil.example"}, 403, "cross-origin"},
		{"another port of localhost", map[string]string{"Content-Type": "application/json", "Origin": "http://localhost:3000"}, 403, "cross-origin"},
		{"fetch metadata says cross-site", map[string]string{"Content-Type": "application/json", "Sec-Fetch-Site": "cross-site"}, 403, "cross-origin"},
		{"text/plain without an origin", map[string]string{"Content-Type": "text/plain"}, 415, "application/json"},
		{"form", map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, 415, "application/json"},
		{"no content type", map[string]string{}, 415, "application/json"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest("POST", f.ts.URL+"/v1/clusters/brokers/endpoints", strings.NewReader(attack))
			for k, v := range tt.headers {
				req.Header.Set(k, v)
			}
			resp, body := f.send(t, req, attack, false)
			if resp.StatusCode != tt.code || !strings.Contains(errorOf(t, body), tt.msg) {
				t.Errorf("%d %s, want %d with %q", resp.StatusCode, body, tt.code, tt.msg)
			}
		})
	}
	checkUnchanged()
	// The API's own origin, and clients that send no origin (curl, the
	// CLI), still work; a JSON media type with parameters is JSON.
	for _, origin := range []string{f.ts.URL, ""} {
		req := f.request("POST", "/v1/clusters/brokers/endpoints", "", `{"address":"127.0.0.1","port":1}`)
		req.Header.Set("Content-Type", "application/json; charset=utf-8")
		if origin != "" {
			req.Header.Set("Origin", origin)
		}
		if resp, body := f.send(t, req, "", false); resp.StatusCode != 201 {
			t.Errorf("origin %q: %d %s", origin, resp.StatusCode, body)
		}
		f.call(t, "DELETE", "/v1/clusters/brokers/endpoints/127.0.0.1:1", "", "", true)
	}
}

// DNS rebinding: a page whose domain resolves to 127.0.0.1 talks to the
// loopback API as its own origin. Without a token, the API answers only
// requests addressed to a loopback name or address.
func TestDNSRebindingRefused(t *testing.T) {
	f := newFixture(t, "")
	defer f.unchanged(t)()
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(f.ts.URL, "http://"))
	for _, host := range []string{"rebind.evil.example:" + port, "evil.example", "10.1.2.3:" + port} {
		for _, method := range []string{"GET", "POST"} {
			body := ""
			if method == "POST" {
				body = `{"address":"203.0.113.7","port":1883}`
			}
			req := f.request(method, "/v1/clusters/brokers/endpoints", "", body)
			req.Host = host
			req.Header.Set("Origin", "http://"+host)
			resp, data := f.send(t, req, body, false)
			if resp.StatusCode != 403 || !strings.Contains(errorOf(t, data), "loopback") {
				t.Errorf("%s with Host %s: %d %s", method, host, resp.StatusCode, data)
			}
		}
	}
	for _, host := range []string{"localhost:" + port, "LOCALHOST.:" + port, "127.0.0.1:" + port, "127.1.2.3", "[::1]:" + port} {
		req := f.request("GET", "/v1/clusters", "", "")
		req.Host = host
		if resp, data := f.send(t, req, "", false); resp.StatusCode != 200 {
			t.Errorf("Host %s: %d %s", host, resp.StatusCode, data)
		}
	}
	// With a token, the token protects the API, whatever the Host.
	ft := newFixture(t, "a-token-of-enough-bytes")
	req := ft.request("GET", "/v1/clusters", "a-token-of-enough-bytes", "")
	req.Host = "api.example.com"
	if resp, data := ft.send(t, req, "", false); resp.StatusCode != 200 {
		t.Errorf("with a token: %d %s", resp.StatusCode, data)
	}
}

// Last write won, and a stale If-Match was ignored. Now every answer
// carries the version as its ETag, and a change sent with If-Match
// applies only at that version.
func TestIfMatch(t *testing.T) {
	f := newFixture(t, "")
	resp, _ := f.send(t, f.request("GET", "/v1/clusters/brokers/endpoints", "", ""), "", true)
	if etag := resp.Header.Get("ETag"); etag != `"1"` {
		t.Fatalf("ETag %q, want \"1\"", etag)
	}
	set := func(ifMatch, body string) (*http.Response, []byte) {
		req := f.request("PUT", "/v1/clusters/brokers/endpoints", "", body)
		if ifMatch != "" {
			req.Header.Set("If-Match", ifMatch)
		}
		return f.send(t, req, body, true)
	}
	one := `{"endpoints":[{"address":"127.0.0.1","port":1}]}`
	if resp, body := set(`"1"`, one); resp.StatusCode != 200 || resp.Header.Get("ETag") != `"2"` {
		t.Fatalf("PUT at the current version: %d %v %s", resp.StatusCode, resp.Header, body)
	}
	// Two writers read version 2; the first wins, the second is refused.
	two := `{"endpoints":[{"address":"127.0.0.1","port":2}]}`
	if resp, _ := set(`"2"`, two); resp.StatusCode != 200 {
		t.Fatalf("first writer: %d", resp.StatusCode)
	}
	done := f.unchanged(t)
	resp, body := set(`"2"`, one)
	if resp.StatusCode != 412 || !strings.Contains(errorOf(t, body), "current version is 3") {
		t.Errorf("stale PUT: %d %s", resp.StatusCode, body)
	}
	for _, req := range []*http.Request{
		f.request("POST", "/v1/clusters/brokers/endpoints", "", `{"address":"127.0.0.1","port":9}`),
		f.request("DELETE", "/v1/clusters/brokers/endpoints/127.0.0.1:2", "", ""),
	} {
		req.Header.Set("If-Match", `"2"`)
		body := ""
		if req.Method == "POST" {
			body = `{"address":"127.0.0.1","port":9}`
		}
		if resp, data := f.send(t, req, body, true); resp.StatusCode != 412 {
			t.Errorf("stale %s: %d %s", req.Method, resp.StatusCode, data)
		}
	}
	for _, bad := range []string{`2`, `W/"3"`, `"3", "4"`, `"x"`, `"0"`} {
		if resp, body := set(bad, one); resp.StatusCode != 400 || !strings.Contains(errorOf(t, body), "If-Match") {
			t.Errorf("If-Match %s: %d %s", bad, resp.StatusCode, body)
		}
	}
	done()
	if resp, _ := set("*", one); resp.StatusCode != 200 {
		t.Errorf("If-Match *: %d", resp.StatusCode)
	}
}

// A 401 carries the bearer challenge, and the scheme's name is
// case-insensitive.
func TestBearerScheme(t *testing.T) {
	f := newFixture(t, "s3cret-s3cret-s3cret")
	resp, _ := f.send(t, f.request("GET", "/v1/clusters", "", ""), "", false)
	if resp.StatusCode != 401 || resp.Header.Get("WWW-Authenticate") != `Bearer realm="mqtt-sticky"` {
		t.Errorf("no token: %d, WWW-Authenticate %q", resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
	}
	resp, _ = f.send(t, f.request("GET", "/v1/clusters", "wrong", ""), "", false)
	if resp.StatusCode != 401 || !strings.Contains(resp.Header.Get("WWW-Authenticate"), `error="invalid_token"`) {
		t.Errorf("wrong token: %d, WWW-Authenticate %q", resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
	}
	for _, scheme := range []string{"bearer", "BEARER", "Bearer"} {
		req := f.request("GET", "/v1/clusters", "", "")
		req.Header.Set("Authorization", scheme+" s3cret-s3cret-s3cret")
		if resp, _ := f.send(t, req, "", false); resp.StatusCode != 200 {
			t.Errorf("scheme %q: %d", scheme, resp.StatusCode)
		}
	}
}

// A method a path does not take gets 405 with Allow, not 404.
func TestMethodNotAllowed(t *testing.T) {
	f := newFixture(t, "")
	defer f.unchanged(t)()
	req, _ := http.NewRequest("PATCH", f.ts.URL+"/v1/clusters/brokers/endpoints", strings.NewReader(`{}`))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	allow := resp.Header.Get("Allow")
	if resp.StatusCode != 405 || !strings.Contains(allow, "GET") || !strings.Contains(allow, "PUT") || !strings.Contains(allow, "POST") ||
		!strings.Contains(errorOf(t, body), "PATCH is not allowed") {
		t.Errorf("PATCH: %d, Allow %q, %s", resp.StatusCode, allow, body)
	}
	resp, err = http.Get(f.ts.URL + "/v1/nowhere")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 404 || !strings.Contains(errorOf(t, body), "no route") {
		t.Errorf("unknown path: %d %s", resp.StatusCode, body)
	}
}

// A 500 said which file the state could not be written to. Now it says
// nothing about the server; the log has the details.
func TestInternalErrorRevealsNothing(t *testing.T) {
	dir := t.TempDir()
	statePath := filepath.Join(dir, "no-such-dir", "state.json")
	var logs bytes.Buffer
	f := newFixtureWith(t, model.Default(), store.NewFile(statePath), Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	code, body := f.call(t, "POST", "/v1/clusters/brokers/endpoints", "", `{"address":"127.0.0.1","port":9}`, true)
	msg := errorOf(t, body)
	if code != 500 || strings.Contains(string(body), dir) || strings.Contains(msg, "state") || !strings.Contains(msg, "log") {
		t.Errorf("%d %s", code, body)
	}
	if !strings.Contains(logs.String(), filepath.Dir(statePath)) {
		t.Errorf("the log lacks the detail:\n%s", logs.String())
	}
}

// /metrics can be put behind the token.
func TestMetricsBehindToken(t *testing.T) {
	f := newFixtureWith(t, model.Default(), store.NewFile(""), Options{Token: "metrics-token-16b", MetricsNeedToken: true})
	if resp, _ := f.send(t, f.request("GET", "/metrics", "", ""), "", false); resp.StatusCode != 401 {
		t.Errorf("without the token: %d", resp.StatusCode)
	}
	resp, body := f.send(t, f.request("GET", "/metrics", "metrics-token-16b", ""), "", false)
	if resp.StatusCode != 200 || !strings.Contains(string(body), "mqtt_sticky_api_requests_total") {
		t.Errorf("with the token: %d", resp.StatusCode)
	}
	open := newFixture(t, "metrics-token-16b")
	if resp, _ := open.send(t, open.request("GET", "/metrics", "", ""), "", false); resp.StatusCode != 200 {
		t.Errorf("open by default: %d", resp.StatusCode)
	}
}

// A body over MaxBody gets 413, declared or not.
func TestBodyTooLarge(t *testing.T) {
	f := newFixture(t, "")
	defer f.unchanged(t)()
	big := `{"endpoints":[` + strings.Repeat(`{"address":"127.0.0.1","port":1},`, MaxBody/30) + `]}`
	req := f.request("PUT", "/v1/clusters/brokers/endpoints", "", big)
	if resp, body := f.send(t, req, big, false); resp.StatusCode != 413 || !strings.Contains(errorOf(t, body), "too large") {
		t.Errorf("declared length: %d %s", resp.StatusCode, body)
	}
	req = f.request("PUT", "/v1/clusters/brokers/endpoints", "", "")
	req.Body = io.NopCloser(strings.NewReader(big)) // no length: chunked
	req.Header.Set("Content-Type", "application/json")
	if resp, body := f.send(t, req, big, false); resp.StatusCode != 413 {
		t.Errorf("chunked: %d %s", resp.StatusCode, body)
	}
}

// At the last version, a change is refused with 409 and says what to do.
func TestVersionExhausted(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	os.WriteFile(path, fmt.Appendf(nil, `{"version": %d, "clusters": {}}`, uint64(math.MaxUint64)), 0o644)
	f := newFixtureWith(t, model.Default(), store.NewFile(path), Options{})
	resp, _ := f.send(t, f.request("GET", "/v1/clusters/brokers/endpoints", "", ""), "", true)
	if resp.Header.Get("ETag") != `"18446744073709551615"` {
		t.Errorf("ETag %q", resp.Header.Get("ETag"))
	}
	code, body := f.call(t, "POST", "/v1/clusters/brokers/endpoints", "", `{"address":"127.0.0.1","port":9}`, true)
	if code != 409 || !strings.Contains(errorOf(t, body), "version 18446744073709551615 is the last one") {
		t.Errorf("%d %s", code, body)
	}
}

// Slowloris: 100 PUTs that never finish their body and 100 idle keep-alive
// connections held 200 goroutines for as long as the clients liked, before
// any authentication. The server now closes them within its timeouts (cut
// short here, so the test does not wait a minute).
func TestSlowClientsAreClosed(t *testing.T) {
	srv := server.New(server.Options{Registerer: prometheus.NewRegistry()})
	ctl := control.New(model.Default(), store.NewFile(""), srv, nil)
	if err := ctl.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	hs := NewServer(NewHandler(Fleet{Controller: ctl, Server: srv}, Options{Token: "slow-token-16-bytes"}))
	for _, d := range []time.Duration{hs.ReadHeaderTimeout, hs.ReadTimeout, hs.WriteTimeout, hs.IdleTimeout} {
		if d <= 0 {
			t.Fatalf("a timeout is not set: %+v", hs)
		}
	}
	if hs.MaxHeaderBytes <= 0 {
		t.Fatal("MaxHeaderBytes is not set")
	}
	hs.ReadHeaderTimeout, hs.ReadTimeout, hs.IdleTimeout = 300*time.Millisecond, 500*time.Millisecond, 500*time.Millisecond
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go hs.Serve(lis)
	defer hs.Close()
	addr := lis.Addr().String()
	baseline := runtime.NumGoroutine()

	var conns []net.Conn
	for i := range 200 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if i < 100 {
			// A PUT that promises 1000 bytes and sends 10.
			fmt.Fprintf(c, "PUT /v1/clusters/brokers/endpoints HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"+
				"Authorization: Bearer slow-token-16-bytes\r\nContent-Length: 1000\r\n\r\n{\"endpoint")
		} else {
			// A finished request, then silence on the kept-alive connection.
			fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
		}
		conns = append(conns, c)
	}
	// Every connection must be closed by the server: reading reaches EOF
	// (after whatever answer it got). The deadline only bounds a failure.
	for i, c := range conns {
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		if _, err := io.Copy(io.Discard, c); err != nil {
			t.Fatalf("connection %d was not closed by the server: %v", i, err)
		}
	}
	// And the server's goroutines are gone with them.
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > baseline+5 {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines, %d before the slow clients", runtime.NumGoroutine(), baseline)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Oversized headers get 431.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: %s\r\n\r\n", strings.Repeat("a", 64<<10))
	status := make([]byte, 12)
	io.ReadFull(c, status)
	if string(status) != "HTTP/1.1 431" {
		t.Errorf("64 KiB of headers: %q", status)
	}
}
