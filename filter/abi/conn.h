// The module's per-connection record and the per-worker bookkeeping that
// holds connections while they wait for their CONNECT. shim.c owns the
// records; waiting.c keeps the lists and the deadlines.
#ifndef MQTT_STICKY_CONN_H
#define MQTT_STICKY_CONN_H

#include <stdbool.h>
#include <stdint.h>

#include "abi.h"

// What C needs to route a CONNECT that filter/quick recognizes, doing
// what package filter would do with it (filter.QuickRoutable). Go fills it
// in when the config is made; the buffers point into strings, one C
// allocation that lives as long as the config.
typedef struct {
  bool on;             // the config allows it
  bool hash_username;  // hash_key username, not client_id
  bool metadata;       // set the dynamic metadata
  size_t max_bytes;    // max_connect_bytes
  size_t connect_counters[6];  // connect_mqtt31, _mqtt311, _mqtt5, by protocol level 3 to 5
  size_t wait_histogram;       // connect_wait_ms
  envoy_dynamic_module_type_module_buffer state_key, metadata_ns;
  envoy_dynamic_module_type_module_buffer client_id_key, protocol_version_key, username_key, keep_alive_key;
  envoy_dynamic_module_type_module_buffer versions[6];  // "3.1", "3.1.1", "5.0", by protocol level
  void* strings;
} mqtt_sticky_quick_config;

// One filter config: the Go side's handle and what C needs for every
// connection without asking Go.
typedef struct {
  uintptr_t handle;  // the Go config
  envoy_network_filter_config_envoy_ptr envoy;
  int64_t timeout_ns;       // connect_timeout_ms
  size_t waiting_gauge;     // waiting_for_connect
  size_t accepted_counter;  // accepted
  mqtt_sticky_quick_config quick;
} mqtt_sticky_config;

typedef enum {
  MQTT_STICKY_NEW,      // created; Envoy has not called on_new_connection
  MQTT_STICKY_WAITING,  // held until its CONNECT is complete; in the waiting list
  MQTT_STICKY_ROUTED,   // handed to tcp_proxy: every later hook passes through
  MQTT_STICKY_DONE,     // refused, timed out or closed
} mqtt_sticky_state;

typedef struct mqtt_sticky_worker mqtt_sticky_worker;

// One connection. It never moves between worker threads, and every field is
// touched only on its worker thread.
typedef struct mqtt_sticky_conn {
  struct mqtt_sticky_conn *wait_prev, *wait_next;  // the worker's waiting list, oldest deadline first
  struct mqtt_sticky_conn *open_prev, *open_next;  // the worker's open connections
  envoy_network_filter_envoy_ptr envoy;
  const mqtt_sticky_config* config;
  mqtt_sticky_worker* worker;  // set by on_new_connection
  uintptr_t handle;            // the Go filter, 0 while Go keeps nothing for it
  int64_t arrived;             // CLOCK_MONOTONIC ns, when on_new_connection ran
  int64_t deadline;            // CLOCK_MONOTONIC ns, while waiting
  uint8_t state;               // mqtt_sticky_state
  bool in_go;                  // a Go call for this connection is on the stack
} mqtt_sticky_conn;

// The event id of the scheduled sweep of a worker's expired connections.
#define MQTT_STICKY_SWEEP_EVENT 1

// mqtt_sticky_now is CLOCK_MONOTONIC in nanoseconds.
int64_t mqtt_sticky_now(void);

// mqtt_sticky_open registers a new connection with the calling worker
// thread; mqtt_sticky_wait starts its CONNECT deadline; mqtt_sticky_unwait
// stops it; mqtt_sticky_close forgets the connection. All run on the
// connection's worker thread, inside a hook.
void mqtt_sticky_open(mqtt_sticky_conn* c);
void mqtt_sticky_wait(mqtt_sticky_conn* c, int64_t now);
void mqtt_sticky_unwait(mqtt_sticky_conn* c);
void mqtt_sticky_close(mqtt_sticky_conn* c);

// mqtt_sticky_expired returns the calling worker's first waiting connection
// whose deadline has passed, or NULL. It stays in the list until
// mqtt_sticky_unwait.
mqtt_sticky_conn* mqtt_sticky_expired(int64_t now);

// mqtt_sticky_swept tells the ticker that the calling worker has run the
// sweep it asked for.
void mqtt_sticky_swept(void);

// mqtt_sticky_start_ticker starts, once per process, the thread that asks a
// worker to sweep when one of its deadlines passes. It reports whether the
// thread runs: without it no connection would ever time out.
bool mqtt_sticky_start_ticker(void);

#endif  // MQTT_STICKY_CONN_H
