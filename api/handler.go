package api

import (
	"bytes"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/mqtt-sticky/mqtt-sticky/xds/control"
	"github.com/mqtt-sticky/mqtt-sticky/xds/model"
	"github.com/mqtt-sticky/mqtt-sticky/xds/store"
)

// maxBody bounds request bodies: an endpoint set of thousands of brokers
// fits many times over.
const maxBody = 1 << 20

// Options configure the handler.
type Options struct {
	// Token, when set, must be presented as "Authorization: Bearer <token>"
	// on every /v1 request.
	Token    string
	Logger   *slog.Logger
	Registry *prometheus.Registry // serves /metrics; also counts requests
}

type handler struct {
	b        Backend
	opts     Options
	requests *prometheus.CounterVec
}

// NewHandler returns the API's HTTP handler.
func NewHandler(b Backend, opts Options) http.Handler {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Registry == nil {
		opts.Registry = prometheus.NewRegistry()
	}
	h := &handler{b: b, opts: opts, requests: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mqtt_sticky_api_requests_total", Help: "Management API requests, by route and status code.",
	}, []string{"route", "code"})}
	opts.Registry.MustRegister(h.requests)

	mux := http.NewServeMux()
	route := func(pattern string, auth bool, fn func(w http.ResponseWriter, r *http.Request) (int, any)) {
		mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
			code, body := http.StatusUnauthorized, any(Error{"missing or wrong bearer token: send Authorization: Bearer <token>"})
			if !auth || h.authorized(r) {
				code, body = fn(w, r)
			}
			h.requests.WithLabelValues(pattern, strconv.Itoa(code)).Inc()
			writeJSON(w, code, body)
		})
	}
	route("GET /v1/clusters", true, h.listClusters)
	route("GET /v1/listeners", true, h.listListeners)
	route("GET /v1/clusters/{name}/endpoints", true, h.listEndpoints)
	route("PUT /v1/clusters/{name}/endpoints", true, h.setEndpoints)
	route("POST /v1/clusters/{name}/endpoints", true, h.addEndpoint)
	route("DELETE /v1/clusters/{name}/endpoints/{endpoint}", true, h.removeEndpoint)
	route("GET /v1/status", true, h.status)
	route("GET /healthz", false, func(_ http.ResponseWriter, r *http.Request) (int, any) {
		// Degraded is still 200: the control plane serves Envoy, and
		// restarting it would not bring a dependency back.
		health := Health{Status: "ok", Version: h.b.Version(), Degraded: h.b.Degraded(r.Context())}
		if len(health.Degraded) > 0 {
			health.Status = "degraded"
		}
		return http.StatusOK, health
	})
	mux.HandleFunc("GET /{$}", h.statusPageHandler)
	route("/", false, func(_ http.ResponseWriter, r *http.Request) (int, any) {
		return http.StatusNotFound, Error{fmt.Sprintf("no route for %s %s: see /openapi.yaml", r.Method, r.URL.Path)}
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(opts.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /openapi.yaml", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/yaml")
		w.Write(Spec)
	})
	return mux
}

// authorized checks the token, sent as a bearer token or, by a browser,
// as the password of HTTP Basic auth.
func (h *handler) authorized(r *http.Request) bool {
	if h.opts.Token == "" {
		return true
	}
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		_, got, ok = r.BasicAuth()
	}
	return ok && subtle.ConstantTimeCompare([]byte(got), []byte(h.opts.Token)) == 1
}

func (h *handler) listClusters(http.ResponseWriter, *http.Request) (int, any) {
	m := h.b.Model()
	out := ClusterList{Version: h.b.Version(), Clusters: []Cluster{}}
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
	m := h.b.Model()
	out := ListenerList{Version: h.b.Version(), Listeners: []Listener{}}
	for _, l := range m.Listeners {
		out.Listeners = append(out.Listeners, Listener{Name: l.Name, Address: l.Address, Port: l.Port, Cluster: l.Cluster, TLS: l.TLS, Filter: l.Filter})
	}
	return http.StatusOK, out
}

func (h *handler) listEndpoints(_ http.ResponseWriter, r *http.Request) (int, any) {
	name := r.PathValue("name")
	eps, version, err := h.b.Endpoints(name)
	if err != nil {
		return errorStatus(err)
	}
	return http.StatusOK, EndpointList{Cluster: name, Version: version, Endpoints: eps}
}

func (h *handler) setEndpoints(_ http.ResponseWriter, r *http.Request) (int, any) {
	var set EndpointSet
	if err := decode(r, &set); err != nil {
		return errorStatus(err)
	}
	if set.Endpoints == nil {
		return http.StatusBadRequest, Error{`body must be {"endpoints": [...]}; send [] to remove every endpoint`}
	}
	return h.changed(r, http.StatusOK, func() (uint64, error) {
		return h.b.SetEndpoints(r.Context(), r.PathValue("name"), set.Endpoints)
	})
}

func (h *handler) addEndpoint(_ http.ResponseWriter, r *http.Request) (int, any) {
	var e model.Endpoint
	if err := decode(r, &e); err != nil {
		return errorStatus(err)
	}
	return h.changed(r, http.StatusCreated, func() (uint64, error) { return h.b.AddEndpoint(r.Context(), r.PathValue("name"), e) })
}

func (h *handler) removeEndpoint(_ http.ResponseWriter, r *http.Request) (int, any) {
	e, err := model.ParseEndpointRef(r.PathValue("endpoint"))
	if err != nil {
		return errorStatus(err)
	}
	return h.changed(r, http.StatusOK, func() (uint64, error) { return h.b.RemoveEndpoint(r.Context(), r.PathValue("name"), e) })
}

// changed runs a change and answers with the cluster's endpoints after it.
func (h *handler) changed(r *http.Request, okCode int, change func() (uint64, error)) (int, any) {
	start := time.Now()
	version, err := change()
	if err != nil {
		h.opts.Logger.Info("api: change refused", "method", r.Method, "path", r.URL.Path, "err", err)
		return errorStatus(err)
	}
	name := r.PathValue("name")
	eps, _, err := h.b.Endpoints(name)
	if err != nil {
		return errorStatus(err)
	}
	h.opts.Logger.Info("api: endpoints changed", "cluster", name, "version", version, "endpoints", len(eps), "took", time.Since(start))
	return okCode, EndpointList{Cluster: name, Version: version, Endpoints: eps}
}

func (h *handler) status(_ http.ResponseWriter, r *http.Request) (int, any) {
	return http.StatusOK, h.b.Status(r.Context())
}

// errBadJSON marks a body that could not be decoded.
var errBadJSON = errors.New("malformed JSON")

func decode(r *http.Request, v any) error {
	body, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, maxBody))
	if err != nil {
		return fmt.Errorf("%w: reading the body: %v", errBadJSON, err)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %v", errBadJSON, err)
	}
	if dec.More() {
		return fmt.Errorf("%w: data after the JSON value", errBadJSON)
	}
	return nil
}

func errorStatus(err error) (int, any) {
	code := http.StatusInternalServerError
	switch {
	case errors.Is(err, errBadJSON), errors.Is(err, model.ErrInvalid):
		code = http.StatusBadRequest
	case errors.Is(err, control.ErrNotFound):
		code = http.StatusNotFound
	case errors.Is(err, control.ErrConflict), errors.Is(err, store.ErrStale):
		code = http.StatusConflict
	case errors.Is(err, store.ErrUnavailable):
		code = http.StatusServiceUnavailable
	}
	return code, Error{err.Error()}
}

func writeJSON(w http.ResponseWriter, code int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(body)
}
