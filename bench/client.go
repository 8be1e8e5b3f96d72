package main

import (
	"bufio"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/mqtt-sticky/mqtt-sticky/filter/mqtt"
)

// A minimal MQTT 3.1.1 client for load generation: it writes packets with
// the repository's encoder and reads replies by hand, so the load generator
// costs little next to what it measures.

// dialer connects from 127.0.0.x, rotating over 249 source addresses so
// tens of thousands of connections do not exhaust ephemeral ports. With
// tls set, each connection completes a TLS handshake first.
type dialer struct {
	n   uint32
	tls *tls.Config
}

func (d *dialer) dial(addr string) (net.Conn, error) {
	d.n++
	src := net.IPv4(127, 0, 0, byte(2+d.n%249))
	nd := net.Dialer{LocalAddr: &net.TCPAddr{IP: src}, Timeout: 5 * time.Second}
	c, err := nd.Dial("tcp", addr)
	if err != nil || d.tls == nil {
		return c, err
	}
	tc := tls.Client(c, d.tls)
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	if err := tc.Handshake(); err != nil {
		c.Close()
		return nil, fmt.Errorf("TLS handshake: %w", err)
	}
	return tc, nil
}

func connectPacket(clientID string) []byte {
	return mqtt.AppendConnect(nil, &mqtt.ConnectPacket{Connect: mqtt.Connect{
		Level: mqtt.Level311, ClientID: clientID, CleanStart: true}})
}

// session is one MQTT connection.
type session struct {
	conn net.Conn
	r    *bufio.Reader
}

// connect opens a connection and completes CONNECT/CONNACK. It returns the
// time from writing CONNECT to reading CONNACK.
func (d *dialer) connect(addr, clientID string) (*session, time.Duration, error) {
	c, err := d.dial(addr)
	if err != nil {
		return nil, 0, err
	}
	s := &session{conn: c, r: bufio.NewReaderSize(c, 4096)}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	start := time.Now()
	if _, err := c.Write(connectPacket(clientID)); err != nil {
		c.Close()
		return nil, 0, err
	}
	typ, body, err := mqtt.ReadPacket(s.r)
	took := time.Since(start)
	if err != nil {
		c.Close()
		return nil, 0, fmt.Errorf("client %s: no CONNACK: %w", clientID, err)
	}
	if typ != 0x20 || len(body) != 2 || body[1] != 0 {
		c.Close()
		return nil, 0, fmt.Errorf("client %s: CONNACK %#x % x", clientID, typ, body)
	}
	c.SetDeadline(time.Time{})
	return s, took, nil
}

func (s *session) close() { s.conn.Close() }

func (s *session) subscribe(topic string) error {
	if _, err := s.conn.Write(mqtt.AppendSubscribe(nil, mqtt.Level311, 1, topic)); err != nil {
		return err
	}
	s.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	defer s.conn.SetReadDeadline(time.Time{})
	typ, _, err := mqtt.ReadPacket(s.r)
	if err != nil || typ != 0x90 {
		return fmt.Errorf("SUBACK %#x: %v", typ, err)
	}
	return nil
}

// readPublish reads the next PUBLISH and returns its payload.
func (s *session) readPublish() ([]byte, error) {
	for {
		typ, body, err := mqtt.ReadPacket(s.r)
		if err != nil {
			return nil, err
		}
		if typ&0xf0 != 0x30 || len(body) < 2 {
			continue
		}
		tl := int(binary.BigEndian.Uint16(body))
		if 2+tl > len(body) {
			return nil, errors.New("short PUBLISH")
		}
		return body[2+tl:], nil
	}
}
