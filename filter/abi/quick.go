package abi

/*
#cgo CFLAGS: -I${SRCDIR}/../quick
#include "conn.h"
*/
import "C"

import (
	"unsafe"

	"github.com/mqtt-sticky/mqtt-sticky/contract"
	"github.com/mqtt-sticky/mqtt-sticky/filter"
	"github.com/mqtt-sticky/mqtt-sticky/filter/mqtt"
	_ "github.com/mqtt-sticky/mqtt-sticky/filter/quick" // links quick.c, which shim.c calls
)

// setQuick tells shim.c how to route, without Go, a CONNECT that
// filter/quick recognizes: as package filter would under this config, or
// not at all when the config needs Go for every CONNECT. The names it
// gives C come from contract and package filter, their one home.
func setQuick(out *C.mqtt_sticky_quick_config, cfg *config) {
	fc := cfg.filter
	if !filter.QuickRoutable(fc) {
		return
	}
	levels := []mqtt.Level{mqtt.Level31, mqtt.Level311, mqtt.Level5}
	names := []string{contract.FilterStateKey, contract.MetadataNamespace,
		contract.MetadataClientID, contract.MetadataProtocolVersion, contract.MetadataUsername, contract.MetadataKeepAlive}
	for _, l := range levels {
		names = append(names, l.String())
	}
	bufs, strings := cStrings(names)
	out.state_key, out.metadata_ns = bufs[0], bufs[1]
	out.client_id_key, out.protocol_version_key, out.username_key, out.keep_alive_key = bufs[2], bufs[3], bufs[4], bufs[5]
	for i, l := range levels {
		out.versions[l] = bufs[6+i]
		out.connect_counters[l] = cfg.counters[filter.ConnectCounter(l)]
	}
	out.strings = strings
	out.wait_histogram = cfg.histograms[filter.ConnectWait]
	out.max_bytes = C.size_t(fc.MaxConnectBytes)
	out.hash_username = C.bool(fc.HashKey == contract.KeyUsername)
	out.metadata = C.bool(fc.Metadata())
	out.on = true
}

// cStrings copies names into one C allocation, which the caller frees, and
// returns a buffer for each.
func cStrings(names []string) ([]C.envoy_dynamic_module_type_module_buffer, unsafe.Pointer) {
	var all []byte
	for _, n := range names {
		all = append(all, n...)
	}
	mem := C.CBytes(all)
	bufs := make([]C.envoy_dynamic_module_type_module_buffer, len(names))
	off := 0
	for i, n := range names {
		bufs[i] = C.envoy_dynamic_module_type_module_buffer{ptr: (*C.char)(unsafe.Add(mem, off)), length: C.size_t(len(n))}
		off += len(n)
	}
	return bufs, mem
}
