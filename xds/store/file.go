package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
)

// File keeps the state in a JSON file, written atomically on every change.
// It assumes it is the file's only writer: one control plane, one file.
// With an empty path it keeps the state in memory only.
type File struct {
	path string

	mu      sync.Mutex
	version uint64 // the version last loaded or stored
}

// NewFile returns a store backed by the file at path ("" for memory only).
func NewFile(path string) *File { return &File{path: path, version: EmptyVersion} }

// Load reads the state file. A missing file is an empty state; a file that
// cannot be read as a state is an error that names the file, since serving
// the config file's endpoints instead would silently remap clients.
func (f *File) Load(context.Context) (State, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.path == "" {
		return State{Version: f.version}, nil
	}
	data, err := os.ReadFile(f.path)
	if errors.Is(err, os.ErrNotExist) {
		return State{Version: f.version}, nil
	}
	if err != nil {
		return State{}, fmt.Errorf("reading state file: %w", err)
	}
	st, err := Decode(data)
	if err != nil {
		return State{}, fmt.Errorf("state file %s is corrupt (%v): fix or remove it", f.path, err)
	}
	f.version = st.Version
	return st, nil
}

// CompareAndSwap writes next if the version last stored is prev.
func (f *File) CompareAndSwap(_ context.Context, prev uint64, next State) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.version != prev {
		return fmt.Errorf("%w: it is %d, the change was based on %d", ErrStale, f.version, prev)
	}
	if next.Version <= prev {
		return fmt.Errorf("store: version %d does not follow %d", next.Version, prev)
	}
	if err := f.write(next); err != nil {
		return err
	}
	f.version = next.Version
	return nil
}

// Watch returns nil: nobody else writes the file.
func (f *File) Watch(context.Context) <-chan State { return nil }

// write replaces the state file atomically: a temporary file in the same
// directory, synced, then renamed over the old one, then the directory
// synced, so a crash leaves either the old state or the new one.
func (f *File) write(st State) error {
	if f.path == "" {
		return nil
	}
	data, err := Encode(st)
	if err != nil {
		return err
	}
	dir := filepath.Dir(f.path)
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
	if err := os.Rename(tmp.Name(), f.path); err != nil {
		return fmt.Errorf("persisting state: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
