// Package loglimit caps how many log lines a kind of event may write, so
// that an outsider who can cause the event (a bad connection, a refused xDS
// stream) cannot fill a disk through the log. Counters keep the full
// count; the log keeps a sample and says how many lines it dropped.
package loglimit

import (
	"sync"
	"time"
)

// Limiter lets through at most PerSecond lines in each one-second window.
// It is safe for concurrent use.
type Limiter struct {
	PerSecond int
	Now       func() time.Time // time.Now when nil; tests set it

	mu         sync.Mutex
	window     time.Time
	used       int
	suppressed int
}

// New returns a limiter of perSecond lines a second.
func New(perSecond int) *Limiter { return &Limiter{PerSecond: perSecond} }

// Allow reports whether a line may be written now. When it may, dropped is
// the number of lines refused since the last one allowed, for the line to
// mention.
func (l *Limiter) Allow() (ok bool, dropped int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now
	if l.Now != nil {
		now = l.Now
	}
	if t := now(); t.Sub(l.window) >= time.Second {
		l.window, l.used = t, 0
	}
	if l.used >= l.PerSecond {
		l.suppressed++
		return false, 0
	}
	l.used++
	dropped, l.suppressed = l.suppressed, 0
	return true, dropped
}
