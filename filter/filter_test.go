package filter

import (
	"bytes"
	"github.com/mqtt-sticky/mqtt-sticky/contract"
	"strings"
	"testing"
	"time"

	"github.com/mqtt-sticky/mqtt-sticky/filter/mqtt"
)

// fakeConn records what the filter asks of Envoy.
type fakeConn struct {
	readDisabled bool
	refuseKey    bool
	remoteIP     string

	hashKey  *string
	metadata map[string]string
	numbers  map[string]float64
	written  []byte
	closed   []string
	counters map[Counter]int
	waits    int    // ConnectWait values recorded
	lastWait uint64 // the last of them
	logs     []string
	f        *Filter

	tls       bool     // the connection is TLS
	subject   string   // the client certificate's subject, "" for none
	uriSANs   []string // and its SANs
	dnsSANs   []string
	certReads int // certificate lookups asked of Envoy
	sslTLV    []byte
}

func newFake() *fakeConn {
	return &fakeConn{remoteIP: "127.0.0.9", metadata: map[string]string{}, numbers: map[string]float64{}, counters: map[Counter]int{}}
}

func (c *fakeConn) SetHashKey(key string) bool {
	if c.refuseKey {
		return false
	}
	c.hashKey = &key
	return true
}
func (c *fakeConn) SetMetadata(k, v string) { c.metadata[k] = v }
func (c *fakeConn) SetMetadataStrings(fs []Field) {
	for _, f := range fs {
		c.metadata[f.Key] = f.Value
	}
}
func (c *fakeConn) SetMetadataNumber(k string, v float64) { c.numbers[k] = v }
func (c *fakeConn) ReadEnabled() bool                     { return !c.readDisabled }
func (c *fakeConn) RemoteAddress() (string, uint32, bool) {
	return c.remoteIP, 40001, c.remoteIP != ""
}
func (c *fakeConn) Write(b []byte) { c.written = append(c.written, b...) }
func (c *fakeConn) Close(details string) {
	c.closed = append(c.closed, details)
	if c.f != nil {
		c.f.OnClose() // Envoy raises LocalClose from inside close()
	}
}
func (c *fakeConn) Inc(k Counter) { c.counters[k]++ }
func (c *fakeConn) Record(h Histogram, v uint64) {
	if h == ConnectWait {
		c.waits++
		c.lastWait = v
	}
}
func (c *fakeConn) Log(_ LogLevel, msg string) { c.logs = append(c.logs, msg) }
func (c *fakeConn) IsTLS() bool                { return c.tls }
func (c *fakeConn) TLSVersion() string         { return "TLSv1.3" }
func (c *fakeConn) PeerSubject() string        { c.certReads++; return c.subject }
func (c *fakeConn) PeerURISANs() []string      { c.certReads++; return c.uriSANs }
func (c *fakeConn) PeerDNSSANs() []string      { c.certReads++; return c.dnsSANs }
func (c *fakeConn) SetSSLTLV(v []byte)         { c.sslTLV = v }

func newFilter(t *testing.T, cfgJSON string) (*Filter, *fakeConn) {
	t.Helper()
	cfg, err := contract.ParseConfig([]byte(cfgJSON))
	if err != nil {
		t.Fatal(err)
	}
	c := newFake()
	f := New(cfg, c)
	c.f = f
	f.SetArrival(now()) // as package abi does with its record of the connection
	if st := f.OnNewConnection(); st != Stop {
		t.Fatalf("OnNewConnection = %v, want Stop", st)
	}
	return f, c
}

func connect(level mqtt.Level, clientID, username string) []byte {
	return mqtt.AppendConnect(nil, &mqtt.ConnectPacket{Connect: mqtt.Connect{
		Level: level, ClientID: clientID, HasUsername: username != "", Username: username, KeepAlive: 45}})
}

func TestRoutesOnClientID(t *testing.T) {
	f, c := newFilter(t, "")
	if st := f.OnRead([][]byte{connect(mqtt.Level5, "dev-1", "alice")}, false); st != Routed {
		t.Fatalf("OnRead = %v, want Routed", st)
	}
	if c.hashKey == nil || *c.hashKey != "dev-1" {
		t.Errorf("hash key = %v", c.hashKey)
	}
	want := map[string]string{"client_id": "dev-1", "username": "alice", "protocol_version": "5.0"}
	for k, v := range want {
		if c.metadata[k] != v {
			t.Errorf("metadata %s = %q, want %q", k, c.metadata[k], v)
		}
	}
	if c.numbers["keep_alive"] != 45 {
		t.Errorf("keep_alive metadata = %v", c.numbers["keep_alive"])
	}
	if c.counters[ConnectMQTT5] != 1 || len(c.counters) != 1 || len(c.closed) != 0 || !f.Routed() {
		t.Errorf("counters %v, closed %v", c.counters, c.closed)
	}
	// Every later read passes through and counts nothing.
	if st := f.OnRead([][]byte{{0x30, 0x00}}, false); st != Continue || c.counters[ConnectMQTT5] != 1 {
		t.Errorf("read after routing = %v, counters %v", st, c.counters)
	}
}

// The CONNECT wait is recorded once per routed connection, in
// milliseconds from its arrival; a refused connection records nothing.
func TestConnectWaitHistogram(t *testing.T) {
	clock := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	now = func() time.Time { return clock }
	t.Cleanup(func() { now = time.Now })

	f, c := newFilter(t, "")
	pkt := connect(mqtt.Level311, "dev-1", "")
	clock = clock.Add(700 * time.Millisecond)
	if st := f.OnRead([][]byte{pkt[:5]}, false); st != Stop {
		t.Fatalf("partial CONNECT: %v", st)
	}
	clock = clock.Add(550 * time.Millisecond)
	if st := f.OnRead([][]byte{pkt}, false); st != Routed {
		t.Fatalf("OnRead = %v", st)
	}
	if c.waits != 1 || c.lastWait != 1250 {
		t.Errorf("connect_wait_ms recorded %d values, the last %d; want one, 1250", c.waits, c.lastWait)
	}

	f, c = newFilter(t, "")
	f.OnRead([][]byte{{0x30, 0x00}}, false) // not a CONNECT
	if c.waits != 0 {
		t.Errorf("a refused connection recorded %d waits", c.waits)
	}
}

// A client ID or user name with control characters routes on its exact
// bytes, but reaches the metadata (and so any access log) escaped.
func TestMetadataIsSafeForLogs(t *testing.T) {
	f, c := newFilter(t, "")
	id := "dev\n[2026-01-01T00:00:00Z] forged\x1b[31m\x07\u0085é"
	if st := f.OnRead([][]byte{connect(mqtt.Level311, id, "a\rb")}, false); st != Routed {
		t.Fatalf("OnRead = %v", st)
	}
	if *c.hashKey != id {
		t.Errorf("routing key %q, want the exact client ID", *c.hashKey)
	}
	want := map[string]string{
		"client_id": `dev\u000a[2026-01-01T00:00:00Z] forged\u001b[31m\u0007\u0085é`,
		"username":  `a\u000db`,
	}
	for k, v := range want {
		if c.metadata[k] != v {
			t.Errorf("metadata %s = %q, want %q", k, c.metadata[k], v)
		}
	}
}

func TestRoutesOnUsername(t *testing.T) {
	f, c := newFilter(t, `{"hash_key": "username"}`)
	if st := f.OnRead([][]byte{connect(mqtt.Level311, "dev-1", "tenant-a")}, false); st != Routed || *c.hashKey != "tenant-a" {
		t.Fatalf("OnRead = %v, key %v", st, c.hashKey)
	}
}

// The CONNECT split over several of Envoy's buffer chunks, at every
// position, and fed as it grows: the same key comes out, and the filter
// copies each byte at most once.
func TestChunkedAndIncremental(t *testing.T) {
	pkt := append(connect(mqtt.Level311, "chunked-client", "u"), 0x82, 0x05) // plus the start of a SUBSCRIBE
	for i := 1; i < len(pkt); i++ {
		for j := i; j < len(pkt); j++ {
			f, c := newFilter(t, "")
			if st := f.OnRead([][]byte{pkt[:i], pkt[i:j], pkt[j:]}, false); st != Routed || *c.hashKey != "chunked-client" {
				t.Fatalf("split %d/%d: %v, key %v", i, j, st, c.hashKey)
			}
		}
	}
	f, c := newFilter(t, "")
	var chunks [][]byte
	for i, b := range pkt {
		chunks = append(chunks, []byte{b})
		st := f.OnRead(chunks, false)
		if c.hashKey != nil {
			if st != Routed || i != len(pkt)-3 {
				t.Fatalf("routed at byte %d (status %v), want at %d", i, st, len(pkt)-3)
			}
			break
		}
		if st != Stop {
			t.Fatalf("byte %d: %v, want Stop", i, st)
		}
		// One chunk is parsed in place; from two on, each byte is copied once.
		if want := map[bool]int{true: 0, false: i + 1}[i == 0]; len(f.copied) != want {
			t.Fatalf("byte %d: %d bytes copied, want %d", i, len(f.copied), want)
		}
	}
}

func TestCopyIsBounded(t *testing.T) {
	f, _ := newFilter(t, `{"max_connect_bytes": 100}`)
	header := []byte{0x10, 90} // a CONNECT of 92 bytes, within the limit
	f.OnRead([][]byte{header, bytes.Repeat([]byte{0}, 500), bytes.Repeat([]byte{0}, 500)}, false)
	if len(f.copied) > 100 && f.state == waiting {
		t.Fatalf("copied %d bytes with a 100-byte limit", len(f.copied))
	}
}

func TestRefusals(t *testing.T) {
	tests := []struct {
		name  string
		in    []byte
		end   bool
		want  Counter
		close bool
	}{
		{"HTTP", []byte("GET / HTTP/1.1\r\n"), false, rejectCounter(mqtt.ReasonNotConnect), true},
		{"too large", []byte{0x10, 0xff, 0xff, 0x03}, false, rejectCounter(mqtt.ReasonTooLarge), true},
		{"bad protocol level", append([]byte{0x10, 12, 0, 4}, "MQTT\x07\x02\x00\x3c\x00\x00"...), false, rejectCounter(mqtt.ReasonProtocolLevel), true},
		{"truncated, then half-closed", connect(mqtt.Level311, "abc", "")[:8], true, RejectTruncated, true},
		{"closed before any byte", nil, true, ClosedEarly, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, c := newFilter(t, "")
			var chunks [][]byte
			if tt.in != nil {
				chunks = [][]byte{tt.in}
			}
			if st := f.OnRead(chunks, tt.end); st != Stop {
				t.Fatalf("OnRead = %v, want Stop", st)
			}
			if c.counters[tt.want] != 1 || (len(c.closed) == 1) != tt.close {
				t.Errorf("counters %v, closed %v", c.counters, c.closed)
			}
			if c.hashKey != nil || f.Waiting() || len(c.counters) != 1 {
				t.Errorf("after refusal: key %v, waiting %v, counters %v", c.hashKey, f.Waiting(), c.counters)
			}
			if tt.want != ClosedEarly && (len(c.logs) == 0 || !strings.Contains(c.logs[0], "127.0.0.9:40001")) {
				t.Errorf("log lines %q do not name the client", c.logs)
			}
			// Nothing more happens once closed.
			if st := f.OnRead([][]byte{connect(mqtt.Level311, "late", "")}, false); st != Stop || c.hashKey != nil {
				t.Errorf("read after close = %v", st)
			}
		})
	}
}

func TestTimeout(t *testing.T) {
	f, c := newFilter(t, `{"connect_timeout_ms": 250}`)
	f.OnRead([][]byte{{0x10}}, false)
	f.OnTimeout()
	if c.counters[Timeout] != 1 || len(c.counters) != 1 || len(c.closed) != 1 || f.Waiting() {
		t.Errorf("counters %v, closed %v", c.counters, c.closed)
	}
	f.OnTimeout() // a late event changes nothing
	if c.counters[Timeout] != 1 {
		t.Errorf("second timeout counted again")
	}

	f, c = newFilter(t, "")
	f.OnRead([][]byte{connect(mqtt.Level311, "quick", "")}, false)
	f.OnTimeout()
	if c.counters[Timeout] != 0 || len(c.closed) != 0 {
		t.Errorf("timeout after routing closed the connection")
	}
}

// A connection that closes while it waits (the client reset it, or Envoy
// closed it) lands in exactly one counter, by whether it sent anything.
func TestCloseWhileWaitingIsCounted(t *testing.T) {
	f, c := newFilter(t, "")
	f.OnRead([][]byte{{0x10, 0x0d}}, false)
	f.OnClose()
	f.OnClose()
	if c.counters[RejectTruncated] != 1 || len(c.counters) != 1 || f.Waiting() {
		t.Errorf("partial CONNECT, then close: counters %v", c.counters)
	}
	f, c = newFilter(t, "")
	f.OnClose()
	if c.counters[ClosedEarly] != 1 || len(c.counters) != 1 {
		t.Errorf("close before any byte: counters %v", c.counters)
	}
	f, c = newFilter(t, "")
	f.OnRead([][]byte{connect(mqtt.Level311, "done", "")}, false)
	f.OnClose()
	if c.counters[ConnectMQTT311] != 1 || len(c.counters) != 1 {
		t.Errorf("close after routing: counters %v", c.counters)
	}
}

// A Filter reset for a new connection starts afresh.
func TestResetForReuse(t *testing.T) {
	f, c := newFilter(t, "")
	f.OnRead([][]byte{{0x10, 0x0d, 0x00}, {0x04}}, false) // two chunks: copied
	cfg, _ := contract.ParseConfig([]byte(`{"hash_key": "username"}`))
	c2 := newFake()
	f.Reset(cfg, c2)
	c2.f = f
	if st := f.OnRead([][]byte{connect(mqtt.Level311, "id", "user")}, false); st != Routed || *c2.hashKey != "user" {
		t.Errorf("after Reset: %v, key %v", st, c2.hashKey)
	}
	if len(c.counters) != 0 {
		t.Errorf("the old connection saw %v", c.counters)
	}
}

func TestEmptyKeyPolicies(t *testing.T) {
	t.Run("any", func(t *testing.T) {
		f, c := newFilter(t, `{"empty_key": "any"}`)
		if st := f.OnRead([][]byte{connect(mqtt.Level311, "", "")}, false); st != Routed || c.hashKey != nil {
			t.Errorf("status %v, key %v: want routed without a key", st, c.hashKey)
		}
		if c.counters[EmptyKeyCount] != 1 {
			t.Errorf("empty_key counter = %d", c.counters[EmptyKeyCount])
		}
	})
	t.Run("source_ip", func(t *testing.T) {
		f, c := newFilter(t, `{"empty_key": "source_ip"}`)
		if st := f.OnRead([][]byte{connect(mqtt.Level5, "", "")}, false); st != Routed || c.hashKey == nil || *c.hashKey != "127.0.0.9" {
			t.Errorf("status %v, key %v: want the source IP", st, c.hashKey)
		}
	})
	for _, tt := range []struct {
		level   mqtt.Level
		hashKey string
		want    []byte
	}{
		{mqtt.Level311, "client_id", []byte{0x20, 0x02, 0x00, 0x02}},
		{mqtt.Level31, "client_id", []byte{0x20, 0x02, 0x00, 0x02}},
		{mqtt.Level5, "client_id", []byte{0x20, 0x03, 0x00, 0x85, 0x00}},
		{mqtt.Level311, "username", []byte{0x20, 0x02, 0x00, 0x04}},
		{mqtt.Level5, "username", []byte{0x20, 0x03, 0x00, 0x86, 0x00}},
	} {
		t.Run("reject "+tt.level.String()+" "+tt.hashKey, func(t *testing.T) {
			f, c := newFilter(t, `{"empty_key": "reject", "hash_key": "`+tt.hashKey+`"}`)
			if st := f.OnRead([][]byte{connect(tt.level, "", "")}, false); st != Stop {
				t.Fatalf("status %v", st)
			}
			if !bytes.Equal(c.written, tt.want) || len(c.closed) != 1 || c.counters[RejectEmptyKey] != 1 {
				t.Errorf("wrote % x, closed %v, counters %v; want % x", c.written, c.closed, c.counters, tt.want)
			}
		})
	}
}

func TestRefusedKeyFailsClosed(t *testing.T) {
	cfg, _ := contract.ParseConfig(nil)
	c := newFake()
	c.refuseKey = true
	f := New(cfg, c)
	c.f = f
	f.OnNewConnection()
	if st := f.OnRead([][]byte{connect(mqtt.Level311, "x", "")}, false); st != Stop || c.counters[RejectInternal] != 1 || len(c.closed) != 1 {
		t.Errorf("status %v, counters %v, closed %v", st, c.counters, c.closed)
	}
}

func TestReadDisabledIsLoud(t *testing.T) {
	cfg, _ := contract.ParseConfig(nil)
	c := newFake()
	c.readDisabled = true
	f := New(cfg, c)
	c.f = f
	if st := f.OnNewConnection(); st != Stop || c.counters[RejectReadDisabled] != 1 || len(c.closed) != 1 {
		t.Errorf("status %v, counters %v, closed %v", st, c.counters, c.closed)
	}
	if len(c.logs) != 1 || !strings.Contains(c.logs[0], "max_early_data_bytes") {
		t.Errorf("log %q does not say how to fix it", c.logs)
	}
	if f.Waiting() {
		t.Error("still waiting")
	}
}

func TestCounterNamesAreUnique(t *testing.T) {
	seen := map[string]bool{}
	names := CounterNames()
	if len(names) != int(rejectFirst)+len(mqtt.Reasons()) {
		t.Fatalf("%d names for %d counters", len(names), int(rejectFirst)+len(mqtt.Reasons()))
	}
	for i, n := range names {
		if n == "" || seen[n] {
			t.Errorf("counter %d has name %q", i, n)
		}
		seen[n] = true
	}
	if names[rejectCounter(mqtt.ReasonTooLarge)] != "rejected_too_large" {
		t.Errorf("too-large counter is %q", names[rejectCounter(mqtt.ReasonTooLarge)])
	}
}

// With dynamic_metadata off, the connection routes the same and carries
// no metadata.
func TestMetadataOff(t *testing.T) {
	f, c := newFilter(t, `{"dynamic_metadata": false}`)
	if st := f.OnRead([][]byte{connect(mqtt.Level311, "quiet", "u")}, false); st != Routed || *c.hashKey != "quiet" {
		t.Fatalf("OnRead = %v, key %v", st, c.hashKey)
	}
	if len(c.metadata) != 0 || len(c.numbers) != 0 {
		t.Errorf("metadata set: %v %v", c.metadata, c.numbers)
	}
}
