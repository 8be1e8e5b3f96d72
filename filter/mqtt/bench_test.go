package mqtt

import "testing"

// typical311 and typical5 are CONNECTs as IoT clients send them: a device
// ID, credentials, a keepalive, and for 5.0 a session expiry and receive
// maximum.
var (
	typical311 = AppendConnect(nil, &ConnectPacket{
		Connect: Connect{Level: Level311, ClientID: "sensor-7f3a9c21-kitchen", CleanStart: false,
			KeepAlive: 60, HasUsername: true, Username: "fleet-a", HasPassword: true},
		Password: []byte("s3cr3t-token-0123456789"),
	})
	typical5 = AppendConnect(nil, &ConnectPacket{
		Connect: Connect{Level: Level5, ClientID: "sensor-7f3a9c21-kitchen", KeepAlive: 60,
			HasUsername: true, Username: "fleet-a", HasPassword: true, SessionExpiry: 3600},
		Password:   []byte("s3cr3t-token-0123456789"),
		Properties: []byte{0x21, 0x00, 0x20}, // Receive Maximum 32
	})
)

func benchmarkFeed(b *testing.B, in []byte) {
	var p Parser
	b.SetBytes(int64(len(in)))
	b.ReportAllocs()
	for b.Loop() {
		p.Reset()
		if st, err := p.Feed(in); st != Done {
			b.Fatalf("Feed = %v, %v", st, err)
		}
	}
}

func BenchmarkParse311(b *testing.B) { benchmarkFeed(b, typical311) }
func BenchmarkParse5(b *testing.B)   { benchmarkFeed(b, typical5) }

// BenchmarkParse311ByteByByte is the worst case a slow client can cause:
// one Feed per byte received.
func BenchmarkParse311ByteByByte(b *testing.B) {
	var p Parser
	b.ReportAllocs()
	for b.Loop() {
		p.Reset()
		for i := 1; i <= len(typical311); i++ {
			p.Feed(typical311[:i])
		}
	}
}
