// Package etcdstore keeps the control plane's state in etcd, so several
// control-plane replicas share one truth and any of them can serve any
// Envoy.
//
// The state is one key, <prefix>state, holding the same JSON as the state
// file. A change is one etcd transaction that compares the key's
// ModRevision with the one this replica read for the version the change
// was based on (or, for an empty store, that the key does not exist yet),
// so two replicas or two operators can never overwrite each other. The
// version counter lives in the value, which is why the same stored state
// gets the same xDS version on every replica. Watch follows the key from
// the revision after the last Load, so no change is missed; after a
// compaction or a broken watch it loads the key again.
package etcdstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mqtt-sticky/mqtt-sticky/xds/store"
)

// DefaultPrefix is where the keys live unless Config.Prefix says otherwise.
const DefaultPrefix = "/mqtt-sticky/"

// Timeouts of etcd requests. A write holds the controller (one change at a
// time), so it must end even when no etcd member answers.
const (
	dialTimeout = 5 * time.Second
	// requestTimeout bounds a read or write, retries included.
	requestTimeout = 5 * time.Second
	// attemptTimeout bounds one try. A request that reaches a follower
	// while the leader has just died is forwarded to the dead leader and
	// lost; etcd only fails it after its own timeout (5s + 2 elections).
	// Trying again after a second gets to the new leader instead.
	attemptTimeout = time.Second
	attemptBackoff = 100 * time.Millisecond
	checkTimeout   = 2 * time.Second
	// retryMax bounds the wait between attempts to reload the state after
	// the watch broke (etcd unreachable, no quorum), and reconnectMax the
	// wait between attempts to reconnect to a member.
	retryMax     = 2 * time.Second
	reconnectMax = 2 * time.Second
)

// Config says how to reach etcd.
type Config struct {
	Endpoints []string // client URLs, http:// or https://
	Prefix    string   // key prefix; DefaultPrefix when empty
	// TLS: a CA to verify the members with, and a client certificate for
	// members that require one. Any of them turns TLS on.
	CAFile, CertFile, KeyFile string
	// Username and Password for etcd's authentication, when it is on.
	Username, Password string
	// Name names this writer (the replica) in the states it stores.
	Name   string
	Logger *slog.Logger
}

// Store is the etcd-backed store.
type Store struct {
	cli    *clientv3.Client
	prefix string
	key    string
	writer string // Config.Name and a tag unique to this process
	log    *slog.Logger

	mu sync.Mutex
	// seen is the newest state of the key this replica knows of (from
	// Load, Watch, or its own write), as of etcd revision at: the version
	// stored, and the key's ModRevision, 0 when the key does not exist.
	seen struct {
		at      int64
		version uint64
		modRev  int64
	}
	loadRev int64 // the etcd revision of the last Load: Watch starts after it
}

// New connects to etcd. It fails when no member answers within the dial
// timeout: a replica cannot serve before it has read the stored state.
func New(cfg Config) (*Store, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("etcd: no endpoints")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	ccfg := clientv3.Config{
		Endpoints:   cfg.Endpoints,
		DialTimeout: dialTimeout,
		Username:    cfg.Username,
		Password:    cfg.Password,
		// Errors reach the caller and our own log; the client's retries
		// are not worth a second log format.
		Logger: zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			// gRPC's default reconnect backoff grows to two minutes: after
			// a long etcd outage a replica would wait that long to notice
			// that etcd is back. A handful of members can take a retry
			// every few seconds.
			Backoff:           backoff.Config{BaseDelay: 250 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: reconnectMax},
			MinConnectTimeout: dialTimeout,
		})},
	}
	if cfg.CAFile != "" || cfg.CertFile != "" || cfg.KeyFile != "" {
		tlsInfo := transport.TLSInfo{CertFile: cfg.CertFile, KeyFile: cfg.KeyFile, TrustedCAFile: cfg.CAFile}
		tlsCfg, err := tlsInfo.ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("etcd TLS: %w", err)
		}
		ccfg.TLS = tlsCfg
	}
	cli, err := clientv3.New(ccfg)
	if err != nil {
		return nil, fmt.Errorf("etcd %s: %w", strings.Join(cfg.Endpoints, ","), err)
	}
	tag := make([]byte, 4)
	rand.Read(tag)
	s := &Store{cli: cli, prefix: cfg.Prefix, key: cfg.Prefix + "state", writer: cfg.Name + "#" + hex.EncodeToString(tag), log: cfg.Logger}
	s.seen.version = store.EmptyVersion
	return s, nil
}

// Close closes the connection to etcd.
func (s *Store) Close() error { return s.cli.Close() }

// Key is the key that holds the state.
func (s *Store) Key() string { return s.key }

// Load reads the state with a linearizable read: what a quorum agrees on.
func (s *Store) Load(ctx context.Context) (store.State, error) {
	var resp *clientv3.GetResponse
	err := retry(ctx, func(ctx context.Context) (err error) {
		resp, err = s.cli.Get(ctx, s.key)
		return err
	})
	if err != nil {
		return store.State{}, unavailable("reading the state", err)
	}
	st := store.State{Version: store.EmptyVersion}
	var version uint64 // 0: the key does not exist
	var modRev int64
	if len(resp.Kvs) > 0 {
		kv := resp.Kvs[0]
		if st, err = store.Decode(kv.Value); err != nil {
			return store.State{}, fmt.Errorf("etcd key %s is corrupt (%v): fix it, or overwrite it with `mqtt-sticky store copy --force`", s.key, err)
		}
		version, modRev = st.Version, kv.ModRevision
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.loadRev = resp.Header.Revision
	s.seeLocked(resp.Header.Revision, version, modRev)
	return st, nil
}

// CompareAndSwap stores next in one transaction, if the key still holds
// the state this replica read for prev.
func (s *Store) CompareAndSwap(ctx context.Context, prev uint64, next store.State) error {
	if next.Version <= prev {
		return fmt.Errorf("store: version %d does not follow %d", next.Version, prev)
	}
	next.Writer = s.writer
	data, err := store.Encode(next)
	if err != nil {
		return err
	}
	s.mu.Lock()
	version, modRev := s.seen.version, s.seen.modRev
	s.mu.Unlock()
	if version != prev {
		// The watch brought a newer state that this change did not see.
		return fmt.Errorf("%w: it is %d, the change was based on %d", store.ErrStale, version, prev)
	}
	cond := clientv3.Compare(clientv3.ModRevision(s.key), "=", modRev)
	if modRev == 0 {
		cond = clientv3.Compare(clientv3.CreateRevision(s.key), "=", 0)
	}
	var resp *clientv3.TxnResponse
	err = retry(ctx, func(ctx context.Context) (err error) {
		resp, err = s.cli.Txn(ctx).If(cond).Then(clientv3.OpPut(s.key, string(data))).Else(clientv3.OpGet(s.key)).Commit()
		return err
	})
	if err != nil {
		return unavailable("storing the change", err)
	}
	if resp.Succeeded {
		s.see(resp.Header.Revision, next.Version, resp.Header.Revision)
		return nil
	}
	kvs := resp.Responses[0].GetResponseRange().GetKvs()
	if len(kvs) > 0 && string(kvs[0].Value) == string(data) {
		// An earlier try that timed out was applied after all: the value
		// names this process as its writer, so no other wrote it.
		s.see(kvs[0].ModRevision, next.Version, kvs[0].ModRevision)
		return nil
	}
	now := "deleted the state"
	if len(kvs) > 0 {
		now = fmt.Sprintf("stored revision %d", kvs[0].ModRevision)
		if st, err := store.Decode(kvs[0].Value); err == nil {
			now = fmt.Sprintf("stored version %d", st.Version)
		}
	}
	return fmt.Errorf("%w: another writer %s first; the change was based on version %d", store.ErrStale, now, prev)
}

// retry runs op until it succeeds, fails for a reason that another try
// cannot fix, or requestTimeout passes; each try gets attemptTimeout and
// requires a leader, so a member cut off from its quorum answers at once.
// Retrying a compare-and-swap is safe: a try that was applied makes the
// later ones fail their comparison, and CompareAndSwap recognises its
// own value.
func retry(ctx context.Context, op func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(ctx), requestTimeout)
	defer cancel()
	for {
		actx, acancel := context.WithTimeout(ctx, attemptTimeout)
		err := op(actx)
		acancel()
		if err == nil || !transient(err) {
			return err
		}
		select {
		case <-ctx.Done():
			return err // the last try's error says more than the deadline
		case <-time.After(attemptBackoff):
		}
	}
}

// transient says whether another try may succeed: etcd did not answer,
// or answered that it has no leader or could not commit in time.
func transient(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	switch rpctypes.Error(err) {
	case rpctypes.ErrNoLeader, rpctypes.ErrTimeout, rpctypes.ErrTimeoutDueToLeaderFail,
		rpctypes.ErrTimeoutDueToConnectionLost, rpctypes.ErrLeaderChanged, rpctypes.ErrNotCapable:
		return true
	}
	code := status.Code(err)
	return code == codes.Unavailable || code == codes.DeadlineExceeded
}

// Check is a linearizable read of the key: it fails when a write would.
func (s *Store) Check(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(ctx), checkTimeout)
	defer cancel()
	if _, err := s.cli.Get(ctx, s.key, clientv3.WithCountOnly()); err != nil {
		return unavailable("reading the state", err)
	}
	return nil
}

// see records the state of the key as of etcd revision at, unless a
// later one is known: version 0 keeps the version known (the key was
// deleted, or holds something that does not decode), and modRev 0 means
// the key does not exist.
func (s *Store) see(at int64, version uint64, modRev int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seeLocked(at, version, modRev)
}

func (s *Store) seeLocked(at int64, version uint64, modRev int64) {
	if at < s.seen.at {
		return
	}
	s.seen.at, s.seen.modRev = at, modRev
	if version != 0 {
		s.seen.version = version
	}
}

// unavailable wraps an etcd error in store.ErrUnavailable with what it
// means for the operator. A write that timed out may still have been
// applied: the watch then brings it.
func unavailable(doing string, err error) error {
	why := err.Error()
	switch {
	case errors.Is(err, context.Canceled):
		return err // the caller gave up; nothing to say about etcd
	case !transient(err) && !errors.Is(err, context.DeadlineExceeded):
		// Not a passing outage (bad credentials, say): the operator has to
		// fix something.
		return fmt.Errorf("etcd: %s: %w", doing, err)
	case rpctypes.Error(err) == rpctypes.ErrNoLeader:
		why = "the etcd cluster has no leader: a quorum of its members is down or cut off"
	default:
		why = "no quorum of etcd members answered (" + why + "): are a majority of them up and reachable"
	}
	if doing == "storing the change" {
		why += "; if etcd received the write, it is applied once the quorum is back, and every replica then serves it"
	}
	return fmt.Errorf("%w: %s: %s", store.ErrUnavailable, doing, why)
}
