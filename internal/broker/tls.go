package broker

import (
	"crypto/tls"
	"net"
	"time"

	"github.com/pires/go-proxyproto"
	"github.com/pires/go-proxyproto/tlvparse"
)

// handshakeTimeout bounds a client's TLS handshake, as proxyHeaderTimeout
// bounds its PROXY header.
const handshakeTimeout = 10 * time.Second

// connMeta is what the broker learnt about a connection before MQTT: from
// the PROXY header and from its own TLS handshake.
type connMeta struct {
	proxied   bool
	sslCN     string
	tls       bool
	tlsPeerCN string
}

// metaConn carries connMeta to the recorder hook, which only sees the
// net.Conn mochi was given.
type metaConn struct {
	net.Conn
	meta connMeta
}

// handshake runs the server side of TLS on a connection whose PROXY
// header, if any, was already read.
func (b *Broker) handshake(conn net.Conn) (*tls.Conn, error) {
	tc := tls.Server(conn, b.tls)
	tc.SetDeadline(time.Now().Add(handshakeTimeout))
	if err := tc.Handshake(); err != nil {
		return nil, err
	}
	tc.SetDeadline(time.Time{})
	return tc, nil
}

// peerCN is the CN of the certificate the client presented, if any.
func peerCN(tc *tls.Conn) string {
	if certs := tc.ConnectionState().PeerCertificates; len(certs) > 0 {
		return certs[0].Subject.CommonName
	}
	return ""
}

// sslCN reads the client certificate CN from a PROXY v2 header's SSL TLV
// (PP2_TYPE_SSL, sub-type PP2_SUBTYPE_SSL_CN), as EMQX does for
// peer_cert_as_clientid behind a load balancer.
func sslCN(h *proxyproto.Header) string {
	tlvs, err := h.TLVs()
	if err != nil {
		return ""
	}
	ssl, ok := tlvparse.FindSSL(tlvs)
	if !ok {
		return ""
	}
	cn, _ := ssl.ClientCN()
	return cn
}
