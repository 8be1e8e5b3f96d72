// The hooks Envoy calls, in C. They own the per-connection record Envoy
// holds for us and do, without entering Go, what is the same for every
// connection: count it, start its CONNECT deadline (waiting.c), route a
// plain CONNECT that arrives in one read (filter/quick), and pass every
// hook through once it is routed. Go is entered for decisions only: a
// CONNECT that is split across reads or unusual, a deadline that passed,
// a connection that closed while it waited, and a connection Envoy does
// not read. Most clients never enter Go.
#include <stdlib.h>

#include "_cgo_export.h"
#include "abi.h"
#include "conn.h"
#include "quick.h"

// What Go's hooks return: Envoy's Continue and StopIteration, and two of
// ours. Routed: the CONNECT is complete and the key set; continue, and Go
// keeps nothing for this connection. Refused: Go closed the connection.
#define MQTT_STICKY_STOP 1
#define MQTT_STICKY_ROUTED 2
#define MQTT_STICKY_REFUSED 3

// Chunks read into a stack array; Envoy's buffer rarely has more.
#define MQTT_STICKY_STACK_CHUNKS 16

const char* envoy_dynamic_module_on_program_init(void) { return MQTT_STICKY_ABI_VERSION; }

static void host_log(envoy_log_level level, const char* msg) {
  envoy_dynamic_module_type_module_buffer b = {msg, 0};
  while (msg[b.length] != 0) {
    b.length++;
  }
  envoy_dynamic_module_callback_log(level, b);
}

envoy_network_filter_config_module_ptr envoy_dynamic_module_on_network_filter_config_new(
    envoy_network_filter_config_envoy_ptr config_envoy, envoy_dynamic_module_type_envoy_buffer name,
    envoy_dynamic_module_type_envoy_buffer config) {
  if (!mqtt_sticky_start_ticker()) {
    host_log(4, "mqtt_sticky: cannot start the thread that times out CONNECTs; refusing the config");
    return NULL;
  }
  mqtt_sticky_config* cfg = calloc(1, sizeof *cfg);
  if (cfg == NULL) {
    return NULL;
  }
  cfg->envoy = config_envoy;
  if (!mqttStickyConfigNew(config_envoy, (char*)name.ptr, name.length, (char*)config.ptr, config.length, cfg)) {
    free(cfg);
    return NULL;  // Go logged why; Envoy refuses the config
  }
  return cfg;
}

void envoy_dynamic_module_on_network_filter_config_destroy(
    envoy_network_filter_config_module_ptr config) {
  mqtt_sticky_config* cfg = (mqtt_sticky_config*)config;
  mqttStickyConfigDestroy(cfg->handle);
  free(cfg->quick.strings);
  free(cfg);
}

envoy_network_filter_module_ptr envoy_dynamic_module_on_network_filter_new(
    envoy_network_filter_config_module_ptr config, envoy_network_filter_envoy_ptr filter) {
  mqtt_sticky_conn* c = calloc(1, sizeof *c);
  if (c == NULL) {
    return NULL;  // Envoy closes the connection
  }
  c->envoy = filter;
  c->config = (const mqtt_sticky_config*)config;
  return c;
}

// leave_waiting ends the waiting state, once.
static void leave_waiting(mqtt_sticky_conn* c, mqtt_sticky_state to) {
  if (c->state != MQTT_STICKY_WAITING) {
    return;
  }
  c->state = to;
  mqtt_sticky_unwait(c);
  envoy_dynamic_module_callback_network_filter_config_decrement_gauge(c->config->envoy, c->config->waiting_gauge, 1);
}

// sweep closes the calling worker's connections whose deadline has passed.
static void sweep(int64_t now) {
  mqtt_sticky_conn* c;
  while ((c = mqtt_sticky_expired(now)) != NULL) {
    leave_waiting(c, MQTT_STICKY_DONE);
    c->in_go = true;
    mqttStickyOnTimeout(c->config->handle, c->envoy, c->handle);
    c->handle = 0;
    c->in_go = false;
  }
}

int envoy_dynamic_module_on_network_filter_new_connection(envoy_network_filter_envoy_ptr filter,
                                                          envoy_network_filter_module_ptr module) {
  mqtt_sticky_conn* c = (mqtt_sticky_conn*)module;
  const mqtt_sticky_config* cfg = c->config;
  mqtt_sticky_open(c);
  envoy_dynamic_module_callback_network_filter_config_increment_counter(cfg->envoy, cfg->accepted_counter, 1);
  if (!envoy_dynamic_module_callback_network_filter_read_enabled(filter)) {
    c->state = MQTT_STICKY_DONE;  // its CONNECT could never arrive: Go refuses it, loudly
    c->in_go = true;
    mqttStickyRefuseUnread(cfg->handle, filter);
    c->in_go = false;
    return envoy_network_filter_stop_iteration;
  }
  int64_t now = mqtt_sticky_now();
  c->arrived = now;
  sweep(now);  // a busy worker times out its own connections, without the ticker
  c->state = MQTT_STICKY_WAITING;
  envoy_dynamic_module_callback_network_filter_config_increment_gauge(cfg->envoy, cfg->waiting_gauge, 1);
  mqtt_sticky_wait(c, now);
  return envoy_network_filter_stop_iteration;
}

// keep_sysmon_asleep runs the Go scheduler once on this worker thread at
// most every MQTT_STICKY_YIELD_NS; runtime.go says why.
#define MQTT_STICKY_YIELD_NS (5 * 1000 * 1000)

static void keep_sysmon_asleep(int64_t now) {
  static _Thread_local int64_t last;
  if (now - last > MQTT_STICKY_YIELD_NS) {
    last = now;
    mqttStickyYield();
  }
}

static envoy_dynamic_module_type_module_buffer slice(envoy_dynamic_module_type_envoy_buffer b, size_t off, size_t len) {
  return (envoy_dynamic_module_type_module_buffer){b.ptr + off, len};
}

static void set_metadata(mqtt_sticky_conn* c, envoy_dynamic_module_type_envoy_buffer data,
                         const mqtt_sticky_quick_connect* m) {
  const mqtt_sticky_quick_config* q = &c->config->quick;
  envoy_dynamic_module_type_module_buffer id = slice(data, m->client_id_off, m->client_id_len);
  envoy_dynamic_module_type_module_buffer user = slice(data, m->username_off, m->username_len);
  envoy_dynamic_module_type_module_key_value_pair fields[3] = {
      {q->client_id_key.ptr, q->client_id_key.length, id.ptr, id.length},
      {q->protocol_version_key.ptr, q->protocol_version_key.length, q->versions[m->level].ptr, q->versions[m->level].length},
      {q->username_key.ptr, q->username_key.length, user.ptr, user.length},
  };
  envoy_dynamic_module_callback_network_set_dynamic_metadata_string_batch(c->envoy, q->metadata_ns, fields, m->has_username ? 3 : 2);
  envoy_dynamic_module_callback_network_set_dynamic_metadata_number(c->envoy, q->metadata_ns, q->keep_alive_key, m->keep_alive);
}

// route_quickly routes a CONNECT that filter/quick recognizes in the
// connection's first read, doing in C what package filter's route does
// with it: set the routing key, the metadata, the counter and the wait
// histogram. It changes nothing and reports false when Go must decide: a
// CONNECT it does not recognize, an empty key (empty_key's rules), or a
// key Envoy refuses (Go refuses the connection, loudly).
static bool route_quickly(mqtt_sticky_conn* c, envoy_dynamic_module_type_envoy_buffer data, int64_t now) {
  const mqtt_sticky_quick_config* q = &c->config->quick;
  mqtt_sticky_quick_connect m;
  if (!q->on || !mqtt_sticky_quick_parse((const uint8_t*)data.ptr, data.length, q->max_bytes, &m)) {
    return false;
  }
  envoy_dynamic_module_type_module_buffer key = q->hash_username ? slice(data, m.username_off, m.username_len)
                                                                  : slice(data, m.client_id_off, m.client_id_len);
  if (key.length == 0 || !envoy_dynamic_module_callback_network_set_filter_state_typed(c->envoy, q->state_key, key)) {
    return false;
  }
  if (q->metadata) {
    set_metadata(c, data, &m);
  }
  envoy_dynamic_module_callback_network_filter_increment_counter(c->envoy, q->connect_counters[m.level], 1);
  envoy_dynamic_module_callback_network_filter_record_histogram_value(c->envoy, q->wait_histogram,
                                                                      (uint64_t)(now - c->arrived) / 1000000);
  return true;
}

int envoy_dynamic_module_on_network_filter_read(envoy_network_filter_envoy_ptr filter,
                                                envoy_network_filter_module_ptr module,
                                                size_t data_length, bool end_stream) {
  mqtt_sticky_conn* c = (mqtt_sticky_conn*)module;
  if (c->state == MQTT_STICKY_ROUTED) {
    return envoy_network_filter_continue;  // pass everything through
  }
  if (c->state != MQTT_STICKY_WAITING) {
    return envoy_network_filter_stop_iteration;
  }
  envoy_dynamic_module_type_envoy_buffer stack[MQTT_STICKY_STACK_CHUNKS];
  envoy_dynamic_module_type_envoy_buffer* chunks = stack;
  size_t n = envoy_dynamic_module_callback_network_filter_get_read_buffer_chunks_size(filter);
  if (n > MQTT_STICKY_STACK_CHUNKS) {
    chunks = malloc(n * sizeof *chunks);
    if (chunks == NULL) {
      n = 0;  // Go sees no new bytes and keeps waiting; the deadline still applies
      chunks = stack;
    }
  }
  if (n > 0 && !envoy_dynamic_module_callback_network_filter_get_read_buffer_chunks(filter, chunks)) {
    n = 0;
  }
  int64_t now = mqtt_sticky_now();
  if (c->handle == 0 && n == 1 && route_quickly(c, chunks[0], now)) {
    leave_waiting(c, MQTT_STICKY_ROUTED);
    return envoy_network_filter_continue;
  }
  keep_sysmon_asleep(now);
  c->in_go = true;
  int status = mqttStickyOnRead(c->config->handle, filter, &c->handle, chunks, n, end_stream, now - c->arrived);
  c->in_go = false;
  if (chunks != stack) {
    free(chunks);
  }
  switch (status) {
    case MQTT_STICKY_ROUTED:
      leave_waiting(c, MQTT_STICKY_ROUTED);
      return envoy_network_filter_continue;
    case MQTT_STICKY_REFUSED:
      leave_waiting(c, MQTT_STICKY_DONE);
      return envoy_network_filter_stop_iteration;
  }
  return envoy_network_filter_stop_iteration;
}

int envoy_dynamic_module_on_network_filter_write(envoy_network_filter_envoy_ptr filter,
                                                 envoy_network_filter_module_ptr module,
                                                 size_t data_length, bool end_stream) {
  return envoy_network_filter_continue;  // the filter never looks at broker-to-client bytes
}

void envoy_dynamic_module_on_network_filter_event(envoy_network_filter_envoy_ptr filter,
                                                  envoy_network_filter_module_ptr module,
                                                  envoy_connection_event event) {
  if (event != envoy_event_remote_close && event != envoy_event_local_close) {
    return;
  }
  mqtt_sticky_conn* c = (mqtt_sticky_conn*)module;
  if (c->state == MQTT_STICKY_WAITING) {
    leave_waiting(c, MQTT_STICKY_DONE);
    // When Go closed the connection itself (a refusal, from inside one of
    // its hooks), it has counted it already.
    if (!c->in_go) {
      c->in_go = true;
      mqttStickyOnClose(c->config->handle, filter, c->handle);
      c->handle = 0;
      c->in_go = false;
    }
  }
  mqtt_sticky_close(c);
}

void envoy_dynamic_module_on_network_filter_scheduled(envoy_network_filter_envoy_ptr filter,
                                                      envoy_network_filter_module_ptr module,
                                                      uint64_t event_id) {
  if (event_id == MQTT_STICKY_SWEEP_EVENT) {
    mqtt_sticky_swept();
    sweep(mqtt_sticky_now());  // the worker's connections, whichever one carried the event
  }
}

void envoy_dynamic_module_on_network_filter_destroy(envoy_network_filter_module_ptr module) {
  mqtt_sticky_conn* c = (mqtt_sticky_conn*)module;
  leave_waiting(c, MQTT_STICKY_DONE);  // Envoy raises a close event first; this is a safety net
  if (c->handle != 0) {
    mqttStickyRelease(c->handle);
  }
  mqtt_sticky_close(c);
  free(c);
}
