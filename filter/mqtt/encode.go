package mqtt

import (
	"encoding/binary"
	"io"
)

// ConnectPacket is a CONNECT to encode: the fields Parser reports plus the
// ones it skips. Properties and WillProperties are raw MQTT 5 property
// blocks without their length prefix; they are ignored below level 5, and
// SessionExpiry, when non-zero, is written as a property ahead of them.
type ConnectPacket struct {
	Connect
	Password       []byte
	WillTopic      string
	WillPayload    []byte
	Properties     []byte
	WillProperties []byte
}

// AppendConnect appends the encoded CONNECT to dst. Flags follow the fields:
// HasUsername, HasPassword, Will, WillQoS, WillRetain, CleanStart, Bridge.
func AppendConnect(dst []byte, p *ConnectPacket) []byte {
	c := &p.Connect
	var body []byte
	name := "MQTT"
	if c.Level == Level31 {
		name = "MQIsdp"
	}
	body = appendString(body, name)
	level := byte(c.Level)
	if c.Bridge {
		level |= bridgeLevelBit
	}
	body = append(body, level, connectFlags(c))
	body = binary.BigEndian.AppendUint16(body, c.KeepAlive)
	if c.Level == Level5 {
		var props []byte
		if c.SessionExpiry != 0 {
			props = append(props, propSessionExpiry)
			props = binary.BigEndian.AppendUint32(props, c.SessionExpiry)
		}
		props = append(props, p.Properties...)
		body = appendVarint(body, len(props))
		body = append(body, props...)
	}
	body = appendString(body, c.ClientID)
	if c.Will {
		if c.Level == Level5 {
			body = appendVarint(body, len(p.WillProperties))
			body = append(body, p.WillProperties...)
		}
		body = appendString(body, p.WillTopic)
		body = appendString(body, string(p.WillPayload))
	}
	if c.HasUsername {
		body = appendString(body, c.Username)
	}
	if c.HasPassword {
		body = appendString(body, string(p.Password))
	}
	dst = append(dst, connectPacketTyp)
	dst = appendVarint(dst, len(body))
	return append(dst, body...)
}

func connectFlags(c *Connect) byte {
	var f byte
	if c.CleanStart {
		f |= flagCleanStart
	}
	if c.Will {
		f |= flagWill | (c.WillQoS<<willQoSShift)&flagWillQoS
		if c.WillRetain {
			f |= flagWillRetain
		}
	}
	if c.HasPassword {
		f |= flagPassword
	}
	if c.HasUsername {
		f |= flagUsername
	}
	return f
}

// CONNACK return codes (3.1, 3.1.1) and reason codes (5.0) a proxy may
// answer with when it refuses a CONNECT itself.
const (
	ConnackIdentifierRejected     byte = 0x02 // 3.x: client identifier rejected
	ConnackBadUsernameOrPassword  byte = 0x04 // 3.x: bad user name or password
	ConnackNotAuthorized          byte = 0x05 // 3.x: not authorized
	ReasonClientIdentifierInvalid byte = 0x85 // 5.0: Client Identifier not valid
	ReasonBadUserNameOrPassword   byte = 0x86 // 5.0: Bad User Name or Password
	ReasonNotAuthorized           byte = 0x87 // 5.0: Not authorized
)

// AppendConnack appends a CONNACK with session-present 0 and the given
// return or reason code, in the layout the protocol level expects: two
// bytes of variable header for 3.x, plus an empty property block for 5.0.
func AppendConnack(dst []byte, level Level, code byte) []byte {
	if level == Level5 {
		return append(dst, 0x20, 0x03, 0x00, code, 0x00)
	}
	return append(dst, 0x20, 0x02, 0x00, code)
}

func appendString(dst []byte, s string) []byte {
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(s)))
	return append(dst, s...)
}

func appendVarint(dst []byte, v int) []byte {
	for {
		b := byte(v & 0x7f)
		v >>= 7
		if v > 0 {
			b |= 0x80
		}
		dst = append(dst, b)
		if v == 0 {
			return dst
		}
	}
}

// AppendSubscribe appends a SUBSCRIBE for one topic filter at QoS 0, as a
// client sends it. Tests and the load generator use it.
func AppendSubscribe(dst []byte, level Level, packetID uint16, filter string) []byte {
	body := binary.BigEndian.AppendUint16(nil, packetID)
	if level == Level5 {
		body = append(body, 0) // no properties
	}
	body = appendString(body, filter)
	body = append(body, 0) // QoS 0
	dst = append(dst, 0x82)
	dst = appendVarint(dst, len(body))
	return append(dst, body...)
}

// AppendPublish appends a QoS 0 PUBLISH.
func AppendPublish(dst []byte, level Level, topic string, payload []byte) []byte {
	n := 2 + len(topic) + len(payload)
	if level == Level5 {
		n++ // empty property block
	}
	dst = append(dst, 0x30)
	dst = appendVarint(dst, n)
	dst = appendString(dst, topic)
	if level == Level5 {
		dst = append(dst, 0)
	}
	return append(dst, payload...)
}

// ByteReader is what ReadPacket reads from; *bufio.Reader is one.
type ByteReader interface {
	io.Reader
	io.ByteReader
}

// ReadPacket reads one whole packet, as a client reads a broker's replies:
// its first byte (type and flags) and its body.
func ReadPacket(r ByteReader) (byte, []byte, error) {
	first, err := r.ReadByte()
	if err != nil {
		return 0, nil, err
	}
	n, shift := 0, 0
	for i := 0; ; i++ {
		b, err := r.ReadByte()
		if err != nil {
			return 0, nil, err
		}
		n |= int(b&0x7f) << shift
		shift += 7
		if b&0x80 == 0 {
			break
		}
		if i == 3 {
			return 0, nil, ErrBadLength
		}
	}
	body := make([]byte, n)
	_, err = io.ReadFull(r, body)
	return first, body, err
}
