// The hooks Envoy calls, in C. They own the per-connection record Envoy
// holds for us and decide, without entering Go, the cases that need no Go:
// once a connection is routed the Go side is released, and every later
// read, write and event returns here at the cost of a C function call.

#include <stdlib.h>

#include "_cgo_export.h"
#include "abi.h"

// The status Go returns from a read that completed the CONNECT: continue,
// and the Go side has released the connection.
#define MQTT_STICKY_ROUTED 2

// Chunks read into a stack array; Envoy's buffer rarely has more.
#define MQTT_STICKY_STACK_CHUNKS 16

typedef struct {
  uintptr_t handle;  // the Go filter's handle; 0 once released
} mqtt_sticky_conn;

const char* envoy_dynamic_module_on_program_init(void) { return MQTT_STICKY_ABI_VERSION; }

envoy_network_filter_config_module_ptr envoy_dynamic_module_on_network_filter_config_new(
    envoy_network_filter_config_envoy_ptr config_envoy, envoy_dynamic_module_type_envoy_buffer name,
    envoy_dynamic_module_type_envoy_buffer config) {
  uintptr_t h = mqttStickyConfigNew(config_envoy, (char*)name.ptr, name.length, (char*)config.ptr,
                                    config.length);
  return (envoy_network_filter_config_module_ptr)h;  // an opaque handle, 0 rejects the config
}

void envoy_dynamic_module_on_network_filter_config_destroy(
    envoy_network_filter_config_module_ptr config) {
  mqttStickyConfigDestroy((uintptr_t)config);
}

envoy_network_filter_module_ptr envoy_dynamic_module_on_network_filter_new(
    envoy_network_filter_config_module_ptr config, envoy_network_filter_envoy_ptr filter) {
  mqtt_sticky_conn* c = malloc(sizeof *c);
  if (c == NULL) {
    return NULL;  // Envoy closes the connection
  }
  c->handle = mqttStickyFilterNew((uintptr_t)config, filter);
  if (c->handle == 0) {
    free(c);
    return NULL;
  }
  return c;
}

int envoy_dynamic_module_on_network_filter_new_connection(envoy_network_filter_envoy_ptr filter,
                                                          envoy_network_filter_module_ptr module) {
  mqtt_sticky_conn* c = (mqtt_sticky_conn*)module;
  if (c->handle == 0) {
    return envoy_network_filter_continue;
  }
  return mqttStickyOnNewConnection(c->handle);
}

int envoy_dynamic_module_on_network_filter_read(envoy_network_filter_envoy_ptr filter,
                                                envoy_network_filter_module_ptr module,
                                                size_t data_length, bool end_stream) {
  mqtt_sticky_conn* c = (mqtt_sticky_conn*)module;
  if (c->handle == 0) {
    return envoy_network_filter_continue;  // routed: pass everything through
  }
  envoy_dynamic_module_type_envoy_buffer stack[MQTT_STICKY_STACK_CHUNKS];
  envoy_dynamic_module_type_envoy_buffer* chunks = stack;
  size_t n = envoy_dynamic_module_callback_network_filter_get_read_buffer_chunks_size(filter);
  if (n > MQTT_STICKY_STACK_CHUNKS) {
    chunks = malloc(n * sizeof *chunks);
    if (chunks == NULL) {
      n = 0;  // Go sees no new bytes and keeps waiting; the timeout still applies
      chunks = stack;
    }
  }
  if (n > 0 && !envoy_dynamic_module_callback_network_filter_get_read_buffer_chunks(filter, chunks)) {
    n = 0;
  }
  int status = mqttStickyOnRead(c->handle, chunks, n, end_stream);
  if (chunks != stack) {
    free(chunks);
  }
  if (status == MQTT_STICKY_ROUTED) {
    c->handle = 0;
    return envoy_network_filter_continue;
  }
  return status;
}

int envoy_dynamic_module_on_network_filter_write(envoy_network_filter_envoy_ptr filter,
                                                 envoy_network_filter_module_ptr module,
                                                 size_t data_length, bool end_stream) {
  return envoy_network_filter_continue;  // the filter never looks at broker-to-client bytes
}

void envoy_dynamic_module_on_network_filter_event(envoy_network_filter_envoy_ptr filter,
                                                  envoy_network_filter_module_ptr module,
                                                  envoy_connection_event event) {
  mqtt_sticky_conn* c = (mqtt_sticky_conn*)module;
  if (c->handle != 0 && (event == envoy_event_remote_close || event == envoy_event_local_close)) {
    mqttStickyOnClose(c->handle);
  }
}

void envoy_dynamic_module_on_network_filter_scheduled(envoy_network_filter_envoy_ptr filter,
                                                      envoy_network_filter_module_ptr module,
                                                      uint64_t event_id) {
  mqtt_sticky_conn* c = (mqtt_sticky_conn*)module;
  if (c->handle != 0) {
    mqttStickyOnScheduled(c->handle, event_id);
  }
}

void envoy_dynamic_module_on_network_filter_destroy(envoy_network_filter_module_ptr module) {
  mqtt_sticky_conn* c = (mqtt_sticky_conn*)module;
  if (c->handle != 0) {
    mqttStickyFilterDestroy(c->handle);
  }
  free(c);
}
