// Package loadgen holds many long-lived MQTT 3.1.1 connections open through
// a proxy, as a fleet of idle devices does: each client connects, sends
// PINGREQ on its keepalive, and notices at once when its connection is
// closed. The end-to-end tests count the connections a change loses with
// it; the benchmarks make whole fleets reconnect at once (storms).
//
// A client costs two small buffers and one goroutine (its reader), so one
// process can hold several thousand; the proxy and the brokers hold the
// other ends.
package loadgen

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mqtt-sticky/mqtt-sticky/filter/mqtt"
)

// MQTT packets the clients send and expect.
var (
	pingreq = []byte{0xc0, 0x00}
)

const (
	typeConnack  = 0x20
	typePingresp = 0xd0
)

// Options describe a set of clients.
type Options struct {
	// Addr is where the clients connect: the proxy.
	Addr string
	// IDPrefix names the clients: client i has ID IDPrefix-<i>, unless
	// IDs is set and names them instead.
	IDPrefix string
	IDs      func(i int) string
	// KeepAlive goes in the CONNECT, and every client sends a PINGREQ
	// this often. Zero means 60s.
	KeepAlive time.Duration
	// Workers is how many clients connect in parallel in Connect (default 64).
	Workers int
	// Source returns client i's source address (default: 127.0.0.2 to
	// 127.0.0.250 in turn, so that thousands of connections do not run out
	// of ephemeral ports).
	Source func(i int) net.IP
	// Reconnect makes a client whose connection is lost connect again at
	// once, and after a failed attempt again after an exponential backoff
	// with jitter (ReconnectMin to ReconnectMax), as real devices do; its
	// first connection is retried the same way.
	Reconnect                  bool
	ReconnectMin, ReconnectMax time.Duration
	// DialTimeout bounds one connection attempt, CONNACK included
	// (default 10s).
	DialTimeout time.Duration
}

// Set is a running set of clients.
type Set struct {
	opts    Options
	clients []*client
	lost    atomic.Int64 // connections lost since Connect
	failed  atomic.Int64 // connection attempts that failed
	closed  chan struct{}
	wg      sync.WaitGroup
}

type client struct {
	set *Set
	i   int
	id  string

	mu          sync.Mutex
	conn        net.Conn // nil while disconnected
	connectedAt time.Time
	lostAt      time.Time
	lostErr     error
	connects    int
	pongs       atomic.Int64
}

// Connect connects n clients and returns once every one has its CONNACK,
// or with the first error (after closing the ones it opened).
func Connect(ctx context.Context, opts Options, n int) (*Set, error) {
	if opts.KeepAlive == 0 {
		opts.KeepAlive = 60 * time.Second
	}
	if opts.Workers == 0 {
		opts.Workers = 64
	}
	if opts.Source == nil {
		opts.Source = func(i int) net.IP { return net.IPv4(127, 0, 0, byte(2+i%249)) }
	}
	if opts.ReconnectMin == 0 {
		opts.ReconnectMin = 100 * time.Millisecond
	}
	if opts.ReconnectMax == 0 {
		opts.ReconnectMax = 5 * time.Second
	}
	if opts.DialTimeout == 0 {
		opts.DialTimeout = 10 * time.Second
	}
	s := &Set{opts: opts, closed: make(chan struct{})}
	for i := range n {
		id := fmt.Sprintf("%s-%05d", opts.IDPrefix, i)
		if opts.IDs != nil {
			id = opts.IDs(i)
		}
		s.clients = append(s.clients, &client{set: s, i: i, id: id})
	}
	err := parallel(len(s.clients), opts.Workers, func(i int) error {
		backoff := opts.ReconnectMin
		for {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			err := s.clients[i].connect()
			if err == nil || !opts.Reconnect {
				return err
			}
			// A reconnecting client retries its first connection too, as a
			// device does when the proxy refuses it.
			s.failed.Add(1)
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(backoff/2 + rand.N(backoff)):
			}
			backoff = min(backoff*2, opts.ReconnectMax)
		}
	})
	if err != nil {
		s.Close()
		return nil, err
	}
	s.wg.Add(1)
	go s.keepAlive()
	return s, nil
}

// ID is client i's client ID.
func (s *Set) ID(i int) string { return s.clients[i].id }

// Len is the number of clients.
func (s *Set) Len() int { return len(s.clients) }

// Lost is the number of connections lost since Connect: each time a
// client's connection was closed by anything but Close.
func (s *Set) Lost() int64 { return s.lost.Load() }

// Failed is the number of connection attempts that failed (reconnecting
// sets only).
func (s *Set) Failed() int64 { return s.failed.Load() }

// Connected is the number of clients connected now.
func (s *Set) Connected() int {
	n := 0
	for _, c := range s.clients {
		c.mu.Lock()
		if c.conn != nil {
			n++
		}
		c.mu.Unlock()
	}
	return n
}

// Status is one client's connection history.
type Status struct {
	ID          string
	Connected   bool
	Connects    int       // successful connections, the first included
	ConnectedAt time.Time // of the latest connection
	LostAt      time.Time // of the latest loss; zero if never lost
	LostErr     error     // why the latest connection ended
	Local       string    // the client's address of the latest connection
}

// Status reports client i.
func (s *Set) Status(i int) Status {
	c := s.clients[i]
	c.mu.Lock()
	defer c.mu.Unlock()
	st := Status{ID: c.id, Connected: c.conn != nil, Connects: c.connects, ConnectedAt: c.connectedAt, LostAt: c.lostAt, LostErr: c.lostErr}
	if c.conn != nil {
		st.Local = c.conn.LocalAddr().String()
	}
	return st
}

// Ping sends a PINGREQ on every connected client and waits for each to be
// answered, up to timeout. It returns how many answered; a client that
// loses its connection meanwhile counts as lost (see Lost), not as
// answered.
func (s *Set) Ping(ctx context.Context, timeout time.Duration) (answered int, err error) {
	type probe struct {
		c    *client
		from int64
	}
	var probes []probe
	for _, c := range s.clients {
		c.mu.Lock()
		conn := c.conn
		c.mu.Unlock()
		if conn == nil {
			continue
		}
		p := probe{c, c.pongs.Load()}
		if _, err := conn.Write(pingreq); err != nil {
			continue // the reader sees the error and counts the loss
		}
		probes = append(probes, p)
	}
	deadline := time.Now().Add(timeout)
	for backoff := time.Millisecond; ; backoff = min(backoff*2, 50*time.Millisecond) {
		answered = 0
		waiting := 0
		for _, p := range probes {
			switch {
			case p.c.pongs.Load() > p.from:
				answered++
			case p.c.isConnected():
				waiting++
			}
		}
		if waiting == 0 {
			return answered, nil
		}
		if time.Now().After(deadline) {
			return answered, fmt.Errorf("loadgen: %d of %d clients did not answer a PINGREQ within %v", waiting, len(probes), timeout)
		}
		select {
		case <-ctx.Done():
			return answered, ctx.Err()
		case <-time.After(backoff):
		}
	}
}

// WaitConnected waits until every client is connected, and returns how
// long that took from since.
func (s *Set) WaitConnected(ctx context.Context, since time.Time) (time.Duration, error) {
	for backoff := time.Millisecond; ; backoff = min(backoff*2, 20*time.Millisecond) {
		if s.Connected() == len(s.clients) {
			var last time.Time
			for _, c := range s.clients {
				c.mu.Lock()
				if c.connectedAt.After(last) {
					last = c.connectedAt
				}
				c.mu.Unlock()
			}
			return last.Sub(since), nil
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("loadgen: %d of %d clients connected: %w", s.Connected(), len(s.clients), ctx.Err())
		case <-time.After(backoff):
		}
	}
}

// Close disconnects every client. Losses after Close are not counted.
func (s *Set) Close() {
	select {
	case <-s.closed:
		return
	default:
	}
	close(s.closed)
	for _, c := range s.clients {
		c.mu.Lock()
		if c.conn != nil {
			c.conn.Close()
		}
		c.mu.Unlock()
	}
	s.wg.Wait()
}

func (s *Set) isClosed() bool {
	select {
	case <-s.closed:
		return true
	default:
		return false
	}
}

// keepAlive sends every connected client's PINGREQ once per three
// quarters of the keepalive period, spread evenly over it: a broker closes
// a client it has not heard from in 1.5 keepalive periods, and an idle
// client pings well before that.
func (s *Set) keepAlive() {
	defer s.wg.Done()
	n := max(len(s.clients), 1)
	batch := min(64, n)
	period := s.opts.KeepAlive * 3 / 4
	tick := time.NewTicker(max(period*time.Duration(batch)/time.Duration(n), time.Millisecond))
	defer tick.Stop()
	for next := 0; ; {
		select {
		case <-s.closed:
			return
		case <-tick.C:
		}
		for range batch {
			c := s.clients[next%len(s.clients)]
			next++
			c.mu.Lock()
			if c.conn != nil {
				c.conn.Write(pingreq) // a failed write shows up in the reader
			}
			c.mu.Unlock()
		}
	}
}

func (c *client) isConnected() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.conn != nil
}

// connect dials and completes CONNECT/CONNACK, then starts the reader.
func (c *client) connect() error {
	o := &c.set.opts
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: o.Source(c.i)}, Timeout: o.DialTimeout}
	conn, err := d.Dial("tcp", o.Addr)
	if err != nil {
		return fmt.Errorf("loadgen: client %s: %w", c.id, err)
	}
	r := bufio.NewReaderSize(conn, 64)
	conn.SetDeadline(time.Now().Add(o.DialTimeout))
	connect := mqtt.AppendConnect(nil, &mqtt.ConnectPacket{Connect: mqtt.Connect{
		Level: mqtt.Level311, ClientID: c.id, CleanStart: true, KeepAlive: uint16(o.KeepAlive / time.Second)}})
	if _, err := conn.Write(connect); err != nil {
		conn.Close()
		return fmt.Errorf("loadgen: client %s: %w", c.id, err)
	}
	typ, body, err := mqtt.ReadPacket(r)
	if err != nil {
		conn.Close()
		return fmt.Errorf("loadgen: client %s: no CONNACK: %w", c.id, err)
	}
	if typ != typeConnack || len(body) != 2 || body[1] != 0 {
		conn.Close()
		return fmt.Errorf("loadgen: client %s: CONNACK %#x % x", c.id, typ, body)
	}
	conn.SetDeadline(time.Time{})
	c.mu.Lock()
	if c.set.isClosed() {
		c.mu.Unlock()
		conn.Close()
		return errors.New("loadgen: closed")
	}
	c.conn = conn
	c.connects++
	c.connectedAt = time.Now()
	c.mu.Unlock()
	c.set.wg.Add(1)
	go c.read(conn, r)
	return nil
}

// read consumes what the broker sends until the connection ends, counting
// PINGRESPs; the end of the connection is a loss unless the set is closing.
func (c *client) read(conn net.Conn, r *bufio.Reader) {
	defer c.set.wg.Done()
	var err error
	for {
		var typ byte
		typ, _, err = mqtt.ReadPacket(r)
		if err != nil {
			break
		}
		if typ == typePingresp {
			c.pongs.Add(1)
		}
	}
	conn.Close()
	c.mu.Lock()
	c.conn = nil
	c.lostAt = time.Now()
	c.lostErr = err
	c.mu.Unlock()
	if c.set.isClosed() {
		return
	}
	c.set.lost.Add(1)
	if c.set.opts.Reconnect {
		c.set.wg.Add(1)
		go c.reconnect()
	}
}

// reconnect connects again at once and, while that fails, after a backoff
// that doubles up to ReconnectMax, with ±50% jitter so that a fleet's
// retries spread out.
func (c *client) reconnect() {
	defer c.set.wg.Done()
	o := &c.set.opts
	backoff := o.ReconnectMin
	for !c.set.isClosed() {
		if c.connect() == nil {
			return
		}
		c.set.failed.Add(1)
		wait := backoff/2 + rand.N(backoff)
		select {
		case <-c.set.closed:
			return
		case <-time.After(wait):
		}
		backoff = min(backoff*2, o.ReconnectMax)
	}
}

// parallel runs fn for 0..n-1 on workers goroutines and returns the first
// error; once one fails, the others stop taking new work.
func parallel(n, workers int, fn func(i int) error) error {
	var next atomic.Int64
	var first error
	var once sync.Once
	var failed atomic.Bool
	var wg sync.WaitGroup
	for range min(workers, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !failed.Load() {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := fn(i); err != nil {
					once.Do(func() { first = err })
					failed.Store(true)
				}
			}
		}()
	}
	wg.Wait()
	return first
}
