package broker

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/pires/go-proxyproto"
)

// startCluster starts n brokers without PROXY protocol, linked as peers.
func startCluster(t *testing.T, n int) []*Broker {
	t.Helper()
	var cluster []string
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		cluster = append(cluster, ln.Addr().String())
		ln.Close()
	}
	var bs []*Broker
	for i := range n {
		b, err := Start(Options{Name: fmt.Sprintf("b%d", i+1), Listen: "127.0.0.1:0", ProxyProtocol: ProxyOff,
			ClusterListen: cluster[i], Peers: cluster})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		bs = append(bs, b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, b := range bs {
		if err := b.WaitPeers(ctx); err != nil {
			t.Fatal(err)
		}
	}
	return bs
}

func client(t *testing.T, addr, id string) paho.Client {
	t.Helper()
	c := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(id).SetAutoReconnect(false))
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %s: %v", id, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(0) })
	return c
}

// collector counts the messages a subscriber receives.
type collector struct {
	mu  sync.Mutex
	got map[string]int
	ch  chan string
}

func subscribe(t *testing.T, c paho.Client, filter string) *collector {
	t.Helper()
	col := &collector{got: map[string]int{}, ch: make(chan string, 100)}
	tok := c.Subscribe(filter, 1, func(_ paho.Client, m paho.Message) {
		col.mu.Lock()
		col.got[string(m.Payload())]++
		col.mu.Unlock()
		col.ch <- string(m.Payload())
	})
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	return col
}

func (c *collector) await(t *testing.T, payload string) {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case p := <-c.ch:
			if p == payload {
				return
			}
		case <-timeout:
			t.Fatalf("%q not received", payload)
		}
	}
}

// A message published on any broker reaches subscribers on every broker
// exactly once, with no echo back and no loops.
func TestClusterDeliversOnceEverywhere(t *testing.T) {
	bs := startCluster(t, 3)
	subs := make([]*collector, 3)
	for i, b := range bs {
		subs[i] = subscribe(t, client(t, b.Addr(), fmt.Sprintf("sub-%d", i)), "fleet/#")
	}
	for i, b := range bs {
		pub := client(t, b.Addr(), fmt.Sprintf("pub-%d", i))
		for q := byte(0); q <= 2; q++ {
			payload := fmt.Sprintf("from b%d qos %d", i+1, q)
			if tok := pub.Publish("fleet/x", q, false, payload); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
				t.Fatal(tok.Error())
			}
			for _, s := range subs {
				s.await(t, payload)
			}
		}
	}
	// A final marker through every broker: anything duplicated or looping
	// would have arrived before it.
	marker := client(t, bs[0].Addr(), "marker")
	marker.Publish("fleet/x", 1, false, "marker").WaitTimeout(5 * time.Second)
	for i, s := range subs {
		s.await(t, "marker")
		s.mu.Lock()
		for p, n := range s.got {
			if n != 1 {
				t.Errorf("subscriber on b%d got %q %d times", i+1, p, n)
			}
		}
		if len(s.got) != 10 {
			t.Errorf("subscriber on b%d got %d distinct messages, want 10", i+1, len(s.got))
		}
		s.mu.Unlock()
	}
}

func TestRetainedMessagesReplicate(t *testing.T) {
	bs := startCluster(t, 2)
	pub := client(t, bs[0].Addr(), "retainer")
	if tok := pub.Publish("state/door", 1, true, "closed"); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	// The retained copy reaches b2 over the peer link; a new subscriber
	// there gets it on subscribe. Poll until it has arrived.
	deadline := time.Now().Add(5 * time.Second)
	for {
		c := client(t, bs[1].Addr(), fmt.Sprintf("late-%d", time.Now().UnixNano()))
		col := &collector{got: map[string]int{}, ch: make(chan string, 1)}
		c.Subscribe("state/door", 1, func(_ paho.Client, m paho.Message) { col.ch <- string(m.Payload()) }).WaitTimeout(5 * time.Second)
		select {
		case p := <-col.ch:
			if p != "closed" {
				t.Fatalf("retained %q", p)
			}
			return
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("retained message did not reach the peer")
		}
	}
}

// A broker that requires PROXY protocol refuses a connection without it,
// and records the client address a PROXY header carries.
func TestProxyProtocolRequired(t *testing.T) {
	b, err := Start(Options{Name: "p", Listen: "127.0.0.1:0", ProxyProtocol: ProxyRequired})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	bare, err := net.Dial("tcp", b.Addr())
	if err != nil {
		t.Fatal(err)
	}
	bare.Write([]byte{0x10, 13, 0, 4, 'M', 'Q', 'T', 'T', 4, 2, 0, 60, 0, 1, 'a'})
	bare.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, _ := bare.Read(make([]byte, 4)); n != 0 {
		t.Errorf("a connection without a PROXY header got an answer")
	}
	bare.Close()
	if b.ProxyRejected() != 1 {
		t.Errorf("ProxyRejected = %d", b.ProxyRejected())
	}

	opts := paho.NewClientOptions().AddBroker("tcp://" + b.Addr()).SetClientID("proxied").
		SetCustomOpenConnectionFn(func(_ *url.URL, _ paho.ClientOptions) (net.Conn, error) {
			c, err := net.Dial("tcp", b.Addr())
			if err != nil {
				return nil, err
			}
			h := proxyproto.HeaderProxyFromAddrs(2, &net.TCPAddr{IP: net.IPv4(203, 0, 113, 7), Port: 40001}, c.LocalAddr())
			if _, err := h.WriteTo(c); err != nil {
				return nil, err
			}
			return c, nil
		})
	c := paho.NewClient(opts)
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	c.Disconnect(0)
	recs := b.Connections()
	if len(recs) != 1 || recs[0].Remote != "203.0.113.7:40001" || !recs[0].Proxied || b.Forwarded() != 1 {
		t.Errorf("records %+v, forwarded %d", recs, b.Forwarded())
	}
	if !strings.Contains(recs[0].ClientID, "proxied") {
		t.Errorf("client ID %q", recs[0].ClientID)
	}
}

// With RejectLocal, a LOCAL PROXY header closes the connection (RabbitMQ
// 3.10 does the same); a header with addresses is accepted.
func TestRejectLocal(t *testing.T) {
	b, err := Start(Options{Name: "rl", Listen: "127.0.0.1:0", ProxyProtocol: ProxyRequired, RejectLocal: true})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	c, err := net.Dial("tcp", b.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	local := &proxyproto.Header{Version: 2, Command: proxyproto.LOCAL, TransportProtocol: proxyproto.UNSPEC}
	if _, err := local.WriteTo(c); err != nil {
		t.Fatal(err)
	}
	c.Write([]byte{0x10, 13, 0, 4, 'M', 'Q', 'T', 'T', 4, 2, 0, 60, 0, 1, 'a'})
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, _ := c.Read(make([]byte, 4)); n != 0 {
		t.Error("a LOCAL header got an answer")
	}
	if b.LocalRejected() != 1 {
		t.Errorf("LocalRejected = %d", b.LocalRejected())
	}
}

// The HTTP endpoints answer like EMQX's: available, then 503 while
// evacuating, for the broker's own node name only.
func TestAvailabilityAndEvacuation(t *testing.T) {
	b, err := Start(Options{Name: "emqx@b1", Listen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	base := "http://" + b.HTTPAddr() + "/api/v5/load_rebalance/"
	status := func(method, path string) int {
		req, _ := http.NewRequest(method, base+path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	steps := []struct {
		method, path string
		want         int
	}{
		{"GET", "availability_check", 200},
		{"POST", "other@node/evacuation/start", 404},
		{"GET", "availability_check", 200},
		{"POST", "emqx@b1/evacuation/start", 200},
		{"GET", "availability_check", 503},
		{"POST", "emqx@b1/evacuation/stop", 200},
		{"GET", "availability_check", 200},
	}
	for i, s := range steps {
		if got := status(s.method, s.path); got != s.want {
			t.Errorf("step %d: %s %s = %d, want %d", i, s.method, s.path, got, s.want)
		}
	}
	if b.HealthChecks() != 4 || b.HTTPProxyHeaders() != 0 {
		t.Errorf("checks %d, PROXY headers %d", b.HealthChecks(), b.HTTPProxyHeaders())
	}
	c, err := net.Dial("tcp", b.HTTPAddr())
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("PROXY TCP4 127.0.0.1 127.0.0.1 1 2\r\nGET / HTTP/1.1\r\n\r\n"))
	io.ReadAll(c)
	c.Close()
	if b.HTTPProxyHeaders() != 1 {
		t.Errorf("a PROXY header on the HTTP port was not counted")
	}
}
