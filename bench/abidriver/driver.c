// abidriver loads libmqtt_sticky.so the way Envoy does and drives its
// network-filter hooks from worker threads, with stand-ins for the Envoy
// callbacks the module calls. It measures the module's own CPU cost per
// connection, apart from everything Envoy does around it, on a machine
// where other work makes whole-proxy CPU figures noisy:
// `go run ./bench --abi-driver` builds and runs it.
//
// Each worker thread runs connections one after another, calling the hooks
// in Envoy's order: filter_new, new_connection, one read holding a whole
// CONNECT, then (after Envoy's upstream connect) tcp_proxy's second pass
// over the same bytes, remote close, destroy. Around the hooks it runs a
// compute loop standing in for Envoy's own work on a connection (--envoy-us
// microseconds), so the Go runtime sees the rhythm of entries it sees
// inside Envoy. Scheduled events run on the worker between connections, as
// Envoy's dispatcher would run them.
//
// It prints one line of key=value pairs: hooks_cpu_s is the worker threads'
// CPU time inside the module's hooks (less what reading the clock costs),
// other_cpu_s the CPU time of every other thread (the Go runtime's
// threads, the module's ticker).
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

typedef struct {
  const char* ptr;
  size_t length;
} buf_t;

typedef struct {
  const char* key_ptr;
  size_t key_length;
  const char* value_ptr;
  size_t value_length;
} kv_t;

// One connection as the module sees it through the callbacks.
typedef struct fake_filter {
  const char* data;
  size_t len;
  int worker;
  bool closed;
  bool routed_key;
  uint32_t buffer_limit;
} fake_filter;

typedef struct sched {
  fake_filter* filter;
  int worker;
} sched;

#define MAX_WORKERS 8
static int concurrency = 1;
static atomic_long counters[64];
static atomic_long gauges[8];
static atomic_long commits;

// ---- Envoy callbacks the module may import ----
void envoy_dynamic_module_callback_log(int level, buf_t msg) {
  if (level >= 3) fprintf(stderr, "module log %d: %.*s\n", level, (int)msg.length, msg.ptr);
}
bool envoy_dynamic_module_callback_log_enabled(int level) { return level >= 3; }
uint32_t envoy_dynamic_module_callback_get_concurrency(void) { return (uint32_t)concurrency; }
size_t envoy_dynamic_module_callback_network_filter_get_read_buffer_chunks_size(fake_filter* f) { return f->len ? 1 : 0; }
size_t envoy_dynamic_module_callback_network_filter_get_read_buffer_size(fake_filter* f) { return f->len; }
bool envoy_dynamic_module_callback_network_filter_get_read_buffer_chunks(fake_filter* f, buf_t* out) {
  out[0].ptr = f->data;
  out[0].length = f->len;
  return true;
}
bool envoy_dynamic_module_callback_network_set_filter_state_typed(fake_filter* f, buf_t k, buf_t v) {
  f->routed_key = true;
  return true;
}
void envoy_dynamic_module_callback_network_set_dynamic_metadata_string(fake_filter* f, buf_t ns, buf_t k, buf_t v) {}
void envoy_dynamic_module_callback_network_set_dynamic_metadata_number(fake_filter* f, buf_t ns, buf_t k, double v) {}
void envoy_dynamic_module_callback_network_set_dynamic_metadata_string_batch(fake_filter* f, buf_t ns, const kv_t* e, size_t n) {}
bool envoy_dynamic_module_callback_network_filter_read_enabled(fake_filter* f) { return true; }
bool envoy_dynamic_module_callback_network_filter_get_remote_address(fake_filter* f, buf_t* a, uint32_t* port) {
  static const char ip[] = "127.0.0.2";
  a->ptr = ip;
  a->length = sizeof ip - 1;
  *port = 40000;
  return true;
}
void envoy_dynamic_module_callback_network_filter_write(fake_filter* f, buf_t d, bool end) {}
void envoy_dynamic_module_callback_network_filter_close_with_details(fake_filter* f, int type, buf_t d) { f->closed = true; }
void envoy_dynamic_module_callback_network_filter_set_buffer_limits(fake_filter* f, uint32_t limit) { f->buffer_limit = limit; }
uint32_t envoy_dynamic_module_callback_network_filter_get_worker_index(fake_filter* f) { return (uint32_t)f->worker; }
// Connections here end long before any deadline, so a scheduler is only
// counted, and its events are never run.
sched* envoy_dynamic_module_callback_network_filter_scheduler_new(fake_filter* f) {
  sched* s = calloc(1, sizeof *s);
  s->filter = f;
  s->worker = f->worker;
  return s;
}
void envoy_dynamic_module_callback_network_filter_scheduler_commit(sched* s, uint64_t id) { atomic_fetch_add(&commits, 1); }
void envoy_dynamic_module_callback_network_filter_scheduler_delete(sched* s) { free(s); }
int envoy_dynamic_module_callback_network_filter_config_define_counter(void* cfg, buf_t name, size_t* id) {
  static size_t next;
  *id = next++;
  return 0;
}
int envoy_dynamic_module_callback_network_filter_config_define_gauge(void* cfg, buf_t name, size_t* id) {
  static size_t next;
  *id = next++;
  return 0;
}
int envoy_dynamic_module_callback_network_filter_config_define_histogram(void* cfg, buf_t name, size_t* id) {
  static size_t next;
  *id = next++;
  return 0;
}
int envoy_dynamic_module_callback_network_filter_record_histogram_value(fake_filter* f, size_t id, uint64_t v) { return 0; }
// Plaintext connections: no TLS, no peer certificate.
bool envoy_dynamic_module_callback_network_filter_is_ssl(fake_filter* f) { return false; }
bool envoy_dynamic_module_callback_network_filter_get_ssl_subject(fake_filter* f, buf_t* out) { return false; }
size_t envoy_dynamic_module_callback_network_filter_get_ssl_uri_sans_size(fake_filter* f) { return 0; }
bool envoy_dynamic_module_callback_network_filter_get_ssl_uri_sans(fake_filter* f, buf_t* out) { return false; }
size_t envoy_dynamic_module_callback_network_filter_get_ssl_dns_sans_size(fake_filter* f) { return 0; }
bool envoy_dynamic_module_callback_network_filter_get_ssl_dns_sans(fake_filter* f, buf_t* out) { return false; }
bool envoy_dynamic_module_callback_network_filter_get_attribute_string(fake_filter* f, int id, buf_t* out) { return false; }
int envoy_dynamic_module_callback_network_filter_increment_counter(fake_filter* f, size_t id, uint64_t v) {
  atomic_fetch_add(&counters[id % 64], (long)v);
  return 0;
}
int envoy_dynamic_module_callback_network_filter_increment_gauge(fake_filter* f, size_t id, uint64_t v) {
  atomic_fetch_add(&gauges[id % 8], (long)v);
  return 0;
}
int envoy_dynamic_module_callback_network_filter_decrement_gauge(fake_filter* f, size_t id, uint64_t v) {
  atomic_fetch_sub(&gauges[id % 8], (long)v);
  return 0;
}
int envoy_dynamic_module_callback_network_filter_config_increment_counter(void* cfg, size_t id, uint64_t v) {
  atomic_fetch_add(&counters[id % 64], (long)v);
  return 0;
}
int envoy_dynamic_module_callback_network_filter_config_increment_gauge(void* cfg, size_t id, uint64_t v) {
  atomic_fetch_add(&gauges[id % 8], (long)v);
  return 0;
}
int envoy_dynamic_module_callback_network_filter_config_decrement_gauge(void* cfg, size_t id, uint64_t v) {
  atomic_fetch_sub(&gauges[id % 8], (long)v);
  return 0;
}

// ---- the module's hooks ----
typedef const char* (*program_init_t)(void);
typedef const void* (*config_new_t)(void*, buf_t, buf_t);
typedef const void* (*filter_new_t)(const void*, void*);
typedef int (*new_conn_t)(void*, const void*);
typedef int (*read_t)(void*, const void*, size_t, bool);
typedef void (*event_t)(void*, const void*, int);
typedef void (*destroy_t)(const void*);
static config_new_t config_new;
static filter_new_t filter_new;
static new_conn_t new_connection;
static read_t on_read;
static event_t on_event;
static destroy_t on_destroy;
static const void* config;

static long per_worker;
static long envoy_ns;
static unsigned char connect_pkt[128];
static size_t connect_len;

static uint64_t now_ns(clockid_t c) {
  struct timespec ts;
  clock_gettime(c, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

// spin stands in for Envoy's own work: a compute loop calibrated at start
// to take about ns, with no system calls.
static volatile uint64_t spin_sink;
static double loops_per_ns;

static void spin_loops(uint64_t n) {
  uint64_t x = spin_sink;
  for (uint64_t i = 0; i < n; i++) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
  }
  spin_sink = x;
}

static void calibrate(void) {
  uint64_t n = 1000000, t0, t1;
  do {
    n *= 2;
    t0 = now_ns(CLOCK_THREAD_CPUTIME_ID);
    spin_loops(n);
    t1 = now_ns(CLOCK_THREAD_CPUTIME_ID);
  } while (t1 - t0 < 200000000);
  loops_per_ns = (double)n / (double)(t1 - t0);
}

static void spin(long ns) { spin_loops((uint64_t)((double)ns * loops_per_ns)); }

// clock_overhead_ns is what reading the thread CPU clock twice adds to a
// measured window: the median of many empty windows.
static uint64_t clock_overhead_ns;

static int cmp_u64(const void* a, const void* b);

static void calibrate_clock(void) {
  enum { N = 2001 };
  static uint64_t w[N];
  for (int i = 0; i < N; i++) {
    uint64_t t0 = now_ns(CLOCK_THREAD_CPUTIME_ID);
    uint64_t t1 = now_ns(CLOCK_THREAD_CPUTIME_ID);
    w[i] = t1 - t0;
  }
  qsort(w, N, sizeof w[0], cmp_u64);
  clock_overhead_ns = w[N / 2];
}

static void fail(const char* what, int st, const fake_filter* f) {
  fprintf(stderr, "%s returned %d (routing key %d, closed %d)\n", what, st, f->routed_key, f->closed);
  exit(1);
}

// connection runs the hooks of one connection in Envoy's order and adds
// the thread CPU time they take to *in_hooks.
static uint64_t* samples[8];

static void connection(int w, uint64_t* in_hooks, long i) {
  fake_filter f = {.data = (const char*)connect_pkt, .len = connect_len, .worker = w};
  spin(envoy_ns / 2);  // accept
  uint64_t t0 = now_ns(CLOCK_THREAD_CPUTIME_ID);
  const void* m = filter_new(config, &f);
  if (m == NULL) fail("filter_new", 0, &f);
  int st = new_connection(&f, m);
  if (st != 1) fail("new_connection (want StopIteration)", st, &f);
  st = on_read(&f, m, f.len, false);
  uint64_t t1 = now_ns(CLOCK_THREAD_CPUTIME_ID);
  if (st != 0 || !f.routed_key || f.closed) fail("read (want Continue and a routing key)", st, &f);
  spin(envoy_ns / 2);  // the upstream connect, the proxied bytes
  uint64_t t2 = now_ns(CLOCK_THREAD_CPUTIME_ID);
  st = on_read(&f, m, f.len, false);  // tcp_proxy's second pass over the CONNECT
  if (st != 0) fail("second read (want Continue)", st, &f);
  on_event(&f, m, 0);  // remote close
  on_destroy(m);
  uint64_t t3 = now_ns(CLOCK_THREAD_CPUTIME_ID);
  uint64_t in = (t1 - t0) + (t3 - t2);
  in = in > 2 * clock_overhead_ns ? in - 2 * clock_overhead_ns : 0;
  *in_hooks += in;
  samples[w][i] = in;
}

static int cmp_u64(const void* a, const void* b) {
  uint64_t x = *(const uint64_t*)a, y = *(const uint64_t*)b;
  return x < y ? -1 : x > y;
}

static uint64_t worker_cpu_ns[MAX_WORKERS];
static uint64_t hook_cpu_ns[MAX_WORKERS];

static void* worker(void* arg) {
  int w = (int)(intptr_t)arg;
  uint64_t cpu0 = now_ns(CLOCK_THREAD_CPUTIME_ID), in_hooks = 0;
  samples[w] = calloc((size_t)per_worker, sizeof(uint64_t));
  for (long i = 0; i < per_worker; i++) {
    connection(w, &in_hooks, i);
  }
  worker_cpu_ns[w] = now_ns(CLOCK_THREAD_CPUTIME_ID) - cpu0;
  hook_cpu_ns[w] = in_hooks;
  return NULL;
}

static void* must(void* lib, const char* name) {
  void* p = dlsym(lib, name);
  if (p == NULL) {
    fprintf(stderr, "%s: %s\n", name, dlerror());
    exit(1);
  }
  return p;
}

// build_connect writes an MQTT 3.1.1 CONNECT with client ID "device-000042".
static void build_connect(void) {
  static const char id[] = "device-000042";
  unsigned char body[64];
  const unsigned char head[] = {0, 4, 'M', 'Q', 'T', 'T', 4, 2, 0, 60};
  size_t n = sizeof head;
  memcpy(body, head, n);
  body[n++] = 0;
  body[n++] = (unsigned char)(sizeof id - 1);
  memcpy(body + n, id, sizeof id - 1);
  n += sizeof id - 1;
  connect_pkt[0] = 0x10;
  connect_pkt[1] = (unsigned char)n;  // under 128: one byte of Remaining Length
  memcpy(connect_pkt + 2, body, n);
  connect_len = 2 + n;
}

static double seconds(struct timeval tv) { return (double)tv.tv_sec + (double)tv.tv_usec / 1e6; }

int main(int argc, char** argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: %s MODULE.so WORKERS CONNECTIONS_PER_WORKER ENVOY_US\n", argv[0]);
    return 2;
  }
  concurrency = atoi(argv[2]);
  per_worker = atol(argv[3]);
  envoy_ns = atol(argv[4]) * 1000;
  if (concurrency < 1 || concurrency > MAX_WORKERS || per_worker < 1 || envoy_ns < 0) {
    fprintf(stderr, "bad arguments\n");
    return 2;
  }
  build_connect();
  void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (lib == NULL) {
    fprintf(stderr, "dlopen: %s\n", dlerror());
    return 1;
  }
  ((program_init_t)must(lib, "envoy_dynamic_module_on_program_init"))();
  config_new = must(lib, "envoy_dynamic_module_on_network_filter_config_new");
  filter_new = must(lib, "envoy_dynamic_module_on_network_filter_new");
  new_connection = must(lib, "envoy_dynamic_module_on_network_filter_new_connection");
  on_read = must(lib, "envoy_dynamic_module_on_network_filter_read");
  on_event = must(lib, "envoy_dynamic_module_on_network_filter_event");
  on_destroy = must(lib, "envoy_dynamic_module_on_network_filter_destroy");
  static const char name[] = "mqtt_sticky", cfg[] = "{}";
  static int config_envoy;
  config = config_new(&config_envoy, (buf_t){name, sizeof name - 1}, (buf_t){cfg, sizeof cfg - 1});
  if (config == NULL) {
    fprintf(stderr, "config_new refused the config\n");
    return 1;
  }
  calibrate();
  calibrate_clock();

  struct rusage r0, r1;
  getrusage(RUSAGE_SELF, &r0);
  uint64_t t0 = now_ns(CLOCK_MONOTONIC);
  pthread_t th[MAX_WORKERS];
  for (int w = 0; w < concurrency; w++) pthread_create(&th[w], NULL, worker, (void*)(intptr_t)w);
  for (int w = 0; w < concurrency; w++) pthread_join(th[w], NULL);
  uint64_t wall = now_ns(CLOCK_MONOTONIC) - t0;
  getrusage(RUSAGE_SELF, &r1);
  double proc = seconds(r1.ru_utime) - seconds(r0.ru_utime) + seconds(r1.ru_stime) - seconds(r0.ru_stime);
  double workers = 0, hooks = 0;
  for (int w = 0; w < concurrency; w++) {
    workers += (double)worker_cpu_ns[w] / 1e9;
    hooks += (double)hook_cpu_ns[w] / 1e9;
  }
  long total = per_worker * concurrency;
  uint64_t* all = malloc((size_t)total * sizeof(uint64_t));
  for (int w = 0; w < concurrency; w++) memcpy(all + w * per_worker, samples[w], (size_t)per_worker * sizeof(uint64_t));
  qsort(all, (size_t)total, sizeof(uint64_t), cmp_u64);
  printf("hook_ns_p50=%lu hook_ns_p99=%lu hook_ns_p999=%lu hook_ns_max=%lu ", all[total / 2], all[total * 99 / 100], all[total * 999 / 1000], all[total - 1]);
  printf("connections=%ld wall_s=%.6f hooks_cpu_s=%.6f other_cpu_s=%.6f worker_cpu_s=%.6f gauge_waiting=%ld scheduler_commits=%ld\n",
         per_worker * concurrency, (double)wall / 1e9, hooks, proc - workers, workers, atomic_load(&gauges[0]), atomic_load(&commits));
  return 0;
}
