package mqtt

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"
)

var updateCorpus = flag.Bool("update-corpus", false, "rewrite testdata/fuzz/FuzzParse from the fixture table")

// FuzzParse checks the parser's invariants on arbitrary input:
//   - it never panics;
//   - feeding all bytes at once and feeding them one at a time agree;
//   - on Done, the packet alone gives the same answer, and so does the
//     packet followed by other bytes: nothing past the CONNECT is read;
//   - on Failed, the refusal came no later than the input's end, and
//     bytes appended afterwards do not change it.
func FuzzParse(f *testing.F) {
	for _, fx := range fixtures {
		f.Add(fx.in)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		const limit = 4096
		p1, st1, err1 := feedAll(data, limit)
		p2, st2, err2, at := feedByByte(data, limit)
		if st1 != st2 || !errors.Is(err1, err2) || !errors.Is(err2, err1) {
			t.Fatalf("all at once: %v, %v; byte by byte: %v, %v (at %d)", st1, err1, st2, err2, at)
		}
		switch st1 {
		case Done:
			n := p1.Len()
			if n > len(data) || n != p2.Len() || *p1.Connect() != *p2.Connect() {
				t.Fatalf("Len %d/%d of %d bytes, %+v vs %+v", n, p2.Len(), len(data), *p1.Connect(), *p2.Connect())
			}
			for _, in := range [][]byte{data[:n:n], append(data[:n:n], 0xff, 0x00, 0x10)} {
				p3, st3, err3 := feedAll(in, limit)
				if st3 != Done || p3.Len() != n || *p3.Connect() != *p1.Connect() {
					t.Fatalf("re-parse of the packet alone (%d bytes): %v, %v", len(in), st3, err3)
				}
			}
			c := p1.Connect()
			if !utf8.ValidString(c.ClientID) || !utf8.ValidString(c.Username) {
				t.Fatalf("invalid UTF-8 accepted: %q %q", c.ClientID, c.Username)
			}
		case Failed:
			var e *Error
			if !errors.As(err1, &e) || e.Reason == ReasonNone {
				t.Fatalf("failure without a reason: %v", err1)
			}
			if at > len(data) {
				t.Fatalf("refused after %d bytes of %d", at, len(data))
			}
			if _, st3, err3 := feedAll(append(data[:len(data):len(data)], 0x10, 0x00), limit); st3 != Failed || !errors.Is(err3, err1) {
				t.Fatalf("appending bytes changed a refusal %v into %v, %v", err1, st3, err3)
			}
		}
	})
}

// FuzzRoundTrip encodes a CONNECT from fuzzed fields and checks that the
// parser reads back the same fields, or refuses it as too large.
func FuzzRoundTrip(f *testing.F) {
	f.Add(uint8(4), uint8(0x02), uint16(60), "sensor-1", "user", []byte("pw"), "will/t", []byte("bye"), uint32(0), false)
	f.Add(uint8(5), uint8(0xc4), uint16(0), "", "", []byte(nil), "", []byte(nil), uint32(3600), true)
	f.Add(uint8(3), uint8(0x2c), uint16(65535), "legacy", "", []byte(nil), "t", []byte{0}, uint32(0), false)
	f.Fuzz(func(t *testing.T, level, flags uint8, keepAlive uint16, clientID, username string, password []byte,
		willTopic string, willPayload []byte, sessionExpiry uint32, bridge bool) {
		for _, s := range []string{clientID, username, willTopic} {
			if !utf8.ValidString(s) || strings.IndexByte(s, 0) >= 0 || len(s) > 0xffff {
				t.Skip("not an MQTT UTF-8 string")
			}
		}
		if len(password) > 0xffff || len(willPayload) > 0xffff {
			t.Skip("binary field longer than 65535 bytes")
		}
		pkt := ConnectPacket{
			Connect: Connect{
				Level:       Level(3 + level%3),
				ClientID:    clientID,
				CleanStart:  flags&0x02 != 0,
				KeepAlive:   keepAlive,
				Will:        flags&0x04 != 0,
				HasPassword: flags&0x40 != 0,
				HasUsername: flags&0x80 != 0,
				Bridge:      bridge,
			},
		}
		c := &pkt.Connect
		if c.Will {
			c.WillQoS, c.WillRetain = (flags>>3)%3, flags&0x20 != 0
			pkt.WillTopic, pkt.WillPayload = willTopic, willPayload
		}
		if c.HasUsername {
			c.Username = username
		}
		if c.HasPassword {
			pkt.Password = password
			if c.Level != Level5 {
				c.HasUsername = true // 3.x needs a username for a password
			}
		}
		if c.Level == Level5 {
			c.SessionExpiry = sessionExpiry
		}
		in := AppendConnect(nil, &pkt)
		p, st, err := feedAll(in, 0)
		if len(in) > DefaultMaxPacketSize {
			if !errors.Is(err, ErrTooLarge) {
				t.Fatalf("%d-byte CONNECT: %v, %v; want too large", len(in), st, err)
			}
			return
		}
		if st != Done || *p.Connect() != *c || p.Len() != len(in) {
			t.Fatalf("round trip of %+v: %v, %v, %+v", *c, st, err, p.Connect())
		}
	})
}

// TestSeedCorpus keeps testdata/fuzz/FuzzParse in step with the fixture
// table, so `go test -fuzz` starts from every annotated case.
func TestSeedCorpus(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzParse")
	for _, fx := range fixtures {
		name := strings.NewReplacer(" ", "_", "/", "_", ".", "", ",", "").Replace(fx.name)
		path := filepath.Join(dir, name)
		want := []byte(fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", fx.in))
		if *updateCorpus {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, want, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(path)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("seed %s is missing or stale; run: go test ./filter/mqtt -run TestSeedCorpus -update-corpus", path)
		}
	}
}
