package tests

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The status page, in a real browser (Debian's Chromium, headless): with
// an Envoy connected and clients holding connections, the page shows the
// served version, the node's ACKs, every broker as healthy on that node,
// and each broker's connections exactly as the brokers themselves count
// the clients that reached them. A screenshot goes to the test's artifact
// directory (`make e2e` keeps it under build/test-output).
func TestStatusPageInBrowser(t *testing.T) {
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("chromium not found (%v): install Debian's chromium package (apt-get install chromium)", err)
	}
	brokers := startBrokers(t, 3)
	listenPort := freePort(t)
	cp := startControlPlane(t, fleetConfig(t, listenPort, brokers, healthOpts), filepath.Join(t.TempDir(), "state.json"))
	envoy := startXDSEnvoy(t, cp, "envoy-status-page", false)
	envoy.waitHosts(t, cp, brokers, 20*time.Second)
	addr := fmt.Sprintf("127.0.0.1:%d", listenPort)

	const held = 9
	for i := range held {
		holdConnection(t, addr, fmt.Sprintf("page-client-%d", i))
	}
	want := map[string]uint64{} // broker address -> clients held there
	byName := map[string]string{}
	for _, b := range brokers {
		byName[b.Name()] = b.Addr()
	}
	for id, b := range landedOn(brokers) {
		if strings.HasPrefix(id, "page-client-") {
			want[byName[b]]++
		}
	}
	// The control plane reads the node's admin /clusters every 2 s.
	ctx := context.Background()
	waitFor(t, 15*time.Second, "the control plane to report the held connections", func() bool {
		st, err := cp.client.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range st.Clusters {
			got := map[string]uint64{}
			for _, b := range c.Brokers {
				if b.Connections > 0 {
					got[b.Address] = b.Connections
				}
			}
			if c.Name == "brokers" && fmt.Sprint(got) == fmt.Sprint(want) {
				return true
			}
		}
		return false
	})

	url := "http://" + cp.apiAddr + "/"
	shot := filepath.Join(t.ArtifactDir(), "status-page.png")
	runChromium(t, chromium, "--screenshot="+shot, "--window-size=1280,1400", url)
	png, err := os.ReadFile(shot)
	if err != nil || !bytes.HasPrefix(png, []byte("\x89PNG\r\n\x1a\n")) || len(png) < 10_000 {
		t.Fatalf("no screenshot of the page at %s (%d bytes, %v)", shot, len(png), err)
	}
	t.Logf("screenshot of %s: %s (%d bytes)", url, shot, len(png))

	dom := runChromium(t, chromium, "--dump-dom", url)
	for _, s := range []string{
		"<title>mqtt-sticky status</title>",
		`<strong id="version">1</strong>`,
		"<td>envoy-status-page</td>",
		`<span class="ok">connected</span>`,
		`<span class="ok">ACK 1</span>`,
	} {
		if !strings.Contains(dom, s) {
			t.Errorf("the page lacks %s", s)
		}
	}
	rows := regexp.MustCompile(`<tr>\s*<td>([0-9.:]+)</td><td>[^<]*</td><td class="num">\d+</td>\s*<td class="num">(\d+)</td>\s*<td><span class="(ok|bad)">(\d+) of (\d+) nodes</span></td>`).FindAllStringSubmatch(dom, -1)
	if len(rows) != len(brokers) {
		t.Fatalf("the page shows %d broker rows with connections and health, want %d:\n%s", len(rows), len(brokers), dom)
	}
	for _, r := range rows {
		conns, _ := strconv.ParseUint(r[2], 10, 64)
		if conns != want[r[1]] {
			t.Errorf("broker %s: the page shows %d connections, the broker holds %d clients", r[1], conns, want[r[1]])
		}
		if r[3] != "ok" || r[4] != "1" || r[5] != "1" {
			t.Errorf("broker %s: healthy on %s of %s nodes (%s), want 1 of 1", r[1], r[4], r[5], r[3])
		}
	}
	t.Logf("the page shows %d brokers; connections per broker %v", len(rows), want)
}

// runChromium runs headless Chromium once with a fresh profile, on
// nothing but loopback, and returns what it writes to stdout.
func runChromium(t *testing.T, bin string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	base := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir=" + t.TempDir()}
	cmd := exec.CommandContext(ctx, bin, append(base, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("chromium %v: %v\n%s", args, err, lastLines(stderr.String(), 20))
	}
	return stdout.String()
}
