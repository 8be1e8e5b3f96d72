package filter

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"unicode"

	"github.com/mqtt-sticky/mqtt-sticky/internal/loglimit"
)

// logLinesPerSecond caps the filter's refusal log lines. A flood of bad
// connections is visible in the counters; the log keeps a sample and says
// how many lines it dropped, so it cannot be used to fill a disk.
const logLinesPerSecond = 20

var logLimiter = loglimit.New(logLinesPerSecond)

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
