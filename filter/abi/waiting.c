#define _GNU_SOURCE  // pthread_setname_np
// Deadlines for connections that wait for their CONNECT, without a timer
// or a scheduler per connection.
//
// Each Envoy worker thread keeps its waiting connections in a list ordered
// by deadline (the timeout is the same for every connection of a config,
// so a new one almost always goes to the end) and publishes the earliest
// deadline. One thread for the whole process, the ticker, sleeps until the
// earliest deadline of any worker and then asks that worker, through an
// Envoy scheduler, to sweep: to close its connections whose deadline has
// passed. A scheduler posts to the worker of the connection it was made
// for, so each worker keeps one, the anchor, made for one of its open
// connections; it is remade for another when that connection closes. With
// long-lived MQTT connections it is remade rarely, and a connection that
// completes its CONNECT in time costs two list operations and no Go.
//
// Thread rules: the lists and the records belong to the worker thread. The
// ticker reads each worker's published deadline (an atomic) and commits
// the anchor under the worker's mutex, which the worker also holds while
// it replaces or deletes the anchor: Envoy requires commit and delete of a
// scheduler not to race.
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

#include "conn.h"

// How long the ticker sleeps when no connection waits, and how late it may
// notice a deadline published while it sleeps: a new connection's deadline
// is at least connect_timeout_ms away, so only timeouts shorter than this
// fire up to this much late.
#define MQTT_STICKY_TICK_NS (50 * 1000 * 1000)

// A sweep asked for but not run after this long is asked for again: the
// connection the anchor was made for may have closed before Envoy ran it.
#define MQTT_STICKY_RESWEEP_NS (100 * 1000 * 1000)

struct mqtt_sticky_worker {
  mqtt_sticky_conn waiting;  // sentinel of the waiting list
  mqtt_sticky_conn open;     // sentinel of the open connections
  _Atomic int64_t earliest;  // the first waiting deadline; INT64_MAX when none
  _Atomic int64_t asked;     // when the ticker asked for a sweep; 0 when not pending
  pthread_mutex_t mu;        // guards anchor against the ticker
  envoy_network_filter_scheduler_ptr anchor;
  mqtt_sticky_conn* anchored;  // the connection the anchor was made for
  mqtt_sticky_worker* next;    // in the registry
};

static _Thread_local mqtt_sticky_worker* this_worker;
static pthread_mutex_t registry_mu = PTHREAD_MUTEX_INITIALIZER;
static mqtt_sticky_worker* registry;

int64_t mqtt_sticky_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static mqtt_sticky_worker* worker(void) {
  if (this_worker != NULL) {
    return this_worker;
  }
  mqtt_sticky_worker* w = calloc(1, sizeof *w);
  if (w == NULL) {
    abort();  // a worker's first connection; nothing sensible to do without memory
  }
  w->waiting.wait_prev = w->waiting.wait_next = &w->waiting;
  w->open.open_prev = w->open.open_next = &w->open;
  atomic_init(&w->earliest, INT64_MAX);
  atomic_init(&w->asked, 0);
  pthread_mutex_init(&w->mu, NULL);
  pthread_mutex_lock(&registry_mu);
  w->next = registry;
  registry = w;
  pthread_mutex_unlock(&registry_mu);
  this_worker = w;
  return w;
}

static void publish_earliest(mqtt_sticky_worker* w) {
  mqtt_sticky_conn* first = w->waiting.wait_next;
  atomic_store_explicit(&w->earliest, first == &w->waiting ? INT64_MAX : first->deadline, memory_order_relaxed);
}

// anchor_on makes the worker's anchor a scheduler of c. w->mu is held.
static void anchor_on(mqtt_sticky_worker* w, mqtt_sticky_conn* c) {
  if (w->anchor != NULL) {
    envoy_dynamic_module_callback_network_filter_scheduler_delete(w->anchor);
  }
  w->anchor = c == NULL ? NULL : envoy_dynamic_module_callback_network_filter_scheduler_new(c->envoy);
  w->anchored = w->anchor == NULL ? NULL : c;
  atomic_store(&w->asked, 0);  // a sweep asked of the old anchor may never run
}

void mqtt_sticky_open(mqtt_sticky_conn* c) {
  mqtt_sticky_worker* w = worker();
  c->worker = w;
  c->open_prev = w->open.open_prev;
  c->open_next = &w->open;
  w->open.open_prev->open_next = c;
  w->open.open_prev = c;
}

void mqtt_sticky_wait(mqtt_sticky_conn* c, int64_t now) {
  mqtt_sticky_worker* w = c->worker;
  c->deadline = now + c->config->timeout_ns;
  mqtt_sticky_conn* after = w->waiting.wait_prev;  // from the newest back
  while (after != &w->waiting && after->deadline > c->deadline) {
    after = after->wait_prev;
  }
  c->wait_prev = after;
  c->wait_next = after->wait_next;
  after->wait_next->wait_prev = c;
  after->wait_next = c;
  if (c->wait_prev == &w->waiting) {
    publish_earliest(w);
  }
  if (w->anchor == NULL) {
    pthread_mutex_lock(&w->mu);
    anchor_on(w, c);
    pthread_mutex_unlock(&w->mu);
  }
}

void mqtt_sticky_unwait(mqtt_sticky_conn* c) {
  if (c->wait_next == NULL) {
    return;
  }
  bool first = c->wait_prev == &c->worker->waiting;
  c->wait_prev->wait_next = c->wait_next;
  c->wait_next->wait_prev = c->wait_prev;
  c->wait_prev = c->wait_next = NULL;
  if (first) {
    publish_earliest(c->worker);
  }
}

void mqtt_sticky_close(mqtt_sticky_conn* c) {
  mqtt_sticky_worker* w = c->worker;
  if (w == NULL || c->open_next == NULL) {
    return;
  }
  mqtt_sticky_unwait(c);
  c->open_prev->open_next = c->open_next;
  c->open_next->open_prev = c->open_prev;
  c->open_prev = c->open_next = NULL;
  if (w->anchored != c) {
    return;
  }
  // Move the anchor to the oldest open connection, the likeliest to stay:
  // MQTT connections that have lasted tend to last. With none open, no
  // connection waits either, and the next one to wait makes a new anchor.
  pthread_mutex_lock(&w->mu);
  anchor_on(w, w->open.open_next == &w->open ? NULL : w->open.open_next);
  pthread_mutex_unlock(&w->mu);
}

mqtt_sticky_conn* mqtt_sticky_expired(int64_t now) {
  mqtt_sticky_worker* w = this_worker;
  if (w == NULL) {
    return NULL;
  }
  mqtt_sticky_conn* first = w->waiting.wait_next;
  if (first == &w->waiting || first->deadline > now) {
    return NULL;
  }
  return first;
}

void mqtt_sticky_swept(void) {
  if (this_worker != NULL) {
    atomic_store(&this_worker->asked, 0);
  }
}

// tick asks every worker with a passed deadline to sweep, and returns the
// earliest deadline still ahead.
static int64_t tick(int64_t now) {
  int64_t next = now + MQTT_STICKY_TICK_NS;
  pthread_mutex_lock(&registry_mu);
  for (mqtt_sticky_worker* w = registry; w != NULL; w = w->next) {
    int64_t earliest = atomic_load_explicit(&w->earliest, memory_order_relaxed);
    if (earliest > now) {
      if (earliest < next) {
        next = earliest;
      }
      continue;
    }
    int64_t asked = atomic_load(&w->asked);
    if (asked != 0 && now - asked < MQTT_STICKY_RESWEEP_NS) {
      continue;  // asked already; the worker will run it
    }
    pthread_mutex_lock(&w->mu);
    if (w->anchor != NULL) {
      atomic_store(&w->asked, now);
      envoy_dynamic_module_callback_network_filter_scheduler_commit(w->anchor, MQTT_STICKY_SWEEP_EVENT);
    }
    pthread_mutex_unlock(&w->mu);
    if (now + MQTT_STICKY_RESWEEP_NS < next) {
      next = now + MQTT_STICKY_RESWEEP_NS;
    }
  }
  pthread_mutex_unlock(&registry_mu);
  return next;
}

static void* ticker(void* arg) {
  (void)arg;
  for (;;) {
    int64_t next = tick(mqtt_sticky_now());
    struct timespec at = {.tv_sec = next / 1000000000, .tv_nsec = next % 1000000000};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &at, NULL) != 0) {
    }
  }
  return NULL;
}

static pthread_once_t ticker_once = PTHREAD_ONCE_INIT;
static bool ticker_running;

static void start_ticker(void) {
  pthread_t t;
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  if (pthread_create(&t, &attr, ticker, NULL) == 0) {
    pthread_setname_np(t, "mqtt_sticky_tk");  // at most 15 characters
    ticker_running = true;
  }
  pthread_attr_destroy(&attr);
}

bool mqtt_sticky_start_ticker(void) {
  pthread_once(&ticker_once, start_ticker);
  return ticker_running;
}
