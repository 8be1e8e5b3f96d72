// The common CONNECT, recognized in C. See quick.go for why and how it
// stays in step with filter/mqtt.
#ifndef MQTT_STICKY_QUICK_H
#define MQTT_STICKY_QUICK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

// The fields of a recognized CONNECT that the filter routes and logs on.
// Strings are given as offsets into the bytes parsed, so that the caller
// decides what memory they point into.
typedef struct {
  size_t client_id_off, client_id_len;
  size_t username_off, username_len;  // 0 and 0 without a user name
  bool has_username;
  uint8_t level;  // 3, 4 or 5
  uint16_t keep_alive;
} mqtt_sticky_quick_connect;

// mqtt_sticky_quick_parse reports whether data starts with a complete,
// valid CONNECT of at most max_bytes that quick.go's rules let C route. It
// never refuses anything: false means "let filter/mqtt decide", whether
// the bytes are incomplete, invalid or merely unusual.
bool mqtt_sticky_quick_parse(const uint8_t* data, size_t n, size_t max_bytes, mqtt_sticky_quick_connect* out);

#endif  // MQTT_STICKY_QUICK_H
