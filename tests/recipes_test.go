package tests

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	dmfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/dynamic_modules/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/wrapperspb"

	// Types the recipes' resources name in their Any fields.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/maglev/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/proxy_protocol/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/raw_buffer/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/mqtt-sticky/mqtt-sticky/contract"
	"github.com/mqtt-sticky/mqtt-sticky/internal/broker"
	"github.com/mqtt-sticky/mqtt-sticky/internal/envoyproc"
)

// This file holds what the Envoy Gateway and Istio recipe tests share: a
// recipe's listener and broker cluster, as its platform would hand them to
// Envoy, are run in the real Envoy 1.40 with the module, with only their
// addresses moved to loopback, and real clients must stay on their broker.

// recipeRun is one recipe's listener and cluster running in Envoy.
type recipeRun struct {
	envoy   *envoyproc.Process
	addr    string // the MQTT listener
	logPath string
}

// runRecipe points the listener at a free loopback port and the cluster
// at the brokers (STATIC instead of EDS, the load assignment's endpoints
// replaced, nothing else changed), writes them as a static bootstrap, and
// runs Envoy until every broker is healthy.
func runRecipe(t *testing.T, l *listenerv3.Listener, c *clusterv3.Cluster, brokers []*broker.Broker) *recipeRun {
	t.Helper()
	port := freePort(t)
	adminPort := freePort(t)
	l.Address = socketAddress("127.0.0.1", port)

	c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC}
	c.EdsClusterConfig = nil
	if c.LoadAssignment == nil {
		c.LoadAssignment = &endpointv3.ClusterLoadAssignment{}
	}
	c.LoadAssignment.ClusterName = c.Name
	var lbs []*endpointv3.LbEndpoint
	for _, b := range brokers {
		host, bport := splitHostPort(t, b.Addr())
		lbs = append(lbs, &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{
			Endpoint: &endpointv3.Endpoint{Address: socketAddress(host, bport)},
		}})
	}
	loc := &endpointv3.LocalityLbEndpoints{}
	if old := c.LoadAssignment.GetEndpoints(); len(old) > 0 {
		loc.Locality = old[0].GetLocality() // keep the platform's locality
	}
	loc.LbEndpoints = lbs
	c.LoadAssignment.Endpoints = []*endpointv3.LocalityLbEndpoints{loc}

	boot := &bootstrapv3.Bootstrap{
		Admin: &bootstrapv3.Admin{Address: socketAddress("127.0.0.1", adminPort)},
		StaticResources: &bootstrapv3.Bootstrap_StaticResources{
			Listeners: []*listenerv3.Listener{l},
			Clusters:  []*clusterv3.Cluster{c},
		},
	}
	if err := boot.ValidateAll(); err != nil {
		t.Fatalf("the bootstrap fails Envoy's proto validation: %v", err)
	}
	raw, err := protojson.MarshalOptions{UseProtoNames: true, Multiline: true}.Marshal(boot)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "envoy.json")
	if err := os.WriteFile(path, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("bootstrap: %s", path)
	logPath := filepath.Join(dir, "envoy.log")
	p := startEnvoy(t, envoyproc.Options{
		ConfigPath: path,
		AdminAddr:  fmt.Sprintf("127.0.0.1:%d", adminPort),
		LogPath:    logPath,
		// Flush file access logs every 200ms instead of every 10s.
		ExtraArgs: []string{"--file-flush-interval-msec", "200"},
	})
	waitAllHealthy(t, p, c.Name, len(brokers), 20*time.Second)
	return &recipeRun{envoy: p, addr: fmt.Sprintf("127.0.0.1:%d", port), logPath: logPath}
}

func socketAddress(host string, port int) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(port)},
	}}}
}

// checkSticky connects 40 client IDs through addr three times each, every
// time from another loopback address and with MQTT 3.1.1 and 5.0 in turn.
// Each ID must reach the same broker every time; IDs sent from one source
// address must still spread over the brokers (the hash is on the client
// ID, not the address); and each broker must have read, in the PROXY
// header, exactly the address the client connected from.
func checkSticky(t *testing.T, addr string, brokers []*broker.Broker) {
	t.Helper()
	const ids, rounds = 40, 3
	ctx := context.Background()
	first := map[string]string{} // client ID -> broker in round 0
	for round := range rounds {
		for _, b := range brokers {
			b.ResetRecords()
		}
		attempts := make([]attempt, ids)
		err := runParallel(ids, 8, func(i int) error {
			src := source(i*7 + round*131)
			if round == 0 {
				src = source(1) // one address for every ID
			}
			a, err := connectPaho(ctx, addr, src, fmt.Sprintf("recipe-%03d", i), 4+(i+round)%2)
			attempts[i] = a
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		seen := brokerOf(brokers)
		for _, a := range attempts {
			b, ok := seen[a.clientID+"|"+a.local]
			if !ok {
				t.Fatalf("round %d: no broker saw client %s from %s in a PROXY header (brokers saw %v)", round, a.clientID, a.local, seen)
			}
			if round == 0 {
				first[a.clientID] = b
			} else if b != first[a.clientID] {
				t.Errorf("client %s moved from %s to %s", a.clientID, first[a.clientID], b)
			}
		}
		for _, b := range brokers {
			for _, c := range b.Connections() {
				if !c.Proxied {
					t.Errorf("broker %s: client %s came without a PROXY header", b.Name(), c.ClientID)
				}
			}
		}
	}
	used := map[string]int{}
	for _, b := range first {
		used[b]++
	}
	if len(used) < 2 {
		t.Errorf("40 client IDs from one address all reached one broker (%v): the hash is not on the client ID", used)
	}
	t.Logf("%d client IDs x %d rounds, each on one broker; spread %v", ids, rounds, used)
}

// checkStickyFilter checks the mqtt_sticky filter in a recipe's filter
// chain: right before tcp_proxy, loading this module's filter with a
// config the module accepts, and tcp_proxy hashing on the filter's key
// with early data on. It returns the filter's config.
func checkStickyFilter(t *testing.T, filters []*listenerv3.Filter) *contract.Config {
	t.Helper()
	var names []string
	for _, f := range filters {
		names = append(names, f.GetName())
	}
	i := slices.Index(names, "envoy.filters.network.tcp_proxy")
	if i < 1 {
		t.Fatalf("filter chain %v: no filter before tcp_proxy", names)
	}
	dm := &dmfilterv3.DynamicModuleNetworkFilter{}
	if err := filters[i-1].GetTypedConfig().UnmarshalTo(dm); err != nil {
		t.Fatalf("filter chain %v: the filter before tcp_proxy is not a dynamic module: %v", names, err)
	}
	mc := dm.GetDynamicModuleConfig()
	if mc.GetName() != contract.ModuleName || dm.GetFilterName() != contract.FilterName || !mc.GetDoNotClose() || mc.GetMetricsNamespace() != contract.MetricsNamespace {
		t.Errorf("dynamic module filter: %v", dm)
	}
	sv := &wrapperspb.StringValue{}
	if err := dm.GetFilterConfig().UnmarshalTo(sv); err != nil {
		t.Fatalf("filter_config is not a StringValue: %v", err)
	}
	cfg, err := contract.ParseConfig([]byte(sv.GetValue()))
	if err != nil {
		t.Fatalf("the module would refuse the filter config: %v", err)
	}
	tcp := &tcpproxyv3.TcpProxy{}
	if err := filters[i].GetTypedConfig().UnmarshalTo(tcp); err != nil {
		t.Fatal(err)
	}
	if hp := tcp.GetHashPolicy(); len(hp) != 1 || hp[0].GetFilterState().GetKey() != contract.FilterStateKey {
		t.Errorf("tcp_proxy hash_policy %v, want only filter_state %s", hp, contract.FilterStateKey)
	}
	if got := tcp.GetMaxEarlyDataBytes(); got == nil || int(got.GetValue()) < cfg.MaxConnectBytes {
		t.Errorf("tcp_proxy max_early_data_bytes %v, want at least max_connect_bytes %d", got, cfg.MaxConnectBytes)
	}
	return cfg
}
