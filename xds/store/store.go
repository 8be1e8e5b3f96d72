// Package store persists what changes in the fleet at run time: each
// cluster's endpoints and the version they are served under. Everything
// else comes from the config file.
//
// The seam is the Store interface: load, compare-and-swap, watch. Package
// control reads the served state, validates a change, has it translated,
// persists it here, and only then serves it; a Store never calls back. The
// file store (File) is the single-process default; package etcdstore keeps
// the state in etcd for several replicas. A store shared by
// several control-plane replicas reports, through Watch, the states the
// other replicas stored, and its CompareAndSwap makes sure that two writers
// that read the same version cannot both succeed.
package store

import (
	"context"
	"encoding/json"
	"errors"
	"maps"
	"slices"

	"github.com/mqtt-sticky/mqtt-sticky/internal/strictjson"
	"github.com/mqtt-sticky/mqtt-sticky/xds/model"
)

// ErrStale is returned by CompareAndSwap when the stored version is no
// longer the one the change was based on: someone else wrote first.
var ErrStale = errors.New("store: the stored version changed")

// ErrUnavailable is returned when the store cannot be reached or cannot
// take writes (a shared store that lost its quorum, say). The change was
// not applied here; whether it reached the store is for Load or Watch to
// tell, and a replica serves it once it does.
var ErrUnavailable = errors.New("store unavailable")

// State is what a store holds: every cluster's endpoints, and the version
// they are served under.
type State struct {
	Version  uint64                      `json:"version"`
	Clusters map[string][]model.Endpoint `json:"clusters"`
	// Writer says who stored the state, in a store several replicas
	// share. Nothing served depends on it; it tells a replica its own
	// write from an identical one by another replica.
	Writer string `json:"writer,omitempty"`
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
	// until ctx ends; it may deliver this writer's own too, which the
	// caller has already served. A store that no one else writes returns
	// nil.
	Watch(ctx context.Context) <-chan State
}

// Checker is a Store that depends on a service that can fail. Check says
// why a write could not succeed now, or nil.
type Checker interface {
	Check(ctx context.Context) error
}

// EmptyVersion is the version of a store that holds nothing yet.
const EmptyVersion = 1

// Encode is a state's stored form, JSON, the same in every store.
func Encode(st State) ([]byte, error) {
	return json.MarshalIndent(st, "", "  ")
}

// Decode reads a state's stored form, strictly (strictjson: no trailing
// data, no unknown, duplicate or miscased keys): a state that does not
// read back exactly is an error, because serving the config file's
// endpoints instead would silently remap clients.
func Decode(data []byte) (State, error) {
	var st *State
	if err := strictjson.Unmarshal(data, &st); err != nil {
		return State{}, err
	}
	if st == nil || st.Clusters == nil || st.Version < EmptyVersion {
		return State{}, errors.New(`it holds no state (want {"version": N, "clusters": {...}} with N >= 1)`)
	}
	return *st, nil
}

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
