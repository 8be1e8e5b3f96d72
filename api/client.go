package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/mqtt-sticky/mqtt-sticky/xds/control"
	"github.com/mqtt-sticky/mqtt-sticky/xds/model"
)

// Client calls the management API.
type Client struct {
	BaseURL string // e.g. http://127.0.0.1:8080
	Token   string
	HTTP    *http.Client
}

// APIError is a non-2xx answer.
type APIError struct {
	Status  int
	Message string
}

func (e *APIError) Error() string { return fmt.Sprintf("%s (HTTP %d)", e.Message, e.Status) }

func (c *Client) do(ctx context.Context, method, path string, ifVersion uint64, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(c.BaseURL, "/")+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	if ifVersion != control.AnyVersion {
		req.Header.Set("If-Match", ETag(ifVersion))
	}
	hc := c.HTTP
	if hc == nil {
		hc = &http.Client{Timeout: 10 * time.Second}
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach the mqtt-sticky API at %s: %w (is `mqtt-sticky serve` running? set --api or MQTT_STICKY_API)", c.BaseURL, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		var e Error
		if json.Unmarshal(data, &e) != nil || e.Error == "" {
			e.Error = strings.TrimSpace(string(data))
		}
		return &APIError{Status: resp.StatusCode, Message: e.Error}
	}
	if out != nil {
		return json.Unmarshal(data, out)
	}
	return nil
}

func endpointsPath(cluster string) string {
	return "/v1/clusters/" + url.PathEscape(cluster) + "/endpoints"
}

// Clusters lists the clusters.
func (c *Client) Clusters(ctx context.Context) (*ClusterList, error) {
	var out ClusterList
	return &out, c.do(ctx, http.MethodGet, "/v1/clusters", control.AnyVersion, nil, &out)
}

// Listeners lists the listeners.
func (c *Client) Listeners(ctx context.Context) (*ListenerList, error) {
	var out ListenerList
	return &out, c.do(ctx, http.MethodGet, "/v1/listeners", control.AnyVersion, nil, &out)
}

// Endpoints lists a cluster's endpoints.
func (c *Client) Endpoints(ctx context.Context, cluster string) (*EndpointList, error) {
	var out EndpointList
	return &out, c.do(ctx, http.MethodGet, endpointsPath(cluster), control.AnyVersion, nil, &out)
}

// SetEndpoints replaces a cluster's endpoints. With ifVersion other than
// control.AnyVersion, it sends If-Match, and the change applies only if
// the served version is still ifVersion (otherwise an APIError with
// status 412).
func (c *Client) SetEndpoints(ctx context.Context, cluster string, eps []model.Endpoint, ifVersion uint64) (*EndpointList, error) {
	var out EndpointList
	if eps == nil {
		eps = []model.Endpoint{}
	}
	return &out, c.do(ctx, http.MethodPut, endpointsPath(cluster), ifVersion, EndpointSet{Endpoints: eps}, &out)
}

// AddEndpoint adds one endpoint. See SetEndpoints for ifVersion.
func (c *Client) AddEndpoint(ctx context.Context, cluster string, e model.Endpoint, ifVersion uint64) (*EndpointList, error) {
	var out EndpointList
	return &out, c.do(ctx, http.MethodPost, endpointsPath(cluster), ifVersion, e, &out)
}

// RemoveEndpoint removes the endpoint e names (model.ParseEndpointRef):
// by address and port, by name, or by both. See SetEndpoints for
// ifVersion.
func (c *Client) RemoveEndpoint(ctx context.Context, cluster string, e model.Endpoint, ifVersion uint64) (*EndpointList, error) {
	ref := e.Name
	if e.Address != "" {
		e.Weight = 0
		ref = e.String()
	}
	var out EndpointList
	return &out, c.do(ctx, http.MethodDelete, endpointsPath(cluster)+"/"+url.PathEscape(ref), ifVersion, nil, &out)
}

// Status returns the nodes' status.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	var out Status
	return &out, c.do(ctx, http.MethodGet, "/v1/status", control.AnyVersion, nil, &out)
}

// Health returns the control plane's health and its dependencies'.
func (c *Client) Health(ctx context.Context) (*Health, error) {
	var out Health
	return &out, c.do(ctx, http.MethodGet, "/healthz", control.AnyVersion, nil, &out)
}
