package etcdstore

import (
	"context"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/mqtt-sticky/mqtt-sticky/xds/store"
)

// Watch delivers every state stored after the last Load, this replica's
// own included, until ctx ends. When the watch breaks (etcd compacted the
// revisions it needed, the member lost its leader, no member answers) it
// loads the key again, retrying with a bounded backoff, delivers what it
// finds, and watches on from there: a state can be delivered twice, never
// missed.
func (s *Store) Watch(ctx context.Context) <-chan store.State {
	out := make(chan store.State)
	go func() {
		defer close(out)
		s.mu.Lock()
		rev := s.loadRev
		s.mu.Unlock()
		backoff := 50 * time.Millisecond
		failing := false
		for ctx.Err() == nil {
			if rev == 0 {
				st, err := s.Load(ctx)
				if err != nil {
					if !failing && ctx.Err() == nil {
						s.log.Error("etcd: cannot read the state; serving the last one until etcd answers", "key", s.key, "err", err)
					}
					failing = true
					select {
					case <-ctx.Done():
					case <-time.After(backoff):
					}
					backoff = min(2*backoff, retryMax)
					continue
				}
				if failing {
					s.log.Info("etcd: reading the state again", "key", s.key, "version", st.Version)
				}
				failing, backoff = false, 50*time.Millisecond
				if !deliver(ctx, out, st) {
					return
				}
				s.mu.Lock()
				rev = s.loadRev
				s.mu.Unlock()
			}
			rev = s.follow(ctx, rev, out)
		}
	}()
	return out
}

// follow watches the key from the revision after rev and delivers each
// state stored. It returns the revision it got to, or 0 when the state
// must be loaded again.
func (s *Store) follow(ctx context.Context, rev int64, out chan<- store.State) int64 {
	// Requiring a leader makes a member that lost its quorum end the watch,
	// instead of leaving it silently open.
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	for resp := range s.cli.Watch(wctx, s.key, clientv3.WithRev(rev+1)) {
		if resp.CompactRevision != 0 {
			s.log.Warn("etcd: the watched revisions were compacted; reading the state again", "key", s.key, "from", rev+1, "compacted", resp.CompactRevision)
			return 0
		}
		if err := resp.Err(); err != nil {
			if ctx.Err() == nil {
				s.log.Warn("etcd: watch ended; reading the state again", "key", s.key, "err", err)
			}
			return 0
		}
		for _, ev := range resp.Events {
			rev = ev.Kv.ModRevision
			if ev.Type == mvccpb.DELETE {
				// Only a person does this. The replicas keep serving; the next
				// change creates the key again.
				s.log.Error("etcd: the state key was deleted; serving the last state, the next change stores it again", "key", s.key)
				s.see(ev.Kv.ModRevision, 0, 0)
				continue
			}
			st, err := store.Decode(ev.Kv.Value)
			if err != nil {
				s.log.Error("etcd: ignoring a stored state that does not decode; the next change replaces it", "key", s.key, "revision", ev.Kv.ModRevision, "err", err)
				s.see(ev.Kv.ModRevision, 0, ev.Kv.ModRevision)
				continue
			}
			s.see(ev.Kv.ModRevision, st.Version, ev.Kv.ModRevision)
			if !deliver(ctx, out, st) {
				return rev
			}
		}
	}
	return 0 // the client closed the channel: ctx ended, or the client did
}

func deliver(ctx context.Context, out chan<- store.State, st store.State) bool {
	select {
	case out <- st:
		return true
	case <-ctx.Done():
		return false
	}
}
