// Package abi connects package filter to Envoy's dynamic-module ABI. It is
// the only package with cgo. The hooks Envoy calls live in shim.c, which
// does what is the same for every connection (counting it, its CONNECT
// deadline, kept by waiting.c, routing a plain CONNECT that arrives in one
// read, recognized by filter/quick, and passing routed connections
// through) and enters Go, through the exports in hooks.go, only for
// decisions: a CONNECT that is split across reads or unusual, a deadline
// that passed, a close while waiting, a connection Envoy does not read.
// The callbacks into Envoy are wrapped by conn, which implements
// filter.Conn.
//
// Envoy holds integer handles and C records, never Go pointers: the filter
// config is kept in a runtime/cgo handle, and so is a connection's Go
// state while its CONNECT is incomplete across reads. A connection whose
// CONNECT arrives in one read gets no handle at all.
package abi

/*
#include <stdlib.h>

#include "conn.h"
*/
import "C"

import (
	"fmt"
	"runtime"
	"runtime/cgo"
	"runtime/debug"
	"sync"
	"unsafe"

	"github.com/mqtt-sticky/mqtt-sticky/contract"
	"github.com/mqtt-sticky/mqtt-sticky/filter"
)

// config is the module's side of one filter config.
type config struct {
	filter     *contract.Config
	counters   []C.size_t // Envoy's ids, indexed by filter.Counter
	histograms []C.size_t // indexed by filter.Histogram
}

//export mqttStickyConfigNew
func mqttStickyConfigNew(envoyConfig unsafe.Pointer, name *C.char, nameLen C.size_t, raw *C.char, rawLen C.size_t, out *C.mqtt_sticky_config) (ok bool) {
	defer func() {
		if r := recover(); r != nil {
			hostLog(filter.LogCritical, fmt.Sprintf("mqtt_sticky: panic while creating the filter config: %v\n%s", r, debug.Stack()))
			ok = false
		}
	}()
	configureRuntime()
	filterName := C.GoStringN(name, C.int(nameLen))
	if filterName != contract.FilterName {
		hostLog(filter.LogError, fmt.Sprintf("mqtt_sticky: unknown filter_name %q: this module provides %q", filterName, contract.FilterName))
		return false
	}
	fc, err := contract.ParseConfig(C.GoBytes(unsafe.Pointer(raw), C.int(rawLen)))
	if err != nil {
		hostLog(filter.LogError, "mqtt_sticky: rejecting filter_config: "+err.Error())
		return false
	}
	cfg := &config{filter: fc}
	envoyCfg := C.envoy_network_filter_config_envoy_ptr(envoyConfig)
	cfg.counters, ok = defineMetrics("counter", filter.CounterNames(), func(name C.envoy_dynamic_module_type_module_buffer, id *C.size_t) C.envoy_metrics_result {
		return C.envoy_dynamic_module_callback_network_filter_config_define_counter(envoyCfg, name, id)
	})
	if !ok {
		return false
	}
	gauges, ok := defineMetrics("gauge", filter.GaugeNames(), func(name C.envoy_dynamic_module_type_module_buffer, id *C.size_t) C.envoy_metrics_result {
		return C.envoy_dynamic_module_callback_network_filter_config_define_gauge(envoyCfg, name, id)
	})
	if !ok {
		return false
	}
	if cfg.histograms, ok = defineMetrics("histogram", filter.HistogramNames(), func(name C.envoy_dynamic_module_type_module_buffer, id *C.size_t) C.envoy_metrics_result {
		return C.envoy_dynamic_module_callback_network_filter_config_define_histogram(envoyCfg, name, id)
	}); !ok {
		return false
	}
	hostLog(filter.LogInfo, fmt.Sprintf("mqtt_sticky: filter config loaded: hash_key=%s empty_key=%s max_connect_bytes=%d connect_timeout_ms=%d identity_binding=%s identity_source=%s proxy_protocol_cn=%v dynamic_metadata=%v",
		fc.HashKey, fc.EmptyKey, fc.MaxConnectBytes, fc.ConnectTimeoutMs, fc.IdentityBinding, fc.IdentitySource, fc.ProxyProtocolCN, fc.Metadata()))
	out.handle = C.uintptr_t(cgo.NewHandle(cfg))
	out.timeout_ns = C.int64_t(fc.ConnectTimeout())
	out.waiting_gauge = gauges[filter.Waiting]
	out.accepted_counter = cfg.counters[filter.Accepted]
	setQuick(&out.quick, cfg)
	return true
}

// defineMetrics defines one metric per name while the config is created
// (Envoy refuses definitions later) and returns their ids in order.
func defineMetrics(kind string, names []string, define func(C.envoy_dynamic_module_type_module_buffer, *C.size_t) C.envoy_metrics_result) ([]C.size_t, bool) {
	ids := make([]C.size_t, 0, len(names))
	for _, n := range names {
		var id C.size_t
		if r := define(moduleBuffer(n), &id); r != 0 {
			hostLog(filter.LogError, fmt.Sprintf("mqtt_sticky: defining %s %s failed with metrics result %d", kind, n, r))
			return nil, false
		}
		runtime.KeepAlive(n)
		ids = append(ids, id)
	}
	return ids, true
}

//export mqttStickyConfigDestroy
func mqttStickyConfigDestroy(handle C.uintptr_t) {
	if handle != 0 {
		cgo.Handle(handle).Delete()
	}
}

// conn is one connection while Go works on it: the filter plus the Envoy
// pointer its callbacks need. It implements filter.Conn. Its envoy pointer
// is valid only during the hook that set it.
type conn struct {
	envoy    C.envoy_network_filter_envoy_ptr
	cfg      *config
	filter   filter.Filter
	handle   cgo.Handle // while the CONNECT is incomplete across reads
	views    [4][]byte  // reused chunk views, so a read does not allocate
	panicked bool       // a hook panicked: the filter is no longer trusted
}

// conns recycles conn values: most connections need one only for the
// duration of the read that carries their CONNECT.
var conns = sync.Pool{New: func() any { return new(conn) }}

func (c *conn) SetHashKey(key string) bool {
	ok := C.envoy_dynamic_module_callback_network_set_filter_state_typed(c.envoy, moduleBuffer(contract.FilterStateKey), moduleBuffer(key))
	runtime.KeepAlive(key)
	return bool(ok)
}

func (c *conn) SetMetadata(key, value string) {
	C.envoy_dynamic_module_callback_network_set_dynamic_metadata_string(c.envoy, moduleBuffer(contract.MetadataNamespace), moduleBuffer(key), moduleBuffer(value))
	runtime.KeepAlive(key)
	runtime.KeepAlive(value)
}

// SetMetadataStrings sets the fields in one call. The entries and their
// bytes are copied into one C allocation for the call: a Go array of
// entries would hold Go pointers, which cgo does not let C see.
func (c *conn) SetMetadataStrings(fields []filter.Field) {
	if len(fields) == 0 {
		return
	}
	size := len(fields) * C.sizeof_envoy_dynamic_module_type_module_key_value_pair
	for _, f := range fields {
		size += len(f.Key) + len(f.Value)
	}
	mem := C.malloc(C.size_t(size))
	if mem == nil {
		for _, f := range fields {
			c.SetMetadata(f.Key, f.Value)
		}
		return
	}
	defer C.free(mem)
	entries := unsafe.Slice((*C.envoy_dynamic_module_type_module_key_value_pair)(mem), len(fields))
	bytes := unsafe.Slice((*byte)(mem), size)[len(fields)*C.sizeof_envoy_dynamic_module_type_module_key_value_pair:]
	put := func(s string) (*C.char, C.size_t) {
		n := copy(bytes, s)
		p := (*C.char)(unsafe.Pointer(unsafe.SliceData(bytes)))
		bytes = bytes[n:]
		return p, C.size_t(n)
	}
	for i, f := range fields {
		e := &entries[i]
		e.key_ptr, e.key_length = put(f.Key)
		e.value_ptr, e.value_length = put(f.Value)
	}
	C.envoy_dynamic_module_callback_network_set_dynamic_metadata_string_batch(c.envoy, moduleBuffer(contract.MetadataNamespace), &entries[0], C.size_t(len(entries)))
}

func (c *conn) SetMetadataNumber(key string, value float64) {
	C.envoy_dynamic_module_callback_network_set_dynamic_metadata_number(c.envoy, moduleBuffer(contract.MetadataNamespace), moduleBuffer(key), C.double(value))
	runtime.KeepAlive(key)
}

func (c *conn) ReadEnabled() bool {
	return bool(C.envoy_dynamic_module_callback_network_filter_read_enabled(c.envoy))
}

func (c *conn) RemoteAddress() (string, uint32, bool) {
	var addr C.envoy_dynamic_module_type_envoy_buffer
	var port C.uint32_t
	if !C.envoy_dynamic_module_callback_network_filter_get_remote_address(c.envoy, &addr, &port) {
		return "", 0, false
	}
	return C.GoStringN(addr.ptr, C.int(addr.length)), uint32(port), true
}

func (c *conn) Write(data []byte) {
	C.envoy_dynamic_module_callback_network_filter_write(c.envoy, bytesBuffer(data), false)
	runtime.KeepAlive(data)
}

func (c *conn) Close(details string) {
	C.envoy_dynamic_module_callback_network_filter_close_with_details(c.envoy, C.envoy_close_flush_write, moduleBuffer(details))
	runtime.KeepAlive(details)
}

func (c *conn) Inc(counter filter.Counter) {
	C.envoy_dynamic_module_callback_network_filter_increment_counter(c.envoy, c.cfg.counters[counter], 1)
}

func (c *conn) Record(h filter.Histogram, value uint64) {
	C.envoy_dynamic_module_callback_network_filter_record_histogram_value(c.envoy, c.cfg.histograms[h], C.uint64_t(value))
}

func (c *conn) Log(level filter.LogLevel, msg string) { hostLog(level, msg) }

func hostLog(level filter.LogLevel, msg string) {
	C.envoy_dynamic_module_callback_log(C.envoy_log_level(level), moduleBuffer(msg))
	runtime.KeepAlive(msg)
}

// moduleBuffer points Envoy at a Go string for the duration of one call;
// Envoy copies what it keeps. Callers keep the string alive across the call.
func moduleBuffer(s string) C.envoy_dynamic_module_type_module_buffer {
	return C.envoy_dynamic_module_type_module_buffer{ptr: (*C.char)(unsafe.Pointer(unsafe.StringData(s))), length: C.size_t(len(s))}
}

func bytesBuffer(b []byte) C.envoy_dynamic_module_type_module_buffer {
	return C.envoy_dynamic_module_type_module_buffer{ptr: (*C.char)(unsafe.Pointer(unsafe.SliceData(b))), length: C.size_t(len(b))}
}
