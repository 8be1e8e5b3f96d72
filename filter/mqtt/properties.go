package mqtt

import "encoding/binary"

// propKind is the wire type of an MQTT 5 property [MQTT-2.2.2.2].
type propKind uint8

const (
	propNone propKind = iota // not allowed here
	propByte
	propUint16
	propUint32
	propString // UTF-8 string
	propBinary
	propPair // UTF-8 string pair (User Property)
)

const (
	propSessionExpiry = 0x11
	propUserProperty  = 0x26
)

// connectProperties are the properties allowed in the CONNECT variable
// header [MQTT-3.1.2.11]; willProperties those allowed in the will
// properties of the payload [MQTT-3.1.3.2]. All identifiers are below 64.
var connectProperties = &[128]propKind{
	0x11: propUint32, // Session Expiry Interval
	0x15: propString, // Authentication Method
	0x16: propBinary, // Authentication Data
	0x17: propByte,   // Request Problem Information
	0x19: propByte,   // Request Response Information
	0x21: propUint16, // Receive Maximum
	0x22: propUint16, // Topic Alias Maximum
	0x26: propPair,   // User Property
	0x27: propUint32, // Maximum Packet Size
}

var willProperties = &[128]propKind{
	0x01: propByte,   // Payload Format Indicator
	0x02: propUint32, // Message Expiry Interval
	0x03: propString, // Content Type
	0x08: propString, // Response Topic
	0x09: propBinary, // Correlation Data
	0x18: propUint32, // Will Delay Interval
	0x26: propPair,   // User Property
}

// checkProperties walks a complete property block. It refuses unknown
// identifiers, repeated ones (only User Property may repeat), truncated
// values and bad UTF-8, and returns the Session Expiry Interval if present.
func checkProperties(b []byte, allowed *[128]propKind) (sessionExpiry uint32, err error) {
	var seen uint64 // one bit per identifier; every allowed one is below 64
	for len(b) > 0 {
		id := b[0]
		b = b[1:]
		// Identifiers are varints, but every defined one is below 128.
		if id >= 128 || allowed[id] == propNone {
			return 0, ErrProperty
		}
		if id != propUserProperty {
			bit := uint64(1) << (id % 64)
			if seen&bit != 0 {
				return 0, ErrProperty
			}
			seen |= bit
		}
		var n int
		switch allowed[id] {
		case propByte:
			n = 1
		case propUint16:
			n = 2
		case propUint32:
			n = 4
		case propString, propBinary:
			if n, err = lengthPrefixed(b, allowed[id] == propString); err != nil {
				return 0, err
			}
		case propPair:
			k, err := lengthPrefixed(b, true)
			if err != nil {
				return 0, err
			}
			v, err := lengthPrefixed(b[k:], true)
			if err != nil {
				return 0, err
			}
			n = k + v
		}
		if n > len(b) {
			return 0, ErrProperty
		}
		if id == propSessionExpiry {
			sessionExpiry = binary.BigEndian.Uint32(b)
		}
		b = b[n:]
	}
	return sessionExpiry, nil
}

// lengthPrefixed returns the size of the 2-byte-length-prefixed field at the
// start of b, checking UTF-8 when isUTF8 is set.
func lengthPrefixed(b []byte, isUTF8 bool) (int, error) {
	if len(b) < 2 {
		return 0, ErrProperty
	}
	n := 2 + int(binary.BigEndian.Uint16(b))
	if n > len(b) {
		return 0, ErrProperty
	}
	if isUTF8 && !validUTF8(b[2:n]) {
		return 0, ErrBadUTF8
	}
	return n, nil
}
