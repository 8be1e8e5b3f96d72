package filter

import (
	"github.com/mqtt-sticky/mqtt-sticky/contract"
	"testing"

	"github.com/mqtt-sticky/mqtt-sticky/filter/mqtt"
)

// BenchmarkRoutedRead is the Go-side pass-through decision for a read after
// routing. In Envoy such reads stop in the C shim and never enter Go; this
// measures the decision the Go filter would make, for comparison.
func BenchmarkRoutedRead(b *testing.B) {
	cfg, _ := contract.ParseConfig(nil)
	c := newFake()
	f := New(cfg, c)
	if f.OnRead([][]byte{connect(mqtt.Level311, "routed", "")}, false) != Routed {
		b.Fatal("not routed")
	}
	chunks := [][]byte{{0x30, 0x05, 0x00, 0x01, 't', 'h', 'i'}}
	b.ReportAllocs()
	for b.Loop() {
		if f.OnRead(chunks, false) != Continue {
			b.Fatal("not continue")
		}
	}
}

// BenchmarkRouteConnection is the Go-side work for one connection, as
// package abi does it: a recycled Filter, one read holding the whole
// CONNECT, routing.
func BenchmarkRouteConnection(b *testing.B) {
	cfg, _ := contract.ParseConfig(nil)
	pkt := [][]byte{connect(mqtt.Level311, "sensor-7f3a9c21-kitchen", "fleet-a")}
	c := newFake()
	f := New(cfg, c)
	b.ReportAllocs()
	for b.Loop() {
		f.Reset(cfg, c)
		if f.OnRead(pkt, false) != Routed {
			b.Fatal("not routed")
		}
	}
}
