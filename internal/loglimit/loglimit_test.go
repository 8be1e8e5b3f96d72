package loglimit

import (
	"testing"
	"time"
)

func TestLimiter(t *testing.T) {
	now := time.Unix(100, 0)
	l := &Limiter{PerSecond: 3, Now: func() time.Time { return now }}
	allowed := 0
	for range 10 {
		if ok, _ := l.Allow(); ok {
			allowed++
		}
	}
	if allowed != 3 {
		t.Fatalf("allowed %d of 10 in one second, want 3", allowed)
	}
	now = now.Add(time.Second)
	if ok, dropped := l.Allow(); !ok || dropped != 7 {
		t.Errorf("first line of a new second: allowed %v, %d dropped; want true, 7", ok, dropped)
	}
	if ok, dropped := l.Allow(); !ok || dropped != 0 {
		t.Errorf("second line: allowed %v, %d dropped; want true, 0", ok, dropped)
	}
}
