// The subset of Envoy's dynamic-module ABI (source/extensions/dynamic_modules/
// abi/abi.h in Envoy's repository) that mqtt_sticky uses, declared once here
// and nowhere else. Layouts, names and enum values must match the Envoy
// binary; tests/abi_test.go (TestModuleImportsOnlyEnvoyExports, part of
// `make e2e`) checks every symbol the module imports against the ones the
// Envoy binary exports.
#ifndef MQTT_STICKY_ABI_H
#define MQTT_STICKY_ABI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

// The ABI version Envoy 1.40 expects. A mismatch only logs a warning, but the
// layouts below are only known to be right for this version.
#define MQTT_STICKY_ABI_VERSION "v0.2.0"

// Bytes owned by Envoy, valid only during the current hook.
typedef struct {
  const char* ptr;
  size_t length;
} envoy_dynamic_module_type_envoy_buffer;

// Bytes owned by the module; Envoy copies what it keeps.
typedef struct {
  const char* ptr;
  size_t length;
} envoy_dynamic_module_type_module_buffer;

typedef void* envoy_network_filter_config_envoy_ptr;  // Envoy's filter config
typedef const void* envoy_network_filter_config_module_ptr;  // ours
typedef void* envoy_network_filter_envoy_ptr;  // Envoy's per-connection filter
typedef const void* envoy_network_filter_module_ptr;  // ours
typedef void* envoy_network_filter_scheduler_ptr;

// envoy_dynamic_module_type_on_network_filter_data_status
enum { envoy_network_filter_continue = 0, envoy_network_filter_stop_iteration = 1 };

// envoy_dynamic_module_type_network_connection_close_type
typedef enum {
  envoy_close_flush_write = 0,
  envoy_close_no_flush = 1,
  envoy_close_flush_write_and_delay = 2,
  envoy_close_abort = 3,
  envoy_close_abort_reset = 4,
} envoy_close_type;

// envoy_dynamic_module_type_network_connection_event
typedef enum {
  envoy_event_remote_close = 0,
  envoy_event_local_close = 1,
  envoy_event_connected = 2,
  envoy_event_connected_zero_rtt = 3,
} envoy_connection_event;

// envoy_dynamic_module_type_log_level: trace=0 ... critical=5, off=6.
typedef int envoy_log_level;

// envoy_dynamic_module_type_metrics_result: success=0.
typedef int envoy_metrics_result;

// Callbacks Envoy exports. Each takes the per-connection Envoy pointer and is
// valid only on that connection's worker thread inside a hook, except
// scheduler_commit, which any thread may call.
void envoy_dynamic_module_callback_log(envoy_log_level level,
                                       envoy_dynamic_module_type_module_buffer message);
// Envoy's number of worker threads.
uint32_t envoy_dynamic_module_callback_get_concurrency(void);

size_t envoy_dynamic_module_callback_network_filter_get_read_buffer_chunks_size(
    envoy_network_filter_envoy_ptr filter);
bool envoy_dynamic_module_callback_network_filter_get_read_buffer_chunks(
    envoy_network_filter_envoy_ptr filter, envoy_dynamic_module_type_envoy_buffer* chunks);

bool envoy_dynamic_module_callback_network_set_filter_state_typed(
    envoy_network_filter_envoy_ptr filter, envoy_dynamic_module_type_module_buffer key,
    envoy_dynamic_module_type_module_buffer value);
void envoy_dynamic_module_callback_network_set_dynamic_metadata_string(
    envoy_network_filter_envoy_ptr filter, envoy_dynamic_module_type_module_buffer ns,
    envoy_dynamic_module_type_module_buffer key, envoy_dynamic_module_type_module_buffer value);
// One string entry of a metadata batch; the module owns the bytes.
typedef struct {
  const char* key_ptr;
  size_t key_length;
  const char* value_ptr;
  size_t value_length;
} envoy_dynamic_module_type_module_key_value_pair;

void envoy_dynamic_module_callback_network_set_dynamic_metadata_string_batch(
    envoy_network_filter_envoy_ptr filter, envoy_dynamic_module_type_module_buffer ns,
    const envoy_dynamic_module_type_module_key_value_pair* entries, size_t entries_size);
void envoy_dynamic_module_callback_network_set_dynamic_metadata_number(
    envoy_network_filter_envoy_ptr filter, envoy_dynamic_module_type_module_buffer ns,
    envoy_dynamic_module_type_module_buffer key, double value);

bool envoy_dynamic_module_callback_network_filter_read_enabled(envoy_network_filter_envoy_ptr filter);
bool envoy_dynamic_module_callback_network_filter_get_remote_address(
    envoy_network_filter_envoy_ptr filter, envoy_dynamic_module_type_envoy_buffer* address,
    uint32_t* port);
void envoy_dynamic_module_callback_network_filter_write(
    envoy_network_filter_envoy_ptr filter, envoy_dynamic_module_type_module_buffer data,
    bool end_stream);
void envoy_dynamic_module_callback_network_filter_close_with_details(
    envoy_network_filter_envoy_ptr filter, envoy_close_type close_type,
    envoy_dynamic_module_type_module_buffer details);

// The TLS connection and its verified peer certificate. The subject is in
// the RFC 2253 string form; a SAN list is read by asking its size, then
// passing an array of that many buffers for Envoy to fill.
bool envoy_dynamic_module_callback_network_filter_is_ssl(envoy_network_filter_envoy_ptr filter);
bool envoy_dynamic_module_callback_network_filter_get_ssl_subject(
    envoy_network_filter_envoy_ptr filter, envoy_dynamic_module_type_envoy_buffer* subject);
size_t envoy_dynamic_module_callback_network_filter_get_ssl_uri_sans_size(
    envoy_network_filter_envoy_ptr filter);
bool envoy_dynamic_module_callback_network_filter_get_ssl_uri_sans(
    envoy_network_filter_envoy_ptr filter, envoy_dynamic_module_type_envoy_buffer* sans);
size_t envoy_dynamic_module_callback_network_filter_get_ssl_dns_sans_size(
    envoy_network_filter_envoy_ptr filter);
bool envoy_dynamic_module_callback_network_filter_get_ssl_dns_sans(
    envoy_network_filter_envoy_ptr filter, envoy_dynamic_module_type_envoy_buffer* sans);

// envoy_dynamic_module_type_attribute_id (append-only); only the one used.
typedef enum {
  envoy_attribute_connection_tls_version = 31,  // e.g. "TLSv1.3"
} envoy_attribute_id;

// Reads a string attribute of the connection (new in Envoy 1.40).
bool envoy_dynamic_module_callback_network_filter_get_attribute_string(
    envoy_network_filter_envoy_ptr filter, envoy_attribute_id id,
    envoy_dynamic_module_type_envoy_buffer* result);

envoy_network_filter_scheduler_ptr envoy_dynamic_module_callback_network_filter_scheduler_new(
    envoy_network_filter_envoy_ptr filter);
void envoy_dynamic_module_callback_network_filter_scheduler_commit(
    envoy_network_filter_scheduler_ptr scheduler, uint64_t event_id);
void envoy_dynamic_module_callback_network_filter_scheduler_delete(
    envoy_network_filter_scheduler_ptr scheduler);

// Metrics are defined while the filter config is created, and bumped per
// connection with the returned id.
envoy_metrics_result envoy_dynamic_module_callback_network_filter_config_define_counter(
    envoy_network_filter_config_envoy_ptr config, envoy_dynamic_module_type_module_buffer name,
    size_t* id);
envoy_metrics_result envoy_dynamic_module_callback_network_filter_config_define_gauge(
    envoy_network_filter_config_envoy_ptr config, envoy_dynamic_module_type_module_buffer name,
    size_t* id);
envoy_metrics_result envoy_dynamic_module_callback_network_filter_config_define_histogram(
    envoy_network_filter_config_envoy_ptr config, envoy_dynamic_module_type_module_buffer name,
    size_t* id);
envoy_metrics_result envoy_dynamic_module_callback_network_filter_increment_counter(
    envoy_network_filter_envoy_ptr filter, size_t id, uint64_t value);
envoy_metrics_result envoy_dynamic_module_callback_network_filter_increment_gauge(
    envoy_network_filter_envoy_ptr filter, size_t id, uint64_t value);
envoy_metrics_result envoy_dynamic_module_callback_network_filter_decrement_gauge(
    envoy_network_filter_envoy_ptr filter, size_t id, uint64_t value);
envoy_metrics_result envoy_dynamic_module_callback_network_filter_record_histogram_value(
    envoy_network_filter_envoy_ptr filter, size_t id, uint64_t value);

// The same, through the filter config: they need no connection, so the C
// hooks use them for what every connection counts.
envoy_metrics_result envoy_dynamic_module_callback_network_filter_config_increment_counter(
    envoy_network_filter_config_envoy_ptr config, size_t id, uint64_t value);
envoy_metrics_result envoy_dynamic_module_callback_network_filter_config_increment_gauge(
    envoy_network_filter_config_envoy_ptr config, size_t id, uint64_t value);
envoy_metrics_result envoy_dynamic_module_callback_network_filter_config_decrement_gauge(
    envoy_network_filter_config_envoy_ptr config, size_t id, uint64_t value);

#endif  // MQTT_STICKY_ABI_H
