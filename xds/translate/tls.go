package translate

import (
	"path/filepath"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/mqtt-sticky/mqtt-sticky/contract"
	"github.com/mqtt-sticky/mqtt-sticky/xds/model"
)

// TLS, both ways. Certificates and CAs reach Envoy as SDS secrets over ADS
// that name files on the Envoy host and the directory to watch: Envoy reads
// the files itself, and reloads them when a file is moved into that
// directory (an atomic rename, or a Kubernetes secret's symlink swap). A
// rotation therefore touches no listener or cluster, and no connection. The
// control plane never reads a key, and no key crosses the xDS channel.

// Secret names: one per certificate or CA, named after the listener or
// cluster that uses it.
func listenerCertSecret(l *model.Listener) string { return "listener." + l.Name + ".cert" }
func listenerCASecret(l *model.Listener) string   { return "listener." + l.Name + ".client_ca" }
func clusterCASecret(c *model.Cluster) string     { return "cluster." + c.Name + ".ca" }
func clusterCertSecret(c *model.Cluster) string   { return "cluster." + c.Name + ".cert" }

// listenerSecrets returns the secrets a TLS listener names.
func listenerSecrets(l *model.Listener) []*tlsv3.Secret {
	t := l.TLS
	if t == nil {
		return nil
	}
	out := []*tlsv3.Secret{certificateSecret(listenerCertSecret(l), t.CertFile, t.KeyFile)}
	if t.ClientCAFile != "" {
		out = append(out, caSecret(listenerCASecret(l), t.ClientCAFile))
	}
	return out
}

// clusterSecrets returns the secrets a cluster with upstream TLS names.
func clusterSecrets(c *model.Cluster) []*tlsv3.Secret {
	u := c.UpstreamTLS
	if u == nil {
		return nil
	}
	out := []*tlsv3.Secret{caSecret(clusterCASecret(c), u.CAFile)}
	if u.CertFile != "" {
		out = append(out, certificateSecret(clusterCertSecret(c), u.CertFile, u.KeyFile))
	}
	return out
}

func certificateSecret(name, cert, key string) *tlsv3.Secret {
	return &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
		CertificateChain: fileSource(cert),
		PrivateKey:       fileSource(key),
		WatchedDirectory: &corev3.WatchedDirectory{Path: filepath.Dir(cert)}, // the model puts the key beside it
	}}}
}

func caSecret(name, ca string) *tlsv3.Secret {
	return &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
		TrustedCa:        fileSource(ca),
		WatchedDirectory: &corev3.WatchedDirectory{Path: filepath.Dir(ca)},
	}}}
}

func fileSource(path string) *corev3.DataSource {
	return &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: path}}
}

func sdsConfig(name string) *tlsv3.SdsSecretConfig {
	return &tlsv3.SdsSecretConfig{Name: name, SdsConfig: adsSource()}
}

// downstreamTLS returns the listener's TLS transport socket, or nil for a
// plaintext listener. The filter chain after it sees decrypted bytes, and
// mqtt_sticky reads the verified client certificate from the connection.
// A client that is not verified never reaches the filter: Envoy ends its
// handshake.
func downstreamTLS(l *model.Listener) *corev3.TransportSocket {
	t := l.TLS
	if t == nil {
		return nil
	}
	common := &tlsv3.CommonTlsContext{
		TlsParams:                      &tlsv3.TlsParameters{TlsMinimumProtocolVersion: tlsVersion(t.MinVersion)},
		AlpnProtocols:                  t.ALPN,
		TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{sdsConfig(listenerCertSecret(l))},
	}
	if t.ClientCAFile != "" {
		common.ValidationContextType = &tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig{
			ValidationContextSdsSecretConfig: sdsConfig(listenerCASecret(l)),
		}
	}
	return &corev3.TransportSocket{
		Name: "envoy.transport_sockets.tls",
		ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: mustAny(&tlsv3.DownstreamTlsContext{
			CommonTlsContext:         common,
			RequireClientCertificate: wrapperspb.Bool(t.RequireClientCert),
		})},
	}
}

func tlsVersion(v model.TLSVersion) tlsv3.TlsParameters_TlsProtocol {
	if v == model.TLS13 {
		return tlsv3.TlsParameters_TLSv1_3
	}
	return tlsv3.TlsParameters_TLSv1_2
}

// upstreamTLS returns the TLS transport socket towards a cluster's brokers,
// or nil. With an SNI, the broker's certificate must name it as a DNS SAN.
func upstreamTLS(c *model.Cluster) *corev3.TransportSocket {
	u := c.UpstreamTLS
	if u == nil {
		return nil
	}
	validation := &tlsv3.CertificateValidationContext{}
	if u.SNI != "" {
		validation.MatchTypedSubjectAltNames = []*tlsv3.SubjectAltNameMatcher{{
			SanType: tlsv3.SubjectAltNameMatcher_DNS,
			Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: u.SNI}},
		}}
	}
	common := &tlsv3.CommonTlsContext{
		ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{
			CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
				DefaultValidationContext:         validation,
				ValidationContextSdsSecretConfig: sdsConfig(clusterCASecret(c)),
			},
		},
	}
	if u.CertFile != "" {
		common.TlsCertificateSdsSecretConfigs = []*tlsv3.SdsSecretConfig{sdsConfig(clusterCertSecret(c))}
	}
	return &corev3.TransportSocket{
		Name: "envoy.transport_sockets.tls",
		ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: mustAny(&tlsv3.UpstreamTlsContext{
			CommonTlsContext: common,
			Sni:              u.SNI,
		})},
	}
}

// sslTLV is tcp_proxy's PROXY protocol TLV for proxy_protocol_cn: the
// filter builds the binary value of a PP2_TYPE_SSL TLV (the CN in a
// PP2_SUBTYPE_SSL_CN sub-TLV) and stores it as dynamic metadata, and this
// format string copies it into the header. (Envoy 1.40 evaluates a format
// string on the upstream transport socket against the upstream
// connection, which has no downstream metadata; tcp_proxy evaluates it
// against the client's connection.)
func sslTLV() *corev3.TlvEntry {
	return &corev3.TlvEntry{
		Type: contract.PP2TypeSSL,
		FormatString: &corev3.SubstitutionFormatString{Format: &corev3.SubstitutionFormatString_TextFormatSource{
			TextFormatSource: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: contract.SSLTLVFormat}},
		}},
	}
}

// addSSLTLV has tcp_proxy send the SSL TLV when the listener's filter
// builds it.
func addSSLTLV(tcp *tcpproxyv3.TcpProxy, l *model.Listener) {
	if l.Filter.ProxyProtocolCN {
		tcp.ProxyProtocolTlvs = []*corev3.TlvEntry{sslTLV()}
	}
}

// sslTLVPassThrough lists the TLV types the cluster's PROXY transport socket
// takes from tcp_proxy: without it, Envoy drops the TLVs tcp_proxy adds.
// Only the SSL TLV passes; no listener has a PROXY protocol listener
// filter, so a client cannot supply TLVs of its own.
func sslTLVPassThrough() *corev3.ProxyProtocolPassThroughTLVs {
	return &corev3.ProxyProtocolPassThroughTLVs{
		MatchType: corev3.ProxyProtocolPassThroughTLVs_INCLUDE,
		TlvType:   []uint32{contract.PP2TypeSSL},
	}
}

// forwardsCN reports, per cluster name, whether a listener sends the SSL
// TLV to it.
func forwardsCN(m *model.Model) map[string]bool {
	out := map[string]bool{}
	for _, l := range m.Listeners {
		if l.Filter.ProxyProtocolCN {
			out[l.Cluster] = true
		}
	}
	return out
}

// staticSecretRefs drops the ADS source from a downstream TLS socket's
// secret references: a reference with a name alone names a static secret
// of the bootstrap.
func staticSecretRefs(ts *corev3.TransportSocket) {
	if ts == nil {
		return
	}
	ctx := &tlsv3.DownstreamTlsContext{}
	if err := ts.GetTypedConfig().UnmarshalTo(ctx); err != nil {
		return // not a TLS socket
	}
	common := ctx.GetCommonTlsContext()
	for _, ref := range common.GetTlsCertificateSdsSecretConfigs() {
		ref.SdsConfig = nil
	}
	if ref := common.GetValidationContextSdsSecretConfig(); ref != nil {
		ref.SdsConfig = nil
	}
	ts.ConfigType = &corev3.TransportSocket_TypedConfig{TypedConfig: mustAny(ctx)}
}

// plainProbes reports whether health probes use the cluster's plain socket
// (healthCheckSocket) instead of its transport socket. HTTP probes always
// do when the cluster has a transport socket: the management port speaks
// neither PROXY nor TLS. MQTT and tcp probes do when the cluster sends
// PROXY headers in the clear, and write their own (version 1) header.
// With TLS to the brokers they cannot: a header the probe writes would
// travel inside TLS. They then use the cluster's transport socket, which
// sends a PROXY v2 LOCAL header (when the cluster uses PROXY protocol),
// then TLS, as EMQX's ssl listener with proxy_protocol expects; a broker
// that refuses LOCAL headers cannot be probed this way.
func plainProbes(c *model.Cluster) bool {
	if c.HealthCheck.IsHTTP() {
		return c.ProxyProtocol != model.ProxyOff || c.UpstreamTLS != nil
	}
	return c.ProxyProtocol != model.ProxyOff && c.UpstreamTLS == nil
}
