package tests

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mqtt-sticky/mqtt-sticky/api"
	"github.com/mqtt-sticky/mqtt-sticky/internal/broker"
)

// srvName is the SRV name the discovery tests resolve; brokerHost(i) is
// broker i's target host name, its stable identity.
var srvName = "_mqtt._tcp.brokers." + dnsDomain

func brokerHost(name string) string { return name + "." + dnsDomain }

// srvRecords lists the brokers under srvName, each target resolving to
// the broker's address.
func srvRecords(bs ...*broker.Broker) dnsRecords {
	r := dnsRecords{hosts: map[string][]string{}, srv: map[string][]srvRecord{}}
	for _, b := range bs {
		host, port, _ := net.SplitHostPort(b.Addr())
		var p int
		fmt.Sscan(port, &p)
		r.hosts[brokerHost(b.Name())] = []string{host}
		r.srv[srvName] = append(r.srv[srvName], srvRecord{target: brokerHost(b.Name()), port: p})
	}
	return r
}

// discoveredConfig writes a serve config whose cluster "brokers" takes its
// endpoints from DNS.
func discoveredConfig(t *testing.T, listenPort int, clusterOpts string) string {
	t.Helper()
	cfg := fmt.Sprintf(`listeners:
- name: mqtt
  address: 127.0.0.1
  port: %d
  access_log: true
  filter: {connect_timeout_ms: 5000}
clusters:
- name: brokers
%s
`, listenPort, clusterOpts)
	path := filepath.Join(t.TempDir(), "mqtt-sticky.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// discoveryStatus returns cluster "brokers"' discovery status.
func discoveryStatus(t *testing.T, cp *controlPlane) (*api.ClusterStatus, uint64) {
	t.Helper()
	st, err := cp.client.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range st.Clusters {
		if c.Name == "brokers" && c.Discovery != nil {
			return &c, st.Version
		}
	}
	t.Fatalf("no discovery status for cluster brokers: %+v", st.Clusters)
	return nil, 0
}

// waitDiscovery polls /v1/status until ok holds for the discovery status.
func waitDiscovery(t *testing.T, cp *controlPlane, what string, ok func(api.ClusterStatus) bool) api.ClusterStatus {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, _ := discoveryStatus(t, cp)
		if ok(*c) {
			return *c
		}
		if time.Now().After(deadline) {
			t.Fatalf("discovery status never showed %s: %+v", what, c.Discovery)
		}
		time.Sleep(20 * time.Millisecond) // polling interval of a readiness check
	}
}

// Scaling 3 -> 4 -> 3 brokers by editing DNS SRV records only moves about
// a quarter of the client IDs, none between untouched brokers (ring hash:
// none; Maglev: under 1%), and puts them back. A failed lookup and an
// empty answer change nothing and show in /v1/status. A broker that comes
// back on a new address under the same name keeps every client ID. The
// brokers refuse PROXY LOCAL headers, like RabbitMQ 3.10.
func TestDNSDiscovery(t *testing.T) {
	for _, policy := range []string{"maglev", "ring_hash"} {
		t.Run(policy, func(t *testing.T) {
			brokers := startStrictBrokers(t, 4)
			b1, b2, b3 := brokers[0], brokers[1], brokers[2]
			dnsSrv := startDNS(t, srvRecords(b1, b2, b3))
			listenPort := freePort(t)
			cfg := discoveredConfig(t, listenPort, fmt.Sprintf(`  lb_policy: %s
%s
  discovery: {dns: {name: %s, record: srv, interval: 200ms, resolver: %s}}`, policy, healthOpts, srvName, dnsSrv.Addr()))
			cp := startControlPlane(t, cfg, filepath.Join(t.TempDir(), "state.json"))
			envoy := startXDSEnvoy(t, cp, "envoy-dns-"+policy, false)
			envoy.waitHosts(t, cp, brokers[:3], 20*time.Second)
			addr := fmt.Sprintf("127.0.0.1:%d", listenPort)
			ids := clientIDs(1000, "dns")
			before := connectAll(t, addr, brokers, ids, 0)

			// 3 -> 4, by DNS only.
			dnsSrv.set(t, srvRecords(brokers...))
			envoy.waitHosts(t, cp, brokers, 10*time.Second)
			after := connectAll(t, addr, brokers, ids, 1)
			moved, strays := movedIDs(ids, before, after, brokers[3].Name())
			t.Logf("%s: DNS 3 -> 4 brokers moved %d of %d IDs (%.3f; ideal 0.250), %d between untouched brokers",
				policy, moved, len(ids), float64(moved)/float64(len(ids)), strays)
			if frac := float64(moved) / float64(len(ids)); frac > 1.1/4 || moved == 0 {
				t.Errorf("moved fraction %.3f, want between 0 and %.3f", frac, 1.1/4)
			}
			checkStrays(t, policy, "a broker added by DNS", strays, len(ids))

			// 4 -> 3: everyone is back.
			dnsSrv.set(t, srvRecords(b1, b2, b3))
			envoy.waitHosts(t, cp, brokers[:3], 10*time.Second)
			back := connectAll(t, addr, brokers, ids, 2)
			if moved, _ := movedIDs(ids, before, back, ""); moved != 0 {
				t.Errorf("%s: %d IDs are not back on their broker after DNS 4 -> 3", policy, moved)
			}

			checkLookupFailures(t, cp, envoy, dnsSrv, brokers[:3])

			// b2 comes back on a new address under the same name.
			_, version := discoveryStatus(t, cp)
			b2.Close()
			moved2 := strictBroker(t, b2.Name(), fmt.Sprintf("%s.%d", brokerNet(), 12))
			dnsSrv.set(t, srvRecords(b1, moved2, b3))
			now := []*broker.Broker{b1, moved2, b3}
			envoy.waitHosts(t, cp, now, 10*time.Second)
			if _, v := discoveryStatus(t, cp); v != version+1 {
				t.Errorf("the address change made version %d, want %d", v, version+1)
			}
			renamed := connectAll(t, addr, now, ids, 3)
			if moved, _ := movedIDs(ids, before, renamed, ""); moved != 0 {
				t.Errorf("%s: %d IDs moved when %s returned on %s under the same name", policy, moved, b2.Name(), moved2.Addr())
			} else {
				t.Logf("%s: %s moved from %s to %s under the same name: 0 of %d IDs moved", policy, b2.Name(), b2.Addr(), moved2.Addr(), len(ids))
			}
			for _, b := range now {
				if b.LocalRejected() != 0 || b.Forwarded() == 0 {
					t.Errorf("%s: %d LOCAL headers refused, %d forwarded clients", b.Name(), b.LocalRejected(), b.Forwarded())
				}
			}
		})
	}
}

// checkLookupFailures stops the DNS server, then serves an empty answer:
// both keep the endpoints and the version, and /v1/status says why.
func checkLookupFailures(t *testing.T, cp *controlPlane, envoy *xdsEnvoy, dnsSrv *dnsServer, serving []*broker.Broker) {
	t.Helper()
	_, version := discoveryStatus(t, cp)
	good := dnsSrv.records
	dnsSrv.stop(t)
	st := waitDiscovery(t, cp, "failed lookups", func(c api.ClusterStatus) bool { return c.Discovery.Failing >= 3 })
	t.Logf("DNS server down: %d failed lookups, last error %q, %d endpoints kept", st.Discovery.Failing, st.Discovery.LastError, st.Discovery.Records)
	if _, v := discoveryStatus(t, cp); v != version || st.Discovery.LastError == "" || st.Discovery.Records != len(serving) {
		t.Errorf("a failed lookup changed something: version %d -> %d, status %+v", version, v, st.Discovery)
	}
	envoy.waitHosts(t, cp, serving, time.Second)

	dnsSrv.write(t, dnsRecords{txt: []string{srvName}})
	dnsSrv.start(t)
	st = waitDiscovery(t, cp, "an empty answer", func(c api.ClusterStatus) bool {
		return strings.Contains(c.Discovery.LastError, "no records") && c.Discovery.Failing >= 2
	})
	t.Logf("empty answer: %q", st.Discovery.LastError)
	if _, v := discoveryStatus(t, cp); v != version {
		t.Errorf("an empty answer changed the version: %d -> %d", version, v)
	}
	envoy.waitHosts(t, cp, serving, time.Second)
	if out, code := runCLI(t, cp, "status"); code != 0 || !contains(out, "keeping the last good endpoints") {
		t.Errorf("mqtt-sticky status does not show the failing lookups: exit %d\n%s", code, out)
	}
	metrics := cpMetrics(t, cp)
	for _, want := range []string{`mqtt_sticky_discovery_lookups_total{cluster="brokers",result="failed"}`, `mqtt_sticky_discovery_lookups_total{cluster="brokers",result="empty"}`} {
		if !contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	dnsSrv.set(t, good)
	waitDiscovery(t, cp, "recovery", func(c api.ClusterStatus) bool { return c.Discovery.Failing == 0 })
	if _, v := discoveryStatus(t, cp); v != version {
		t.Errorf("the same records after the outage changed the version: %d -> %d", version, v)
	}
}

// movedIDs counts the IDs whose broker differs, and among them those that
// went anywhere but to newBroker.
func movedIDs(ids []string, before, after map[string]string, newBroker string) (moved, strays int) {
	for _, id := range ids {
		if after[id] != before[id] {
			moved++
			if after[id] != newBroker {
				strays++
			}
		}
	}
	return moved, strays
}

func cpMetrics(t *testing.T, cp *controlPlane) string {
	t.Helper()
	out, err := httpGet("http://" + cp.apiAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// How long a DNS change takes to be served: A records edited 20 times
// (a broker added, then removed), each measured from the SIGHUP that makes
// dnsmasq read them to Envoy acknowledging the version with exactly the
// wanted brokers healthy. The lookup interval is 200ms.
func TestDNSChangeToServed(t *testing.T) {
	brokers := startStrictBrokers(t, 3)
	name := "brokers-a." + dnsDomain
	aRecords := func(bs ...*broker.Broker) dnsRecords {
		r := dnsRecords{hosts: map[string][]string{}}
		for _, b := range bs {
			host, _, _ := net.SplitHostPort(b.Addr())
			r.hosts[name] = append(r.hosts[name], host)
		}
		return r
	}
	dnsSrv := startDNS(t, aRecords(brokers[:2]...))
	listenPort := freePort(t)
	cfg := discoveredConfig(t, listenPort, fmt.Sprintf(`%s
  discovery: {dns: {name: %s, port: 18831, record: a, interval: 200ms, resolver: %s}}`, healthOpts, name, dnsSrv.Addr()))
	cp := startControlPlane(t, cfg, filepath.Join(t.TempDir(), "state.json"))
	envoy := startXDSEnvoy(t, cp, "envoy-dns-a", false)
	envoy.waitHosts(t, cp, brokers[:2], 20*time.Second)
	var took []time.Duration
	for i := range 20 {
		want := brokers[:2+(i+1)%2] // 3, 2, 3, ...
		dnsSrv.write(t, aRecords(want...))
		dnsSrv.reload(t)
		start := time.Now()
		envoy.waitHosts(t, cp, want, 10*time.Second)
		took = append(took, time.Since(start))
	}
	slices.Sort(took)
	t.Logf("DNS change to served, %d changes (lookup interval 200ms): median %v, max %v, min %v",
		len(took), took[len(took)/2].Round(time.Millisecond), took[len(took)-1].Round(time.Millisecond), took[0].Round(time.Millisecond))
}

func httpGet(url string) (string, error) {
	resp, err := http.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return string(body), fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return string(body), err
}
