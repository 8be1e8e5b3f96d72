package etcdstore

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/mqtt-sticky/mqtt-sticky/xds/server"
)

// How a replica keeps its entries on the board.
const (
	// publishInterval is how often a replica compares its nodes with what
	// it published, and publishes the nodes that changed.
	publishInterval = 500 * time.Millisecond
	// leaseTTL is how long a dead replica's entries outlive it.
	leaseTTL = 5 // seconds
	// maxTxnOps stays under etcd's default limit of operations per
	// transaction (128).
	maxTxnOps = 100
)

// Board shares what each replica knows of its Envoy nodes, so that any
// replica can report the whole fleet. A replica publishes each node under
// <prefix>nodes/<replica>/<node>, attached to a lease it keeps alive: the
// entries of a replica that dies expire with its lease.
type Board struct {
	s       *Store
	replica string
}

// Board returns the board this replica publishes to as replica.
func (s *Store) Board(replica string) *Board { return &Board{s: s, replica: replica} }

// Replica is the name this replica publishes under.
func (b *Board) Replica() string { return b.replica }

func (b *Board) dir() string { return b.s.prefix + "nodes/" }

func (b *Board) key(node string) string {
	return b.dir() + url.PathEscape(b.replica) + "/" + url.PathEscape(node)
}

// Publish keeps this replica's entries equal to local() until ctx ends,
// then withdraws them. While etcd is unreachable it keeps trying; the
// lease it had may expire meanwhile, and it publishes everything again
// under a new one.
func (b *Board) Publish(ctx context.Context, local func() []server.NodeStatus) {
	p := &publisher{b: b, published: map[string]string{}}
	tick := time.NewTicker(publishInterval)
	defer tick.Stop()
	failing := false
	for {
		err := p.publish(ctx, local())
		switch {
		case err != nil && !failing && ctx.Err() == nil:
			b.s.log.Warn("etcd: cannot publish this replica's nodes; other replicas may not list them", "replica", b.replica, "err", err)
			failing = true
		case err == nil && failing:
			b.s.log.Info("etcd: publishing this replica's nodes again", "replica", b.replica)
			failing = false
		}
		select {
		case <-ctx.Done():
			p.withdraw()
			return
		case <-tick.C:
		}
	}
}

type publisher struct {
	b         *Board
	lease     clientv3.LeaseID
	expired   <-chan struct{}   // closed when the lease's keep-alive ends
	published map[string]string // node ID -> JSON stored under the lease
}

func (p *publisher) publish(ctx context.Context, nodes []server.NodeStatus) error {
	if err := p.ensureLease(ctx); err != nil {
		return err
	}
	want := map[string]string{}
	for _, n := range nodes {
		data, err := json.Marshal(n)
		if err != nil {
			return err
		}
		want[n.ID] = string(data)
	}
	var ops []clientv3.Op
	var ids []string
	for id, data := range want {
		if p.published[id] != data {
			ops, ids = append(ops, clientv3.OpPut(p.b.key(id), data, clientv3.WithLease(p.lease))), append(ids, id)
		}
	}
	for id := range p.published {
		if _, ok := want[id]; !ok {
			ops, ids = append(ops, clientv3.OpDelete(p.b.key(id))), append(ids, id)
		}
	}
	for len(ops) > 0 {
		n := min(len(ops), maxTxnOps)
		rctx, cancel := context.WithTimeout(ctx, requestTimeout)
		_, err := p.b.s.cli.Txn(rctx).Then(ops[:n]...).Commit()
		cancel()
		if err != nil {
			return err
		}
		for _, id := range ids[:n] {
			if data, ok := want[id]; ok {
				p.published[id] = data
			} else {
				delete(p.published, id)
			}
		}
		ops, ids = ops[n:], ids[n:]
	}
	return nil
}

// ensureLease grants a lease and keeps it alive, unless the current one
// still is.
func (p *publisher) ensureLease(ctx context.Context) error {
	if p.lease != 0 {
		select {
		case <-p.expired:
			p.lease = 0
		default:
			return nil
		}
	}
	rctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	grant, err := p.b.s.cli.Grant(rctx, leaseTTL)
	if err != nil {
		return err
	}
	alive, err := p.b.s.cli.KeepAlive(ctx, grant.ID)
	if err != nil {
		return err
	}
	expired := make(chan struct{})
	go func() {
		for range alive {
		}
		close(expired)
	}()
	p.lease, p.expired = grant.ID, expired
	clear(p.published) // nothing is attached to the new lease yet
	return nil
}

// withdraw revokes the lease, which deletes every entry at once.
func (p *publisher) withdraw() {
	if p.lease == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), checkTimeout)
	defer cancel()
	p.b.s.cli.Revoke(ctx, p.lease)
}

// Nodes returns the nodes every replica published, each with Replica set.
// It reads from one member without asking the leader, so it answers while
// etcd has no quorum, from what that member last knew.
func (b *Board) Nodes(ctx context.Context) ([]server.NodeStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	resp, err := b.s.cli.Get(ctx, b.dir(), clientv3.WithPrefix(), clientv3.WithSerializable())
	if err != nil {
		return nil, unavailable("reading the other replicas' nodes", err)
	}
	var out []server.NodeStatus
	for _, kv := range resp.Kvs {
		replica, _, ok := strings.Cut(strings.TrimPrefix(string(kv.Key), b.dir()), "/")
		if !ok {
			continue // not an entry this package wrote
		}
		var n server.NodeStatus
		if err := json.Unmarshal(kv.Value, &n); err != nil {
			return nil, fmt.Errorf("etcd key %s: %w", kv.Key, err)
		}
		if n.Replica, err = url.PathUnescape(replica); err != nil {
			return nil, fmt.Errorf("etcd key %s: %w", kv.Key, err)
		}
		out = append(out, n)
	}
	return out, nil
}
