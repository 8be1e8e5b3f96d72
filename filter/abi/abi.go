// Package abi connects package filter to Envoy's dynamic-module ABI. It is
// the only package with cgo: the hooks Envoy calls live in shim.c, which
// enters Go through the exports below only while a connection waits for
// its CONNECT; the callbacks into Envoy are wrapped by conn, which
// implements filter.Conn.
//
// Envoy holds integer handles, never Go pointers: the filter config and
// each waiting connection are kept in runtime/cgo handles, and a
// connection's handle is deleted as soon as it is routed.
package abi

/*
#include "abi.h"
*/
import "C"

import (
	"fmt"
	"runtime"
	"runtime/cgo"
	"runtime/debug"
	"sync"
	"time"
	"unsafe"

	"github.com/mqtt-sticky/mqtt-sticky/contract"
	"github.com/mqtt-sticky/mqtt-sticky/filter"
)

// Statuses returned to shim.c; 0 and 1 are Envoy's Continue and
// StopIteration, 2 is shim.c's MQTT_STICKY_ROUTED.
const (
	statusContinue C.int = 0
	statusStop     C.int = 1
	statusRouted   C.int = 2
)

// timerEvent is the scheduler event id for the CONNECT timeout.
const timerEvent = 1

// config is the module's side of one filter config.
type config struct {
	filter     *contract.Config
	counters   []C.size_t // Envoy's ids, indexed by filter.Counter
	gauges     []C.size_t // indexed by filter.Gauge
	histograms []C.size_t // indexed by filter.Histogram
}

//export mqttStickyConfigNew
func mqttStickyConfigNew(envoyConfig unsafe.Pointer, name *C.char, nameLen C.size_t, raw *C.char, rawLen C.size_t) (handle C.uintptr_t) {
	defer func() {
		if r := recover(); r != nil {
			hostLog(filter.LogCritical, fmt.Sprintf("mqtt_sticky: panic while creating the filter config: %v\n%s", r, debug.Stack()))
			handle = 0
		}
	}()
	filterName := C.GoStringN(name, C.int(nameLen))
	if filterName != contract.FilterName {
		hostLog(filter.LogError, fmt.Sprintf("mqtt_sticky: unknown filter_name %q: this module provides %q", filterName, contract.FilterName))
		return 0
	}
	fc, err := contract.ParseConfig(C.GoBytes(unsafe.Pointer(raw), C.int(rawLen)))
	if err != nil {
		hostLog(filter.LogError, "mqtt_sticky: rejecting filter_config: "+err.Error())
		return 0
	}
	cfg := &config{filter: fc}
	envoyCfg := C.envoy_network_filter_config_envoy_ptr(envoyConfig)
	var ok bool
	if cfg.counters, ok = defineMetrics("counter", filter.CounterNames(), func(name C.envoy_dynamic_module_type_module_buffer, id *C.size_t) C.envoy_metrics_result {
		return C.envoy_dynamic_module_callback_network_filter_config_define_counter(envoyCfg, name, id)
	}); !ok {
		return 0
	}
	if cfg.gauges, ok = defineMetrics("gauge", filter.GaugeNames(), func(name C.envoy_dynamic_module_type_module_buffer, id *C.size_t) C.envoy_metrics_result {
		return C.envoy_dynamic_module_callback_network_filter_config_define_gauge(envoyCfg, name, id)
	}); !ok {
		return 0
	}
	if cfg.histograms, ok = defineMetrics("histogram", filter.HistogramNames(), func(name C.envoy_dynamic_module_type_module_buffer, id *C.size_t) C.envoy_metrics_result {
		return C.envoy_dynamic_module_callback_network_filter_config_define_histogram(envoyCfg, name, id)
	}); !ok {
		return 0
	}
	hostLog(filter.LogInfo, fmt.Sprintf("mqtt_sticky: filter config loaded: hash_key=%s empty_key=%s max_connect_bytes=%d connect_timeout_ms=%d identity_binding=%s identity_source=%s proxy_protocol_cn=%v",
		fc.HashKey, fc.EmptyKey, fc.MaxConnectBytes, fc.ConnectTimeoutMs, fc.IdentityBinding, fc.IdentitySource, fc.ProxyProtocolCN))
	return C.uintptr_t(cgo.NewHandle(cfg))
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

// conn is one waiting connection: the filter plus the Envoy pointer its
// callbacks need. It implements filter.Conn.
type conn struct {
	envoy    C.envoy_network_filter_envoy_ptr
	cfg      *config
	filter   *filter.Filter
	handle   cgo.Handle
	views    [4][]byte // reused chunk views, so a read does not allocate
	panicked bool      // a hook panicked: the filter is no longer trusted

	mu    sync.Mutex // serialises the timer goroutine's commit with DisarmTimer's delete
	sched C.envoy_network_filter_scheduler_ptr
	timer *time.Timer
}

//export mqttStickyFilterNew
func mqttStickyFilterNew(cfgHandle C.uintptr_t, envoy unsafe.Pointer) (handle C.uintptr_t) {
	defer func() {
		if r := recover(); r != nil {
			hostLog(filter.LogCritical, fmt.Sprintf("mqtt_sticky: panic while creating a filter: %v\n%s", r, debug.Stack()))
			handle = 0 // Envoy closes this connection
		}
	}()
	c := &conn{envoy: C.envoy_network_filter_envoy_ptr(envoy), cfg: cgo.Handle(cfgHandle).Value().(*config)}
	c.filter = filter.New(c.cfg.filter, c)
	c.handle = cgo.NewHandle(c)
	return C.uintptr_t(c.handle)
}

// lookup returns the connection behind a handle. A bad handle would be a
// bug in shim.c; it must still not panic across the C boundary.
func lookup(handle C.uintptr_t) (c *conn) {
	defer func() {
		if r := recover(); r != nil {
			hostLog(filter.LogCritical, fmt.Sprintf("mqtt_sticky: bad connection handle %d: %v", handle, r))
			c = nil
		}
	}()
	c, _ = cgo.Handle(handle).Value().(*conn)
	return c
}

//export mqttStickyOnNewConnection
func mqttStickyOnNewConnection(handle C.uintptr_t) (status C.int) {
	c := lookup(handle)
	if c == nil {
		return statusStop
	}
	defer c.barrier("on_new_connection", &status)
	return toStatus(c.filter.OnNewConnection())
}

//export mqttStickyOnRead
func mqttStickyOnRead(handle C.uintptr_t, chunks *C.envoy_dynamic_module_type_envoy_buffer, n C.size_t, endStream C.bool) (status C.int) {
	c := lookup(handle)
	if c == nil {
		return statusStop
	}
	defer c.barrier("on_read", &status)
	if c.panicked {
		return statusStop
	}
	st := c.filter.OnRead(c.chunkViews(chunks, int(n)), bool(endStream))
	clear(c.views[:])
	if st == filter.Routed {
		// shim.c forgets the handle; nothing of this connection stays in Go.
		c.handle.Delete()
		c.filter = nil
	}
	return toStatus(st)
}

//export mqttStickyOnClose
func mqttStickyOnClose(handle C.uintptr_t) {
	c := lookup(handle)
	if c == nil {
		return
	}
	defer c.barrier("on_event", nil)
	if !c.panicked {
		c.filter.OnClose()
	}
}

//export mqttStickyOnScheduled
func mqttStickyOnScheduled(handle C.uintptr_t, event C.uint64_t) {
	c := lookup(handle)
	if c == nil {
		return
	}
	defer c.barrier("on_scheduled", nil)
	if event == timerEvent && !c.panicked {
		c.filter.OnTimer()
	}
}

//export mqttStickyFilterDestroy
func mqttStickyFilterDestroy(handle C.uintptr_t) {
	c := lookup(handle)
	if c == nil {
		return
	}
	defer func() {
		if r := recover(); r != nil {
			hostLog(filter.LogCritical, fmt.Sprintf("mqtt_sticky: panic in on_destroy: %v\n%s", r, debug.Stack()))
		}
		c.DisarmTimer() // whatever happened, no timer may outlive the connection
		c.handle.Delete()
	}()
	if !c.panicked {
		c.filter.Destroy()
	}
}

// barrier stops a panic at the hook boundary: a panic must never reach
// Envoy, which would abort the process. The connection is failed closed.
func (c *conn) barrier(hook string, status *C.int) {
	r := recover()
	if r == nil {
		return
	}
	if status != nil {
		*status = statusStop
	}
	if c.panicked {
		return
	}
	c.panicked = true
	hostLog(filter.LogCritical, fmt.Sprintf("mqtt_sticky: panic in %s, closing the connection: %v\n%s", hook, r, debug.Stack()))
	c.DisarmTimer()
	c.Inc(filter.RejectInternal)
	C.envoy_dynamic_module_callback_network_filter_close_with_details(c.envoy, C.envoy_close_abort, moduleBuffer("mqtt_sticky: internal error"))
}

func toStatus(s filter.Status) C.int {
	switch s {
	case filter.Continue:
		return statusContinue
	case filter.Routed:
		return statusRouted
	}
	return statusStop
}

// chunkViews turns Envoy's chunk array into byte slices over Envoy's memory,
// valid until the hook returns.
func (c *conn) chunkViews(chunks *C.envoy_dynamic_module_type_envoy_buffer, n int) [][]byte {
	if n == 0 {
		return nil
	}
	views := c.views[:0]
	for _, b := range unsafe.Slice(chunks, n) {
		views = append(views, unsafe.Slice((*byte)(unsafe.Pointer(b.ptr)), int(b.length)))
	}
	return views
}

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

func (c *conn) AddGauge(g filter.Gauge, delta int64) {
	if delta >= 0 {
		C.envoy_dynamic_module_callback_network_filter_increment_gauge(c.envoy, c.cfg.gauges[g], C.uint64_t(delta))
	} else {
		C.envoy_dynamic_module_callback_network_filter_decrement_gauge(c.envoy, c.cfg.gauges[g], C.uint64_t(-delta))
	}
}

func (c *conn) Record(h filter.Histogram, value uint64) {
	C.envoy_dynamic_module_callback_network_filter_record_histogram_value(c.envoy, c.cfg.histograms[h], C.uint64_t(value))
}

func (c *conn) Log(level filter.LogLevel, msg string) { hostLog(level, msg) }

// ArmTimer starts a Go timer whose goroutine asks Envoy, through the
// connection's scheduler, to run OnTimer on the worker thread: Envoy's
// callbacks may not be used from the timer goroutine itself.
func (c *conn) ArmTimer(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sched == nil {
		c.sched = C.envoy_dynamic_module_callback_network_filter_scheduler_new(c.envoy)
	}
	if c.timer != nil {
		c.timer.Stop()
	}
	c.timer = time.AfterFunc(d, c.fire)
}

func (c *conn) fire() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sched != nil { // nil once disarmed: the scheduler is gone
		C.envoy_dynamic_module_callback_network_filter_scheduler_commit(c.sched, timerEvent)
	}
}

func (c *conn) DisarmTimer() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.timer != nil {
		c.timer.Stop()
		c.timer = nil
	}
	if c.sched != nil {
		C.envoy_dynamic_module_callback_network_filter_scheduler_delete(c.sched)
		c.sched = nil
	}
}

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
