package main

import (
	"crypto/ecdsa"
	"crypto/tls"
	"fmt"
	"log"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/mqtt-sticky/mqtt-sticky/internal/certs"
	"github.com/mqtt-sticky/mqtt-sticky/xds/model"
)

// The TLS contenders: connection setup with a full TLS 1.3 handshake before
// the CONNECT, through Envoy with the filter (A-TLS), Envoy's tcp_proxy
// alone (B-TLS) and HAProxy 2.6 (C-TLS), all terminating TLS with the same
// ECDSA P-256 certificate. The client offers only TLS 1.3 and X25519 and
// keeps no session cache, so every connection is a full handshake with the
// same key exchange, and HAProxy is held to the AES-128-GCM suite that
// BoringSSL and Go pick by default; each contender's negotiated parameters
// are checked and reported.

// tlsResult is one TLS contender's figures.
type tlsResult struct {
	name, title string
	sticky      string
	params      string // what the handshake negotiated
	broken      bool
	err         string
	setupRate   stat
	cpuPer1000  stat
	memPerConn  stat
}

// tlsBench holds the certificate the contenders share.
type tlsBench struct {
	certFile, keyFile string
	pemFile           string // certificate and key in one file, for HAProxy
	client            *tls.Config
}

func newTLSBench(env *benchEnv) (*tlsBench, error) {
	ca, err := certs.NewCA("mqtt-sticky bench CA")
	if err != nil {
		return nil, err
	}
	server, err := ca.Issue(certs.Spec{CN: "bench-server", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Server: true})
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(env.dir, "tls")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	tb := &tlsBench{pemFile: filepath.Join(dir, "server.pem")}
	if tb.certFile, tb.keyFile, err = server.Write(dir, "server"); err != nil {
		return nil, err
	}
	if err := os.WriteFile(tb.pemFile, append(append([]byte{}, server.CertPEM...), server.KeyPEM...), 0o600); err != nil {
		return nil, err
	}
	tb.client = &tls.Config{
		RootCAs:          ca.Pool(),
		ServerName:       "127.0.0.1",
		MinVersion:       tls.VersionTLS13,
		MaxVersion:       tls.VersionTLS13,
		CurvePreferences: []tls.CurveID{tls.X25519},
	}
	return tb, nil
}

// withTLS gives the Envoy contenders' listener the benchmark certificate,
// TLS 1.3 only, through the control plane's own translation.
func (tb *tlsBench) withTLS(m *model.Model) {
	m.Listeners[0].TLS = &model.TLS{CertFile: tb.certFile, KeyFile: tb.keyFile, MinVersion: model.TLS13}
}

// haproxyBind terminates TLS on HAProxy's bind line with the same
// certificate and parameters.
func (tb *tlsBench) haproxyBind() []string {
	return []string{"ssl", "crt", tb.pemFile, "ssl-min-ver", "TLSv1.3", "ciphersuites", "TLS_AES_128_GCM_SHA256", "curves", "X25519"}
}

func runTLSPerf(env *benchEnv) []*tlsResult {
	tb, err := newTLSBench(env)
	if err != nil {
		return []*tlsResult{{name: "TLS", err: err.Error(), broken: true}}
	}
	three := brokerAddrs(env.brokers[:3])
	type starter struct {
		name, title string
		start       func() (*proxy, error)
		hashes      string
	}
	starters := []starter{
		{"A-TLS", "Envoy 1.40 + mqtt_sticky, TLS terminated, Maglev on client ID", func() (*proxy, error) {
			return startEnvoy(env, "A-TLS", "", three, lbMaglev, true, tb.withTLS)
		}, "client ID"},
		{"B-TLS", "Envoy 1.40 tcp_proxy, TLS terminated, Maglev on source IP", func() (*proxy, error) {
			return startEnvoy(env, "B-TLS", "", three, lbMaglev, false, tb.withTLS)
		}, "source IP"},
		{"C-TLS", "HAProxy 2.6, TLS terminated, consistent hash on client ID (variable), send-proxy-v2", func() (*proxy, error) {
			return startHAProxy(env, "C-TLS", "", three, false, tb.haproxyBind()...)
		}, "client ID"},
	}
	var results []*tlsResult
	var live []*proxy
	var liveRes []*tlsResult
	for _, s := range starters {
		r := &tlsResult{name: s.name, title: s.title}
		results = append(results, r)
		p, err := s.start()
		if err != nil {
			r.err, r.broken = err.Error(), true
			continue
		}
		p.tls = tb.client
		if r.params, err = handshakeParams(p.addr, tb.client); err != nil {
			r.err, r.broken = err.Error(), true
			p.stop()
			continue
		}
		r.sticky, r.broken = proveSticky(env, p, s.hashes)
		log.Printf("%s: %s; %s", s.name, r.params, r.sticky)
		if r.broken {
			p.stop()
			continue
		}
		live = append(live, p)
		liveRes = append(liveRes, r)
	}
	measured := samples{}
	add := measured.add
	// Interleaved within each repetition, as for the plaintext contenders.
	for rep := range env.reps {
		for i, p := range live {
			r := liveRes[i]
			if r.err != "" {
				continue
			}
			log.Printf("TLS rep %d/%d: %s", rep+1, env.reps, p.name)
			rate, cpu, err := setupRate(p, env.workers, env.setupDur, fmt.Sprintf("%s-r%d", p.name, rep))
			if err != nil {
				r.err = "setup rate: " + err.Error()
				continue
			}
			add(p.name, "rate", rate)
			add(p.name, "cpu", cpu)
		}
	}
	for _, p := range live {
		p.stop()
	}
	// Memory: a fresh process per measurement, as for the plaintext ones.
	memReps := min(env.reps, 3)
	for rep := range memReps {
		for _, s := range starters {
			r := resultOfTLS(results, s.name)
			if r.broken || r.err != "" {
				continue
			}
			log.Printf("TLS memory %d/%d: %s with %d idle TLS connections", rep+1, memReps, s.name, env.idle)
			per, _, err := heldMemory(s.start, tb.client, env.idle, fmt.Sprintf("%s-%d", s.name, rep))
			if err != nil {
				r.err = err.Error()
				continue
			}
			add(s.name, "mem", per)
		}
	}
	for _, r := range liveRes {
		s := measured[r.name]
		r.setupRate, r.cpuPer1000, r.memPerConn = summarize(s["rate"]), summarize(s["cpu"]), summarize(s["mem"])
	}
	return results
}

func resultOfTLS(rs []*tlsResult, name string) *tlsResult {
	for _, r := range rs {
		if r.name == name {
			return r
		}
	}
	return nil
}

// handshakeParams connects once and describes what was negotiated, so the
// report shows that every contender ran the same TLS.
func handshakeParams(addr string, cfg *tls.Config) (string, error) {
	d := &dialer{tls: cfg}
	c, err := d.dial(addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	st := c.(*tls.Conn).ConnectionState()
	key := "unknown key"
	if pub, ok := st.PeerCertificates[0].PublicKey.(*ecdsa.PublicKey); ok {
		key = "ECDSA " + pub.Curve.Params().Name
	}
	return fmt.Sprintf("%s, %s, %s, %s certificate", tls.VersionName(st.Version), tls.CipherSuiteName(st.CipherSuite), st.CurveID, key), nil
}

// writeTLS adds the TLS section to the report.
func (r *report) writeTLS(b *strings.Builder) {
	if len(r.tls) == 0 {
		return
	}
	env := r.env
	fmt.Fprintf(b, `
## TLS

The same harness, with a full TLS 1.3 handshake before every CONNECT. All three contenders terminate TLS with one ECDSA P-256 server certificate; the client offers TLS 1.3 only and X25519 only, and keeps no session cache, so every connection pays a full handshake; HAProxy is held to TLS_AES_128_GCM_SHA256, the suite BoringSSL and Go choose. The client does not present a certificate.

- **A-TLS**: Envoy with the mqtt_sticky filter, TLS from the control plane's translation of a listener `+"`tls`"+` (certificate as an SDS secret), Maglev on the client ID, PROXY v2.
- **B-TLS**: the same Envoy without the filter, tcp_proxy hashing the source IP.
- **C-TLS**: HAProxy 2.6, `+"`bind ... ssl crt ... ssl-min-ver TLSv1.3`"+`, the client ID in a variable as in C, `+"`send-proxy-v2`"+`.

Setup rate counts TLS handshake + CONNECT→CONNACK per second (%d concurrent connectors, %v per run, %d repetitions, interleaved); CPU is the proxy's during those runs; memory is the proxy's resident growth over %d idle TLS connections held after their CONNACK (fresh process, %d repetitions).

| contender | negotiated | stickiness |
|---|---|---|
`, env.workers, env.setupDur, env.reps, env.idle, min(env.reps, 3))
	for _, t := range r.tls {
		res := t.sticky
		if t.err != "" {
			res += " — error: " + t.err
		}
		fmt.Fprintf(b, "| %s: %s | %s | %s |\n", t.name, t.title, t.params, res)
	}
	get := func(n string) *tlsResult {
		if t := resultOfTLS(r.tls, n); t != nil && !t.broken && t.err == "" {
			return t
		}
		return nil
	}
	A, B, C := get("A-TLS"), get("B-TLS"), get("C-TLS")
	rel := func(t *tlsResult, f func(*tlsResult) stat) string {
		if C == nil || t == nil || !f(C).ok || f(C).median == 0 {
			return "-"
		}
		return fmt.Sprintf("%.2f×", f(t).median/f(C).median)
	}
	b.WriteString("\n| contender | setup rate /s | vs C-TLS | proxy CPU s per 1,000 setups | memory per idle TLS connection, bytes | vs C-TLS |\n|---|---|---|---|---|---|\n")
	for _, t := range r.tls {
		if t.broken || t.err != "" {
			fmt.Fprintf(b, "| %s | not measured | | | | |\n", t.name)
			continue
		}
		fmt.Fprintf(b, "| %s | %s | %s | %s | %s | %s |\n", t.name, f0(t.setupRate), rel(t, func(x *tlsResult) stat { return x.setupRate }),
			f3(t.cpuPer1000), f0(t.memPerConn), rel(t, func(x *tlsResult) stat { return x.memPerConn }))
	}
	b.WriteString("\n| goal | measured | met |\n|---|---|---|\n")
	goal := func(name, measured string, ok bool) {
		fmt.Fprintf(b, "| %s | %s | %s |\n", name, measured, map[bool]string{true: "yes", false: "**no**"}[ok])
	}
	if A != nil && C != nil {
		goal("TLS setup rate A-TLS ≥ C-TLS", fmt.Sprintf("A-TLS %.0f/s, C-TLS %.0f/s", A.setupRate.median, C.setupRate.median), A.setupRate.median >= C.setupRate.median)
	}
	if A != nil && B != nil {
		cost := 1 - A.setupRate.median/B.setupRate.median
		diff := fmt.Sprintf("%.1f%% lower", 100*cost)
		if cost < 0 {
			diff = fmt.Sprintf("%.1f%% higher", -100*cost)
		}
		goal("A-TLS within 5% of B-TLS's setup rate", fmt.Sprintf("A-TLS %.0f/s, B-TLS %.0f/s: %s", A.setupRate.median, B.setupRate.median, diff), cost <= 0.05)
	}
}

// writeTLSOnly writes a report of the TLS contenders alone (--tls-only).
func (r *report) writeTLSOnly(path string) error {
	var b strings.Builder
	fmt.Fprintf(&b, "# TLS benchmarks\n\nGenerated by `go run ./bench %s` on %s, in %v, on %d cores (%s), %s; Envoy %s; %s.\n",
		strings.Join(os.Args[1:], " "), r.started.UTC().Format("2006-01-02 15:04 MST"), r.took.Round(time.Second),
		runtime.NumCPU(), cpuModel(), memTotal(), commandOutput(r.env.envoyBin, "--version"), commandOutput("haproxy", "-v"))
	r.writeTLS(&b)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}
