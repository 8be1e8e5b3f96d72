package soak

import (
	"strings"
	"testing"
	"time"
)

// Drift ignores the warm-up, smooths the start, and reports the largest
// and the last change from it.
func TestDrift(t *testing.T) {
	r := &Result{Warmup: 10 * time.Second}
	for i := range 60 {
		v := int64(100)
		switch {
		case i < 10:
			v = 50 // warm-up: ignored
		case i == 11:
			v = 1000 // one noisy sample among the first tenth: smoothed away
		case i == 40:
			v = 110
		case i == 59:
			v = 103
		}
		r.Samples = append(r.Samples, Sample{At: time.Duration(i) * time.Second, RSS: map[string]int64{"p": v}, FDs: map[string]int{"p": 7}})
	}
	d := r.RSSDrift("p")
	if d.First != 100 || d.Max != 1000 || d.LastPct != 3 {
		t.Errorf("drift %+v", d)
	}
	if f := r.FDDrift("p"); f.First != 7 || f.MaxPct != 0 {
		t.Errorf("descriptors %+v", f)
	}
	if svg := r.SVG("t <1>"); !strings.Contains(svg, "<polyline") || !strings.Contains(svg, "t &lt;1&gt;") {
		t.Error("chart has no lines or an unescaped title")
	}
}
