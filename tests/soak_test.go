package tests

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/mqtt-sticky/mqtt-sticky/bench/soak"
)

// Connection churn and QoS 1 traffic through Envoy fed by the control
// plane: after the warm-up, the resident memory of Envoy and of the
// control plane stays within 5%, their open descriptors do not grow, and
// once the churn stops every connection the filter accepted is accounted
// for (routed or refused) and none is left waiting. MQTT_STICKY_SOAK sets
// the length (30m for the documented run, `make bench-soak`); CI runs 45s.
func TestSoak(t *testing.T) {
	d := envDuration(t, "MQTT_STICKY_SOAK", 45*time.Second)
	warmup := min(d/3, 5*time.Minute)
	brokers := startBrokers(t, 3)
	listenPort := freePort(t)
	cp := startControlPlane(t, fleetConfig(t, listenPort, brokers, healthOpts), filepath.Join(t.TempDir(), "state.json"))
	envoy := startXDSEnvoy(t, cp, "envoy-soak", false)
	envoy.waitHosts(t, cp, brokers, 20*time.Second)

	opts := soak.Options{
		Addr:        fmt.Sprintf("127.0.0.1:%d", listenPort),
		Duration:    d,
		Warmup:      warmup,
		Interval:    max(time.Second, d/600),
		ChurnRate:   100,
		QoS1Clients: 20,
		QoS1Rate:    5,
		Watch:       []soak.Process{{Name: "Envoy", Pid: envoy.Pid()}, {Name: "control plane", Pid: cp.cmd.Process.Pid}},
		Gauge: func() (int64, error) {
			st, err := envoy.Stats(context.Background(), "mqtt_sticky.waiting_for_connect")
			return st["mqtt_sticky.waiting_for_connect"], err
		},
	}
	res, err := soak.Run(t.Context(), opts)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "no connection left waiting for its CONNECT", func() bool {
		return filterStats(t, envoy.Process)["mqtt_sticky.waiting_for_connect"] == 0
	})
	st := filterStats(t, envoy.Process)
	checkFilterCounters(t, st)

	envoyRSS, cpRSS := res.RSSDrift("Envoy"), res.RSSDrift("control plane")
	envoyFDs, cpFDs := res.FDDrift("Envoy"), res.FDDrift("control plane")
	summary := fmt.Sprintf("%v soak (warm-up %v): %d connections churned (%d errors), %d QoS 1 messages acknowledged and %d delivered (%d errors); "+
		"after the warm-up, Envoy RSS %.1f MB, at most %+.1f%%, at the end %+.1f%%; control plane RSS %.1f MB, at most %+.1f%%, at the end %+.1f%%; "+
		"Envoy descriptors %.0f → %.0f (max %.0f), control plane %.0f → %.0f; accepted %d = routed %d + refused %d",
		d, warmup, res.Churned, res.ChurnErrors, res.Published, res.Received, res.QoSErrors,
		envoyRSS.First/(1<<20), envoyRSS.MaxPct, envoyRSS.LastPct, cpRSS.First/(1<<20), cpRSS.MaxPct, cpRSS.LastPct,
		envoyFDs.First, envoyFDs.Last, envoyFDs.Max, cpFDs.First, cpFDs.Last,
		st["mqtt_sticky.accepted"], st["mqtt_sticky.connect_mqtt311"], st["mqtt_sticky.accepted"]-st["mqtt_sticky.connect_mqtt311"])
	t.Log(summary)
	if res.ChurnErrors > res.Churned/1000 || res.QoSErrors > 0 || res.Published == 0 || res.Received == 0 {
		t.Errorf("traffic failed: %d churn errors of %d, %d QoS 1 errors, %d acknowledged, %d delivered", res.ChurnErrors, res.Churned, res.QoSErrors, res.Published, res.Received)
	}
	for _, c := range []struct {
		name string
		d    soak.Drift
	}{{"Envoy", envoyRSS}, {"control plane", cpRSS}} {
		if c.d.MaxPct > 5 || c.d.LastPct > 5 {
			t.Errorf("%s RSS grew after the warm-up: %.1f MB, at most %+.1f%%, at the end %+.1f%% (limit 5%%)", c.name, c.d.First/(1<<20), c.d.MaxPct, c.d.LastPct)
		}
	}
	// Descriptors: Envoy's move with the churn in flight (two per
	// connection for a few milliseconds each); a leak grows with time.
	if envoyFDs.Last > envoyFDs.First+20 || cpFDs.Last > cpFDs.First+2 {
		t.Errorf("open descriptors grew: Envoy %.0f → %.0f, control plane %.0f → %.0f", envoyFDs.First, envoyFDs.Last, cpFDs.First, cpFDs.Last)
	}
	if dir := os.Getenv("MQTT_STICKY_REPORT_DIR"); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "benchmarks-soak.svg"), []byte(res.SVG(fmt.Sprintf("Soak: %v of churn at %d connections/s and QoS 1 traffic through Envoy", d, opts.ChurnRate))), 0o644); err != nil {
			t.Fatal(err)
		}
		writeReport(t, "soak.md", soakReport(d, warmup, opts, res, st, envoyRSS, cpRSS, envoyFDs, cpFDs))
	}
}

func soakReport(d, warmup time.Duration, opts soak.Options, res *soak.Result, st map[string]int64, envoyRSS, cpRSS, envoyFDs, cpFDs soak.Drift) string {
	routed := st["mqtt_sticky.connect_mqtt311"] + st["mqtt_sticky.connect_mqtt31"] + st["mqtt_sticky.connect_mqtt5"]
	return fmt.Sprintf(`## Soak

`+"`make bench-soak`"+` (TestSoak with MQTT_STICKY_SOAK=%v): %v of connection churn (%d connections a second, each CONNECT → CONNACK → close) and QoS 1 traffic (%d clients, each publishing %d messages a second to a topic it subscribes to at QoS 1) through one Envoy fed by the control plane, in front of three brokers. Resident memory and open descriptors are sampled every %v; the verdicts ignore the first %v (warm-up). CI runs the same test for 45 s.

| | after the warm-up | largest change | at the end | limit |
|---|---|---|---|---|
| Envoy resident memory | %.1f MB | %+.1f%% | %+.1f%% | 5%% |
| control plane resident memory | %.1f MB | %+.1f%% | %+.1f%% | 5%% |
| Envoy open descriptors | %.0f | max %.0f | %.0f | no growth |
| control plane open descriptors | %.0f | max %.0f | %.0f | no growth |

Traffic: %d connections churned (%d errors); %d QoS 1 messages acknowledged by the broker and %d delivered back (%d errors). At the end waiting_for_connect was 0, and the filter's counters add up: accepted %d = routed %d + refused %d.

![Resident memory and open descriptors during the soak](benchmarks-soak.svg)
`, d, d, opts.ChurnRate, opts.QoS1Clients, opts.QoS1Rate, opts.Interval, warmup,
		envoyRSS.First/(1<<20), envoyRSS.MaxPct, envoyRSS.LastPct, cpRSS.First/(1<<20), cpRSS.MaxPct, cpRSS.LastPct,
		envoyFDs.First, envoyFDs.Max, envoyFDs.Last, cpFDs.First, cpFDs.Max, cpFDs.Last,
		res.Churned, res.ChurnErrors, res.Published, res.Received, res.QoSErrors, st["mqtt_sticky.accepted"], routed, st["mqtt_sticky.accepted"]-routed)
}
