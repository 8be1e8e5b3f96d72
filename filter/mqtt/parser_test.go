package mqtt

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"testing"
)

// feedAll feeds data in one call to a fresh parser.
func feedAll(data []byte, max int) (*Parser, Status, error) {
	p := &Parser{MaxPacketSize: max}
	st, err := p.Feed(data)
	return p, st, err
}

// feedByByte feeds growing prefixes of data, one byte more each time, and
// returns the first non-NeedMore answer with the prefix length it came at.
func feedByByte(data []byte, max int) (p *Parser, st Status, err error, at int) {
	p = &Parser{MaxPacketSize: max}
	for i := 0; i <= len(data); i++ {
		st, err = p.Feed(data[:i])
		if st != NeedMore {
			return p, st, err, i
		}
	}
	return p, st, err, len(data)
}

func TestFixtures(t *testing.T) {
	for _, f := range fixtures {
		t.Run(f.name, func(t *testing.T) {
			p, st, err := feedAll(f.in, 0)
			if f.err != nil {
				if st != Failed || !errors.Is(err, f.err) {
					t.Fatalf("Feed = %v, %v; want failed, %v", st, err, f.err)
				}
				return
			}
			if st != Done || err != nil {
				t.Fatalf("Feed = %v, %v; want done", st, err)
			}
			if got := *p.Connect(); got != f.want {
				t.Errorf("Connect = %+v\nwant      %+v", got, f.want)
			}
			if p.Len() != len(f.in) {
				t.Errorf("Len = %d, want %d", p.Len(), len(f.in))
			}
		})
	}
}

func TestFixturesByteByByte(t *testing.T) {
	for _, f := range fixtures {
		t.Run(f.name, func(t *testing.T) {
			p, st, err, at := feedByByte(f.in, 0)
			if f.err != nil {
				if st != Failed || !errors.Is(err, f.err) {
					t.Fatalf("Feed = %v, %v; want failed, %v", st, err, f.err)
				}
				return
			}
			if st != Done || at != len(f.in) {
				t.Fatalf("Feed = %v, %v at %d bytes; want done at %d", st, err, at, len(f.in))
			}
			if got := *p.Connect(); got != f.want {
				t.Errorf("Connect = %+v\nwant      %+v", got, f.want)
			}
		})
	}
}

// A CONNECT pipelined with the packets after it is parsed on its own; the
// bytes that follow are left alone.
func TestPipelined(t *testing.T) {
	subscribe := []byte{0x82, 0x06, 0x00, 0x01, 0x00, 0x01, 't', 0x00}
	publish := []byte{0x30, 0x04, 0x00, 0x01, 't', 'x'}
	for _, f := range fixtures {
		if f.err != nil {
			continue
		}
		in := cat(f.in, subscribe, publish)
		p, st, err := feedAll(in, 0)
		if st != Done || p.Len() != len(f.in) {
			t.Errorf("%s: Feed = %v, %v, Len %d; want done, Len %d", f.name, st, err, p.Len(), len(f.in))
		}
	}
}

// The parser refuses as soon as the bytes allow, without waiting for the
// rest of a packet it will never accept.
func TestRefusesEarly(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"first byte", []byte{0x47}, ErrNotConnect},
		{"too large from the fixed header", []byte{0x10, 0xff, 0xff, 0x7f}, ErrTooLarge},
		{"four continuation bytes", []byte{0x10, 0x80, 0x80, 0x80, 0x80}, ErrBadLength},
		{"protocol name length", []byte{0x10, 0x20, 0x00, 0x07}, ErrProtocolName},
		{"client ID length before its bytes", cat([]byte{0x10, 12, 0, 4}, s("MQTT"), []byte{4, 2, 0, 60, 0xff, 0xff}), ErrOverrun},
	}
	for _, tt := range tests {
		_, st, err := feedAll(tt.in, 0)
		if st != Failed || !errors.Is(err, tt.want) {
			t.Errorf("%s: Feed(% x) = %v, %v; want %v", tt.name, tt.in, st, err, tt.want)
		}
	}
}

func TestPrefixesNeedMore(t *testing.T) {
	for _, f := range fixtures {
		if f.err != nil {
			continue
		}
		for i := 0; i < len(f.in); i++ {
			if _, st, err := feedAll(f.in[:i], 0); st != NeedMore {
				t.Errorf("%s: %d of %d bytes: Feed = %v, %v; want need-more", f.name, i, len(f.in), st, err)
			}
		}
	}
}

func TestMaxPacketSizeBoundary(t *testing.T) {
	pkt := &ConnectPacket{Connect: Connect{Level: Level311, ClientID: "x", HasUsername: true}}
	for n := 0; ; n++ {
		pkt.Username = string(bytes.Repeat([]byte("u"), n))
		if len(AppendConnect(nil, pkt)) == 100 {
			break
		}
	}
	in := AppendConnect(nil, pkt)
	if _, st, err := feedAll(in, 100); st != Done {
		t.Errorf("packet of exactly the limit: Feed = %v, %v; want done", st, err)
	}
	if _, st, err := feedAll(in, 99); !errors.Is(err, ErrTooLarge) {
		t.Errorf("packet one over the limit: Feed = %v, %v; want too large", st, err)
	}
	if _, st, err := feedAll(in[:2], 99); !errors.Is(err, ErrTooLarge) {
		t.Errorf("fixed header alone, one over the limit: Feed = %v, %v; want too large", st, err)
	}
}

// Every value of the connect-flags byte, at every level: the fields the
// flags announce are present, and the outcome follows the spec's rules.
func TestEveryFlagCombination(t *testing.T) {
	for _, level := range []Level{Level31, Level311, Level5} {
		for flags := 0; flags < 256; flags++ {
			f := byte(flags)
			in := packetWithFlags(level, f)
			p, st, err := feedAll(in, 0)

			var want error
			switch qos := (f >> 3) & 3; {
			case f&0x01 != 0:
				want = ErrReservedFlag
			case qos == 3 || (f&0x04 == 0 && f&0x38 != 0):
				want = ErrWillFlags
			case level != Level5 && f&0x40 != 0 && f&0x80 == 0:
				want = ErrPasswordFlag
			}
			name := fmt.Sprintf("level %d flags %08b", level, f)
			if want != nil {
				if !errors.Is(err, want) {
					t.Errorf("%s: Feed = %v, %v; want %v", name, st, err, want)
				}
				continue
			}
			if st != Done {
				t.Errorf("%s: Feed = %v, %v; want done", name, st, err)
				continue
			}
			c := p.Connect()
			if c.CleanStart != (f&0x02 != 0) || c.Will != (f&0x04 != 0) || c.WillQoS != (f>>3)&3 ||
				c.WillRetain != (f&0x20 != 0) || c.HasPassword != (f&0x40 != 0) || c.HasUsername != (f&0x80 != 0) {
				t.Errorf("%s: flags decoded as %+v", name, c)
			}
			if c.ClientID != "client" || (c.HasUsername && c.Username != "user") {
				t.Errorf("%s: fields decoded as %+v", name, c)
			}
		}
	}
}

// packetWithFlags builds a CONNECT by hand with the given flags byte and
// every field the flags announce, without the encoder's flag logic.
func packetWithFlags(level Level, flags byte) []byte {
	name := "MQTT"
	if level == Level31 {
		name = "MQIsdp"
	}
	str := func(v string) []byte { return append([]byte{0, byte(len(v))}, v...) }
	body := cat(str(name), []byte{byte(level), flags, 0, 60})
	if level == Level5 {
		body = append(body, 0)
	}
	body = append(body, str("client")...)
	if flags&0x04 != 0 {
		if level == Level5 {
			body = append(body, 0)
		}
		body = cat(body, str("will/topic"), str("payload"))
	}
	if flags&0x80 != 0 {
		body = append(body, str("user")...)
	}
	if flags&0x40 != 0 {
		body = append(body, str("secret")...)
	}
	return cat([]byte{0x10, byte(len(body))}, body)
}

func TestAnswersAreFinal(t *testing.T) {
	good := fixtures[0].in
	p := &Parser{}
	if st, _ := p.Feed(good); st != Done {
		t.Fatalf("Feed = %v", st)
	}
	if st, err := p.Feed([]byte{0xff}); st != Done || err != nil {
		t.Errorf("Feed after done = %v, %v; want done again", st, err)
	}
	p.Reset()
	if st, err := p.Feed([]byte{0x30}); !errors.Is(err, ErrNotConnect) {
		t.Fatalf("Feed after Reset = %v, %v", st, err)
	}
	if st, err := p.Feed(good); st != Failed || !errors.Is(err, ErrNotConnect) {
		t.Errorf("Feed after failure = %v, %v; want the same failure", st, err)
	}
	if p.Connect() != nil || p.Len() != 0 {
		t.Error("Connect and Len must be empty after a failure")
	}
}

func TestEncodeRoundTrip(t *testing.T) {
	packets := []ConnectPacket{
		{Connect: Connect{Level: Level31, ClientID: "old", KeepAlive: 1}},
		{Connect: Connect{Level: Level311, ClientID: "c", CleanStart: true, HasUsername: true, Username: "u", HasPassword: true}, Password: []byte{0, 1}},
		{Connect: Connect{Level: Level311, ClientID: "w", Will: true, WillQoS: 2, WillRetain: true}, WillTopic: "a/b", WillPayload: []byte("x")},
		{Connect: Connect{Level: Level5, ClientID: "v5", SessionExpiry: 7, Will: true, Bridge: true}, WillTopic: "t",
			Properties: []byte{0x21, 0, 5}, WillProperties: []byte{0x01, 1}},
	}
	for _, pkt := range packets {
		in := AppendConnect(nil, &pkt)
		p, st, err := feedAll(in, 0)
		if st != Done {
			t.Errorf("%+v: Feed = %v, %v", pkt.Connect, st, err)
			continue
		}
		if *p.Connect() != pkt.Connect {
			t.Errorf("round trip:\n got %+v\nwant %+v", *p.Connect(), pkt.Connect)
		}
	}
}

func TestAppendConnack(t *testing.T) {
	if got := AppendConnack(nil, Level311, ConnackIdentifierRejected); !bytes.Equal(got, []byte{0x20, 0x02, 0x00, 0x02}) {
		t.Errorf("3.1.1 CONNACK = % x", got)
	}
	if got := AppendConnack(nil, Level5, ReasonClientIdentifierInvalid); !bytes.Equal(got, []byte{0x20, 0x03, 0x00, 0x85, 0x00}) {
		t.Errorf("5.0 CONNACK = % x", got)
	}
}

func TestReasonNames(t *testing.T) {
	seen := map[string]bool{}
	for _, r := range Reasons() {
		name := r.String()
		if name == "unknown" || name == "none" || seen[name] {
			t.Errorf("reason %d has name %q", r, name)
		}
		seen[name] = true
	}
}

// The steady-state cost the filter pays per connection: a reset parser
// reuses the buffer behind the client ID and username, and allocates
// nothing.
func TestAllocations(t *testing.T) {
	for _, in := range [][]byte{typical311, typical5} {
		var p Parser
		allocs := testing.AllocsPerRun(100, func() {
			p.Reset()
			if st, err := p.Feed(in); st != Done {
				t.Fatalf("Feed = %v, %v", st, err)
			}
		})
		if allocs > 0 {
			t.Errorf("Feed allocates %.0f times per CONNECT, want none", allocs)
		}
	}
}

// After Reset, the buffer is reused: the old strings may change, the new
// ones are right.
func TestResetReusesNames(t *testing.T) {
	var p Parser
	first := AppendConnect(nil, &ConnectPacket{Connect: Connect{Level: Level311, ClientID: "first-client", HasUsername: true, Username: "u1"}})
	second := AppendConnect(nil, &ConnectPacket{Connect: Connect{Level: Level311, ClientID: "second", HasUsername: true, Username: "user-2"}})
	if st, _ := p.Feed(first); st != Done || p.Connect().ClientID != "first-client" {
		t.Fatal("first CONNECT")
	}
	p.Reset()
	if st, _ := p.Feed(second); st != Done || p.Connect().ClientID != "second" || p.Connect().Username != "user-2" {
		t.Fatalf("second CONNECT: %+v", p.Connect())
	}
}

func TestClientPackets(t *testing.T) {
	var stream []byte
	stream = AppendSubscribe(stream, Level311, 7, "a/b")
	stream = AppendPublish(stream, Level5, "t", []byte("xy"))
	stream = AppendPublish(stream, Level311, "t", bytes.Repeat([]byte{1}, 200)) // two-byte Remaining Length
	r := bufio.NewReader(bytes.NewReader(stream))
	for _, want := range []struct {
		first byte
		body  []byte
	}{
		{0x82, []byte{0, 7, 0, 3, 'a', '/', 'b', 0}},
		{0x30, []byte{0, 1, 't', 0, 'x', 'y'}},
		{0x30, append([]byte{0, 1, 't'}, bytes.Repeat([]byte{1}, 200)...)},
	} {
		first, body, err := ReadPacket(r)
		if err != nil || first != want.first || !bytes.Equal(body, want.body) {
			t.Errorf("ReadPacket = %#x % x, %v; want %#x % x", first, body, err, want.first, want.body)
		}
	}
	if _, _, err := ReadPacket(bufio.NewReader(bytes.NewReader([]byte{0x30, 0x80, 0x80, 0x80, 0x80}))); !errors.Is(err, ErrBadLength) {
		t.Errorf("5-byte Remaining Length: %v", err)
	}
}
