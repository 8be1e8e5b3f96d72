package api

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/mqtt-sticky/mqtt-sticky/internal/strictjson"
	"github.com/mqtt-sticky/mqtt-sticky/xds/control"
	"github.com/mqtt-sticky/mqtt-sticky/xds/model"
	"github.com/mqtt-sticky/mqtt-sticky/xds/store"
)

// MaxBody bounds request bodies: an endpoint set of thousands of brokers
// fits many times over. A larger body gets 413.
const MaxBody = 1 << 20

// Options configure the handler.
type Options struct {
	// Token, when set, must be presented as "Authorization: Bearer <token>"
	// on every /v1 request (and on /metrics with MetricsNeedToken).
	Token string
	// MetricsNeedToken puts /metrics behind the token too. Off by default,
	// so a Prometheus without credentials can scrape it; the metrics hold
	// counts and versions, no configuration.
	MetricsNeedToken bool
	// ListenAddr is the address the API listens on. Without a token, the
	// API answers only requests whose Host is a loopback name or address,
	// or this address's host.
	ListenAddr string
	Logger     *slog.Logger
	Registry   *prometheus.Registry // serves /metrics; also counts requests
}

type handler struct {
	b        Backend
	opts     Options
	mux      *http.ServeMux
	origins  *http.CrossOriginProtection
	requests *prometheus.CounterVec
}

// What a route requires of a request.
const (
	public    = 0
	needToken = 1 // the bearer token, when the server has one
	jsonBody  = 2 // a JSON body: Content-Type: application/json
)

// NewHandler returns the API's HTTP handler. Every request passes, in
// order: the Host check (without a token), routing (404, 405), the
// cross-origin check (no browser may change anything from another
// origin), the token (401), the body's media type (415), and then its
// route.
func NewHandler(b Backend, opts Options) http.Handler {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Registry == nil {
		opts.Registry = prometheus.NewRegistry()
	}
	h := &handler{b: b, opts: opts, mux: http.NewServeMux(), origins: http.NewCrossOriginProtection(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mqtt_sticky_api_requests_total", Help: "Management API requests, by route and status code.",
		}, []string{"route", "code"})}
	opts.Registry.MustRegister(h.requests)

	h.handle("GET /v1/clusters", needToken, h.listClusters)
	h.handle("GET /v1/listeners", needToken, h.listListeners)
	h.handle("GET /v1/clusters/{name}/endpoints", needToken, h.listEndpoints)
	h.handle("PUT /v1/clusters/{name}/endpoints", needToken|jsonBody, h.setEndpoints)
	h.handle("POST /v1/clusters/{name}/endpoints", needToken|jsonBody, h.addEndpoint)
	h.handle("DELETE /v1/clusters/{name}/endpoints/{endpoint}", needToken, h.removeEndpoint)
	h.handle("GET /v1/status", needToken, h.status)
	h.handle("GET /healthz", public, func(_ http.ResponseWriter, r *http.Request) (int, any) {
		// Degraded is still 200: the control plane serves Envoy, and
		// restarting it would not bring a dependency back.
		health := Health{Status: "ok", Version: h.b.Version(), Degraded: h.b.Degraded(r.Context())}
		if len(health.Degraded) > 0 {
			health.Status = "degraded"
		}
		return http.StatusOK, health
	})
	metricsAuth := public
	if opts.MetricsNeedToken {
		metricsAuth = needToken
	}
	metrics := promhttp.HandlerFor(opts.Registry, promhttp.HandlerOpts{})
	h.mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		if metricsAuth == needToken && !h.authorized(r) {
			h.respond(w, r, "GET /metrics", http.StatusUnauthorized, h.unauthorized(w, r))
			return
		}
		metrics.ServeHTTP(w, r)
	})
	h.mux.HandleFunc("GET /{$}", h.statusPageHandler)
	h.mux.HandleFunc("GET /openapi.yaml", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/yaml")
		w.Write(Spec)
	})
	return h
}

// handle registers a route whose function answers with a status and a
// JSON body.
func (h *handler) handle(pattern string, flags int, fn func(w http.ResponseWriter, r *http.Request) (int, any)) {
	h.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		var code int
		var body any
		switch {
		case flags&needToken != 0 && !h.authorized(r):
			code, body = http.StatusUnauthorized, h.unauthorized(w, r)
		case flags&jsonBody != 0 && !isJSON(r):
			code, body = http.StatusUnsupportedMediaType, Error{fmt.Sprintf("Content-Type %q: send the body as Content-Type: application/json", r.Header.Get("Content-Type"))}
		default:
			code, body = fn(w, r)
		}
		h.respond(w, r, pattern, code, body)
	})
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if err := h.checkHost(r); err != nil {
		h.respond(w, r, "unmatched", http.StatusForbidden, Error{err.Error()})
		return
	}
	answer, pattern := h.mux.Handler(r)
	if pattern == "" {
		h.unrouted(w, r, answer)
		return
	}
	if err := h.origins.Check(r); err != nil {
		h.respond(w, r, pattern, http.StatusForbidden, Error{"cross-origin request refused: the management API takes changes only from its own origin or from non-browser clients"})
		return
	}
	h.mux.ServeHTTP(w, r) // sets the path values, which Handler does not
}

// unrouted answers a request no route takes, in JSON: 404, or 405 with
// the Allow header when the path exists for other methods. The mux
// decides which, as it would without this wrapper.
func (h *handler) unrouted(w http.ResponseWriter, r *http.Request, muxAnswer http.Handler) {
	probe := &statusProbe{header: http.Header{}}
	muxAnswer.ServeHTTP(probe, r)
	if probe.code == http.StatusMethodNotAllowed {
		allow := probe.header.Get("Allow")
		w.Header().Set("Allow", allow)
		h.respond(w, r, "unmatched", http.StatusMethodNotAllowed, Error{fmt.Sprintf("method %s is not allowed on %s: use %s", r.Method, r.URL.Path, allow)})
		return
	}
	h.respond(w, r, "unmatched", http.StatusNotFound, Error{fmt.Sprintf("no route for %s %s: see /openapi.yaml", r.Method, r.URL.Path)})
}

// statusProbe records what the mux would answer, and discards the body.
type statusProbe struct {
	header http.Header
	code   int
}

func (p *statusProbe) Header() http.Header         { return p.header }
func (p *statusProbe) Write(b []byte) (int, error) { return len(b), nil }
func (p *statusProbe) WriteHeader(code int)        { p.code = code }

// checkHost protects a tokenless API from DNS rebinding: a web page whose
// domain resolves to 127.0.0.1 would otherwise reach it from a browser on
// this machine. With a token, the token protects it.
func (h *handler) checkHost(r *http.Request) error {
	if h.opts.Token != "" {
		return nil
	}
	host := r.Host
	if hp, _, err := net.SplitHostPort(host); err == nil {
		host = hp
	}
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	if host == "localhost" {
		return nil
	}
	if a, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil && a.Unmap().IsLoopback() {
		return nil
	}
	if listen, _, err := net.SplitHostPort(h.opts.ListenAddr); err == nil && listen != "" && strings.EqualFold(strings.Trim(listen, "[]"), strings.Trim(host, "[]")) {
		return nil
	}
	return fmt.Errorf("Host %q refused: without a token, the API answers only requests addressed to a loopback name or address", r.Host)
}

// authorized checks the token, sent as a bearer token or, by a browser,
// as the password of HTTP Basic auth. The scheme name is case-insensitive
// (RFC 9110, section 11.1).
func (h *handler) authorized(r *http.Request) bool {
	if h.opts.Token == "" {
		return true
	}
	scheme, token, ok := strings.Cut(strings.TrimSpace(r.Header.Get("Authorization")), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		_, token, ok = r.BasicAuth()
	}
	return ok && subtle.ConstantTimeCompare([]byte(strings.TrimSpace(token)), []byte(h.opts.Token)) == 1
}

// unauthorized sets the challenge a 401 must carry (RFC 6750).
func (h *handler) unauthorized(w http.ResponseWriter, r *http.Request) Error {
	challenge := `Bearer realm="mqtt-sticky"`
	if r.Header.Get("Authorization") != "" {
		challenge += `, error="invalid_token"`
	}
	w.Header().Set("WWW-Authenticate", challenge)
	return Error{"missing or wrong bearer token: send Authorization: Bearer <token>"}
}

func isJSON(r *http.Request) bool {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	return err == nil && mt == "application/json"
}

// respond counts the request and writes the answer. A body that carries a
// version gets it as its ETag, for If-Match on the next change.
func (h *handler) respond(w http.ResponseWriter, r *http.Request, route string, code int, body any) {
	h.requests.WithLabelValues(route, strconv.Itoa(code)).Inc()
	if v, ok := body.(versioned); ok && code < 300 {
		w.Header().Set("ETag", ETag(v.versionOf()))
	}
	writeJSON(w, code, body)
}

type versioned interface{ versionOf() uint64 }

func (l EndpointList) versionOf() uint64 { return l.Version }
func (l ClusterList) versionOf() uint64  { return l.Version }
func (l ListenerList) versionOf() uint64 { return l.Version }
func (s Status) versionOf() uint64       { return s.Version }

// ETag is the entity tag of everything served at a version.
func ETag(version uint64) string { return `"` + strconv.FormatUint(version, 10) + `"` }

// errPrecondition marks an If-Match header that is not a version's ETag.
var errPrecondition = errors.New("If-Match")

// ifVersion reads If-Match: the version a change is made against, or
// control.AnyVersion when there is none (or "*"). One strong ETag is
// accepted; the API never hands out weak ones or lists.
func ifVersion(r *http.Request) (uint64, error) {
	v := strings.TrimSpace(r.Header.Get("If-Match"))
	if v == "" || v == "*" {
		return control.AnyVersion, nil
	}
	tag, opened := strings.CutPrefix(v, `"`)
	tag, closed := strings.CutSuffix(tag, `"`)
	n, err := strconv.ParseUint(tag, 10, 64)
	if !opened || !closed || err != nil || n == control.AnyVersion {
		return 0, fmt.Errorf("%w %s: send one ETag as the API gave it, like If-Match: \"7\"", errPrecondition, v)
	}
	return n, nil
}

func (h *handler) listClusters(http.ResponseWriter, *http.Request) (int, any) {
	m, version := h.b.Served()
	out := ClusterList{Version: version, Clusters: []Cluster{}}
	for _, c := range m.Clusters {
		out.Clusters = append(out.Clusters, Cluster{
			Name:          c.Name,
			LBPolicy:      string(c.LBPolicy),
			ProxyProtocol: string(c.ProxyProtocol),
			HealthCheck:   string(c.HealthCheck.Type),
			Endpoints:     len(c.Endpoints),
			Discovered:    c.Discovered(),
			UpstreamTLS:   c.UpstreamTLS,
		})
	}
	return http.StatusOK, out
}

func (h *handler) listListeners(http.ResponseWriter, *http.Request) (int, any) {
	m, version := h.b.Served()
	out := ListenerList{Version: version, Listeners: []Listener{}}
	for _, l := range m.Listeners {
		out.Listeners = append(out.Listeners, Listener{Name: l.Name, Address: l.Address, Port: l.Port, Cluster: l.Cluster, TLS: l.TLS, Filter: l.Filter})
	}
	return http.StatusOK, out
}

func (h *handler) listEndpoints(_ http.ResponseWriter, r *http.Request) (int, any) {
	name := r.PathValue("name")
	eps, version, err := h.b.Endpoints(name)
	if err != nil {
		return h.errorStatus(r, err)
	}
	return http.StatusOK, EndpointList{Cluster: name, Version: version, Endpoints: eps}
}

func (h *handler) setEndpoints(w http.ResponseWriter, r *http.Request) (int, any) {
	var set EndpointSet
	if err := decode(w, r, &set); err != nil {
		return h.errorStatus(r, err)
	}
	if set.Endpoints == nil {
		return http.StatusBadRequest, Error{`body must be {"endpoints": [...]}; send [] to remove every endpoint`}
	}
	return h.changed(r, http.StatusOK, func(ifVersion uint64) (uint64, error) {
		return h.b.SetEndpoints(r.Context(), r.PathValue("name"), set.Endpoints, ifVersion)
	})
}

func (h *handler) addEndpoint(w http.ResponseWriter, r *http.Request) (int, any) {
	var e model.Endpoint
	if err := decode(w, r, &e); err != nil {
		return h.errorStatus(r, err)
	}
	return h.changed(r, http.StatusCreated, func(ifVersion uint64) (uint64, error) {
		return h.b.AddEndpoint(r.Context(), r.PathValue("name"), e, ifVersion)
	})
}

func (h *handler) removeEndpoint(_ http.ResponseWriter, r *http.Request) (int, any) {
	e, err := model.ParseEndpointRef(r.PathValue("endpoint"))
	if err != nil {
		return h.errorStatus(r, err)
	}
	return h.changed(r, http.StatusOK, func(ifVersion uint64) (uint64, error) {
		return h.b.RemoveEndpoint(r.Context(), r.PathValue("name"), e, ifVersion)
	})
}

// changed runs a change, conditional on If-Match, and answers with the
// cluster's endpoints after it.
func (h *handler) changed(r *http.Request, okCode int, change func(ifVersion uint64) (uint64, error)) (int, any) {
	start := time.Now()
	expect, err := ifVersion(r)
	if err != nil {
		return h.errorStatus(r, err)
	}
	version, err := change(expect)
	if err != nil {
		return h.errorStatus(r, err)
	}
	name := r.PathValue("name")
	eps, _, err := h.b.Endpoints(name)
	if err != nil {
		return h.errorStatus(r, err)
	}
	h.opts.Logger.Info("api: endpoints changed", "cluster", name, "version", version, "endpoints", len(eps), "took", time.Since(start))
	return okCode, EndpointList{Cluster: name, Version: version, Endpoints: eps}
}

func (h *handler) status(_ http.ResponseWriter, r *http.Request) (int, any) {
	return http.StatusOK, h.b.Status(r.Context())
}

// Body errors.
var (
	errBadJSON  = errors.New("malformed JSON")
	errTooLarge = errors.New("request body too large")
)

// decode reads a JSON body of at most MaxBody bytes strictly: one value,
// known keys only, spelled exactly, each once.
func decode(w http.ResponseWriter, r *http.Request, v any) error {
	if r.ContentLength > MaxBody {
		return fmt.Errorf("%w: %d bytes, the limit is %d", errTooLarge, r.ContentLength, MaxBody)
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBody))
	if mbe := (*http.MaxBytesError)(nil); errors.As(err, &mbe) {
		return fmt.Errorf("%w: the limit is %d bytes", errTooLarge, mbe.Limit)
	}
	if err != nil {
		return fmt.Errorf("%w: reading the body: %v", errBadJSON, err)
	}
	if err := strictjson.Unmarshal(body, v); err != nil {
		return fmt.Errorf("%w: %v", errBadJSON, err)
	}
	return nil
}

// errorStatus maps an error to its status. A 500 says nothing about the
// server (its error may name files and hosts); the log has the details.
func (h *handler) errorStatus(r *http.Request, err error) (int, any) {
	code := http.StatusInternalServerError
	switch {
	case errors.Is(err, errBadJSON), errors.Is(err, model.ErrInvalid), errors.Is(err, errPrecondition):
		code = http.StatusBadRequest
	case errors.Is(err, errTooLarge):
		code = http.StatusRequestEntityTooLarge
	case errors.Is(err, control.ErrNotFound):
		code = http.StatusNotFound
	case errors.Is(err, control.ErrVersionMismatch):
		code = http.StatusPreconditionFailed
	case errors.Is(err, control.ErrConflict), errors.Is(err, control.ErrVersionExhausted):
		code = http.StatusConflict
	case errors.Is(err, store.ErrStale):
		code = http.StatusConflict
		err = errors.New("another control-plane replica changed the endpoints at the same time: read them again and retry")
	case errors.Is(err, store.ErrUnavailable):
		code = http.StatusServiceUnavailable
	}
	if code == http.StatusInternalServerError {
		h.opts.Logger.Error("api: request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		return code, Error{"internal error; the control plane's log has the details. The change may not have been applied: read the endpoints again"}
	}
	h.opts.Logger.Info("api: request refused", "method", r.Method, "path", r.URL.Path, "code", code, "err", err)
	return code, Error{err.Error()}
}

func writeJSON(w http.ResponseWriter, code int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(body)
}
