// Package mqtt reads the first packet of an MQTT connection, the CONNECT, as
// its bytes arrive, so that a proxy can route on the client ID before it
// opens an upstream connection.
//
// The parser is incremental and bounded: it is fed every byte seen so far,
// resumes where it stopped, and answers NeedMore, Done, or a refusal as
// early as the bytes allow. A Remaining Length over the limit is refused
// from the fixed header alone, before the body is buffered. It understands
// MQTT 3.1 ("MQIsdp", level 3), 3.1.1 (level 4) and 5.0 (level 5).
//
// The package has no dependency on cgo or Envoy.
package mqtt

import (
	"bytes"
	"encoding/binary"
	"unicode/utf8"
	"unsafe"
)

// DefaultMaxPacketSize is the CONNECT size limit used when Parser.MaxPacketSize
// is zero. Real CONNECTs are a few hundred bytes; 64 KiB leaves room for large
// will messages and MQTT 5 authentication data.
const DefaultMaxPacketSize = 64 << 10

// maxRemainingLength is the largest value a 4-byte Remaining Length can hold.
const maxRemainingLength = 268_435_455

// Level is the MQTT protocol level of a CONNECT.
type Level uint8

const (
	Level31  Level = 3 // MQTT 3.1, protocol name "MQIsdp"
	Level311 Level = 4 // MQTT 3.1.1
	Level5   Level = 5 // MQTT 5.0
)

// String returns the protocol version the level stands for, e.g. "3.1.1".
func (l Level) String() string {
	switch l {
	case Level31:
		return "3.1"
	case Level311:
		return "3.1.1"
	case Level5:
		return "5.0"
	}
	return "unknown"
}

// Connect holds the CONNECT fields a proxy routes and logs on.
type Connect struct {
	Level       Level
	ClientID    string
	Username    string // empty unless HasUsername
	HasUsername bool
	HasPassword bool
	CleanStart  bool // Clean Session in 3.x, Clean Start in 5.0
	KeepAlive   uint16
	Will        bool
	WillQoS     uint8
	WillRetain  bool
	// Bridge is set when the level carries the 0x80 bridge bit that
	// Mosquitto and other brokers use for bridge connections.
	Bridge bool
	// SessionExpiry is the MQTT 5 Session Expiry Interval in seconds, or 0.
	SessionExpiry uint32
}

// Status is the outcome of feeding bytes to a Parser.
type Status uint8

const (
	NeedMore Status = iota // the CONNECT is incomplete; feed more bytes
	Done                   // the CONNECT is complete; see Parser.Connect and Parser.Len
	Failed                 // the input is refused; the error says why
)

func (s Status) String() string {
	switch s {
	case NeedMore:
		return "need-more"
	case Done:
		return "done"
	}
	return "failed"
}

// Connect flag bits [MQTT-3.1.2.3].
const (
	flagReserved     = 0x01
	flagCleanStart   = 0x02
	flagWill         = 0x04
	flagWillQoS      = 0x18
	flagWillRetain   = 0x20
	flagPassword     = 0x40
	flagUsername     = 0x80
	willQoSShift     = 3
	bridgeLevelBit   = 0x80
	connectPacketTyp = 0x10
)

type stage uint8

const (
	stageFixedHeader stage = iota
	stageProtocolName
	stageLevelFlagsKeepAlive
	stageProperties
	stageClientID
	stageWillProperties
	stageWillTopic
	stageWillPayload
	stageUsername
	stagePassword
	stageDone
	stageFailed
)

// span is a field's position in the packet, so a resumed parse can slice
// the field out of whatever buffer it is handed next.
type span struct{ off, len int }

// Parser reads one CONNECT incrementally. The zero value is ready to use
// with DefaultMaxPacketSize.
//
// Each call to Feed takes every byte received so far on the connection, from
// the first one: the bytes already fed must not change, only grow. The parser
// keeps the offset of the first field it has not finished, so feeding a
// packet one byte at a time costs O(packet size) in total, and it never
// looks past the end of the CONNECT: bytes that follow it (pipelined
// SUBSCRIBEs, say) are not examined.
type Parser struct {
	// MaxPacketSize bounds the whole CONNECT, fixed header included.
	// Zero means DefaultMaxPacketSize.
	MaxPacketSize int

	stage    stage
	off      int // start of the first unfinished field
	end      int // packet length, known once the fixed header is complete
	flags    byte
	clientID span
	username span
	stages   [8]stage // what follows the keepalive, see plan
	next     uint8    // index of the next entry in stages
	err      error
	connect  Connect
	names    []byte // backs the client ID and username; reused after Reset
}

// Reset makes the parser ready for a new connection, keeping MaxPacketSize
// and the buffer behind the strings of the last Connect, which it will
// reuse: those strings are valid only until the next Reset.
func (p *Parser) Reset() {
	names := p.names[:0]
	if cap(names) > maxKeptNames {
		names = nil // do not keep a large CONNECT's buffer around
	}
	*p = Parser{MaxPacketSize: p.MaxPacketSize, names: names}
}

// maxKeptNames bounds the buffer a parser keeps across Reset.
const maxKeptNames = 1024

// Len returns the CONNECT's length in bytes once Feed has returned Done.
func (p *Parser) Len() int {
	if p.stage != stageDone {
		return 0
	}
	return p.end
}

// Connect returns the parsed fields once Feed has returned Done, or nil.
func (p *Parser) Connect() *Connect {
	if p.stage != stageDone {
		return nil
	}
	return &p.connect
}

// Feed parses data, the bytes received so far. It returns NeedMore while the
// CONNECT is incomplete and valid so far, Done once it is complete, and
// Failed with an *Error as soon as the bytes cannot start a valid CONNECT.
// Done and Failed are final: later calls return the same answer.
//
// On Done the client ID and username are copied out of data into the
// parser's own buffer (one allocation, none once a reset parser's buffer is
// big enough); data is not retained.
func (p *Parser) Feed(data []byte) (Status, error) {
	for {
		var ok bool
		var err error
		switch p.stage {
		case stageDone:
			return Done, nil
		case stageFailed:
			return Failed, p.err
		case stageFixedHeader:
			ok, err = p.fixedHeader(data)
		case stageProtocolName:
			ok, err = p.protocolName(data)
		case stageLevelFlagsKeepAlive:
			ok, err = p.levelFlagsKeepAlive(data)
		case stageProperties:
			ok, err = p.properties(data, connectProperties)
		case stageClientID:
			ok, err = p.clientIDField(data)
		case stageWillProperties:
			ok, err = p.properties(data, willProperties)
		case stageWillTopic:
			_, ok, err = p.stringField(data, true)
		case stageWillPayload, stagePassword:
			_, ok, err = p.stringField(data, false)
		case stageUsername:
			p.username, ok, err = p.stringField(data, true)
		}
		if err != nil {
			p.stage, p.err = stageFailed, err
			return Failed, err
		}
		if !ok {
			return NeedMore, nil
		}
		p.stage = p.nextStage()
		if p.stage == stageDone {
			if p.off != p.end {
				p.stage, p.err = stageFailed, ErrTrailingBytes
				return Failed, ErrTrailingBytes
			}
			p.finish(data)
			return Done, nil
		}
	}
}

// plan lists the stages that follow the fixed variable-header fields, given
// the level and flags: absent fields get no stage at all, so Feed steps
// through the plan without testing flags again.
func (p *Parser) plan() {
	n := 0
	add := func(s stage) { p.stages[n] = s; n++ }
	if p.connect.Level == Level5 {
		add(stageProperties)
	}
	add(stageClientID)
	if p.flags&flagWill != 0 {
		if p.connect.Level == Level5 {
			add(stageWillProperties)
		}
		add(stageWillTopic)
		add(stageWillPayload)
	}
	if p.flags&flagUsername != 0 {
		add(stageUsername)
	}
	if p.flags&flagPassword != 0 {
		add(stagePassword)
	}
	add(stageDone)
}

// nextStage returns the stage after the current one.
func (p *Parser) nextStage() stage {
	if p.stage < stageLevelFlagsKeepAlive {
		return p.stage + 1
	}
	if p.stage == stageLevelFlagsKeepAlive {
		p.plan()
		p.next = 0
	}
	s := p.stages[p.next%uint8(len(p.stages))] // the modulo drops the bounds check
	p.next++
	return s
}

// need reports whether n bytes starting at p.off are available. It refuses
// a field that would run past the packet before waiting for its bytes.
func (p *Parser) need(data []byte, n int) (bool, error) {
	if n > p.end-p.off {
		return false, ErrOverrun
	}
	return len(data)-p.off >= n, nil
}

func (p *Parser) fixedHeader(data []byte) (bool, error) {
	if len(data) == 0 {
		return false, nil
	}
	if data[0]&0xf0 != connectPacketTyp {
		return false, ErrNotConnect
	}
	if data[0]&0x0f != 0 {
		return false, ErrFixedHeaderFlags
	}
	remaining, n, err := readVarint(data[1:])
	if err != nil {
		return false, ErrBadLength
	}
	if n == 0 {
		return false, nil
	}
	limit := p.MaxPacketSize
	if limit <= 0 {
		limit = DefaultMaxPacketSize
	}
	if 1+n+remaining > limit {
		return false, ErrTooLarge
	}
	p.off = 1 + n
	p.end = p.off + remaining
	return true, nil
}

func (p *Parser) protocolName(data []byte) (bool, error) {
	if ok, err := p.need(data, 2); !ok {
		return false, err
	}
	n := int(binary.BigEndian.Uint16(data[p.off:]))
	if n != 4 && n != 6 {
		return false, ErrProtocolName
	}
	if ok, err := p.need(data, 2+n); !ok {
		return false, err
	}
	switch string(data[p.off+2 : p.off+2+n]) { // no allocation: compared in place
	case "MQTT":
		p.connect.Level = Level311 // provisional; the level byte decides 4 or 5
	case "MQIsdp":
		p.connect.Level = Level31
	default:
		return false, ErrProtocolName
	}
	p.off += 2 + n
	return true, nil
}

func (p *Parser) levelFlagsKeepAlive(data []byte) (bool, error) {
	if ok, err := p.need(data, 4); !ok {
		return false, err
	}
	b := data[p.off:]
	level := Level(b[0] &^ bridgeLevelBit)
	switch {
	case p.connect.Level == Level31 && level == Level31:
	case p.connect.Level == Level311 && (level == Level311 || level == Level5):
	default:
		return false, ErrProtocolLevel
	}
	flags := b[1]
	if flags&flagReserved != 0 {
		return false, ErrReservedFlag
	}
	willQoS := (flags & flagWillQoS) >> willQoSShift
	if willQoS == 3 || (flags&flagWill == 0 && flags&(flagWillQoS|flagWillRetain) != 0) {
		return false, ErrWillFlags
	}
	if level != Level5 && flags&flagPassword != 0 && flags&flagUsername == 0 {
		return false, ErrPasswordFlag
	}
	p.flags = flags
	p.connect.Level = level
	p.connect.Bridge = b[0]&bridgeLevelBit != 0
	p.connect.CleanStart = flags&flagCleanStart != 0
	p.connect.Will = flags&flagWill != 0
	p.connect.WillQoS = willQoS
	p.connect.WillRetain = flags&flagWillRetain != 0
	p.connect.HasUsername = flags&flagUsername != 0
	p.connect.HasPassword = flags&flagPassword != 0
	p.connect.KeepAlive = binary.BigEndian.Uint16(b[2:])
	p.off += 4
	return true, nil
}

func (p *Parser) clientIDField(data []byte) (bool, error) {
	s, ok, err := p.stringField(data, true)
	p.clientID = s
	return ok, err
}

// stringField reads a 2-byte length and that many bytes: a UTF-8 string
// when utf8 is set, binary data otherwise.
func (p *Parser) stringField(data []byte, isUTF8 bool) (span, bool, error) {
	if ok, err := p.need(data, 2); !ok {
		return span{}, false, err
	}
	n := int(binary.BigEndian.Uint16(data[p.off:]))
	if ok, err := p.need(data, 2+n); !ok {
		return span{}, false, err
	}
	s := span{off: p.off + 2, len: n}
	if isUTF8 && !validUTF8(data[s.off:s.off+n]) {
		return span{}, false, ErrBadUTF8
	}
	p.off += 2 + n
	return s, true, nil
}

// properties reads an MQTT 5 property block: a varint length, then that
// many bytes of properties. The whole block must be present before it is
// checked; it is bounded by the packet, which is bounded by MaxPacketSize.
func (p *Parser) properties(data []byte, allowed *[128]propKind) (bool, error) {
	avail := data[p.off:min(len(data), p.end)]
	n, w, err := readVarint(avail)
	if err != nil {
		return false, ErrProperty
	}
	if w == 0 {
		if len(avail) == p.end-p.off { // the packet ends inside the varint
			return false, ErrOverrun
		}
		return false, nil
	}
	if ok, err := p.need(data, w+n); !ok {
		return false, err
	}
	expiry, err := checkProperties(data[p.off+w:p.off+w+n], allowed)
	if err != nil {
		return false, err
	}
	if allowed == connectProperties {
		p.connect.SessionExpiry = expiry
	}
	p.off += w + n
	return true, nil
}

// finish copies the client ID and username out of data into p.names.
func (p *Parser) finish(data []byte) {
	c, u := p.clientID, p.username
	if c.len+u.len == 0 {
		return
	}
	buf := append(p.names[:0], data[c.off:c.off+c.len]...)
	buf = append(buf, data[u.off:u.off+u.len]...)
	p.names = buf
	// buf is not written again before Reset, so it can back the strings.
	s := unsafe.String(unsafe.SliceData(buf), len(buf))
	p.connect.ClientID = s[:c.len]
	p.connect.Username = s[c.len:]
}

// readVarint decodes an MQTT Variable Byte Integer [MQTT-1.5.5]. It returns
// n == 0 when more bytes are needed, and an error once four bytes have
// been seen without a terminating byte.
func readVarint(b []byte) (value, n int, err error) {
	for i := 0; i < 4; i++ {
		if i >= len(b) {
			return 0, 0, nil
		}
		value |= int(b[i]&0x7f) << (7 * i)
		if b[i]&0x80 == 0 {
			return value, i + 1, nil
		}
	}
	return 0, 0, ErrBadLength
}

// validUTF8 checks an MQTT UTF-8 string: well-formed UTF-8 without U+0000
// [MQTT-1.5.4-1, -2]. Go's utf8.Valid already rejects surrogates. Client IDs
// are nearly always ASCII, so that case is checked eight bytes at a time.
func validUTF8(b []byte) bool {
	const (
		lows  = 0x0101010101010101
		highs = 0x8080808080808080
	)
	for len(b) >= 8 {
		w := binary.LittleEndian.Uint64(b)
		// (w-lows)&^w&highs is non-zero iff some byte is zero.
		if w&highs != 0 || (w-lows)&^w&highs != 0 {
			break
		}
		b = b[8:]
	}
	for i, c := range b {
		if c == 0 {
			return false
		}
		if c >= utf8.RuneSelf {
			return bytes.IndexByte(b[i:], 0) < 0 && utf8.Valid(b[i:])
		}
	}
	return true
}
