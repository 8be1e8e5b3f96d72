package quick

import (
	"strings"
	"testing"
	"unicode"

	"github.com/mqtt-sticky/mqtt-sticky/filter/mqtt"
)

const maxBytes = 4096

func encode(p mqtt.ConnectPacket) []byte { return mqtt.AppendConnect(nil, &p) }

// common are CONNECTs as real clients send them; C must recognize each.
var common = map[string]mqtt.ConnectPacket{
	"3.1.1 clean session": {Connect: mqtt.Connect{Level: mqtt.Level311, ClientID: "device-000042", CleanStart: true, KeepAlive: 60}},
	"3.1 MQIsdp":          {Connect: mqtt.Connect{Level: mqtt.Level31, ClientID: "sensor/7", KeepAlive: 30}},
	"3.1.1 credentials": {Connect: mqtt.Connect{Level: mqtt.Level311, ClientID: "meter 12", HasUsername: true, Username: "fleet-a",
		HasPassword: true, KeepAlive: 120}, Password: []byte{0, 0xff, 'x'}},
	"3.1.1 will": {Connect: mqtt.Connect{Level: mqtt.Level311, ClientID: "lamp-3", Will: true, WillQoS: 1, WillRetain: true},
		WillTopic: "lamps/3/status", WillPayload: []byte{0, 1, 0xfe}},
	"5.0 no properties": {Connect: mqtt.Connect{Level: mqtt.Level5, ClientID: "c5", CleanStart: true, KeepAlive: 10}},
	"5.0 fixed-size properties": {Connect: mqtt.Connect{Level: mqtt.Level5, ClientID: "c5p", SessionExpiry: 3600},
		Properties: []byte{0x21, 0, 20, 0x22, 0, 10, 0x27, 0, 1, 0, 0, 0x17, 1, 0x19, 0}},
	"5.0 will with properties": {Connect: mqtt.Connect{Level: mqtt.Level5, ClientID: "w5", Will: true, WillQoS: 2},
		WillProperties: []byte{0x01, 1, 0x02, 0, 0, 0, 9, 0x18, 0, 0, 0, 5}, WillTopic: "t", WillPayload: []byte("gone")},
	"5.0 password without user name": {Connect: mqtt.Connect{Level: mqtt.Level5, ClientID: "p5", HasPassword: true}, Password: []byte("s")},
	"5.0 empty client ID":            {Connect: mqtt.Connect{Level: mqtt.Level5, CleanStart: true}},
}

// unusual are valid CONNECTs that C leaves to filter/mqtt.
var unusual = map[string]mqtt.ConnectPacket{
	"UTF-8 client ID":       {Connect: mqtt.Connect{Level: mqtt.Level311, ClientID: "gerät-1"}},
	"control character":     {Connect: mqtt.Connect{Level: mqtt.Level311, ClientID: "a\x1bb"}},
	"DEL in the user name":  {Connect: mqtt.Connect{Level: mqtt.Level311, ClientID: "a", HasUsername: true, Username: "u\x7f"}},
	"bridge bit":            {Connect: mqtt.Connect{Level: mqtt.Level311, ClientID: "bridge-1", Bridge: true}},
	"user property":         {Connect: mqtt.Connect{Level: mqtt.Level5, ClientID: "a"}, Properties: []byte{0x26, 0, 1, 'k', 0, 1, 'v'}},
	"authentication method": {Connect: mqtt.Connect{Level: mqtt.Level5, ClientID: "a"}, Properties: []byte{0x15, 0, 1, 'm'}},
	"will content type": {Connect: mqtt.Connect{Level: mqtt.Level5, ClientID: "a", Will: true},
		WillProperties: []byte{0x03, 0, 1, 't'}, WillTopic: "t"},
	"UTF-8 will topic": {Connect: mqtt.Connect{Level: mqtt.Level311, ClientID: "a", Will: true}, WillTopic: "zustand/ä"},
}

func TestRecognizesCommonCONNECTs(t *testing.T) {
	for name, p := range common {
		data := append(encode(p), 0x82, 0x05) // a pipelined packet follows; C must not look at it
		got, ok := Parse(data, maxBytes)
		if !ok {
			t.Errorf("%s: not recognized: % x", name, data)
			continue
		}
		want := Connect{Level: uint8(p.Level), ClientID: p.ClientID, Username: p.Username, HasUsername: p.HasUsername, KeepAlive: p.KeepAlive}
		if got != want {
			t.Errorf("%s: got %+v, want %+v", name, got, want)
		}
	}
}

func TestLeavesTheRestToFilterMQTT(t *testing.T) {
	for name, p := range unusual {
		if _, ok := Parse(encode(p), maxBytes); ok {
			t.Errorf("%s: recognized, but C must leave it to filter/mqtt", name)
		}
	}
	full := encode(common["3.1.1 credentials"])
	for n := range len(full) {
		if _, ok := Parse(full[:n], maxBytes); ok {
			t.Errorf("recognized the first %d of %d bytes", n, len(full))
		}
	}
	if _, ok := Parse(full, len(full)-1); ok {
		t.Errorf("recognized a %d-byte CONNECT with a %d-byte limit", len(full), len(full)-1)
	}
	if _, ok := Parse(full, len(full)); !ok {
		t.Errorf("a CONNECT exactly at the limit was not recognized")
	}
	for name, mutate := range map[string]func([]byte){
		"PUBLISH first":         func(b []byte) { b[0] = 0x30 },
		"fixed header flags":    func(b []byte) { b[0] = 0x11 },
		"reserved connect flag": func(b []byte) { b[9] |= 0x01 },
		"level 4 as MQIsdp":     func(b []byte) { b[8] = 3 },
		"level 6":               func(b []byte) { b[8] = 6 },
		"protocol name":         func(b []byte) { b[4] = 'X' },
		"will QoS without will": func(b []byte) { b[9] |= 0x08 },
		"password without user": func(b []byte) {
			b[9] &^= 0x80
		},
	} {
		b := append([]byte(nil), full...)
		mutate(b)
		if _, ok := Parse(b, maxBytes); ok {
			t.Errorf("%s: recognized % x", name, b)
		}
	}
}

// FuzzQuickAgreesWithParser holds quick.c to filter/mqtt: whatever C
// recognizes, filter/mqtt parses to the same fields, and its strings are
// ones the filter logs unchanged.
func FuzzQuickAgreesWithParser(f *testing.F) {
	for _, set := range []map[string]mqtt.ConnectPacket{common, unusual} {
		for _, p := range set {
			f.Add(encode(p), uint16(maxBytes))
		}
	}
	f.Fuzz(func(t *testing.T, data []byte, limit uint16) {
		got, ok := Parse(data, int(limit))
		if !ok {
			return
		}
		p := mqtt.Parser{MaxPacketSize: int(limit)}
		if st, err := p.Feed(data); st != mqtt.Done {
			t.Fatalf("C recognized % x (limit %d); filter/mqtt says %v: %v", data, limit, st, err)
		}
		c := p.Connect()
		want := Connect{Level: uint8(c.Level), ClientID: c.ClientID, Username: c.Username, HasUsername: c.HasUsername, KeepAlive: c.KeepAlive}
		if got != want || c.Bridge {
			t.Fatalf("% x: C read %+v, filter/mqtt %+v", data, got, c)
		}
		if i := strings.IndexFunc(got.ClientID+got.Username, unicode.IsControl); i >= 0 {
			t.Fatalf("% x: C recognized a string the filter would escape", data)
		}
	})
}
