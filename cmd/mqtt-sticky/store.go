package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/mqtt-sticky/mqtt-sticky/xds/model"
	"github.com/mqtt-sticky/mqtt-sticky/xds/store"
	"github.com/mqtt-sticky/mqtt-sticky/xds/store/etcdstore"
)

// etcdPasswordEnv holds the etcd password when no password file is given:
// secrets stay out of argv and out of the config file.
const etcdPasswordEnv = "MQTT_STICKY_ETCD_PASSWORD"

// etcdFlags are the etcd options shared by `serve` and `store`; set
// flags override the config file's store.etcd section.
type etcdFlags struct {
	endpoints, prefix, ca, cert, key, username, passwordFile string
}

func (f *etcdFlags) register(fs *flag.FlagSet, withEndpoints bool) {
	if withEndpoints {
		fs.StringVar(&f.endpoints, "etcd-endpoints", "", "etcd client URLs, comma-separated (with --store etcd)")
	}
	fs.StringVar(&f.prefix, "etcd-prefix", "", "etcd key prefix (default "+etcdstore.DefaultPrefix+"); fleets that share an etcd need their own")
	fs.StringVar(&f.ca, "etcd-ca", "", "CA file to verify the etcd members with (turns TLS on)")
	fs.StringVar(&f.cert, "etcd-cert", "", "client certificate for etcd (with --etcd-key)")
	fs.StringVar(&f.key, "etcd-key", "", "client key for etcd")
	fs.StringVar(&f.username, "etcd-username", "", "etcd user, when etcd authentication is on")
	fs.StringVar(&f.passwordFile, "etcd-password-file", "", "file holding the etcd user's password (or env "+etcdPasswordEnv+")")
}

// apply lays the set flags over cfg.
func (f *etcdFlags) apply(cfg model.EtcdConfig) model.EtcdConfig {
	if f.endpoints != "" {
		cfg.Endpoints = strings.Split(f.endpoints, ",")
	}
	for _, p := range []struct {
		set  string
		into *string
	}{{f.prefix, &cfg.Prefix}, {f.ca, &cfg.CAFile}, {f.cert, &cfg.CertFile},
		{f.key, &cfg.KeyFile}, {f.username, &cfg.Username}, {f.passwordFile, &cfg.PasswordFile}} {
		if p.set != "" {
			*p.into = p.set
		}
	}
	return cfg
}

// openEtcd connects to etcd as cfg says, reading the password from its
// file or the environment.
func openEtcd(cfg model.EtcdConfig, name string, log *slog.Logger) (*etcdstore.Store, error) {
	password := os.Getenv(etcdPasswordEnv)
	if cfg.PasswordFile != "" {
		data, err := os.ReadFile(cfg.PasswordFile)
		if err != nil {
			return nil, fmt.Errorf("etcd password: %w", err)
		}
		password = strings.TrimRight(string(data), "\r\n")
	}
	if password != "" && cfg.Username == "" {
		return nil, fmt.Errorf("%w: an etcd password needs --etcd-username", errUsage)
	}
	return etcdstore.New(etcdstore.Config{
		Endpoints: cfg.Endpoints,
		Prefix:    cfg.Prefix,
		CAFile:    cfg.CAFile,
		CertFile:  cfg.CertFile,
		KeyFile:   cfg.KeyFile,
		Username:  cfg.Username,
		Password:  password,
		Name:      name,
		Logger:    log,
	})
}

const storeUsage = `usage:
  mqtt-sticky store copy --from SOURCE --to DESTINATION [--force] [flags]
  mqtt-sticky store show --from SOURCE [flags]

SOURCE and DESTINATION are file:PATH (a state file) or etcd:URL[,URL...]
(an etcd cluster; the --etcd-* flags say how to reach it). copy refuses a
destination that already holds a state unless --force is given; a forced
copy is stored at a version above both, so replicas running on the
destination take it.

flags:`

func runStore(args []string, stdout, stderr io.Writer) error {
	var ef etcdFlags
	var from, to string
	var force bool
	fs := flag.NewFlagSet("store", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprintln(stderr, storeUsage); fs.PrintDefaults() }
	fs.StringVar(&from, "from", "", "the store to read: file:PATH or etcd:URL[,URL...]")
	fs.StringVar(&to, "to", "", "the store to write (copy): file:PATH or etcd:URL[,URL...]")
	fs.BoolVar(&force, "force", false, "copy: overwrite a destination that already holds a state")
	ef.register(fs, false)
	rest, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(rest) != 1 || (rest[0] != "copy" && rest[0] != "show") {
		fs.Usage()
		return fmt.Errorf("%w: want one subcommand: copy or show", errUsage)
	}
	if from == "" || (rest[0] == "copy" && to == "") {
		return fmt.Errorf("%w: %s needs --from%s", errUsage, rest[0], map[bool]string{true: " and --to"}[rest[0] == "copy"])
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	src, closeSrc, err := openSpec(from, ef, log)
	if err != nil {
		return err
	}
	defer closeSrc()
	if rest[0] == "show" {
		st, err := src.Load(ctx)
		if err != nil {
			return err
		}
		return printJSON(stdout, st)
	}
	dst, closeDst, err := openSpec(to, ef, log)
	if err != nil {
		return err
	}
	defer closeDst()
	st, err := copyState(ctx, src, dst, force)
	if err != nil {
		return fmt.Errorf("copying %s to %s: %w", from, to, err)
	}
	fmt.Fprintf(stdout, "copied version %d (%d cluster(s)) from %s to %s\n", st.Version, len(st.Clusters), from, to)
	return nil
}

// openSpec opens file:PATH or etcd:URL[,URL...].
func openSpec(spec string, ef etcdFlags, log *slog.Logger) (store.Store, func(), error) {
	kind, where, _ := strings.Cut(spec, ":")
	switch {
	case kind == model.StoreFile && where != "":
		return store.NewFile(where), func() {}, nil
	case kind == model.StoreEtcd && where != "":
		ef.endpoints = where
		s, err := openEtcd(ef.apply(model.EtcdConfig{}), "mqtt-sticky store copy", log)
		if err != nil {
			return nil, nil, err
		}
		return s, func() { s.Close() }, nil
	}
	return nil, nil, fmt.Errorf("%w: %q: want file:PATH or etcd:URL[,URL...]", errUsage, spec)
}

// errNothingToCopy refuses to copy a store that holds no state.
var errNothingToCopy = errors.New("the source holds no state (no change was ever stored): nothing to copy; the config file's endpoints apply")

// copyState copies src's state into dst. Into an empty destination the
// version is kept, so Envoys that move from the old control plane to the
// new one are not sent anything new. Over an existing state (force), the
// copy gets a version above both.
func copyState(ctx context.Context, src, dst store.Store, force bool) (store.State, error) {
	st, err := src.Load(ctx)
	if err != nil {
		return store.State{}, err
	}
	if isEmpty(st) {
		return store.State{}, errNothingToCopy
	}
	cur, err := dst.Load(ctx)
	if err != nil {
		return store.State{}, err
	}
	if !isEmpty(cur) {
		if !force {
			return store.State{}, fmt.Errorf("%w: the destination already holds version %d: refusing to overwrite it without --force", errUsage, cur.Version)
		}
		st.Version = max(st.Version, cur.Version+1)
	}
	if err := dst.CompareAndSwap(ctx, cur.Version, st); err != nil {
		return store.State{}, err
	}
	return st, nil
}

func isEmpty(st store.State) bool { return st.Version == store.EmptyVersion && len(st.Clusters) == 0 }
