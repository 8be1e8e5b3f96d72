package store

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/mqtt-sticky/mqtt-sticky/xds/model"
)

// recorder is an Updater that validates nothing itself and records pushes.
type recorder struct {
	pushed     []uint64
	failUpdate error
}

func (r *recorder) Update(m *model.Model, version uint64, persist func() error) error {
	if r.failUpdate != nil {
		return r.failUpdate
	}
	if err := persist(); err != nil {
		return err
	}
	r.pushed = append(r.pushed, version)
	return nil
}

func newStore(t *testing.T) (*Store, *recorder, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "state.json")
	m, v, err := Load(model.Default(), path)
	if err != nil {
		t.Fatal(err)
	}
	r := &recorder{}
	return New(m, v, path, r), r, path
}

func TestChangesArePersistedAndRestored(t *testing.T) {
	s, r, path := newStore(t)
	if _, err := s.AddEndpoint("brokers", model.Endpoint{Address: "127.0.0.1", Port: 18834, Weight: 2}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RemoveEndpoint("brokers", "127.0.0.1", 18831); err != nil {
		t.Fatal(err)
	}
	if len(r.pushed) != 2 || r.pushed[1] != 3 || s.Version() != 3 {
		t.Fatalf("pushed %v, version %d", r.pushed, s.Version())
	}
	m, v, err := Load(model.Default(), path)
	if err != nil {
		t.Fatal(err)
	}
	if v != 3 {
		t.Errorf("restored version %d, want 3", v)
	}
	eps := m.Cluster("brokers").Endpoints
	want := []model.Endpoint{{Address: "127.0.0.1", Port: 18832, Weight: 1}, {Address: "127.0.0.1", Port: 18833, Weight: 1}, {Address: "127.0.0.1", Port: 18834, Weight: 2}}
	if len(eps) != len(want) {
		t.Fatalf("restored %v", eps)
	}
	for i := range want {
		if eps[i] != want[i] {
			t.Errorf("restored %v, want %v", eps, want)
			break
		}
	}
}

// Invalid changes are refused with the right error and change nothing:
// not the model, not the version, not the state file, nothing pushed.
func TestInvalidChangesChangeNothing(t *testing.T) {
	s, r, path := newStore(t)
	if _, err := s.SetEndpoints("brokers", []model.Endpoint{{Address: "127.0.0.1", Port: 1}}); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(path)
	tests := []struct {
		name string
		do   func() error
		want error
	}{
		{"unknown cluster", func() error {
			_, err := s.AddEndpoint("nope", model.Endpoint{Address: "127.0.0.1", Port: 2, Weight: 1})
			return err
		}, ErrNotFound},
		{"duplicate", func() error {
			_, err := s.AddEndpoint("brokers", model.Endpoint{Address: "127.0.0.1", Port: 1, Weight: 1})
			return err
		}, ErrConflict},
		{"bad address", func() error {
			_, err := s.AddEndpoint("brokers", model.Endpoint{Address: "broker-1", Port: 2, Weight: 1})
			return err
		}, model.ErrInvalid},
		{"bad port", func() error {
			_, err := s.AddEndpoint("brokers", model.Endpoint{Address: "127.0.0.1", Port: 65536, Weight: 1})
			return err
		}, model.ErrInvalid},
		{"duplicate in a set", func() error {
			_, err := s.SetEndpoints("brokers", []model.Endpoint{{Address: "127.0.0.1", Port: 5}, {Address: "127.0.0.1", Port: 5}})
			return err
		}, model.ErrInvalid},
		{"remove missing", func() error { _, err := s.RemoveEndpoint("brokers", "127.0.0.1", 9); return err }, ErrNotFound},
	}
	for _, tt := range tests {
		if err := tt.do(); !errors.Is(err, tt.want) {
			t.Errorf("%s: %v, want %v", tt.name, err, tt.want)
		}
	}
	after, _ := os.ReadFile(path)
	if string(before) != string(after) || len(r.pushed) != 1 || s.Version() != 2 {
		t.Errorf("state changed: pushed %v, version %d", r.pushed, s.Version())
	}
}

// When the push is refused (say, the server finds an inconsistency), the
// state file is not written.
func TestRefusedPushIsNotPersisted(t *testing.T) {
	s, r, path := newStore(t)
	r.failUpdate = errors.New("refused")
	if _, err := s.AddEndpoint("brokers", model.Endpoint{Address: "127.0.0.1", Port: 2, Weight: 1}); err == nil {
		t.Fatal("accepted")
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state file written after a refused push: %v", err)
	}
	if eps, _ := s.Endpoints("brokers"); len(eps) != 3 {
		t.Errorf("endpoints changed: %v", eps)
	}
}

func TestCorruptStateFileIsReported(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	os.WriteFile(path, []byte("{not json"), 0o644)
	if _, _, err := Load(model.Default(), path); err == nil {
		t.Fatal("corrupt state accepted")
	}
	os.WriteFile(path, []byte(`{"version": 4, "clusters": {"brokers": [{"address": "nope", "port": 1}]}}`), 0o644)
	if _, _, err := Load(model.Default(), path); !errors.Is(err, model.ErrInvalid) {
		t.Fatalf("invalid state: %v", err)
	}
}
