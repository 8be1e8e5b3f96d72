package broker

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// The HTTP endpoints of EMQX 5 the embedded broker serves, so the same
// health check and evacuation steps work against both:
//
//	GET  /api/v5/load_rebalance/availability_check    200, or 503 while evacuating
//	POST /api/v5/load_rebalance/{node}/evacuation/start  start draining (node: the broker's name)
//	POST /api/v5/load_rebalance/{node}/evacuation/stop   stop draining
//
// EMQX's evacuation also moves the node's connected clients away; the
// embedded broker only stops being available, so that Envoy stops sending
// it new clients. Its existing clients stay until they disconnect.
const (
	availabilityPath = "/api/v5/load_rebalance/availability_check"
	evacuationPath   = "/api/v5/load_rebalance/{node}/evacuation/"
)

type httpServer struct {
	srv      *http.Server
	ln       net.Listener
	draining atomic.Bool
	checks   atomic.Int64 // availability checks answered
	proxied  atomic.Int64 // connections that began with a PROXY header
	done     chan struct{}
}

func startHTTP(b *Broker, addr string) (*httpServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("broker: HTTP listen on %s: %w", addr, err)
	}
	h := &httpServer{ln: ln, done: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+availabilityPath, func(w http.ResponseWriter, _ *http.Request) {
		h.checks.Add(1)
		if h.draining.Load() {
			http.Error(w, `{"code":"SERVICE_UNAVAILABLE","message":"node is being evacuated"}`, http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("{}"))
	})
	evacuate := func(start bool) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if r.PathValue("node") != b.name {
				http.Error(w, fmt.Sprintf(`{"code":"NOT_FOUND","message":"node %q is not this broker (%q)"}`, r.PathValue("node"), b.name), http.StatusNotFound)
				return
			}
			if h.draining.Swap(start) != start {
				b.log.Info("broker evacuation", "broker", b.name, "draining", start)
			}
			w.Write([]byte("{}"))
		}
	}
	mux.HandleFunc("POST "+evacuationPath+"start", evacuate(true))
	mux.HandleFunc("POST "+evacuationPath+"stop", evacuate(false))
	h.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		defer close(h.done)
		if err := h.srv.Serve(&sniffListener{Listener: ln, proxied: &h.proxied}); !errors.Is(err, http.ErrServerClosed) {
			b.log.Error("broker HTTP server stopped", "broker", b.name, "err", err)
		}
	}()
	return h, nil
}

func (h *httpServer) close() {
	h.srv.Close()
	<-h.done
}

// HTTPAddr is the address of the broker's HTTP endpoints, or "".
func (b *Broker) HTTPAddr() string {
	if b.http == nil {
		return ""
	}
	return b.http.ln.Addr().String()
}

// SetDraining starts or stops the broker's evacuation, as the evacuation
// endpoints do.
func (b *Broker) SetDraining(on bool) {
	if b.http != nil {
		b.http.draining.Store(on)
	}
}

// HealthChecks counts the availability checks the broker answered.
func (b *Broker) HealthChecks() int64 {
	if b.http == nil {
		return 0
	}
	return b.http.checks.Load()
}

// HTTPProxyHeaders counts HTTP connections that began with a PROXY header
// (v1 or v2): a health check that sends one through the PROXY transport
// socket would show here.
func (b *Broker) HTTPProxyHeaders() int64 {
	if b.http == nil {
		return 0
	}
	return b.http.proxied.Load()
}

// sniffListener counts connections whose first bytes are a PROXY header.
type sniffListener struct {
	net.Listener
	proxied *atomic.Int64
}

func (l *sniffListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &sniffConn{Conn: c, proxied: l.proxied}, nil
}

type sniffConn struct {
	net.Conn
	proxied *atomic.Int64
	once    sync.Once
}

var (
	proxyV1Sig = []byte("PROXY ")
	proxyV2Sig = []byte("\r\n\r\n\x00\r\nQUIT\n")
)

func (c *sniffConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.once.Do(func() {
			first := p[:n]
			if bytes.HasPrefix(first, proxyV1Sig) || bytes.HasPrefix(proxyV2Sig, first[:min(n, len(proxyV2Sig))]) {
				c.proxied.Add(1)
			}
		})
	}
	return n, err
}
