package tests

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/mqtt-sticky/mqtt-sticky/filter/mqtt"
)

// 1,000 client IDs connect three times each, half with MQTT 3.1.1 and half
// with 5.0, every time from a different source address and port. Each ID
// must reach the same broker every time, every broker must get some IDs,
// and the PROXY header each broker received must carry the client's real
// address and port.
func TestStickyRoutingByClientID(t *testing.T) {
	const ids, rounds = 1000, 3
	s := startStatic(t, startBrokers(t, 3), "")
	ctx := context.Background()

	attempts := make([][]attempt, rounds)
	for r := range rounds {
		attempts[r] = make([]attempt, ids)
		err := runParallel(ids, 16, func(i int) error {
			version := 4
			if i%2 == 1 {
				version = 5
			}
			a, err := connectPaho(ctx, s.addr, source(i+r*83), fmt.Sprintf("device-%04d", i), version)
			attempts[r][i] = a
			return err
		})
		if err != nil {
			t.Fatalf("round %d: %v", r, err)
		}
	}

	seen := brokerOf(s.brokers)
	perBroker := map[string]int{}
	for i := range ids {
		var first string
		sources := map[string]bool{}
		for r := range rounds {
			a := attempts[r][i]
			host, _, _ := net.SplitHostPort(a.local)
			sources[host] = true
			b, ok := seen[a.clientID+"|"+a.local]
			if !ok {
				t.Fatalf("%s from %s: no broker recorded a connection with that PROXY source address", a.clientID, a.local)
			}
			if r == 0 {
				first = b
				perBroker[b]++
			} else if b != first {
				t.Errorf("%s: round 0 reached %s, round %d reached %s", a.clientID, first, r, b)
			}
		}
		if len(sources) != rounds {
			t.Fatalf("client %d connected from %d distinct addresses, want %d", i, len(sources), rounds)
		}
	}
	t.Logf("client IDs per broker: %v", perBroker)
	for _, b := range s.brokers {
		if perBroker[b.Name()] == 0 {
			t.Errorf("broker %s received no client IDs", b.Name())
		}
	}
	st := s.stats(t)
	if st["mqtt_sticky.connect_mqtt311"] != ids*rounds/2 || st["mqtt_sticky.connect_mqtt5"] != ids*rounds/2 {
		t.Errorf("connect counters = %d (3.1.1), %d (5.0); want %d each", st["mqtt_sticky.connect_mqtt311"], st["mqtt_sticky.connect_mqtt5"], ids*rounds/2)
	}
	if st["mqtt_sticky.waiting_for_connect"] != 0 {
		t.Errorf("waiting_for_connect = %d after all clients routed", st["mqtt_sticky.waiting_for_connect"])
	}
}

// sameBrokerIDs returns two client IDs, with the given prefixes, that the
// running Envoy sends to the same broker, found by connecting candidates.
func sameBrokerIDs(t *testing.T, s *staticStack, a, b string) (string, string) {
	return pairIDs(t, s, a, b, true)
}

// differentBrokerIDs returns two client IDs that Envoy sends to different
// brokers.
func differentBrokerIDs(t *testing.T, s *staticStack, a, b string) (string, string) {
	return pairIDs(t, s, a, b, false)
}

func pairIDs(t *testing.T, s *staticStack, a, b string, same bool) (string, string) {
	t.Helper()
	ctx := context.Background()
	first := a + "-0"
	if _, err := connectPaho(ctx, s.addr, source(0), first, 4); err != nil {
		t.Fatal(err)
	}
	target := landedOn(s.brokers)[first]
	for i := range 100 {
		id := fmt.Sprintf("%s-%d", b, i)
		if _, err := connectPaho(ctx, s.addr, source(1), id, 4); err != nil {
			t.Fatal(err)
		}
		if got := landedOn(s.brokers)[id]; got != "" && (got == target) == same {
			return first, id
		}
	}
	t.Fatalf("no %s-* ID among 100 found for broker %s (same broker: %v)", b, target, same)
	return "", ""
}

// pubSub is a subscriber and a publisher connected through Envoy, used to
// show that traffic keeps flowing.
type pubSub struct {
	sub, pub paho3.Client
	topic    string
	got      chan string
	lost     atomic.Int32
}

func newPubSub(t *testing.T, addr, subID, pubID, topic string) *pubSub {
	t.Helper()
	ps := &pubSub{topic: topic, got: make(chan string, 1024)}
	client := func(id string) paho3.Client {
		opts := paho3.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(id).
			SetAutoReconnect(false).SetConnectRetry(false).SetKeepAlive(30 * time.Second).
			SetConnectionLostHandler(func(paho3.Client, error) { ps.lost.Add(1) })
		c := paho3.NewClient(opts)
		if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("connect %s: %v", id, tok.Error())
		}
		t.Cleanup(func() { c.Disconnect(0) })
		return c
	}
	ps.sub = client(subID)
	tok := ps.sub.Subscribe(topic, 1, func(_ paho3.Client, m paho3.Message) { ps.got <- string(m.Payload()) })
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	ps.pub = client(pubID)
	return ps
}

// roundTrip publishes one message at QoS 1 and waits for the subscriber
// to receive it.
func (ps *pubSub) roundTrip(payload string) error {
	tok := ps.pub.Publish(ps.topic, 1, false, payload)
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		return fmt.Errorf("publish %q: %v", payload, tok.Error())
	}
	timeout := time.After(5 * time.Second)
	for {
		select {
		case got := <-ps.got:
			if got == payload {
				return nil
			}
		case <-timeout:
			return fmt.Errorf("message %q not delivered within 5s", payload)
		}
	}
}

// A subscriber and a publisher with different client IDs, both through
// Envoy, exchange a message: the proxy is transparent to MQTT traffic.
func TestPublishSubscribeThroughEnvoy(t *testing.T) {
	s := startStatic(t, startBrokers(t, 3), "")
	subID, pubID := sameBrokerIDs(t, s, "sub", "pub")
	ps := newPubSub(t, s.addr, subID, pubID, "sensors/kitchen/temp")
	for i := range 20 {
		if err := ps.roundTrip(fmt.Sprintf("21.%d", i)); err != nil {
			t.Fatal(err)
		}
	}
}

// A CONNECT that arrives one byte at a time, and a CONNECT pipelined with
// SUBSCRIBE and PUBLISH in a single write, both work.
func TestSlowAndPipelinedConnect(t *testing.T) {
	s := startStatic(t, startBrokers(t, 3), "")
	ctx := context.Background()

	t.Run("one byte at a time", func(t *testing.T) {
		c, err := dialFrom(ctx, source(7), s.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		for _, b := range rawConnect(mqtt.Level311, "slow-writer") {
			if _, err := c.Write([]byte{b}); err != nil {
				t.Fatal(err)
			}
			time.Sleep(3 * time.Millisecond) // the scenario itself: a slow client, not a wait for readiness
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		typ, body, err := readPacket(bufio.NewReader(c))
		if err != nil || typ != 0x20 || !bytes.Equal(body, []byte{0, 0}) {
			t.Fatalf("CONNACK = %#x % x, %v; want 0x20 00 00", typ, body, err)
		}
	})

	t.Run("pipelined with SUBSCRIBE and PUBLISH", func(t *testing.T) {
		for _, level := range []mqtt.Level{mqtt.Level311, mqtt.Level5} {
			c, err := dialFrom(ctx, source(8), s.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			topic := "pipe/" + level.String()
			var out []byte
			out = append(out, rawConnect(level, "pipeliner-"+level.String())...)
			out = append(out, subscribePacket(level, 1, topic)...)
			out = append(out, publishPacket(level, topic, "hello")...)
			if _, err := c.Write(out); err != nil {
				t.Fatal(err)
			}
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			r := bufio.NewReader(c)
			var types []byte
			var payload []byte
			for len(types) < 3 {
				typ, body, err := readPacket(r)
				if err != nil {
					t.Fatalf("MQTT %s: after %x: %v", level, types, err)
				}
				types = append(types, typ&0xf0)
				if typ&0xf0 == 0x30 {
					payload = body
				}
			}
			if !bytes.Equal(types, []byte{0x20, 0x90, 0x30}) || !bytes.HasSuffix(payload, []byte("hello")) {
				t.Fatalf("MQTT %s: got packet types % x (PUBLISH body %q); want CONNACK, SUBACK, PUBLISH", level, types, payload)
			}
		}
	})
}

func subscribePacket(level mqtt.Level, id uint16, topic string) []byte {
	return mqtt.AppendSubscribe(nil, level, id, topic)
}

func publishPacket(level mqtt.Level, topic, payload string) []byte {
	return mqtt.AppendPublish(nil, level, topic, []byte(payload))
}

// Bad input closes that one connection before any broker connection is
// opened, bumps the counter for its reason, and disturbs nobody else: a
// publish/subscribe loop keeps running throughout.
func TestBadInputIsRefused(t *testing.T) {
	s := startStatic(t, startBrokers(t, 3), `{"connect_timeout_ms": 1000}`)
	ctx := context.Background()

	subID, pubID := sameBrokerIDs(t, s, "bystander-sub", "bystander-pub")
	ps := newPubSub(t, s.addr, subID, pubID, "bystander/loop")
	stop := make(chan struct{})
	var loopErr error
	var delivered atomic.Int32
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if err := ps.roundTrip(fmt.Sprintf("m%d", i)); err != nil {
				loopErr = err
				return
			}
			delivered.Add(1)
		}
	}()

	accepted := func() (n int64) { // client connections, not health-check probes
		for _, b := range s.brokers {
			n += b.Forwarded()
		}
		return n
	}
	before := accepted()

	valid := rawConnect(mqtt.Level311, "truncated-client")
	tests := []struct {
		name      string
		send      []byte
		halfClose bool
		counter   string
		within    time.Duration
	}{
		{"HTTP request", []byte("GET / HTTP/1.1\r\nHost: broker\r\n\r\n"), false, "rejected_not_connect", 5 * time.Second},
		{"truncated CONNECT", valid[:len(valid)/2], true, "rejected_truncated", 5 * time.Second},
		{"Remaining Length over the limit", []byte{0x10, 0xff, 0xff, 0x7f}, false, "rejected_too_large", 5 * time.Second},
		{"wrong protocol name", []byte{0x10, 12, 0, 4, 'M', 'Q', 'T', 'X', 4, 2, 0, 60, 0, 0}, false, "rejected_protocol_name", 5 * time.Second},
		{"silent client", nil, false, "timeout", 10 * time.Second},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			counter := "mqtt_sticky." + tt.counter
			was := s.stats(t)[counter]
			c, err := dialFrom(ctx, source(100+i), s.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			start := time.Now()
			if len(tt.send) > 0 {
				if _, err := c.Write(tt.send); err != nil {
					t.Fatal(err)
				}
			}
			if tt.halfClose {
				c.(*net.TCPConn).CloseWrite()
			}
			expectClosed(t, c, tt.within)
			if tt.counter == "timeout" && time.Since(start) < 900*time.Millisecond {
				t.Errorf("silent client closed after %v, before the 1s connect timeout", time.Since(start))
			}
			if got := s.stats(t)[counter]; got != was+1 {
				t.Errorf("%s = %d, want %d", counter, got, was+1)
			}
		})
	}
	if got := accepted(); got != before {
		t.Errorf("brokers accepted %d connections during the bad-input cases, want 0", got-before)
	}
	close(stop)
	wg.Wait()
	if loopErr != nil {
		t.Fatalf("publish/subscribe loop broke while bad input was refused: %v", loopErr)
	}
	if delivered.Load() == 0 || ps.lost.Load() != 0 {
		t.Fatalf("publish/subscribe loop delivered %d messages and lost %d connections", delivered.Load(), ps.lost.Load())
	}
	t.Logf("bystander delivered %d messages during the bad-input cases", delivered.Load())
	if st := s.stats(t); st["mqtt_sticky.waiting_for_connect"] != 0 {
		t.Errorf("waiting_for_connect = %d after every refused connection closed", st["mqtt_sticky.waiting_for_connect"])
	}
}

// With empty_key "reject", an empty client ID is answered with the CONNACK
// code its protocol version defines, then closed.
func TestEmptyClientIDRejected(t *testing.T) {
	s := startStatic(t, startBrokers(t, 2), `{"empty_key": "reject"}`)
	ctx := context.Background()
	before := s.brokers[0].Forwarded() + s.brokers[1].Forwarded()
	for _, tt := range []struct {
		level mqtt.Level
		want  []byte
	}{
		{mqtt.Level311, []byte{0x20, 0x02, 0x00, 0x02}},     // identifier rejected
		{mqtt.Level5, []byte{0x20, 0x03, 0x00, 0x85, 0x00}}, // Client Identifier not valid
		{mqtt.Level31, []byte{0x20, 0x02, 0x00, 0x02}},      // identifier rejected
	} {
		c, err := dialFrom(ctx, source(3), s.addr)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write(rawConnect(tt.level, "")); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		got := make([]byte, len(tt.want))
		if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, tt.want) {
			t.Errorf("MQTT %s: CONNACK % x, %v; want % x", tt.level, got, err, tt.want)
		}
		expectClosed(t, c, 5*time.Second)
		c.Close()
	}
	st := s.stats(t)
	if st["mqtt_sticky.rejected_empty_key"] != 3 || st["mqtt_sticky.empty_key"] != 3 {
		t.Errorf("rejected_empty_key = %d, empty_key = %d; want 3 and 3", st["mqtt_sticky.rejected_empty_key"], st["mqtt_sticky.empty_key"])
	}
	if after := s.brokers[0].Forwarded() + s.brokers[1].Forwarded(); after != before {
		t.Errorf("brokers accepted %d connections for refused clients", after-before)
	}
}

// hash_key "username" routes every client of one user to one broker, and
// empty_key "source_ip" routes clients without a username by address.
func TestHashOnUsernameAndSourceIP(t *testing.T) {
	s := startStatic(t, startBrokers(t, 3), `{"hash_key": "username", "empty_key": "source_ip"}`)
	ctx := context.Background()
	connect := func(src net.IP, clientID, username string) {
		c, err := dialFrom(ctx, src, s.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		pkt := &mqtt.ConnectPacket{Connect: mqtt.Connect{Level: mqtt.Level311, ClientID: clientID, CleanStart: true,
			HasUsername: username != "", Username: username}}
		if _, err := c.Write(mqtt.AppendConnect(nil, pkt)); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if typ, _, err := readPacket(bufio.NewReader(c)); err != nil || typ != 0x20 {
			t.Fatalf("%s/%s: CONNACK %#x, %v", clientID, username, typ, err)
		}
	}
	perUser := map[string]map[string]bool{}
	for u := range 30 {
		user := fmt.Sprintf("tenant-%d", u)
		for d := range 4 {
			id := fmt.Sprintf("%s-dev-%d", user, d)
			connect(source(u*4+d), id, user)
			if perUser[user] == nil {
				perUser[user] = map[string]bool{}
			}
			perUser[user][landedOn(s.brokers)[id]] = true
		}
	}
	brokersUsed := map[string]bool{}
	for user, bs := range perUser {
		if len(bs) != 1 {
			t.Errorf("clients of %s reached %d brokers, want 1", user, len(bs))
		}
		for b := range bs {
			brokersUsed[b] = true
		}
	}
	if len(brokersUsed) < 2 {
		t.Errorf("30 users all reached one broker: hashing is not spreading them")
	}
	for ip := range 10 {
		var first string
		for d := range 3 {
			id := fmt.Sprintf("anon-%d-%d", ip, d)
			connect(source(200+ip), id, "")
			if b := landedOn(s.brokers)[id]; d == 0 {
				first = b
			} else if b != first {
				t.Errorf("clients without a username from %v reached %s and %s", source(200+ip), first, b)
			}
		}
	}
}

// Envoy refuses a filter config with an unknown field or a bad value, and
// the log names the problem.
func TestBadFilterConfigIsRefused(t *testing.T) {
	for _, tt := range []struct{ config, want string }{
		{`{"hash_key": "client_id", "hash_keys": "oops"}`, `unknown field "hash_keys"`},
		{`{"hash_key": "device"}`, `hash_key "device": must be`},
		{`{"empty_key": "random"}`, `empty_key "random": must be`},
		{`{"max_connect_bytes": 10}`, `max_connect_bytes 10: must be between`},
		{`{"connect_timeout_ms": -5}`, `connect_timeout_ms -5: must be between`},
		{`not json`, `filter_config is not valid JSON`},
	} {
		path, _, _ := renderStatic(t, nil, tt.config)
		cmd := exec.Command(envoyBinary(t), "--mode", "validate", "-c", path)
		cmd.Env = append(os.Environ(), "ENVOY_DYNAMIC_MODULES_SEARCH_PATH="+moduleDir)
		out, err := cmd.CombinedOutput()
		if err == nil {
			t.Errorf("config %s: envoy --mode validate accepted it", tt.config)
			continue
		}
		if !strings.Contains(string(out), tt.want) {
			t.Errorf("config %s: envoy output does not name the problem (%q):\n%s", tt.config, tt.want, lastLines(string(out), 8))
		}
	}
	// The shipped config itself validates.
	path, _, _ := renderStatic(t, nil, "")
	cmd := exec.Command(envoyBinary(t), "--mode", "validate", "-c", path)
	cmd.Env = append(os.Environ(), "ENVOY_DYNAMIC_MODULES_SEARCH_PATH="+moduleDir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("envoy/static.yaml does not validate: %v\n%s", err, lastLines(string(out), 8))
	}
}

// A panic inside the module closes that one connection, bumps
// rejected_internal and is logged; Envoy and every other client carry on.
// The test builds the module with a hook that panics on one client ID.
func TestPanicClosesOnlyThatConnection(t *testing.T) {
	dir, err := buildModule("mqtt_sticky_panic_hook")
	if err != nil {
		t.Fatal(err)
	}
	s := startStaticWith(t, dir, startBrokers(t, 3), "")
	ctx := context.Background()
	for range 3 {
		c, err := dialFrom(ctx, source(5), s.addr)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write(rawConnect(mqtt.Level311, "mqtt-sticky-test-panic")); err != nil {
			t.Fatal(err)
		}
		expectClosed(t, c, 5*time.Second)
		c.Close()
		if _, err := connectPaho(ctx, s.addr, source(6), "healthy-neighbour", 4); err != nil {
			t.Fatalf("a normal client after the panic: %v", err)
		}
	}
	if st := s.stats(t); st["mqtt_sticky.rejected_internal"] != 3 || st["mqtt_sticky.connect_mqtt311"] != 3 {
		t.Errorf("rejected_internal = %d, connect_mqtt311 = %d; want 3 and 3", st["mqtt_sticky.rejected_internal"], st["mqtt_sticky.connect_mqtt311"])
	}
	if !strings.Contains(s.envoy.LogTail(400), "mqtt_sticky: panic in on_read") {
		t.Error("the panic was not logged")
	}
}

// A tcp_proxy without max_early_data_bytes stops reading before the CONNECT
// arrives. The filter says so at once instead of waiting for the timeout.
func TestMissingEarlyDataIsLoud(t *testing.T) {
	s := startStatic(t, startBrokers(t, 1), "", func(cfg map[string]any) {
		tcp := get(t, cfg, "static_resources", "listeners", 0, "filter_chains", 0, "filters", 1, "typed_config").(map[string]any)
		delete(tcp, "max_early_data_bytes")
	})
	c, err := dialFrom(context.Background(), source(9), s.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	expectClosed(t, c, 5*time.Second)
	if got := s.stats(t)["mqtt_sticky.rejected_read_disabled"]; got != 1 {
		t.Errorf("rejected_read_disabled = %d, want 1", got)
	}
	if !strings.Contains(s.envoy.LogTail(100), "set max_early_data_bytes on the tcp_proxy") {
		t.Error("the log does not say how to fix the configuration")
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
