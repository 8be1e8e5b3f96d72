// Package store owns the live model: it applies endpoint changes, which are
// validated, persisted and only then pushed, and it restores them after a
// restart so no client is remapped.
package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/mqtt-sticky/mqtt-sticky/xds/model"
)

// Errors the API maps to status codes.
var (
	ErrNotFound = errors.New("not found")
	ErrConflict = errors.New("conflict")
)

// Updater pushes a validated model; package server implements it. It must
// build and check everything before calling persist, and push nothing if
// persist fails.
type Updater interface {
	Update(m *model.Model, version uint64, persist func() error) error
}

// Store holds the model and its version.
type Store struct {
	mu      sync.Mutex
	model   *model.Model
	version uint64
	path    string // state file; empty disables persistence
	up      Updater
}

// state is the persisted form: the endpoints of every cluster and the
// version they were served under.
type state struct {
	Version  uint64                      `json:"version"`
	Clusters map[string][]model.Endpoint `json:"clusters"`
}

// Load returns the model to start with: base, with the endpoints recorded in
// the state file at path when there is one, and the version to serve it at.
// Clusters in the state file that base no longer defines are ignored.
func Load(base *model.Model, path string) (*model.Model, uint64, error) {
	m := base.Clone()
	version := uint64(1)
	if path == "" {
		return m, version, nil
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return m, version, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("reading state file: %w", err)
	}
	var st state
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, 0, fmt.Errorf("state file %s is corrupt (%v): fix or remove it", path, err)
	}
	for name, eps := range st.Clusters {
		if c := m.Cluster(name); c != nil {
			c.Endpoints = slices.Clone(eps)
		}
	}
	m.SetDefaults()
	if err := m.Validate(); err != nil {
		return nil, 0, fmt.Errorf("state file %s: %w", path, err)
	}
	return m, max(st.Version, 1), nil
}

// New returns a store for a model already being served at version.
func New(m *model.Model, version uint64, path string, up Updater) *Store {
	return &Store{model: m.Clone(), version: version, path: path, up: up}
}

// Version is the version being served.
func (s *Store) Version() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.version
}

// Model returns a copy of the model being served.
func (s *Store) Model() *model.Model {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.model.Clone()
}

// Endpoints returns a cluster's endpoints, sorted.
func (s *Store) Endpoints(cluster string) ([]model.Endpoint, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.model.Cluster(cluster)
	if c == nil {
		return nil, fmt.Errorf("%w: cluster %q (known: %v)", ErrNotFound, cluster, s.clusterNames())
	}
	eps := slices.Clone(c.Endpoints)
	model.SortEndpoints(eps)
	return eps, nil
}

// SetEndpoints replaces a cluster's endpoints.
func (s *Store) SetEndpoints(cluster string, eps []model.Endpoint) (uint64, error) {
	return s.change(cluster, func(c *model.Cluster) error {
		c.Endpoints = slices.Clone(eps)
		return nil
	})
}

// AddEndpoint adds one endpoint; adding one that exists is a conflict.
func (s *Store) AddEndpoint(cluster string, ep model.Endpoint) (uint64, error) {
	return s.change(cluster, func(c *model.Cluster) error {
		if err := ep.Validate(); err != nil {
			return fmt.Errorf("%w: %v", model.ErrInvalid, err)
		}
		for _, e := range c.Endpoints {
			if e.Key() == ep.Key() {
				return fmt.Errorf("%w: endpoint %s is already in cluster %q", ErrConflict, ep.Key(), cluster)
			}
		}
		c.Endpoints = append(c.Endpoints, ep)
		return nil
	})
}

// RemoveEndpoint removes the endpoint address:port.
func (s *Store) RemoveEndpoint(cluster, address string, port int) (uint64, error) {
	return s.change(cluster, func(c *model.Cluster) error {
		probe := model.Endpoint{Address: address, Port: port, Weight: 1}
		if err := probe.Validate(); err != nil {
			return fmt.Errorf("%w: %v", model.ErrInvalid, err)
		}
		i := slices.IndexFunc(c.Endpoints, func(e model.Endpoint) bool { return e.Key() == probe.Key() })
		if i < 0 {
			return fmt.Errorf("%w: endpoint %s is not in cluster %q", ErrNotFound, probe.Key(), cluster)
		}
		c.Endpoints = slices.Delete(c.Endpoints, i, i+1)
		return nil
	})
}

// change applies fn to a copy of the cluster, validates the new model,
// persists it and pushes it, in that order; on any error the served model
// is unchanged.
func (s *Store) change(cluster string, fn func(*model.Cluster) error) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	next := s.model.Clone()
	c := next.Cluster(cluster)
	if c == nil {
		return 0, fmt.Errorf("%w: cluster %q (known: %v)", ErrNotFound, cluster, s.clusterNames())
	}
	if err := fn(c); err != nil {
		return 0, err
	}
	next.SetDefaults()
	model.SortEndpoints(c.Endpoints)
	if err := next.Validate(); err != nil {
		return 0, err
	}
	version := s.version + 1
	if err := s.up.Update(next, version, func() error { return s.persist(next, version) }); err != nil {
		return 0, err
	}
	s.model, s.version = next, version
	return version, nil
}

func (s *Store) clusterNames() []string {
	var names []string
	for _, c := range s.model.Clusters {
		names = append(names, c.Name)
	}
	return names
}

// persist writes the state file atomically: a temporary file in the same
// directory, synced, then renamed over the old one, then the directory
// synced, so a crash leaves either the old state or the new one.
func (s *Store) persist(m *model.Model, version uint64) error {
	if s.path == "" {
		return nil
	}
	st := state{Version: version, Clusters: map[string][]model.Endpoint{}}
	for _, c := range m.Clusters {
		st.Clusters[c.Name] = c.Endpoints
	}
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	dir := filepath.Dir(s.path)
	tmp, err := os.CreateTemp(dir, ".mqtt-sticky-state-*")
	if err != nil {
		return fmt.Errorf("persisting state: %w", err)
	}
	defer os.Remove(tmp.Name()) // no-op once renamed
	if _, err := tmp.Write(append(data, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("persisting state: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("persisting state: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("persisting state: %w", err)
	}
	if err := os.Rename(tmp.Name(), s.path); err != nil {
		return fmt.Errorf("persisting state: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
