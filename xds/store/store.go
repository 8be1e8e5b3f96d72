// Package store persists what changes in the fleet at run time: each
// cluster's endpoints and the version they are served under. Everything
// else comes from the config file.
//
// The seam is the Store interface: load, compare-and-swap, watch. Package
// control reads the served state, validates a change, has it translated,
// persists it here, and only then serves it; a Store never calls back. The
// file store (File) is the single-process default. A store shared by
// several control-plane replicas reports, through Watch, the states the
// other replicas stored, and its CompareAndSwap makes sure that two writers
// that read the same version cannot both succeed.
package store

import (
	"context"
	"errors"
	"maps"
	"slices"

	"github.com/mqtt-sticky/mqtt-sticky/xds/model"
)

// ErrStale is returned by CompareAndSwap when the stored version is no
// longer the one the change was based on: someone else wrote first.
var ErrStale = errors.New("store: the stored version changed")

// State is what a store holds: every cluster's endpoints, and the version
// they are served under.
type State struct {
	Version  uint64                      `json:"version"`
	Clusters map[string][]model.Endpoint `json:"clusters"`
}

// Store persists State.
type Store interface {
	// Load returns the stored state. A store that holds nothing yet is at
	// version 1 (EmptyVersion), with no clusters: the config file's own
	// endpoints are version 1.
	Load(ctx context.Context) (State, error)
	// CompareAndSwap stores next if the stored version is still prev, and
	// fails with ErrStale otherwise. next.Version must be greater than prev.
	// When it returns any other error, next may or may not have been
	// stored: a later Load or Watch tells.
	CompareAndSwap(ctx context.Context, prev uint64, next State) error
	// Watch delivers the states stored by other writers, in version order,
	// until ctx ends. A store that no one else writes returns nil.
	Watch(ctx context.Context) <-chan State
}

// EmptyVersion is the version of a store that holds nothing yet.
const EmptyVersion = 1

// StateOf is the part of m a store keeps.
func StateOf(m *model.Model, version uint64) State {
	st := State{Version: version, Clusters: map[string][]model.Endpoint{}}
	for _, c := range m.Clusters {
		st.Clusters[c.Name] = slices.Clone(c.Endpoints)
	}
	return st
}

// Apply returns base with the endpoints st holds for the clusters base
// defines, defaults set and validated. A cluster st holds that base no
// longer defines is ignored: the config file decides which clusters exist.
func (st State) Apply(base *model.Model) (*model.Model, error) {
	m := base.Clone()
	for _, name := range slices.Sorted(maps.Keys(st.Clusters)) {
		if c := m.Cluster(name); c != nil {
			c.Endpoints = slices.Clone(st.Clusters[name])
			model.SortEndpoints(c.Endpoints)
		}
	}
	m.SetDefaults()
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return m, nil
}
