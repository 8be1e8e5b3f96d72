// Package quick recognizes, in C, the CONNECT most clients send, so that
// the module can route it without entering Go.
//
// Entering Go from an Envoy worker costs more than the filter's work: a
// cgo callback, and every few milliseconds a pass of the Go scheduler to
// keep the runtime's monitor thread asleep (filter/abi/runtime.go). Most
// CONNECTs need no decision beyond the routing key: they arrive in one
// read, name themselves in printable ASCII, and carry nothing unusual.
// quick.c reads exactly those, complete and valid, and says "not mine"
// for everything else, which filter/mqtt's parser then reads in full with
// its refusals, counters and log lines. C never refuses a connection, so
// filter/mqtt stays the one judge of what is malformed.
//
// What C recognizes: MQTT 3.1, 3.1.1 and 5.0 without the bridge bit;
// client ID and user name of printable ASCII (so that they need no UTF-8
// check and no escaping in logs); a will with an ASCII topic; a password;
// and MQTT 5 properties of fixed size (session expiry, receive maximum,
// and the like). FuzzQuickAgreesWithParser holds C to filter/mqtt: every
// CONNECT C recognizes, filter/mqtt parses to the same fields.
//
// The Go function here exists for the tests; the module's shim.c calls
// mqtt_sticky_quick_parse directly.
package quick

/*
#include "quick.h"
*/
import "C"

import "unsafe"

// Connect is what quick.c reports for a recognized CONNECT.
type Connect struct {
	Level       uint8
	ClientID    string
	Username    string
	HasUsername bool
	KeepAlive   uint16
}

// Parse reports whether data starts with a CONNECT of at most maxBytes
// that C recognizes, and its fields.
func Parse(data []byte, maxBytes int) (Connect, bool) {
	if len(data) == 0 || maxBytes <= 0 {
		return Connect{}, false
	}
	var out C.mqtt_sticky_quick_connect
	if !C.mqtt_sticky_quick_parse((*C.uint8_t)(unsafe.Pointer(&data[0])), C.size_t(len(data)), C.size_t(maxBytes), &out) {
		return Connect{}, false
	}
	return Connect{
		Level:       uint8(out.level),
		ClientID:    string(data[out.client_id_off : out.client_id_off+out.client_id_len]),
		Username:    string(data[out.username_off : out.username_off+out.username_len]),
		HasUsername: bool(out.has_username),
		KeepAlive:   uint16(out.keep_alive),
	}, true
}
