package api

import (
	"bytes"
	"context"
	_ "embed"
	"html/template"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/mqtt-sticky/mqtt-sticky/xds/discovery"
	"github.com/mqtt-sticky/mqtt-sticky/xds/health"
	"github.com/mqtt-sticky/mqtt-sticky/xds/model"
	"github.com/mqtt-sticky/mqtt-sticky/xds/server"
)

// The status page at /: read-only HTML of what GET /v1/status and the
// served configuration say, with no script and nothing loaded from
// elsewhere.
//
//go:embed status.html
var statusHTML string

var statusTemplate = template.Must(template.New("status").Parse(statusHTML))

// resourceTypes are the xDS resource types a node's row shows, in order.
var resourceTypes = []string{"listeners", "filters", "clusters", "endpoints"}

type statusPage struct {
	Version   uint64
	Generated time.Time
	Clusters  []pageCluster
	Nodes     []pageNode
	Types     []string
	Columns   int
}

type pageCluster struct {
	Name          string
	LBPolicy      model.LBPolicy
	ProxyProtocol model.ProxyProtocol
	HealthCheck   model.HealthCheckType
	Discovery     *discovery.Status
	Health        *health.ClusterHealth
	Brokers       []pageBroker
}

type pageBroker struct {
	Address     string
	Name        string
	Weight      uint32
	Connections uint64
	Healthy     int // nodes that see the broker healthy
	Nodes       []pageBrokerNode
}

type pageBrokerNode struct {
	Node string
	health.Host
}

type pageNode struct {
	server.NodeStatus
	Resources []pageResource // one per resourceTypes entry
}

type pageResource struct {
	server.ResourceStatus
	Rejecting bool // the node's answer to the version last sent was a NACK
	Current   bool // the node runs the version served
}

// statusPageData gathers the page from the backend: what GET /v1/status
// says, every replica's nodes included.
func statusPageData(ctx context.Context, b Backend, now time.Time) statusPage {
	st := b.Status(ctx)
	version := st.Version
	p := statusPage{Version: version, Generated: now, Types: resourceTypes, Columns: 4 + len(resourceTypes)}
	status := map[string]ClusterStatus{}
	for _, cs := range st.Clusters {
		status[cs.Name] = cs
	}
	if m := b.Model(); m != nil {
		for _, c := range m.Clusters {
			cs := status[c.Name]
			p.Clusters = append(p.Clusters, pageCluster{
				Name: c.Name, LBPolicy: c.LBPolicy, ProxyProtocol: c.ProxyProtocol, HealthCheck: c.HealthCheck.Type,
				Discovery: cs.Discovery, Health: cs.Health, Brokers: pageBrokers(c.Endpoints, cs.Brokers),
			})
		}
	}
	for _, n := range st.Nodes {
		pn := pageNode{NodeStatus: n}
		for _, typ := range resourceTypes {
			rs := n.Resources[typ]
			pn.Resources = append(pn.Resources, pageResource{
				ResourceStatus: rs,
				Rejecting:      rs.Rejecting(),
				Current:        rs.AckedVersion == strconv.FormatUint(version, 10),
			})
		}
		p.Nodes = append(p.Nodes, pn)
	}
	return p
}

// pageBrokers joins the configured endpoints with what the nodes report
// of them.
func pageBrokers(eps []model.Endpoint, reported []health.Broker) []pageBroker {
	byAddr := map[string]health.Broker{}
	for _, r := range reported {
		byAddr[r.Address] = r
	}
	out := []pageBroker{}
	for _, e := range eps {
		pb := pageBroker{Address: e.Key(), Name: e.Name, Weight: e.Weight}
		r := byAddr[pb.Address]
		pb.Connections = r.Connections
		for node, h := range r.Nodes {
			pb.Nodes = append(pb.Nodes, pageBrokerNode{Node: node, Host: h})
			if h.Healthy {
				pb.Healthy++
			}
		}
		slices.SortFunc(pb.Nodes, func(a, b pageBrokerNode) int { return strings.Compare(a.Node, b.Node) })
		out = append(out, pb)
	}
	return out
}

// statusPageHandler serves the page. It needs the token when one is set,
// as /v1 does; a browser sends it as the password of HTTP Basic auth,
// with any user name.
func (h *handler) statusPageHandler(w http.ResponseWriter, r *http.Request) {
	const route = "GET /{$}"
	if !h.authorized(r) {
		w.Header().Set("WWW-Authenticate", `Basic realm="mqtt-sticky", charset="UTF-8"`)
		h.requests.WithLabelValues(route, strconv.Itoa(http.StatusUnauthorized)).Inc()
		http.Error(w, "the status page needs the API token: give it as the password (any user name)", http.StatusUnauthorized)
		return
	}
	var buf bytes.Buffer
	if err := statusTemplate.Execute(&buf, statusPageData(r.Context(), h.b, time.Now())); err != nil {
		h.opts.Logger.Error("api: rendering the status page", "err", err)
		h.requests.WithLabelValues(route, strconv.Itoa(http.StatusInternalServerError)).Inc()
		http.Error(w, "rendering the status page failed", http.StatusInternalServerError)
		return
	}
	h.requests.WithLabelValues(route, strconv.Itoa(http.StatusOK)).Inc()
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	// Nothing on the page comes from elsewhere, and it is never framed.
	w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Write(buf.Bytes())
}
