package abi

/*
#include "conn.h"
*/
import "C"

import (
	"fmt"
	"runtime/cgo"
	"runtime/debug"
	"time"
	"unsafe"

	"github.com/mqtt-sticky/mqtt-sticky/filter"
)

// What the per-connection exports return to shim.c. Stop and the filter
// still waits; Routed and the CONNECT is complete (continue; Go keeps
// nothing); Refused and the connection is closed.
const (
	statusStop    C.int = 1
	statusRouted  C.int = 2
	statusRefused C.int = 3
)

// begin returns the connection behind handle, or a fresh one from the pool
// when Go keeps nothing for it yet.
func begin(cfgHandle C.uintptr_t, envoy unsafe.Pointer, handle C.uintptr_t) *conn {
	if handle != 0 {
		c := cgo.Handle(handle).Value().(*conn)
		c.envoy = C.envoy_network_filter_envoy_ptr(envoy)
		return c
	}
	c := conns.Get().(*conn)
	c.envoy = C.envoy_network_filter_envoy_ptr(envoy)
	c.cfg = cgo.Handle(cfgHandle).Value().(*config)
	c.filter.Reset(c.cfg.filter, c)
	return c
}

// end finishes a hook. With keep, a filter still waiting keeps (or gets) a
// handle, which it returns for shim.c to store; otherwise, and after a
// panic, Go's state is released and the conn recycled.
func end(c *conn, keep bool) C.uintptr_t {
	c.envoy = nil
	clear(c.views[:])
	if keep && c.filter.Waiting() && !c.panicked {
		if c.handle == 0 {
			c.handle = cgo.NewHandle(c)
		}
		return C.uintptr_t(c.handle)
	}
	if c.handle != 0 {
		c.handle.Delete()
		c.handle = 0
	}
	if !c.panicked {
		conns.Put(c)
	}
	return 0
}

// run runs fn on the connection behind handle (a fresh one when Go keeps
// nothing for it yet) behind the panic barrier, then finishes it with
// end(keep) and returns fn's status and the handle shim.c is to keep.
func run(hook string, cfgHandle C.uintptr_t, envoy unsafe.Pointer, handle C.uintptr_t, keep bool, fn func(*conn) C.int) (status C.int, kept C.uintptr_t) {
	var c *conn
	defer func() {
		r := recover()
		if c == nil { // begin failed: a bad handle, a bug in shim.c
			if r != nil {
				hostLog(filter.LogCritical, fmt.Sprintf("mqtt_sticky: panic in %s before the filter ran, closing the connection: %v\n%s", hook, r, debug.Stack()))
				C.envoy_dynamic_module_callback_network_filter_close_with_details(C.envoy_network_filter_envoy_ptr(envoy), C.envoy_close_abort, moduleBuffer("mqtt_sticky: internal error"))
				status, kept = statusRefused, 0
			}
			return
		}
		if r != nil {
			c.fail(hook, r)
			status = statusRefused
		}
		kept = end(c, keep)
	}()
	c = begin(cfgHandle, envoy, handle)
	return fn(c), 0
}

// mqttStickyOnRead hands the filter the connection's unread bytes. waited
// is how long ago the connection arrived (ns), for the ConnectWait
// histogram; only a fresh conn needs it.
//
//export mqttStickyOnRead
func mqttStickyOnRead(cfgHandle C.uintptr_t, envoy unsafe.Pointer, handle *C.uintptr_t, chunks *C.envoy_dynamic_module_type_envoy_buffer, n C.size_t, endStream C.bool, waited C.int64_t) C.int {
	fresh := *handle == 0
	status, kept := run("on_read", cfgHandle, envoy, *handle, true, func(c *conn) C.int {
		if fresh {
			c.filter.SetArrival(time.Now().Add(-time.Duration(waited)))
		}
		switch c.filter.OnRead(c.chunkViews(chunks, int(n)), bool(endStream)) {
		case filter.Routed:
			return statusRouted
		case filter.Stop:
			if c.filter.Waiting() {
				return statusStop
			}
		}
		return statusRefused
	})
	*handle = kept
	return status
}

//export mqttStickyOnTimeout
func mqttStickyOnTimeout(cfgHandle C.uintptr_t, envoy unsafe.Pointer, handle C.uintptr_t) {
	run("on_timeout", cfgHandle, envoy, handle, false, func(c *conn) C.int { c.filter.OnTimeout(); return statusRefused })
}

//export mqttStickyOnClose
func mqttStickyOnClose(cfgHandle C.uintptr_t, envoy unsafe.Pointer, handle C.uintptr_t) {
	run("on_close", cfgHandle, envoy, handle, false, func(c *conn) C.int { c.filter.OnClose(); return statusRefused })
}

//export mqttStickyRefuseUnread
func mqttStickyRefuseUnread(cfgHandle C.uintptr_t, envoy unsafe.Pointer) {
	run("on_new_connection", cfgHandle, envoy, 0, false, func(c *conn) C.int { c.filter.OnNewConnection(); return statusRefused })
}

// mqttStickyRelease frees what Go keeps for a connection Envoy destroyed
// without a close event. Envoy's pointer is gone; nothing is called.
//
//export mqttStickyRelease
func mqttStickyRelease(handle C.uintptr_t) {
	defer func() {
		if r := recover(); r != nil {
			hostLog(filter.LogCritical, fmt.Sprintf("mqtt_sticky: bad connection handle %d: %v", handle, r))
		}
	}()
	h := cgo.Handle(handle)
	h.Value().(*conn).handle = 0
	h.Delete()
}

// fail handles a panic in a hook: a panic must never reach Envoy, which
// would abort the process. The connection is failed closed and counted
// once, and its conn is not reused.
func (c *conn) fail(hook string, r any) {
	if c.panicked {
		return
	}
	c.panicked = true
	hostLog(filter.LogCritical, fmt.Sprintf("mqtt_sticky: panic in %s, closing the connection: %v\n%s", hook, r, debug.Stack()))
	if c.envoy == nil {
		return
	}
	c.Inc(filter.RejectInternal)
	C.envoy_dynamic_module_callback_network_filter_close_with_details(c.envoy, C.envoy_close_abort, moduleBuffer("mqtt_sticky: internal error"))
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
