// Package control carries every change to the fleet one way:
//
//	request → validate → translate (server.Prepare) → persist (store) → serve (commit)
//
// The xDS server owns the served state; the store persists it; the
// controller owns neither and only moves a change along, one at a time.
// Changes made elsewhere (another control-plane replica writing the same
// store) arrive through the store's Watch and take the same path, minus
// the persisting.
package control

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sync"

	"github.com/mqtt-sticky/mqtt-sticky/xds/model"
	"github.com/mqtt-sticky/mqtt-sticky/xds/store"
)

// Errors the API maps to status codes.
var (
	ErrNotFound = errors.New("not found")
	ErrConflict = errors.New("conflict")
	// ErrVersionMismatch refuses a conditional change (see AnyVersion)
	// whose expected version is no longer the current one.
	ErrVersionMismatch = errors.New("version mismatch")
	// ErrVersionExhausted refuses a change when the version counter is at
	// its maximum: the next version would wrap to 0, which every Envoy and
	// every store would take for an old one.
	ErrVersionExhausted = errors.New("version counter exhausted")
)

// AnyVersion, given as a change's expected version, applies the change
// whatever the current version. Any other value makes the change
// conditional: it applies only if the served version, and the stored one
// it is compared and swapped with, is still that value. This is how the
// API honours If-Match. Versions start at 1, so 0 is never a real one.
const AnyVersion uint64 = 0

// Server is the part of the xDS server a change goes through: package
// server implements it.
type Server interface {
	// Served returns a copy of the served model and its version.
	Served() (*model.Model, uint64)
	// Prepare translates and checks m without serving it; commit serves it.
	Prepare(m *model.Model, version uint64) (commit func(), err error)
}

// Controller applies changes to the fleet.
type Controller struct {
	base  *model.Model // the config file's model; the store supplies endpoints
	store store.Store
	srv   Server
	log   *slog.Logger

	mu sync.Mutex // one change at a time: each reads the served state and replaces it
}

// New returns a controller for the fleet described by base.
func New(base *model.Model, st store.Store, srv Server, log *slog.Logger) *Controller {
	if log == nil {
		log = slog.Default()
	}
	return &Controller{base: base.Clone(), store: st, srv: srv, log: log}
}

// Start serves the stored state: base with the endpoints the store holds,
// at the stored version. Nothing is written: while no change has been
// made, the config file's endpoints are served, at version 1.
func (c *Controller) Start(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	st, err := c.store.Load(ctx)
	if err != nil {
		return err
	}
	m, err := st.Apply(c.base)
	if err != nil {
		return fmt.Errorf("stored state: %w", err)
	}
	commit, err := c.srv.Prepare(m, st.Version)
	if err != nil {
		return err
	}
	commit()
	return nil
}

// Run serves the states other writers store, until ctx ends. A state this
// replica cannot serve (its config file lacks a cluster, say) is logged,
// and the last good state stays in force.
func (c *Controller) Run(ctx context.Context) {
	states := c.store.Watch(ctx)
	if states == nil {
		return // nobody else writes this store
	}
	for st := range states {
		if err := c.serveStored(st); err != nil {
			c.log.Error("control: not serving a stored change", "version", st.Version, "err", err)
		}
	}
}

func (c *Controller) serveStored(st store.State) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, version := c.srv.Served(); st.Version <= version {
		return nil // already served: this replica wrote it, or an older one
	}
	m, err := st.Apply(c.base)
	if err != nil {
		return err
	}
	commit, err := c.srv.Prepare(m, st.Version)
	if err != nil {
		return err
	}
	commit()
	return nil
}

// Model returns a copy of the served model.
func (c *Controller) Model() *model.Model {
	m, _ := c.srv.Served()
	return m
}

// Served returns a copy of the served model and its version, read
// together.
func (c *Controller) Served() (*model.Model, uint64) { return c.srv.Served() }

// Version is the served version.
func (c *Controller) Version() uint64 {
	_, v := c.srv.Served()
	return v
}

// Endpoints returns a cluster's endpoints, sorted, and the served version.
func (c *Controller) Endpoints(cluster string) ([]model.Endpoint, uint64, error) {
	m, version := c.srv.Served()
	cl, err := clusterOf(m, cluster)
	if err != nil {
		return nil, 0, err
	}
	eps := slices.Clone(cl.Endpoints)
	model.SortEndpoints(eps)
	return eps, version, nil
}

// SetEndpoints replaces a cluster's endpoints, if the version is still
// ifVersion (or ifVersion is AnyVersion).
func (c *Controller) SetEndpoints(ctx context.Context, cluster string, eps []model.Endpoint, ifVersion uint64) (uint64, error) {
	return c.change(ctx, cluster, ifVersion, handEdit(func(cl *model.Cluster) error {
		cl.Endpoints = slices.Clone(eps)
		return nil
	}))
}

// AddEndpoint adds one endpoint; adding one whose address or name is
// taken is a conflict. See SetEndpoints for ifVersion.
func (c *Controller) AddEndpoint(ctx context.Context, cluster string, ep model.Endpoint, ifVersion uint64) (uint64, error) {
	ep, err := checked(ep)
	if err != nil {
		return 0, err
	}
	return c.change(ctx, cluster, ifVersion, handEdit(func(cl *model.Cluster) error {
		for _, e := range cl.Endpoints {
			if e.Key() == ep.Key() {
				return fmt.Errorf("%w: endpoint %s is already in cluster %q", ErrConflict, ep.Key(), cluster)
			}
			if ep.Name != "" && e.Name == ep.Name {
				return fmt.Errorf("%w: the name %q is already used by endpoint %s in cluster %q", ErrConflict, ep.Name, e.Key(), cluster)
			}
		}
		cl.Endpoints = append(cl.Endpoints, ep)
		return nil
	}))
}

// RemoveEndpoint removes the endpoint ref names (model.ParseEndpointRef):
// by address and port, by name, or by both. See SetEndpoints for
// ifVersion.
func (c *Controller) RemoveEndpoint(ctx context.Context, cluster string, ref model.Endpoint, ifVersion uint64) (uint64, error) {
	if ref.Address != "" {
		var err error
		if ref, err = checked(ref); err != nil {
			return 0, err
		}
	}
	return c.change(ctx, cluster, ifVersion, handEdit(func(cl *model.Cluster) error {
		i := slices.IndexFunc(cl.Endpoints, func(e model.Endpoint) bool { return e.Refers(ref) })
		if i < 0 {
			return fmt.Errorf("%w: endpoint %s is not in cluster %q", ErrNotFound, refString(ref), cluster)
		}
		cl.Endpoints = slices.Delete(cl.Endpoints, i, i+1)
		return nil
	}))
}

func refString(ref model.Endpoint) string {
	if ref.Address == "" {
		return ref.Name
	}
	return ref.String()
}

// handEdit refuses edit on a cluster whose endpoints come from discovery:
// the next lookup would undo it.
func handEdit(edit func(*model.Cluster) error) func(*model.Cluster) error {
	return func(cl *model.Cluster) error {
		if cl.Discovered() {
			return fmt.Errorf("%w: cluster %q takes its endpoints from DNS discovery (%s): change the DNS records, not the API",
				ErrConflict, cl.Name, cl.Discovery.DNS.Name)
		}
		return edit(cl)
	}
}

// SetDiscovered serves the endpoints discovery found for a cluster. A set
// equal to the served one changes nothing and makes no new version, so
// replicas that resolve the same records agree without churn; changed
// says whether a version was made.
func (c *Controller) SetDiscovered(ctx context.Context, cluster string, eps []model.Endpoint) (version uint64, changed bool, err error) {
	next := slices.Clone(eps)
	for i := range next {
		next[i].SetDefaults()
	}
	model.SortEndpoints(next)
	c.mu.Lock()
	served, version := c.srv.Served()
	c.mu.Unlock()
	cl, err := clusterOf(served, cluster)
	if err != nil {
		return 0, false, err
	}
	if !cl.Discovered() {
		return 0, false, fmt.Errorf("%w: cluster %q has no discovery", ErrConflict, cluster)
	}
	if slices.Equal(cl.Endpoints, next) {
		return version, false, nil
	}
	version, err = c.change(ctx, cluster, AnyVersion, func(cl *model.Cluster) error {
		if slices.Equal(cl.Endpoints, next) {
			return errUnchanged
		}
		cl.Endpoints = next
		return nil
	})
	if errors.Is(err, errUnchanged) {
		return c.Version(), false, nil
	}
	return version, err == nil, err
}

// errUnchanged stops a discovered change that another writer made first.
var errUnchanged = errors.New("unchanged")

// checked returns ep with its defaults set, or why it is not an endpoint.
func checked(ep model.Endpoint) (model.Endpoint, error) {
	ep.SetDefaults()
	if err := ep.Validate(); err != nil {
		return ep, fmt.Errorf("%w: %v", model.ErrInvalid, err)
	}
	return ep, nil
}

// change applies edit to a copy of the served cluster, then validates,
// translates, persists and serves the result, in that order. On any error
// nothing is served and nothing is stored.
func (c *Controller) change(ctx context.Context, cluster string, ifVersion uint64, edit func(*model.Cluster) error) (uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	served, version := c.srv.Served()
	if err := nextVersionAllowed(version, ifVersion); err != nil {
		return 0, err
	}
	next, err := edited(served, cluster, edit)
	if err != nil {
		return 0, err
	}
	commit, err := c.srv.Prepare(next, version+1)
	if err != nil {
		return 0, err
	}
	if err := c.store.CompareAndSwap(ctx, version, store.StateOf(next, version+1)); err != nil {
		if ifVersion != AnyVersion && errors.Is(err, store.ErrStale) {
			// Another writer got there first: the version the caller
			// expected is gone.
			return 0, fmt.Errorf("%w: %w", ErrVersionMismatch, err)
		}
		return 0, err
	}
	commit()
	return version + 1, nil
}

// nextVersionAllowed checks that a change may follow the current version:
// the caller's expectation holds, and the counter has room.
func nextVersionAllowed(current, ifVersion uint64) error {
	if ifVersion != AnyVersion && ifVersion != current {
		return fmt.Errorf("%w: the current version is %d, the change was made against %d: read again, then retry", ErrVersionMismatch, current, ifVersion)
	}
	if current == math.MaxUint64 {
		return fmt.Errorf("%w: version %d is the last one: stop the control plane and set the state file's version to 1 "+
			"(Envoys take any new version string), then start it again", ErrVersionExhausted, current)
	}
	return nil
}

// edited returns a validated copy of m with edit applied to one cluster.
func edited(m *model.Model, cluster string, edit func(*model.Cluster) error) (*model.Model, error) {
	next := m.Clone()
	cl, err := clusterOf(next, cluster)
	if err != nil {
		return nil, err
	}
	if err := edit(cl); err != nil {
		return nil, err
	}
	next.SetDefaults()
	model.SortEndpoints(cl.Endpoints)
	if err := next.Validate(); err != nil {
		return nil, err
	}
	return next, nil
}

func clusterOf(m *model.Model, name string) (*model.Cluster, error) {
	if cl := m.Cluster(name); cl != nil {
		return cl, nil
	}
	var names []string
	for _, cl := range m.Clusters {
		names = append(names, cl.Name)
	}
	return nil, fmt.Errorf("%w: cluster %q (known: %v)", ErrNotFound, name, names)
}
