package model

import (
	"fmt"
	"os"

	"sigs.k8s.io/yaml"

	"github.com/mqtt-sticky/mqtt-sticky/internal/tlsfiles"
)

// File is the `mqtt-sticky serve --config` file: where the server listens
// and persists state, how it protects itself, and the fleet model. Unknown
// keys are errors. Each key has a `serve` flag that overrides it.
type File struct {
	// XDSListen is the gRPC address Envoys connect to for ADS.
	XDSListen string `json:"xds_listen,omitempty"`
	// XDSTLS serves xDS over TLS, or mutual TLS with a client CA. Required
	// when XDSListen is beyond loopback.
	XDSTLS tlsfiles.Files `json:"xds_tls"`
	// XDSMaxNodes bounds the Envoy nodes the server keeps (0: the default).
	XDSMaxNodes int `json:"xds_max_nodes,omitempty"`
	// XDSNodeGrace is how long a node that left stays in the status (0:
	// the default).
	XDSNodeGrace Duration `json:"xds_node_grace,omitempty"`
	// APIListen is the management API's HTTP address.
	APIListen string `json:"api_listen,omitempty"`
	// APITokenFile holds the API's bearer token. Required when APIListen
	// is beyond loopback (or the token in the environment).
	APITokenFile string `json:"api_token_file,omitempty"`
	// MetricsRequireToken puts /metrics behind the API token.
	MetricsRequireToken bool `json:"metrics_require_token,omitempty"`
	// StateFile keeps endpoint changes across restarts, with the file
	// store. Empty disables persistence.
	StateFile string `json:"state_file,omitempty"`
	// Store chooses where endpoint changes are kept.
	Store StoreConfig `json:"store,omitempty"`
	Model
}

// Store types.
const (
	StoreFile = "file" // the state file: one control plane (the default)
	StoreEtcd = "etcd" // etcd: several control-plane replicas share it
)

// StoreConfig is the `store` section of the config file.
type StoreConfig struct {
	Type string     `json:"type,omitempty"` // StoreFile or StoreEtcd
	Etcd EtcdConfig `json:"etcd,omitempty"`
	// ReplicaName names this control plane among the replicas that share
	// etcd, in /v1/status. Default: the host name and the xDS port.
	ReplicaName string `json:"replica_name,omitempty"`
}

// EtcdConfig says how to reach etcd. The password is read from a file
// (or the environment), never from the config file or the command line.
type EtcdConfig struct {
	Endpoints    []string `json:"endpoints,omitempty"` // client URLs, http:// or https://
	Prefix       string   `json:"prefix,omitempty"`    // key prefix; several fleets can share one etcd
	CAFile       string   `json:"ca_file,omitempty"`
	CertFile     string   `json:"cert_file,omitempty"`
	KeyFile      string   `json:"key_file,omitempty"`
	Username     string   `json:"username,omitempty"`
	PasswordFile string   `json:"password_file,omitempty"`
}

// Validate checks the store section on its own: which keys go with
// which store type.
func (s StoreConfig) Validate(stateFile string) error {
	switch s.Type {
	case "", StoreFile:
		if len(s.Etcd.Endpoints) > 0 || s.ReplicaName != "" {
			return invalid("store: etcd settings and replica_name need type: etcd")
		}
	case StoreEtcd:
		if len(s.Etcd.Endpoints) == 0 {
			return invalid("store: type etcd needs etcd.endpoints")
		}
		if stateFile != "" {
			return invalid("state_file is for the file store; with type etcd the state lives in etcd")
		}
		if (s.Etcd.CertFile == "") != (s.Etcd.KeyFile == "") {
			return invalid("store: etcd.cert_file and etcd.key_file go together")
		}
		if s.Etcd.PasswordFile != "" && s.Etcd.Username == "" {
			return invalid("store: etcd.password_file needs etcd.username")
		}
	default:
		return invalid("store: type %q: use %s or %s", s.Type, StoreFile, StoreEtcd)
	}
	return nil
}

// Default addresses.
const (
	DefaultXDSListen = "127.0.0.1:18000"
	DefaultAPIListen = "127.0.0.1:8080"
)

// ParseFile reads a config file in YAML (or JSON), fills in defaults and
// validates it.
func ParseFile(data []byte) (*File, error) {
	f := &File{}
	if err := yaml.UnmarshalStrict(data, f); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	f.SetDefaults()
	if f.XDSListen == "" {
		f.XDSListen = DefaultXDSListen
	}
	if f.APIListen == "" {
		f.APIListen = DefaultAPIListen
	}
	if err := f.XDSTLS.Check(); err != nil {
		return nil, invalid("xds_tls: %v", err)
	}
	if f.XDSMaxNodes < 0 || f.XDSNodeGrace < 0 {
		return nil, invalid("xds_max_nodes and xds_node_grace cannot be negative")
	}
	if err := f.Validate(); err != nil {
		return nil, err
	}
	for _, c := range f.Clusters {
		if c.Discovered() && len(c.Endpoints) > 0 {
			return nil, invalid("cluster %q: its endpoints come from discovery; remove the endpoints list", c.Name)
		}
	}
	if err := f.Store.Validate(f.StateFile); err != nil {
		return nil, err
	}
	return f, nil
}

// LoadFile reads and parses a config file.
func LoadFile(path string) (*File, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	f, err := ParseFile(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return f, nil
}
