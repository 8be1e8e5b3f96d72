// Package broker runs a real MQTT broker (mochi-mqtt) behind a listener
// that can require a PROXY protocol header, and records which client IDs
// connected from which address. It is the local stand-in for an EMQX node:
// tests, benchmarks and `make run` put Envoy in front of several of them.
package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/pires/go-proxyproto"
)

// ProxyMode says whether connections must start with a PROXY header.
type ProxyMode string

const (
	ProxyRequired ProxyMode = "required" // refuse connections without a header
	ProxyOptional ProxyMode = "optional" // use a header when present
	ProxyOff      ProxyMode = "off"      // treat every byte as MQTT
)

// ParseProxyMode checks a --proxy-protocol value.
func ParseProxyMode(s string) (ProxyMode, error) {
	switch m := ProxyMode(s); m {
	case ProxyRequired, ProxyOptional, ProxyOff:
		return m, nil
	}
	return "", fmt.Errorf("proxy protocol mode %q: must be required, optional or off", s)
}

// proxyHeaderTimeout bounds how long a connection may take to send its
// PROXY header. Envoy sends it with the first bytes, so a short limit only
// catches clients that bypassed the proxy.
const proxyHeaderTimeout = 5 * time.Second

// Options configure a Broker.
type Options struct {
	Name          string // shown in logs and records; defaults to the listen address
	Listen        string // host:port; port 0 picks a free one
	ProxyProtocol ProxyMode
	Logger        *slog.Logger // nil discards logs
	// MaxRecords caps how many connection records are kept (oldest are
	// dropped first). Zero means 1,000,000.
	MaxRecords int
	// ClusterListen, when set, accepts links from peer brokers; Peers are
	// the other brokers' cluster addresses. See cluster.go.
	ClusterListen string
	Peers         []string
	// RejectLocal refuses connections whose PROXY v2 header has the LOCAL
	// command, as RabbitMQ 3.10 does (it crashes the connection), so tests
	// can prove health probes never send one.
	RejectLocal bool
	// HTTPListen, when set, serves EMQX 5's availability check and
	// evacuation switch there (see http.go).
	HTTPListen string
	// TLS, when set, makes clients speak TLS after the PROXY header, as
	// EMQX's ssl listener with proxy_protocol on expects. See tls.go.
	TLS *tls.Config
}

// Connection records one MQTT client accepted by the broker.
type Connection struct {
	Broker   string
	ClientID string
	Remote   string // the client address: from the PROXY header when there was one
	Proxied  bool   // Remote came from a PROXY header
	Version  byte   // MQTT protocol level: 3, 4 or 5
	At       time.Time
	// SSLCN is the client certificate CN a proxy passed in the PROXY v2
	// header's SSL TLV, "" without one.
	SSLCN string
	// TLS is set when the connection to the broker itself was TLS, and
	// TLSPeerCN then names the certificate the proxy presented, if any.
	TLS       bool
	TLSPeerCN string
}

// Broker is a running MQTT broker.
type Broker struct {
	name   string
	mode   ProxyMode
	tls    *tls.Config
	log    *slog.Logger
	server *mqtt.Server
	ln     net.Listener
	done   chan struct{}
	connWG sync.WaitGroup // accept loops and connections
	linkWG sync.WaitGroup // peer link senders

	clusterLn net.Listener
	links     []*peerLink

	accepted      atomic.Int64 // TCP connections accepted
	forwarded     atomic.Int64 // connections whose PROXY header carried a client address
	open          atomic.Int64 // TCP connections open now
	proxyRejected atomic.Int64 // connections refused for a missing or bad PROXY header
	localRejected atomic.Int64 // connections refused for a LOCAL header (RejectLocal)
	rejectLocal   bool

	http *httpServer // nil without HTTPListen

	mu         sync.Mutex
	records    []Connection
	maxRecords int
	conns      map[net.Conn]struct{}
	notify     chan struct{} // closed and replaced on every new record
}

// Start listens and serves until Close.
func Start(opts Options) (*Broker, error) {
	if opts.ProxyProtocol == "" {
		opts.ProxyProtocol = ProxyRequired
	}
	if _, err := ParseProxyMode(string(opts.ProxyProtocol)); err != nil {
		return nil, err
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	ln, err := net.Listen("tcp", opts.Listen)
	if err != nil {
		return nil, fmt.Errorf("broker: listen on %s: %w", opts.Listen, err)
	}
	b := &Broker{
		name:        opts.Name,
		mode:        opts.ProxyProtocol,
		log:         log,
		ln:          ln,
		done:        make(chan struct{}),
		maxRecords:  opts.MaxRecords,
		conns:       map[net.Conn]struct{}{},
		notify:      make(chan struct{}),
		rejectLocal: opts.RejectLocal,
		tls:         opts.TLS,
	}
	if b.name == "" {
		b.name = ln.Addr().String()
	}
	if b.maxRecords <= 0 {
		b.maxRecords = 1_000_000
	}
	b.server = mqtt.New(&mqtt.Options{
		InlineClient: true,
		// mochi logs every client error at info; keep only its warnings.
		Logger: slog.New(discardBelow{log.Handler(), slog.LevelWarn}),
	})
	if err := b.server.AddHook(new(auth.AllowHook), nil); err != nil {
		ln.Close()
		return nil, err
	}
	if err := b.server.AddHook(&recorder{b: b}, nil); err != nil {
		ln.Close()
		return nil, err
	}
	if err := b.listenCluster(opts.ClusterListen, opts.Peers); err != nil {
		ln.Close()
		return nil, err
	}
	if opts.HTTPListen != "" {
		if b.http, err = startHTTP(b, opts.HTTPListen); err != nil {
			ln.Close()
			if b.clusterLn != nil {
				b.clusterLn.Close()
			}
			return nil, err
		}
	}
	// Serve with no listeners of mochi's own: it only starts the event
	// loops. Connections come from acceptLoop and startCluster.
	if err := b.server.Serve(); err != nil {
		ln.Close()
		return nil, err
	}
	b.connWG.Add(1)
	go b.acceptLoop()
	b.startCluster(opts.Peers)
	log.Info("broker listening", "broker", b.name, "addr", ln.Addr().String(), "proxy_protocol", string(b.mode),
		"reject_local", b.rejectLocal, "http", b.HTTPAddr(), "tls", b.tls != nil, "cluster", b.ClusterAddr(), "peers", len(b.links))
	return b, nil
}

// Name is the broker's name.
func (b *Broker) Name() string { return b.name }

// Addr is the address the broker listens on.
func (b *Broker) Addr() string { return b.ln.Addr().String() }

// Server is the embedded mochi server, for publishing and subscribing
// in process.
func (b *Broker) Server() *mqtt.Server { return b.server }

// Close stops accepting, closes every connection and stops the broker.
func (b *Broker) Close() error {
	select {
	case <-b.done:
		return nil
	default:
	}
	close(b.done)
	err := b.ln.Close()
	if b.http != nil {
		b.http.close()
	}
	if b.clusterLn != nil {
		b.clusterLn.Close()
	}
	b.mu.Lock()
	for c := range b.conns {
		c.Close()
	}
	b.mu.Unlock()
	b.connWG.Wait()
	b.stopLinks()
	b.server.Close()
	return err
}

// track adds or removes a connection from the set Close closes.
func (b *Broker) track(c net.Conn, open bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if open {
		b.conns[c] = struct{}{}
	} else {
		delete(b.conns, c)
	}
}

func (b *Broker) acceptLoop() {
	defer b.connWG.Done()
	for {
		raw, err := b.ln.Accept()
		if err != nil {
			select {
			case <-b.done:
				return
			default:
			}
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				continue
			}
			b.log.Error("broker accept failed", "broker", b.name, "err", err)
			return
		}
		b.accepted.Add(1)
		b.open.Add(1)
		b.track(raw, true)
		b.connWG.Add(1)
		go func() {
			defer b.connWG.Done()
			defer func() {
				raw.Close()
				b.track(raw, false)
				b.open.Add(-1)
			}()
			b.serveConn(raw)
		}()
	}
}

func (b *Broker) serveConn(raw net.Conn) {
	var conn net.Conn = raw
	var meta connMeta
	if b.mode != ProxyOff {
		policy := proxyproto.USE
		if b.mode == ProxyRequired {
			policy = proxyproto.REQUIRE
		}
		pc := proxyproto.NewConn(raw, proxyproto.WithPolicy(policy), proxyproto.SetReadHeaderTimeout(proxyHeaderTimeout))
		h := pc.ProxyHeader()
		if h == nil && b.mode == ProxyRequired {
			b.proxyRejected.Add(1)
			b.log.Warn("broker refused a connection without a valid PROXY header",
				"broker", b.name, "peer", raw.RemoteAddr().String())
			return
		}
		if h != nil && h.Command.IsLocal() && b.rejectLocal {
			b.localRejected.Add(1)
			b.log.Warn("broker refused a connection with a PROXY LOCAL header (reject-local is on)",
				"broker", b.name, "peer", raw.RemoteAddr().String())
			return
		}
		if forwardedClient(h, raw) {
			b.forwarded.Add(1)
			meta.proxied = true
			meta.sslCN = sslCN(h)
		}
		conn = pc
	}
	if b.tls != nil {
		tc, err := b.handshake(conn)
		if err != nil {
			b.log.Debug("broker TLS handshake failed", "broker", b.name, "peer", raw.RemoteAddr().String(), "err", err)
			return
		}
		conn, meta.tls, meta.tlsPeerCN = tc, true, peerCN(tc)
	}
	err := b.server.EstablishConnection("proxy", &metaConn{Conn: conn, meta: meta})
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
		b.log.Debug("broker connection ended", "broker", b.name, "err", err)
	}
}

// forwardedClient reports whether a PROXY header names a client the proxy
// forwarded, rather than the proxy itself: a health probe sends either a
// LOCAL header or, with Envoy's own proxy_protocol_config, a header whose
// source is the probe's own address.
func forwardedClient(h *proxyproto.Header, raw net.Conn) bool {
	if h == nil || h.Command.IsLocal() {
		return false
	}
	return h.SourceAddr == nil || h.SourceAddr.String() != raw.RemoteAddr().String()
}

// record stores a connection and wakes waiters.
func (b *Broker) record(c Connection) {
	b.mu.Lock()
	if len(b.records) >= b.maxRecords {
		b.records = append(b.records[:0], b.records[len(b.records)/2:]...)
	}
	b.records = append(b.records, c)
	close(b.notify)
	b.notify = make(chan struct{})
	b.mu.Unlock()
	level := slog.LevelInfo
	if !c.Proxied && b.mode != ProxyOff {
		level = slog.LevelDebug // a health-check probe or a peer link, not a client
	}
	attrs := []any{"broker", b.name, "client_id", c.ClientID, "remote", c.Remote, "proxied", c.Proxied, "mqtt_level", c.Version}
	if c.SSLCN != "" {
		attrs = append(attrs, "ssl_cn", c.SSLCN) // from the PROXY header's SSL TLV
	}
	b.log.Log(context.Background(), level, "client connected", attrs...)
}

// Connections returns every connection recorded so far, oldest first.
func (b *Broker) Connections() []Connection {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]Connection(nil), b.records...)
}

// ResetRecords forgets the recorded connections.
func (b *Broker) ResetRecords() {
	b.mu.Lock()
	b.records = nil
	b.mu.Unlock()
}

// WaitFor blocks until a connection matching ok is recorded, or ctx ends.
func (b *Broker) WaitFor(ctx context.Context, ok func(Connection) bool) (Connection, error) {
	for {
		b.mu.Lock()
		for i := len(b.records) - 1; i >= 0; i-- {
			if ok(b.records[i]) {
				c := b.records[i]
				b.mu.Unlock()
				return c, nil
			}
		}
		ch := b.notify
		b.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return Connection{}, ctx.Err()
		}
	}
}

// Accepted counts the TCP connections accepted since start.
func (b *Broker) Accepted() int64 { return b.accepted.Load() }

// Forwarded counts the connections a proxy opened on behalf of a client
// (a PROXY header with the client's address). Health-check probes, whose
// header is LOCAL or names the probe's own address, are not counted.
func (b *Broker) Forwarded() int64 { return b.forwarded.Load() }

// Open counts the TCP connections open now.
func (b *Broker) Open() int64 { return b.open.Load() }

// LocalRejected counts connections refused for a LOCAL PROXY header.
func (b *Broker) LocalRejected() int64 { return b.localRejected.Load() }

// ProxyRejected counts connections refused for lacking a PROXY header.
func (b *Broker) ProxyRejected() int64 { return b.proxyRejected.Load() }

// recorder is the mochi hook that records connecting clients.
type recorder struct {
	mqtt.HookBase
	b *Broker
}

func (r *recorder) ID() string { return "mqtt-sticky-recorder" }

func (r *recorder) Provides(b byte) bool { return b == mqtt.OnConnect }

func (r *recorder) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	c := Connection{
		Broker:   r.b.name,
		ClientID: cl.ID,
		Remote:   cl.Net.Remote,
		Version:  cl.Properties.ProtocolVersion,
		At:       time.Now(),
	}
	if mc, ok := cl.Net.Conn.(*metaConn); ok {
		c.Proxied, c.SSLCN, c.TLS, c.TLSPeerCN = mc.meta.proxied, mc.meta.sslCN, mc.meta.tls, mc.meta.tlsPeerCN
	}
	r.b.record(c)
	return nil
}

// discardBelow is a slog handler that drops records below a level.
type discardBelow struct {
	slog.Handler
	min slog.Level
}

func (d discardBelow) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= d.min && d.Handler.Enabled(ctx, l)
}

func (d discardBelow) WithAttrs(a []slog.Attr) slog.Handler {
	return discardBelow{d.Handler.WithAttrs(a), d.min}
}

func (d discardBelow) WithGroup(n string) slog.Handler {
	return discardBelow{d.Handler.WithGroup(n), d.min}
}
