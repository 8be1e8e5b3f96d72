// Package filter is the logic of the mqtt_sticky network filter: it holds a
// new connection, reads its MQTT CONNECT from the buffered bytes without
// draining them, sets the routing key, and lets the connection continue to
// tcp_proxy, which picks the broker by consistent hash on that key.
//
// The package knows nothing of cgo: Envoy is reached through the Conn
// interface, implemented by package abi for the real thing and by a fake
// in the tests.
package filter

import (
	"strconv"
	"time"

	"github.com/mqtt-sticky/mqtt-sticky/contract"
	"github.com/mqtt-sticky/mqtt-sticky/filter/mqtt"
)

// Status is a filter's answer to a hook.
type Status int

const (
	// Continue lets iteration go on to the next filter (tcp_proxy).
	Continue Status = iota
	// Stop holds the connection: tcp_proxy is not called and the bytes
	// stay buffered in Envoy.
	Stop
	// Routed is Continue for the read that completed the CONNECT. The
	// filter has nothing more to do: every later hook passes through
	// without calling it again, and it may be released.
	Routed
)

// LogLevel mirrors Envoy's log levels.
type LogLevel int

const (
	LogTrace LogLevel = iota
	LogDebug
	LogInfo
	LogWarn
	LogError
	LogCritical
)

// Conn is the connection a Filter works on. Envoy's callbacks are only
// valid on the connection's worker thread, inside a hook, so every method
// must be called from a Filter method that Envoy invoked.
//
// What is the same for every connection is kept by the caller, not here:
// from accept until the connection is routed or closed, package abi counts
// it in the waiting_for_connect gauge and holds its CONNECT deadline, and
// it calls OnTimeout when the deadline passes. A Filter only exists while
// there is a decision to make.
type Conn interface {
	// SetHashKey stores the routing key as the hashable filter state that
	// tcp_proxy's hash policy reads. It reports false if Envoy refused it.
	SetHashKey(key string) bool
	SetMetadata(key, value string)
	// SetMetadataStrings sets several string values at once: Envoy copies
	// the namespace's metadata on every set, so one call for all of them
	// costs a third of three.
	SetMetadataStrings(fields []Field)
	SetMetadataNumber(key string, value float64)
	// ReadEnabled reports whether Envoy is reading from the client. A
	// tcp_proxy without max_early_data_bytes disables reading as soon as
	// the filter chain is built, and the CONNECT would never arrive.
	ReadEnabled() bool
	// RemoteAddress is the client's address as Envoy sees it (after any
	// downstream PROXY protocol).
	RemoteAddress() (ip string, port uint32, ok bool)
	// Write sends bytes to the client.
	Write(data []byte)
	// Close closes the connection after flushing what was written. Envoy
	// calls the filter's OnClose from inside it.
	Close(details string)
	Inc(c Counter)
	Record(h Histogram, value uint64)
	Log(level LogLevel, msg string)

	// IsTLS reports whether the client connected over TLS.
	IsTLS() bool
	// TLSVersion is the connection's TLS version, such as "TLSv1.3".
	TLSVersion() string
	// PeerSubject is the verified client certificate's subject in the
	// RFC 2253 string form, or "" without a certificate.
	PeerSubject() string
	// PeerURISANs and PeerDNSSANs are the verified client certificate's
	// URI and DNS subject alternative names, in the certificate's order.
	PeerURISANs() []string
	PeerDNSSANs() []string
	// SetSSLTLV stores the value of the PROXY protocol v2 SSL TLV that
	// tcp_proxy sends to the broker (contract.SSLTLVMetadataKey).
	SetSSLTLV(value []byte)
}

// Field is one string of dynamic metadata.
type Field struct{ Key, Value string }

type state uint8

const (
	waiting state = iota // holding the connection until the CONNECT is complete
	routed               // key set, connection handed to tcp_proxy
	closed               // refused, timed out, or closed by the client
)

// Filter is one connection's filter. It is not safe for concurrent use;
// Envoy calls it from one worker thread.
type Filter struct {
	cfg     *contract.Config
	conn    Conn
	state   state
	parser  mqtt.Parser
	copied  []byte    // the buffered bytes, when Envoy holds them in more than one chunk
	seen    bool      // a read carried bytes
	arrived time.Time // when the connection arrived, for the ConnectWait histogram; zero if unknown
	// identities holds the client certificate parts looked up so far
	// (identity.go); empty unless the config needs a certificate.
	identities []identity
	fields     [4]Field // the metadata strings, kept here so that setting them allocates nothing
}

// now is the filter's clock; tests replace it.
var now = time.Now

// New returns the filter for a new connection.
func New(cfg *contract.Config, conn Conn) *Filter {
	f := &Filter{}
	f.Reset(cfg, conn)
	return f
}

// Reset makes f the filter of a new connection, keeping its buffers, so
// that a caller can reuse Filters.
func (f *Filter) Reset(cfg *contract.Config, conn Conn) {
	f.parser.Reset() // keeps its buffer for the client ID and username
	parser, copied := f.parser, f.copied[:0]
	if cap(copied) > 4096 {
		copied = nil // do not keep a large CONNECT's buffer around
	}
	clear(f.identities)
	*f = Filter{cfg: cfg, conn: conn, copied: copied, parser: parser, identities: f.identities[:0]}
	f.parser.MaxPacketSize = cfg.MaxConnectBytes
}

// SetArrival records when the connection arrived, for the ConnectWait
// histogram. Package abi keeps that time for every connection and sets it
// on the Filter it makes for the connection's first read.
func (f *Filter) SetArrival(t time.Time) { f.arrived = t }

// OnNewConnection holds the connection: tcp_proxy does not open an upstream
// connection until OnRead returns Routed. A connection Envoy is not reading
// from is refused at once: its CONNECT could never arrive. (Package abi
// checks ReadEnabled itself and calls OnNewConnection only to refuse, so
// that an ordinary connection does not enter Go before its first read.)
func (f *Filter) OnNewConnection() Status {
	if !f.conn.ReadEnabled() {
		f.refuse(RejectReadDisabled, "reading is disabled before the CONNECT could arrive",
			"set max_early_data_bytes on the tcp_proxy that follows mqtt_sticky")
	}
	return Stop
}

// OnRead parses the bytes Envoy has buffered so far, given as the chunks of
// its read buffer; they are only read, never drained, and not retained.
func (f *Filter) OnRead(chunks [][]byte, endStream bool) Status {
	switch f.state {
	case routed:
		return Continue
	case closed:
		return Stop
	}
	data := f.contiguous(chunks)
	if len(data) > 0 {
		f.seen = true
	}
	st, err := f.parser.Feed(data)
	switch st {
	case mqtt.Done:
		return f.route(f.parser.Connect())
	case mqtt.Failed:
		var reason mqtt.Reason
		if e, ok := err.(*mqtt.Error); ok {
			reason = e.Reason
		}
		f.refuse(rejectCounter(reason), "refused CONNECT", err.Error())
		return Stop
	}
	if endStream {
		if len(data) == 0 {
			f.finish(closed)
			f.conn.Inc(ClosedEarly)
			f.conn.Close("mqtt_sticky: closed before CONNECT")
			return Stop
		}
		f.refuse(RejectTruncated, "client closed during CONNECT", "")
		return Stop
	}
	return Stop
}

// contiguous returns the buffered bytes as one slice. A single chunk, the
// usual case, is used in place. Otherwise the bytes are copied, once each:
// Envoy's buffer only grows while the filter holds the connection, so the
// prefix already copied is still valid. The copy stops at the CONNECT size
// limit, past which the parser refuses anyway.
func (f *Filter) contiguous(chunks [][]byte) []byte {
	if len(chunks) == 1 && len(f.copied) == 0 {
		return chunks[0]
	}
	if len(chunks) == 0 {
		return f.copied
	}
	limit := f.cfg.MaxConnectBytes
	skip := len(f.copied)
	for _, c := range chunks {
		if skip >= len(c) {
			skip -= len(c)
			continue
		}
		c = c[skip:]
		skip = 0
		if room := limit - len(f.copied); len(c) > room {
			c = c[:room]
		}
		f.copied = append(f.copied, c...)
		if len(f.copied) >= limit {
			break
		}
	}
	return f.copied
}

// beforeRoute is nil except in builds with the mqtt_sticky_panic_hook tag,
// which the end-to-end tests use to prove that a panic in a hook closes one
// connection and leaves Envoy running.
var beforeRoute func(*mqtt.Connect)

func (f *Filter) route(c *mqtt.Connect) Status {
	if beforeRoute != nil {
		beforeRoute(c)
	}
	if !f.checkBinding(c) {
		return Stop
	}
	key, ok := f.routingKey(c)
	if !ok {
		return Stop
	}
	if f.cfg.ProxyProtocolCN && !f.setSSLTLV(c.Level) {
		return Stop
	}
	if key != "" && !f.conn.SetHashKey(key) {
		// Without the key tcp_proxy would pick a random broker and the
		// client's session would silently move: fail closed instead.
		f.refuse(RejectInternal, "Envoy refused the routing key", "is the "+contract.FilterStateKey+" object factory linked in?")
		return Stop
	}
	if f.cfg.Metadata() {
		f.setMetadata(c)
	}
	f.conn.Inc(ConnectCounter(c.Level))
	if !f.arrived.IsZero() {
		f.conn.Record(ConnectWait, uint64(now().Sub(f.arrived).Milliseconds()))
	}
	f.finish(routed)
	return Routed
}

// QuickRoutable reports whether, under cfg, routing a CONNECT with a
// non-empty key involves nothing but the key, the metadata, the counter
// and the wait histogram: no certificate, no identity binding, no SSL TLV,
// no test hook. Package abi then routes a CONNECT that filter/quick
// recognizes itself, in C, exactly as route would, without entering Go.
func QuickRoutable(cfg *contract.Config) bool {
	if _, fromCert := cfg.HashKey.Certificate(); fromCert || beforeRoute != nil {
		return false
	}
	return cfg.IdentityBinding == contract.BindingOff && !cfg.ProxyProtocolCN
}

// ConnectCounter is the counter of CONNECTs routed at level.
func ConnectCounter(level mqtt.Level) Counter {
	switch level {
	case mqtt.Level31:
		return ConnectMQTT31
	case mqtt.Level311:
		return ConnectMQTT311
	}
	return ConnectMQTT5
}

// routingKey returns the key tcp_proxy hashes: the certificate identity
// for hash_key cert_*, otherwise the CONNECT field, or what empty_key says
// when that is empty. An empty field bound to the certificate takes the
// identity, so a client that lets the broker assign its ID still reaches
// the broker its certificate maps to. It reports false when it refused.
func (f *Filter) routingKey(c *mqtt.Connect) (string, bool) {
	if src, fromCert := f.cfg.HashKey.Certificate(); fromCert {
		return f.requireIdentity(src, c.Level)
	}
	key := c.ClientID
	if f.cfg.HashKey == contract.KeyUsername {
		key = c.Username
	}
	if key != "" {
		return key, true
	}
	if id, ok := f.boundIdentity(); ok {
		return id, true
	}
	f.conn.Inc(EmptyKeyCount)
	switch f.cfg.EmptyKey {
	case contract.EmptyReject:
		f.rejectEmptyKey(c.Level)
		return "", false
	case contract.EmptySourceIP:
		if ip, _, ok := f.conn.RemoteAddress(); ok {
			return ip, true
		}
	}
	return "", true
}

// setMetadata sets the connection's dynamic metadata, escaped for logs.
func (f *Filter) setMetadata(c *mqtt.Connect) {
	f.fields[0], f.fields[1] = Field{contract.MetadataClientID, logSafe(c.ClientID)}, Field{contract.MetadataProtocolVersion, c.Level.String()}
	n := 2
	if c.HasUsername {
		f.fields[n] = Field{contract.MetadataUsername, logSafe(c.Username)}
		n++
	}
	if id := f.usedIdentity(); id != "" {
		f.fields[n] = Field{contract.MetadataIdentity, logSafe(id)}
		n++
	}
	f.conn.SetMetadataStrings(f.fields[:n])
	f.fields = [4]Field{} // hold no strings past the hook
	f.conn.SetMetadataNumber(contract.MetadataKeepAlive, float64(c.KeepAlive))
}

// rejectEmptyKey answers with the CONNACK code the protocol version defines
// for a refused identifier (or credentials, when hashing on the username),
// then closes.
func (f *Filter) rejectEmptyKey(level mqtt.Level) {
	var code byte
	switch {
	case level == mqtt.Level5 && f.cfg.HashKey == contract.KeyUsername:
		code = mqtt.ReasonBadUserNameOrPassword
	case level == mqtt.Level5:
		code = mqtt.ReasonClientIdentifierInvalid
	case f.cfg.HashKey == contract.KeyUsername:
		code = mqtt.ConnackBadUsernameOrPassword
	default:
		code = mqtt.ConnackIdentifierRejected
	}
	var buf [5]byte
	f.conn.Write(mqtt.AppendConnack(buf[:0], level, code))
	f.refuse(RejectEmptyKey, "empty "+string(f.cfg.HashKey)+" refused", "")
}

// OnTimeout closes a connection that has not completed its CONNECT within
// connect_timeout_ms.
func (f *Filter) OnTimeout() {
	if f.state != waiting {
		return
	}
	f.refuse(Timeout, "no complete CONNECT within connect_timeout_ms", "")
}

// OnClose is called when the connection closes, from either side. A
// connection that ends while it waits for its CONNECT is counted like one
// whose client half-closed it, so that every connection the filter holds
// ends up in exactly one counter: closed_before_connect when it sent
// nothing, rejected_truncated otherwise.
func (f *Filter) OnClose() {
	if f.state != waiting {
		return
	}
	f.finish(closed)
	if f.seen {
		f.conn.Inc(RejectTruncated)
	} else {
		f.conn.Inc(ClosedEarly)
	}
}

// Routed reports whether the filter has routed its connection.
func (f *Filter) Routed() bool { return f.state == routed }

// Waiting reports whether the filter still waits for the CONNECT.
func (f *Filter) Waiting() bool { return f.state == waiting }

// finish leaves the waiting state.
func (f *Filter) finish(s state) {
	if f.state != waiting {
		return
	}
	f.state = s
	f.copied = f.copied[:0]
}

// refuse counts, logs and closes a connection that will not be routed.
func (f *Filter) refuse(c Counter, what, detail string) {
	f.finish(closed)
	f.conn.Inc(c)
	if ok, dropped := logLimiter.Allow(); ok {
		msg := "mqtt_sticky: " + what
		if detail != "" {
			msg += ": " + detail
		}
		if ip, port, ok := f.conn.RemoteAddress(); ok {
			msg += " (client " + joinHostPort(ip, port) + ")"
		}
		if dropped > 0 {
			msg += "; " + strconv.Itoa(dropped) + " similar lines suppressed"
		}
		f.conn.Log(LogInfo, msg)
	}
	f.conn.Close("mqtt_sticky: " + counterNames[c])
}
