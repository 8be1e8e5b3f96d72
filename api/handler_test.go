package api

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mqtt-sticky/mqtt-sticky/contract"
	"github.com/mqtt-sticky/mqtt-sticky/xds/control"
	"github.com/mqtt-sticky/mqtt-sticky/xds/discovery"
	"github.com/mqtt-sticky/mqtt-sticky/xds/model"
	"github.com/mqtt-sticky/mqtt-sticky/xds/server"
	"github.com/mqtt-sticky/mqtt-sticky/xds/store"
)

type fixture struct {
	ts     *httptest.Server
	router routers.Router
	st     *control.Controller
}

func init() {
	// The status page's HTML and its 401's text are checked as strings.
	openapi3filter.RegisterBodyDecoder("text/html", openapi3filter.PlainBodyDecoder)
}

func newFixture(t *testing.T, token string) *fixture {
	t.Helper()
	return newFixtureWith(t, model.Default(), store.NewFile(""), Options{Token: token})
}

// newFixtureWith serves the API over a controller of m on st, with opts.
func newFixtureWith(t *testing.T, m *model.Model, st store.Store, opts Options) *fixture {
	t.Helper()
	srv := server.New(server.Options{Registerer: prometheus.NewRegistry()})
	ctl := control.New(m, st, srv, nil)
	if err := ctl.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if opts.Registry == nil {
		opts.Registry = prometheus.NewRegistry()
	}
	ts := httptest.NewServer(NewHandler(Fleet{Controller: ctl, Server: srv}, opts))
	t.Cleanup(ts.Close)

	doc, err := openapi3.NewLoader().LoadFromData(Spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("openapi.yaml is not a valid OpenAPI document: %v", err)
	}
	doc.Servers = openapi3.Servers{{URL: ts.URL}}
	router, err := legacy.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{ts: ts, router: router, st: ctl}
}

// call sends a request and checks the response against openapi.yaml. When
// validRequest is set, the request is checked against it too. A token
// goes as a bearer token, or as a Basic auth password when it starts
// with "basic:".
func (f *fixture) call(t *testing.T, method, path, token, body string, validRequest bool) (int, []byte) {
	t.Helper()
	req := f.request(method, path, token, body)
	resp, data := f.send(t, req, body, validRequest)
	return resp.StatusCode, data
}

// request builds a request as the CLI sends it: a JSON body, the token.
func (f *fixture) request(method, path, token, body string) *http.Request {
	req, _ := http.NewRequest(method, f.ts.URL+path, strings.NewReader(body))
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if password, ok := strings.CutPrefix(token, "basic:"); ok {
		req.SetBasicAuth("operator", password)
	} else if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	return req
}

// send sends req (whose body is body) and checks the response against
// openapi.yaml, and the request too when validRequest is set.
func (f *fixture) send(t *testing.T, req *http.Request, body string, validRequest bool) (*http.Response, []byte) {
	t.Helper()
	route, params, err := f.router.FindRoute(req)
	if err != nil {
		t.Fatalf("%s %s is not in openapi.yaml: %v", req.Method, req.URL.Path, err)
	}
	in := &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route,
		Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc}}
	if validRequest {
		if err := openapi3filter.ValidateRequest(context.Background(), in); err != nil {
			t.Fatalf("request %s %s does not match openapi.yaml: %v", req.Method, req.URL.Path, err)
		}
		// The validator may have rewritten the body with the defaults.
		req.Body, req.ContentLength = io.NopCloser(strings.NewReader(body)), int64(len(body))
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	out := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: resp.StatusCode, Header: resp.Header,
		Body: io.NopCloser(bytes.NewReader(data))}
	if err := openapi3filter.ValidateResponse(context.Background(), out); err != nil {
		t.Errorf("%s %s: response %d does not match openapi.yaml: %v\n%s", req.Method, req.URL.Path, resp.StatusCode, err, data)
	}
	return resp, data
}

// The listeners' view shows TLS settings and the filter config, and a
// cluster's upstream TLS, as openapi.yaml defines them.
func TestListenersAndClustersShowTLS(t *testing.T) {
	m := model.Default()
	m.Listeners = append(m.Listeners, model.Listener{Name: "mqtts", Port: 8883, Cluster: "brokers",
		TLS:    &model.TLS{CertFile: "/etc/envoy/tls/server.crt", KeyFile: "/etc/envoy/tls/server.key", ClientCAFile: "/etc/envoy/ca/ca.crt", RequireClientCert: true, ALPN: []string{"mqtt"}},
		Filter: contract.Config{IdentityBinding: contract.BindingClientID, ProxyProtocolCN: true}})
	m.Clusters[0].UpstreamTLS = &model.UpstreamTLS{CAFile: "/etc/envoy/brokers/ca.crt", SNI: "emqx.example"}
	m.SetDefaults()
	f := newFixtureWith(t, m, store.NewFile(""), Options{})
	code, body := f.call(t, "GET", "/v1/listeners", "", "", true)
	var ll ListenerList
	if err := json.Unmarshal(body, &ll); err != nil || code != 200 || len(ll.Listeners) != 2 {
		t.Fatalf("list listeners: %d %s", code, body)
	}
	tls := ll.Listeners[1]
	if tls.TLS == nil || tls.TLS.MinVersion != model.TLS12 || !tls.TLS.RequireClientCert || tls.Filter.IdentityBinding != contract.BindingClientID || !tls.Filter.ProxyProtocolCN {
		t.Errorf("TLS listener as served: %s", body)
	}
	if ll.Listeners[0].TLS != nil || strings.Contains(string(body), "PRIVATE KEY") {
		t.Errorf("plaintext listener shows TLS, or key material leaked: %s", body)
	}
	code, body = f.call(t, "GET", "/v1/clusters", "", "", true)
	if code != 200 || !strings.Contains(string(body), `"sni": "emqx.example"`) {
		t.Errorf("clusters: %d %s", code, body)
	}
}

func TestEndpointLifecycle(t *testing.T) {
	f := newFixture(t, "")
	code, body := f.call(t, "GET", "/v1/clusters", "", "", true)
	if code != 200 || !strings.Contains(string(body), `"name": "brokers"`) {
		t.Fatalf("list clusters: %d %s", code, body)
	}
	code, body = f.call(t, "POST", "/v1/clusters/brokers/endpoints", "", `{"address":"127.0.0.1","port":18834,"weight":1}`, true)
	if code != 201 || !strings.Contains(string(body), `"port": 18834`) || !strings.Contains(string(body), `"version": 2`) {
		t.Fatalf("add: %d %s", code, body)
	}
	code, body = f.call(t, "DELETE", "/v1/clusters/brokers/endpoints/127.0.0.1:18834", "", "", true)
	if code != 200 || strings.Contains(string(body), "18834") {
		t.Fatalf("remove: %d %s", code, body)
	}
	code, body = f.call(t, "PUT", "/v1/clusters/brokers/endpoints", "", `{"endpoints":[{"address":"fd00::1","port":1883},{"address":"10.0.0.1","port":1883,"weight":3}]}`, true)
	var list EndpointList
	json.Unmarshal(body, &list)
	if code != 200 || len(list.Endpoints) != 2 || list.Endpoints[0].Address != "10.0.0.1" || list.Version != 4 {
		t.Fatalf("set: %d %s", code, body)
	}
	code, _ = f.call(t, "DELETE", "/v1/clusters/brokers/endpoints/[fd00::1]:1883", "", "", true)
	if code != 200 {
		t.Fatalf("remove IPv6: %d", code)
	}
	code, body = f.call(t, "GET", "/v1/status", "", "", true)
	if code != 200 || !strings.Contains(string(body), `"version": 5`) {
		t.Fatalf("status: %d %s", code, body)
	}
	if code, _ := f.call(t, "GET", "/healthz", "", "", true); code != 200 {
		t.Fatalf("healthz: %d", code)
	}
}

// Every invalid request gets a 4xx with a JSON message, and changes
// nothing: same endpoints, same version.
func TestInvalidRequestsChangeNothing(t *testing.T) {
	f := newFixture(t, "")
	before, _, _ := f.st.Endpoints("brokers")
	version := f.st.Version()
	tests := []struct {
		name, method, path, body string
		code                     int
		msg                      string
	}{
		{"malformed JSON", "POST", "/v1/clusters/brokers/endpoints", `{"address": "127.0.0.1", "port": `, 400, "malformed JSON"},
		{"unknown field", "POST", "/v1/clusters/brokers/endpoints", `{"adress": "127.0.0.1", "port": 1}`, 400, `unknown object member name "adress"`},
		{"hostname", "POST", "/v1/clusters/brokers/endpoints", `{"address": "broker-4.local", "port": 1883}`, 400, "is not an IP address"},
		{"port out of range", "POST", "/v1/clusters/brokers/endpoints", `{"address": "127.0.0.1", "port": 70000}`, 400, "out of range 1-65535"},
		{"port as string", "POST", "/v1/clusters/brokers/endpoints", `{"address": "127.0.0.1", "port": "1883"}`, 400, "malformed JSON"},
		{"weight", "POST", "/v1/clusters/brokers/endpoints", `{"address": "127.0.0.1", "port": 1883, "weight": 1000}`, 400, "weight 1000 must be between 1 and 128"},
		{"duplicate", "POST", "/v1/clusters/brokers/endpoints", `{"address": "127.0.0.1", "port": 18831}`, 409, "already in cluster"},
		{"unknown cluster", "POST", "/v1/clusters/nope/endpoints", `{"address": "127.0.0.1", "port": 1}`, 404, `cluster "nope"`},
		{"unknown cluster list", "GET", "/v1/clusters/nope/endpoints", "", 404, `cluster "nope"`},
		{"duplicate in set", "PUT", "/v1/clusters/brokers/endpoints", `{"endpoints":[{"address":"127.0.0.1","port":1},{"address":"127.0.0.1","port":1}]}`, 400, "listed twice"},
		{"set without list", "PUT", "/v1/clusters/brokers/endpoints", `{}`, 400, `body must be {"endpoints": [...]}`},
		{"bare list", "PUT", "/v1/clusters/brokers/endpoints", `[{"address":"127.0.0.1","port":1}]`, 400, "malformed JSON"},
		{"remove missing", "DELETE", "/v1/clusters/brokers/endpoints/127.0.0.1:9", "", 404, "is not in cluster"},
		{"remove bad form", "DELETE", "/v1/clusters/brokers/endpoints/127.0.0.1", "", 400, "want ADDRESS:PORT"},
		{"bad name", "POST", "/v1/clusters/brokers/endpoints", `{"name":"b 1","address":"127.0.0.1","port":2}`, 400, `name "b 1" must be`},
		{"remove unknown name", "DELETE", "/v1/clusters/brokers/endpoints/emqx-9", "", 404, "endpoint emqx-9 is not in cluster"},
		{"remove with weight", "DELETE", "/v1/clusters/brokers/endpoints/127.0.0.1:18831=2", "", 400, "without a weight"},
		{"trailing data", "POST", "/v1/clusters/brokers/endpoints", `{"address":"127.0.0.1","port":2} {}`, 400, "after top-level value"},
		// Issue 9: encoding/json's Decoder took these.
		{"trailing brackets", "POST", "/v1/clusters/brokers/endpoints", `{"address":"127.0.0.1","port":2}}}]]`, 400, "after top-level value"},
		{"trailing brackets on a set", "PUT", "/v1/clusters/brokers/endpoints", `{"endpoints":[]}}}]]`, 400, "after top-level value"},
		{"key in another case", "POST", "/v1/clusters/brokers/endpoints", `{"Address":"127.0.0.1","PORT":2}`, 400, `unknown object member name "Address"`},
		{"duplicate key", "POST", "/v1/clusters/brokers/endpoints", `{"address":"127.0.0.1","port":2,"port":3}`, 400, `duplicate object member name "port"`},
		{"duplicate list", "PUT", "/v1/clusters/brokers/endpoints", `{"endpoints":[],"endpoints":[{"address":"127.0.0.1","port":2}]}`, 400, `duplicate object member name "endpoints"`},
		{"broadcast", "POST", "/v1/clusters/brokers/endpoints", `{"address":"255.255.255.255","port":1883}`, 400, "it is the broadcast address"},
		{"link-local", "POST", "/v1/clusters/brokers/endpoints", `{"address":"169.254.169.254","port":80}`, 400, "it is link-local"},
		{"IPv6 link-local", "POST", "/v1/clusters/brokers/endpoints", `{"address":"fe80::1","port":1883}`, 400, "it is link-local"},
		{"IPv4-mapped", "POST", "/v1/clusters/brokers/endpoints", `{"address":"::ffff:127.0.0.1","port":18831}`, 400, "IPv4-mapped IPv6 address: write it as 127.0.0.1"},
		{"IPv4-mapped in a set", "PUT", "/v1/clusters/brokers/endpoints", `{"endpoints":[{"address":"127.0.0.1","port":18831},{"address":"::ffff:127.0.0.1","port":18831}]}`, 400, "IPv4-mapped"},
		{"IPv4-mapped removal", "DELETE", "/v1/clusters/brokers/endpoints/[::ffff:127.0.0.1]:18831", "", 400, "IPv4-mapped"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body := f.call(t, tt.method, tt.path, "", tt.body, false)
			var e Error
			if code != tt.code || json.Unmarshal(body, &e) != nil || !strings.Contains(e.Error, tt.msg) {
				t.Errorf("%d %s; want %d with %q", code, body, tt.code, tt.msg)
			}
		})
	}
	after, _, _ := f.st.Endpoints("brokers")
	if f.st.Version() != version || len(after) != len(before) {
		t.Errorf("invalid requests changed the store: version %d -> %d, endpoints %v -> %v", version, f.st.Version(), before, after)
	}
}

func TestBearerToken(t *testing.T) {
	f := newFixture(t, "s3cret")
	if code, _ := f.call(t, "GET", "/v1/clusters", "", "", false); code != 401 {
		t.Errorf("no token: %d, want 401", code)
	}
	if code, _ := f.call(t, "GET", "/v1/clusters", "wrong", "", false); code != 401 {
		t.Errorf("wrong token: %d, want 401", code)
	}
	if code, _ := f.call(t, "POST", "/v1/clusters/brokers/endpoints", "wrong", `{"address":"127.0.0.1","port":9}`, false); code != 401 {
		t.Errorf("wrong token on a change: %d, want 401", code)
	}
	if eps, _, _ := f.st.Endpoints("brokers"); len(eps) != 3 {
		t.Errorf("an unauthorised change went through: %v", eps)
	}
	if code, _ := f.call(t, "GET", "/v1/clusters", "s3cret", "", true); code != 200 {
		t.Errorf("right token: %d", code)
	}
	if code, _ := f.call(t, "GET", "/healthz", "", "", true); code != 200 {
		t.Errorf("healthz needs no token: %d", code)
	}
}

// The status page: HTML with the clusters and brokers, behind the token
// like /v1; a browser gives the token as the Basic auth password.
func TestStatusPage(t *testing.T) {
	f := newFixture(t, "s3cret")
	code, body := f.call(t, "GET", "/", "basic:s3cret", "", true)
	page := string(body)
	for _, want := range []string{"<title>mqtt-sticky status</title>", `id="brokers-brokers"`, "127.0.0.1:18831", "127.0.0.1:18833", "maglev", "no Envoy has connected"} {
		if !strings.Contains(page, want) {
			t.Errorf("status page lacks %q", want)
		}
	}
	if code != 200 || strings.Contains(page, "http://") || strings.Contains(page, "https://") || strings.Contains(page, "<script") {
		t.Errorf("status page: %d, or it loads from elsewhere or runs a script:\n%s", code, page)
	}
	if code, _ := f.call(t, "GET", "/", "s3cret", "", true); code != 200 {
		t.Errorf("bearer token: %d", code)
	}
	for _, token := range []string{"", "basic:wrong", "wrong"} {
		req, _ := http.NewRequest("GET", f.ts.URL+"/", nil)
		if p, ok := strings.CutPrefix(token, "basic:"); ok {
			req.SetBasicAuth("operator", p)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 401 || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Basic ") {
			t.Errorf("token %q: %d, WWW-Authenticate %q; want 401 asking for Basic auth", token, resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
		}
	}
	if code, _ := f.call(t, "GET", "/v1/clusters", "basic:s3cret", "", true); code != 200 {
		t.Errorf("/v1 with the token as Basic auth password: %d", code)
	}
	resp, err := http.Get(f.ts.URL + "/no-such-page")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Errorf("another path: %d, want 404", resp.StatusCode)
	}
}

func TestMetricsAndSpec(t *testing.T) {
	f := newFixture(t, "")
	f.call(t, "GET", "/v1/clusters", "", "", true)
	resp, err := http.Get(f.ts.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	data, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(data), `mqtt_sticky_api_requests_total{code="200",route="GET /v1/clusters"} 1`) {
		t.Errorf("/metrics lacks the request counter:\n%s", data)
	}
	resp, err = http.Get(f.ts.URL + "/openapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	data, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if !bytes.Equal(data, Spec) {
		t.Error("/openapi.yaml does not serve the embedded spec")
	}
}

func TestClient(t *testing.T) {
	f := newFixture(t, "tok")
	c := &Client{BaseURL: f.ts.URL, Token: "tok"}
	ctx := context.Background()
	if _, err := c.AddEndpoint(ctx, "brokers", model.Endpoint{Address: "127.0.0.1", Port: 18834}, control.AnyVersion); err != nil {
		t.Fatal(err)
	}
	list, err := c.RemoveEndpoint(ctx, "brokers", model.Endpoint{Address: "127.0.0.1", Port: 18831}, 2)
	if err != nil || len(list.Endpoints) != 3 || list.Version != 3 {
		t.Fatalf("%v %v", list, err)
	}
	_, err = c.AddEndpoint(ctx, "brokers", model.Endpoint{Address: "127.0.0.1", Port: 18834}, control.AnyVersion)
	if e, ok := err.(*APIError); !ok || e.Status != 409 {
		t.Errorf("duplicate add: %v", err)
	}
	_, err = c.SetEndpoints(ctx, "brokers", nil, 2)
	if e, ok := err.(*APIError); !ok || e.Status != 412 {
		t.Errorf("stale set: %v", err)
	}
	if _, err := (&Client{BaseURL: f.ts.URL}).Clusters(ctx); err == nil || !strings.Contains(err.Error(), "HTTP 401") {
		t.Errorf("no token: %v", err)
	}
}

// Names: an endpoint added with a name is listed with it, a second one
// with the same name is a conflict, and it can be removed by name.
func TestEndpointNames(t *testing.T) {
	f := newFixture(t, "")
	if code, body := f.call(t, "POST", "/v1/clusters/brokers/endpoints", "", `{"name":"emqx-3","address":"127.0.0.1","port":18834,"weight":1}`, true); code != 201 || !strings.Contains(string(body), `"name": "emqx-3"`) {
		t.Fatalf("add named: %d %s", code, body)
	}
	if code, body := f.call(t, "POST", "/v1/clusters/brokers/endpoints", "", `{"name":"emqx-3","address":"127.0.0.1","port":18835,"weight":1}`, true); code != 409 || !strings.Contains(string(body), `the name \"emqx-3\" is already used`) {
		t.Errorf("second emqx-3: %d %s", code, body)
	}
	c := &Client{BaseURL: f.ts.URL}
	list, err := c.RemoveEndpoint(context.Background(), "brokers", model.Endpoint{Name: "emqx-3"}, control.AnyVersion)
	if err != nil || len(list.Endpoints) != 3 {
		t.Errorf("remove by name: %v %v", list, err)
	}
}

// A discovered cluster refuses hand edits with 409 and a message that says
// where its endpoints come from; /v1/status lists its discovery status.
func TestDiscoveredClusterRefusesEdits(t *testing.T) {
	base := model.Default()
	base.Clusters[0].Endpoints = nil
	base.Clusters[0].Discovery = &model.Discovery{DNS: &model.DNSDiscovery{Name: "brokers.example.com", Port: 1883, Resolver: "127.0.0.1:9"}}
	base.SetDefaults()
	srv := server.New(server.Options{Registerer: prometheus.NewRegistry()})
	ctl := control.New(base, store.NewFile(""), srv, nil)
	if err := ctl.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	disc, err := discovery.New(base, ctl, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(NewHandler(Fleet{Controller: ctl, Server: srv, Discovery: disc}, Options{Registry: prometheus.NewRegistry()}))
	defer ts.Close()
	for _, req := range []struct{ method, path, body string }{
		{"POST", "/v1/clusters/brokers/endpoints", `{"address":"127.0.0.1","port":1}`},
		{"PUT", "/v1/clusters/brokers/endpoints", `{"endpoints":[]}`},
		{"DELETE", "/v1/clusters/brokers/endpoints/127.0.0.1:1", ""},
	} {
		r, _ := http.NewRequest(req.method, ts.URL+req.path, strings.NewReader(req.body))
		if req.body != "" {
			r.Header.Set("Content-Type", "application/json")
		}
		resp, err := http.DefaultClient.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 409 || !strings.Contains(string(body), "takes its endpoints from DNS discovery (brokers.example.com): change the DNS records, not the API") {
			t.Errorf("%s %s: %d %s", req.method, req.path, resp.StatusCode, body)
		}
	}
	st, err := (&Client{BaseURL: ts.URL}).Status(context.Background())
	if err != nil || len(st.Clusters) != 1 || st.Clusters[0].Discovery == nil || st.Clusters[0].Discovery.Name != "brokers.example.com" {
		t.Errorf("status: %+v %v", st, err)
	}
}
