package broker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Brokers form a cluster the way EMQX nodes do, as far as message routing
// goes: a message a client publishes on any broker reaches the matching
// subscribers on every broker. Each broker accepts links from its peers on
// a cluster listener and opens a link to each peer; a client's publish is
// forwarded once over every outgoing link, and a message that arrived over
// a link is delivered locally but never forwarded again, so there are no
// loops and every subscriber gets it once. Sessions stay local: that is
// what stickiness is for.

// clusterListenerID names the listener peer links arrive on; publishes from
// it are never forwarded.
const clusterListenerID = "cluster"

// peerQueue bounds the messages waiting for one peer link. A dev broker
// drops (and counts) rather than grow without limit when a peer is down.
const peerQueue = 10_000

type forwarded struct {
	topic   string
	payload []byte
	qos     byte
	retain  bool
}

// peerLink is this broker's connection to one peer's cluster listener.
type peerLink struct {
	addr    string
	client  paho.Client
	queue   chan forwarded
	dropped atomic.Int64
	sent    atomic.Int64
}

// listenCluster opens the cluster listener; peers need one, because the
// forwarding rule depends on telling peer links from clients.
func (b *Broker) listenCluster(listen string, peers []string) error {
	if listen == "" {
		if len(peers) > 0 {
			return errors.New("broker: peers need a cluster listener (--cluster-listen)")
		}
		return nil
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("broker: cluster listener on %s: %w", listen, err)
	}
	b.clusterLn = ln
	return b.server.AddHook(&forwarder{b: b}, nil)
}

// startCluster accepts peer links and opens this broker's links to peers.
func (b *Broker) startCluster(peers []string) {
	if b.clusterLn == nil {
		return
	}
	b.connWG.Add(1)
	go func() {
		defer b.connWG.Done()
		for {
			conn, err := b.clusterLn.Accept()
			if err != nil {
				return
			}
			b.track(conn, true)
			b.connWG.Add(1)
			go func() {
				defer b.connWG.Done()
				defer b.track(conn, false)
				b.server.EstablishConnection(clusterListenerID, conn)
			}()
		}
	}()
	for _, p := range peers {
		if p == "" || p == b.clusterLn.Addr().String() {
			continue
		}
		link := &peerLink{addr: p, queue: make(chan forwarded, peerQueue)}
		opts := paho.NewClientOptions().
			AddBroker("tcp://" + p).
			SetClientID(fmt.Sprintf("mqtt-sticky-peer/%s->%s", b.name, p)).
			SetCleanSession(true).
			SetAutoReconnect(true).
			SetConnectRetry(true).
			SetConnectRetryInterval(200 * time.Millisecond).
			SetMaxReconnectInterval(2 * time.Second).
			SetKeepAlive(30 * time.Second).
			SetOnConnectHandler(func(paho.Client) {
				b.log.Info("peer link up", "broker", b.name, "peer", link.addr)
			}).
			SetConnectionLostHandler(func(_ paho.Client, err error) {
				b.log.Warn("peer link lost", "broker", b.name, "peer", link.addr, "err", err)
			})
		link.client = paho.NewClient(opts)
		link.client.Connect() // retries in the background until the peer is up
		b.links = append(b.links, link)
		b.linkWG.Add(1)
		go func() {
			defer b.linkWG.Done()
			for m := range link.queue {
				tok := link.client.Publish(m.topic, m.qos, m.retain, m.payload)
				if m.qos > 0 {
					tok.WaitTimeout(5 * time.Second)
				}
				if tok.Error() != nil {
					link.dropped.Add(1)
					continue
				}
				link.sent.Add(1)
			}
		}()
	}
}

// stopLinks ends the outgoing links once no client can publish any more.
func (b *Broker) stopLinks() {
	for _, l := range b.links {
		close(l.queue)
	}
	b.linkWG.Wait()
	for _, l := range b.links {
		l.client.Disconnect(100)
	}
}

// ClusterAddr is the cluster listener's address, or "".
func (b *Broker) ClusterAddr() string {
	if b.clusterLn == nil {
		return ""
	}
	return b.clusterLn.Addr().String()
}

// PeersConnected counts the outgoing peer links that are connected.
func (b *Broker) PeersConnected() int {
	n := 0
	for _, l := range b.links {
		if l.client.IsConnectionOpen() {
			n++
		}
	}
	return n
}

// WaitPeers blocks until every outgoing peer link is connected, or ctx
// ends. Until then a client's publish may not reach every broker.
func (b *Broker) WaitPeers(ctx context.Context) error {
	for b.PeersConnected() != len(b.links) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("broker %s: %d of %d peer links up: %w", b.name, b.PeersConnected(), len(b.links), ctx.Err())
		case <-time.After(5 * time.Millisecond): // polling interval of a readiness check
		}
	}
	return nil
}

// Peers is the number of configured peers.
func (b *Broker) Peers() int { return len(b.links) }

// forwarder is the mochi hook that forwards clients' publishes to peers.
type forwarder struct {
	mqtt.HookBase
	b *Broker
}

func (f *forwarder) ID() string { return "mqtt-sticky-cluster" }

func (f *forwarder) Provides(b byte) bool { return b == mqtt.OnPublished }

func (f *forwarder) OnPublished(cl *mqtt.Client, pk packets.Packet) {
	if cl.Net.Inline || cl.Net.Listener == clusterListenerID {
		return // arrived from a peer (or from in-process code): deliver locally only
	}
	m := forwarded{
		topic:   pk.TopicName,
		payload: append([]byte(nil), pk.Payload...),
		qos:     pk.FixedHeader.Qos,
		retain:  pk.FixedHeader.Retain,
	}
	for _, l := range f.b.links {
		select {
		case l.queue <- m:
		default:
			if l.dropped.Add(1) == 1 {
				f.b.log.Warn("broker: peer queue full, dropping messages", "broker", f.b.name, "peer", l.addr)
			}
		}
	}
}
