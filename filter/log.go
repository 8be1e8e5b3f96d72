package filter

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
)

// logLinesPerSecond caps the filter's refusal log lines. A flood of bad
// connections is visible in the counters; the log keeps a sample and says
// how many lines it dropped, so it cannot be used to fill a disk.
const logLinesPerSecond = 20

var logLimiter = &limiter{perSecond: logLinesPerSecond, now: time.Now}

type limiter struct {
	perSecond  int
	now        func() time.Time
	mu         sync.Mutex
	window     time.Time
	used       int
	suppressed int
}

// allow reports whether a line may be logged now, counting it if not.
func (l *limiter) allow() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now := l.now(); now.Sub(l.window) >= time.Second {
		l.window, l.used = now, 0
	}
	if l.used < l.perSecond {
		l.used++
		return true
	}
	l.suppressed++
	return false
}

// takeSuppressed returns how many lines were dropped since the last call.
func (l *limiter) takeSuppressed() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := l.suppressed
	l.suppressed = 0
	return n
}

func joinHostPort(ip string, port uint32) string {
	return net.JoinHostPort(ip, strconv.FormatUint(uint64(port), 10))
}

// logSafe returns s with every control character (C0, DEL and C1) written
// as \u00XX, for the dynamic metadata that access logs print. MQTT allows
// these characters in a client ID or user name, and Envoy writes text
// access-log formats raw, so an unescaped newline would let a client forge
// a log line. The routing key is not escaped: it is hashed, never printed.
// A string without control characters, the usual case, is returned as it
// is, without allocating.
func logSafe(s string) string {
	i := strings.IndexFunc(s, unicode.IsControl)
	if i < 0 {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 8)
	b.WriteString(s[:i])
	for _, r := range s[i:] {
		if unicode.IsControl(r) {
			fmt.Fprintf(&b, "\\u%04x", r)
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}
