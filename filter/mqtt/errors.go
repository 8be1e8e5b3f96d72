package mqtt

// Reason classifies why a CONNECT was refused. It is small and stable so a
// proxy can keep one counter per reason.
type Reason uint8

const (
	ReasonNone          Reason = iota
	ReasonNotConnect           // the first packet is not a CONNECT
	ReasonBadLength            // Remaining Length is not a valid 1-4 byte varint
	ReasonTooLarge             // the packet is larger than the configured limit
	ReasonProtocolName         // protocol name is neither "MQTT" nor "MQIsdp"
	ReasonProtocolLevel        // protocol level does not match the name
	ReasonReservedFlag         // the reserved connect flag is set
	ReasonMalformed            // lengths overrun the packet, bad flag combinations, bad properties
	ReasonBadUTF8              // a UTF-8 string field is not well-formed UTF-8
	numReasons
)

// Reasons lists every refusal reason, for callers that pre-register one
// counter per reason.
func Reasons() []Reason {
	r := make([]Reason, 0, numReasons-1)
	for i := ReasonNotConnect; i < numReasons; i++ {
		r = append(r, i)
	}
	return r
}

var reasonNames = [numReasons]string{
	ReasonNone:          "none",
	ReasonNotConnect:    "not_connect",
	ReasonBadLength:     "bad_length",
	ReasonTooLarge:      "too_large",
	ReasonProtocolName:  "protocol_name",
	ReasonProtocolLevel: "protocol_level",
	ReasonReservedFlag:  "reserved_flag",
	ReasonMalformed:     "malformed",
	ReasonBadUTF8:       "bad_utf8",
}

// String returns the reason as a metric-friendly name, such as "too_large".
func (r Reason) String() string {
	if r < numReasons {
		return reasonNames[r]
	}
	return "unknown"
}

// Error is a refusal: the input cannot be the start of a valid CONNECT.
// Errors are package-level values, so returning one does not allocate and
// callers can compare with errors.Is.
type Error struct {
	Reason Reason
	msg    string
}

func (e *Error) Error() string { return "mqtt: " + e.msg }

func newError(r Reason, msg string) *Error { return &Error{Reason: r, msg: msg} }

// The refusals, each naming the rule that was broken.
var (
	ErrNotConnect       = newError(ReasonNotConnect, "first packet is not CONNECT (packet type must be 1)")
	ErrFixedHeaderFlags = newError(ReasonNotConnect, "first byte is not 0x10: CONNECT flags must be 0 [MQTT-2.2.2-2] (0x16 is a TLS handshake on a plain-text port)")
	ErrBadLength        = newError(ReasonBadLength, "Remaining Length longer than 4 bytes [MQTT-1.5.5]")
	ErrTooLarge         = newError(ReasonTooLarge, "CONNECT larger than the configured maximum")
	ErrProtocolName     = newError(ReasonProtocolName, `protocol name is not "MQTT" or "MQIsdp" [MQTT-3.1.2-1]`)
	ErrProtocolLevel    = newError(ReasonProtocolLevel, "protocol level is not 3 (MQIsdp), 4 or 5 (MQTT) [MQTT-3.1.2-2]")
	ErrReservedFlag     = newError(ReasonReservedFlag, "reserved connect flag is set [MQTT-3.1.2-3]")
	ErrOverrun          = newError(ReasonMalformed, "field length overruns the packet")
	ErrTrailingBytes    = newError(ReasonMalformed, "bytes left over after the last CONNECT field")
	ErrWillFlags        = newError(ReasonMalformed, "will QoS or retain set without will flag, or will QoS 3 [MQTT-3.1.2-11..14]")
	ErrPasswordFlag     = newError(ReasonMalformed, "password flag set without username flag [MQTT-3.1.2-22]")
	ErrProperty         = newError(ReasonMalformed, "unknown, duplicate or truncated property")
	ErrBadUTF8          = newError(ReasonBadUTF8, "string is not well-formed UTF-8 or contains U+0000 [MQTT-1.5.4]")
)
