#include "quick.h"

// A cursor over one complete packet: every read checks against end, and a
// failed read leaves ok false for the rest of the parse.
typedef struct {
  const uint8_t* b;
  size_t off, end;
  bool ok;
} cursor;

static const uint8_t* take(cursor* c, size_t n) {
  if (!c->ok || n > c->end - c->off) {
    c->ok = false;
    return NULL;
  }
  const uint8_t* p = c->b + c->off;
  c->off += n;
  return p;
}

static uint16_t u16(cursor* c) {
  const uint8_t* p = take(c, 2);
  return p == NULL ? 0 : (uint16_t)(p[0] << 8 | p[1]);
}

// varint reads an MQTT Variable Byte Integer of at most four bytes.
static size_t varint(cursor* c) {
  size_t v = 0;
  for (int i = 0; i < 4; i++) {
    const uint8_t* p = take(c, 1);
    if (p == NULL) {
      return 0;
    }
    v |= (size_t)(*p & 0x7f) << (7 * i);
    if ((*p & 0x80) == 0) {
      return v;
    }
  }
  c->ok = false;
  return 0;
}

// printable: a string C can route and log as it is, with nothing for
// filter/mqtt's UTF-8 check or the filter's log escaping to do.
static bool printable(const uint8_t* p, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (p[i] < 0x20 || p[i] > 0x7e) {
      return false;
    }
  }
  return true;
}

// ascii: valid MQTT UTF-8 (no U+0000) that is plain ASCII.
static bool ascii(const uint8_t* p, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (p[i] == 0 || p[i] > 0x7f) {
      return false;
    }
  }
  return true;
}

// field reads a length-prefixed field; check, when set, must accept it.
static bool field(cursor* c, bool (*check)(const uint8_t*, size_t), size_t* off, size_t* len) {
  size_t n = u16(c);
  const uint8_t* p = take(c, n);
  if (p == NULL || (check != NULL && !check(p, n))) {
    return false;
  }
  if (off != NULL) {
    *off = (size_t)(p - c->b);
    *len = n;
  }
  return true;
}

// Sizes of the MQTT 5 properties C recognizes, by identifier: the ones
// with a fixed-size value. Others (strings, binary data, user properties)
// are left to filter/mqtt.
static const uint8_t connect_property_sizes[64] = {
    [0x11] = 4,  // Session Expiry Interval
    [0x17] = 1,  // Request Problem Information
    [0x19] = 1,  // Request Response Information
    [0x21] = 2,  // Receive Maximum
    [0x22] = 2,  // Topic Alias Maximum
    [0x27] = 4,  // Maximum Packet Size
};

static const uint8_t will_property_sizes[64] = {
    [0x01] = 1,  // Payload Format Indicator
    [0x02] = 4,  // Message Expiry Interval
    [0x18] = 4,  // Will Delay Interval
};

static bool properties(cursor* c, const uint8_t sizes[64]) {
  size_t n = varint(c);
  const uint8_t* p = take(c, n);
  if (p == NULL) {
    return false;
  }
  uint64_t seen = 0;
  for (size_t i = 0; i < n;) {
    uint8_t id = p[i++];
    if (id >= 64 || sizes[id] == 0 || (seen >> id & 1) != 0 || sizes[id] > n - i) {
      return false;
    }
    seen |= (uint64_t)1 << id;
    i += sizes[id];
  }
  return true;
}

enum {
  flag_reserved = 0x01,
  flag_will = 0x04,
  flag_will_qos = 0x18,
  flag_will_retain = 0x20,
  flag_password = 0x40,
  flag_username = 0x80,
};

// header reads the protocol name, level and flags, and accepts only the
// three known versions with consistent flags.
static bool header(cursor* c, uint8_t* level, uint8_t* flags) {
  size_t name_off, name_len;
  if (!field(c, NULL, &name_off, &name_len)) {
    return false;
  }
  const uint8_t* name = c->b + name_off;
  const uint8_t* lf = take(c, 2);
  if (lf == NULL) {
    return false;
  }
  *level = lf[0];
  *flags = lf[1];
  bool mqtt = name_len == 4 && name[0] == 'M' && name[1] == 'Q' && name[2] == 'T' && name[3] == 'T';
  bool mqisdp = name_len == 6 && name[0] == 'M' && name[1] == 'Q' && name[2] == 'I' && name[3] == 's' &&
                name[4] == 'd' && name[5] == 'p';
  if (!((mqtt && (*level == 4 || *level == 5)) || (mqisdp && *level == 3))) {
    return false;  // includes the bridge bit, which C leaves to filter/mqtt
  }
  uint8_t qos = (*flags & flag_will_qos) >> 3;
  if ((*flags & flag_reserved) != 0 || qos == 3 ||
      ((*flags & flag_will) == 0 && (*flags & (flag_will_qos | flag_will_retain)) != 0)) {
    return false;
  }
  return *level == 5 || (*flags & flag_password) == 0 || (*flags & flag_username) != 0;
}

bool mqtt_sticky_quick_parse(const uint8_t* data, size_t n, size_t max_bytes, mqtt_sticky_quick_connect* out) {
  if (n < 2 || data[0] != 0x10) {
    return false;
  }
  cursor c = {.b = data, .off = 1, .end = n < 5 ? n : 5, .ok = true};
  size_t remaining = varint(&c);
  if (!c.ok || c.off + remaining > max_bytes || c.off + remaining > n) {
    return false;  // too large or incomplete: filter/mqtt refuses or waits
  }
  c.end = c.off + remaining;
  uint8_t level, flags;
  if (!header(&c, &level, &flags)) {
    return false;
  }
  *out = (mqtt_sticky_quick_connect){.level = level, .keep_alive = u16(&c)};
  if (level == 5 && !properties(&c, connect_property_sizes)) {
    return false;
  }
  if (!field(&c, printable, &out->client_id_off, &out->client_id_len)) {
    return false;
  }
  if ((flags & flag_will) != 0) {
    if (level == 5 && !properties(&c, will_property_sizes)) {
      return false;
    }
    if (!field(&c, ascii, NULL, NULL) || !field(&c, NULL, NULL, NULL)) {
      return false;  // the will topic, then its payload
    }
  }
  if ((flags & flag_username) != 0) {
    out->has_username = true;
    if (!field(&c, printable, &out->username_off, &out->username_len)) {
      return false;
    }
  }
  if ((flags & flag_password) != 0 && !field(&c, NULL, NULL, NULL)) {
    return false;
  }
  return c.ok && c.off == c.end;
}
