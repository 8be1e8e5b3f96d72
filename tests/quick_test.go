package tests

import (
	"bufio"
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/mqtt-sticky/mqtt-sticky/filter/mqtt"
)

// The module routes a plain CONNECT in C (filter/quick) and any other in
// Go (filter/mqtt and package filter). The two paths must be one filter to
// the outside: for each client ID, a CONNECT C routes and one it leaves to
// Go (a UTF-8 will topic in 3.1.1, a user property in 5.0) reach the same
// broker through the real Envoy, with the same access-log fields and the
// same counters.
func TestCAndGoRouteAlike(t *testing.T) {
	const ids = 60
	brokers := startBrokers(t, 3)
	listenPort := freePort(t)
	cp := startControlPlane(t, fleetConfig(t, listenPort, brokers, healthOpts), filepath.Join(t.TempDir(), "state.json"))
	envoy := startXDSEnvoy(t, cp, "envoy-c-and-go", false)
	envoy.waitHosts(t, cp, brokers, 20*time.Second)
	addr := fmt.Sprintf("127.0.0.1:%d", listenPort)

	variants := []struct {
		path string
		p    func(id string) mqtt.ConnectPacket
	}{
		{"C", func(id string) mqtt.ConnectPacket {
			return mqtt.ConnectPacket{Connect: mqtt.Connect{Level: mqtt.Level311, ClientID: id, CleanStart: true, KeepAlive: 30}}
		}},
		{"Go", func(id string) mqtt.ConnectPacket {
			return mqtt.ConnectPacket{Connect: mqtt.Connect{Level: mqtt.Level311, ClientID: id, CleanStart: true, KeepAlive: 30, Will: true},
				WillTopic: "zustand/gerät", WillPayload: []byte("offline")}
		}},
		{"C", func(id string) mqtt.ConnectPacket {
			return mqtt.ConnectPacket{Connect: mqtt.Connect{Level: mqtt.Level5, ClientID: id, CleanStart: true, KeepAlive: 30, SessionExpiry: 60}}
		}},
		{"Go", func(id string) mqtt.ConnectPacket {
			return mqtt.ConnectPacket{Connect: mqtt.Connect{Level: mqtt.Level5, ClientID: id, CleanStart: true, KeepAlive: 30},
				Properties: []byte{0x26, 0, 4, 's', 'i', 't', 'e', 0, 1, '7'}}
		}},
	}
	ctx := context.Background()
	// An ID's connections go one after another: two CONNECTs with one
	// client ID at once make the broker take the session over, and the
	// loser would read a DISCONNECT.
	connect := func(n int, id string, p mqtt.ConnectPacket, path string) error {
		c, err := dialFrom(ctx, source(n), addr)
		if err != nil {
			return err
		}
		defer c.Close()
		if _, err := c.Write(mqtt.AppendConnect(nil, &p)); err != nil {
			return err
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if typ, _, err := readPacket(bufio.NewReader(c)); err != nil || typ>>4 != 2 {
			return fmt.Errorf("%s by %s: no CONNACK (type %#x): %v", id, path, typ, err)
		}
		return nil
	}
	err := runParallel(ids, 8, func(i int) error {
		id := fmt.Sprintf("same-%03d", i)
		for v, variant := range variants {
			if err := connect(i*len(variants)+v, id, variant.p(id), variant.path); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	var entries []accessLine
	waitFor(t, 10*time.Second, "Envoy logs every connection", func() bool {
		entries = accessLogLines(t, envoy.log)
		return len(entries) >= ids*len(variants)
	})
	seen := brokerOf(brokers)
	brokerByID := map[string]map[string]bool{}
	versions := map[string]map[string]int{}
	for _, e := range entries {
		b, ok := seen[e.ClientID+"|"+e.From]
		if !ok {
			t.Fatalf("access log names %s from %s, which no broker saw with that PROXY source", e.ClientID, e.From)
		}
		if brokerByID[e.ClientID] == nil {
			brokerByID[e.ClientID], versions[e.ClientID] = map[string]bool{}, map[string]int{}
		}
		brokerByID[e.ClientID][b] = true
		versions[e.ClientID][e.Version]++
	}
	for i := range ids {
		id := fmt.Sprintf("same-%03d", i)
		if len(brokerByID[id]) != 1 {
			t.Errorf("%s reached brokers %v by C and by Go; want one", id, brokerByID[id])
		}
		if v := versions[id]; v["3.1.1"] != 2 || v["5.0"] != 2 {
			t.Errorf("%s: access log protocol versions %v; want 2 of 3.1.1 and 2 of 5.0", id, v)
		}
	}
	st := filterStats(t, envoy.Process)
	if st["mqtt_sticky.connect_mqtt311"] != 2*ids || st["mqtt_sticky.connect_mqtt5"] != 2*ids || st["mqtt_sticky.accepted"] != 4*ids {
		t.Errorf("accepted %d, connect_mqtt311 %d, connect_mqtt5 %d; want %d, %d and %d",
			st["mqtt_sticky.accepted"], st["mqtt_sticky.connect_mqtt311"], st["mqtt_sticky.connect_mqtt5"], 4*ids, 2*ids, 2*ids)
	}
}
