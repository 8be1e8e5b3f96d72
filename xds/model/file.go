package model

import (
	"fmt"
	"os"

	"sigs.k8s.io/yaml"
)

// File is the `mqtt-sticky serve --config` file: where the server listens
// and persists state, and the fleet model. Unknown keys are errors.
type File struct {
	// XDSListen is the gRPC address Envoys connect to for ADS.
	XDSListen string `json:"xds_listen,omitempty"`
	// APIListen is the management API's HTTP address.
	APIListen string `json:"api_listen,omitempty"`
	// StateFile keeps endpoint changes across restarts. Empty disables
	// persistence.
	StateFile string `json:"state_file,omitempty"`
	Model
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
	if err := f.Validate(); err != nil {
		return nil, err
	}
	for _, c := range f.Clusters {
		if c.Discovered() && len(c.Endpoints) > 0 {
			return nil, invalid("cluster %q: its endpoints come from discovery; remove the endpoints list", c.Name)
		}
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
