package loadgen

import (
	"context"
	"testing"
	"time"

	"github.com/mqtt-sticky/mqtt-sticky/internal/broker"
)

func startBroker(t *testing.T, addr string) *broker.Broker {
	t.Helper()
	b, err := broker.Start(broker.Options{Listen: addr, ProxyProtocol: broker.ProxyOff})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// Clients connect, answer a ping round, notice when the broker goes away,
// and reconnect when it is back.
func TestHoldLoseReconnect(t *testing.T) {
	b := startBroker(t, "127.0.0.1:0")
	addr := b.Addr()
	ctx := context.Background()
	s, err := Connect(ctx, Options{Addr: addr, IDPrefix: "lg", KeepAlive: 2 * time.Second, Reconnect: true,
		ReconnectMin: 10 * time.Millisecond, ReconnectMax: 50 * time.Millisecond}, 50)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if n, err := s.Ping(ctx, 5*time.Second); err != nil || n != 50 {
		t.Fatalf("ping: %d answered, %d lost, %v", n, s.Lost(), err)
	}
	if s.Lost() != 0 || s.Connected() != 50 {
		t.Fatalf("lost %d, connected %d", s.Lost(), s.Connected())
	}

	b.Close()
	deadline := time.Now().Add(5 * time.Second)
	for s.Lost() < 50 {
		if time.Now().After(deadline) {
			t.Fatalf("only %d of 50 losses noticed", s.Lost())
		}
		time.Sleep(5 * time.Millisecond)
	}
	restarted := time.Now()
	startBroker(t, addr)
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := s.WaitConnected(wctx, restarted); err != nil {
		t.Fatal(err)
	}
	if st := s.Status(7); st.Connects != 2 || !st.Connected || st.LostAt.IsZero() {
		t.Errorf("client 7: %+v, want 2 connections and one loss", st)
	}
	if n, err := s.Ping(ctx, 5*time.Second); err != nil || n != 50 {
		t.Fatalf("ping after reconnecting: %d answered, %v", n, err)
	}
}

// The keepalive loop alone keeps PINGRESPs coming.
func TestKeepAlivePings(t *testing.T) {
	b := startBroker(t, "127.0.0.1:0")
	s, err := Connect(context.Background(), Options{Addr: b.Addr(), IDPrefix: "ka", KeepAlive: 200 * time.Millisecond}, 3)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	deadline := time.Now().Add(5 * time.Second)
	for _, c := range s.clients {
		for c.pongs.Load() < 2 {
			if time.Now().After(deadline) {
				t.Fatalf("client %s: %d PINGRESPs", c.id, c.pongs.Load())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}
