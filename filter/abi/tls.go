package abi

/*
#include "abi.h"
*/
import "C"

import (
	"runtime"
	"unsafe"

	"github.com/mqtt-sticky/mqtt-sticky/contract"
)

// The TLS side of conn: the client certificate's identity, asked of Envoy
// only when the filter config needs it, and the PROXY protocol SSL TLV.

// maxSANs bounds how many SANs of one kind are copied out of Envoy. The
// filter only uses the first; the bound keeps a certificate with thousands
// of SANs from costing thousands of allocations.
const maxSANs = 16

func (c *conn) IsTLS() bool {
	return bool(C.envoy_dynamic_module_callback_network_filter_is_ssl(c.envoy))
}

func (c *conn) PeerSubject() string {
	var subject C.envoy_dynamic_module_type_envoy_buffer
	if !C.envoy_dynamic_module_callback_network_filter_get_ssl_subject(c.envoy, &subject) || subject.ptr == nil {
		return ""
	}
	return C.GoStringN(subject.ptr, C.int(subject.length))
}

func (c *conn) TLSVersion() string {
	var v C.envoy_dynamic_module_type_envoy_buffer
	if !C.envoy_dynamic_module_callback_network_filter_get_attribute_string(c.envoy, C.envoy_attribute_connection_tls_version, &v) || v.ptr == nil {
		return ""
	}
	return C.GoStringN(v.ptr, C.int(v.length))
}

func (c *conn) PeerURISANs() []string {
	n := C.envoy_dynamic_module_callback_network_filter_get_ssl_uri_sans_size(c.envoy)
	return c.sans(n, func(out *C.envoy_dynamic_module_type_envoy_buffer) C.bool {
		return C.envoy_dynamic_module_callback_network_filter_get_ssl_uri_sans(c.envoy, out)
	})
}

func (c *conn) PeerDNSSANs() []string {
	n := C.envoy_dynamic_module_callback_network_filter_get_ssl_dns_sans_size(c.envoy)
	return c.sans(n, func(out *C.envoy_dynamic_module_type_envoy_buffer) C.bool {
		return C.envoy_dynamic_module_callback_network_filter_get_ssl_dns_sans(c.envoy, out)
	})
}

// sans copies n SANs out of Envoy. Envoy fills every one of the n buffers,
// so the array passed must have room for all n even when fewer are kept;
// it holds no Go pointers, so cgo lets C write into it.
func (c *conn) sans(n C.size_t, get func(*C.envoy_dynamic_module_type_envoy_buffer) C.bool) []string {
	if n == 0 {
		return nil
	}
	bufs := make([]C.envoy_dynamic_module_type_envoy_buffer, int(n))
	if !get(unsafe.SliceData(bufs)) {
		return nil
	}
	out := make([]string, 0, min(len(bufs), maxSANs))
	for _, b := range bufs[:min(len(bufs), maxSANs)] {
		if b.ptr == nil {
			out = append(out, "")
			continue
		}
		out = append(out, C.GoStringN(b.ptr, C.int(b.length)))
	}
	return out
}

func (c *conn) SetSSLTLV(value []byte) {
	C.envoy_dynamic_module_callback_network_set_dynamic_metadata_string(c.envoy,
		moduleBuffer(contract.SSLTLVMetadataNamespace), moduleBuffer(contract.SSLTLVMetadataKey), bytesBuffer(value))
	runtime.KeepAlive(value)
}
