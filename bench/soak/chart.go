package soak

import (
	"fmt"
	"slices"
	"strings"
)

// SVG draws the run: resident memory (MB) and open descriptors of every
// watched process over time, one panel each, the warm-up shaded.
func (r *Result) SVG(title string) string {
	var names []string
	if len(r.Samples) > 0 {
		for n := range r.Samples[0].RSS {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	const w, panelH, left, right, top = 760, 220, 60, 150, 40
	var b strings.Builder
	h := top + 2*(panelH+50)
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", w, h)
	b.WriteString(`<rect width="100%" height="100%" fill="white"/>` + "\n")
	fmt.Fprintf(&b, `<text x="10" y="20" font-weight="bold" font-size="14">%s</text>`+"\n", escape(title))
	colors := []string{"#2b6cb0", "#c05621", "#2f855a", "#6b46c1"}
	panel := func(y0 int, label string, value func(Sample, string) float64) {
		lo, hi := 0.0, 0.0
		for _, s := range r.Samples {
			for _, n := range names {
				hi = max(hi, value(s, n))
			}
		}
		hi *= 1.1
		if hi == 0 {
			hi = 1
		}
		end := 1.0
		if len(r.Samples) > 0 {
			end = max(r.Samples[len(r.Samples)-1].At.Seconds(), 1)
		}
		x := func(sec float64) float64 { return left + sec/end*float64(w-left-right) }
		y := func(v float64) float64 { return float64(y0+panelH) - (v-lo)/(hi-lo)*panelH }
		fmt.Fprintf(&b, `<text x="10" y="%d" font-weight="bold">%s</text>`+"\n", y0-8, escape(label))
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%.1f" height="%d" fill="#edf2f7"/>`+"\n", left, y0, x(r.Warmup.Seconds())-left, panelH)
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#a0aec0"/>`+"\n", left, y0, w-left-right, panelH)
		for i := 0; i <= 4; i++ {
			v := lo + (hi-lo)*float64(i)/4
			fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end">%.0f</text>`+"\n", left-4, y(v)+4, v)
		}
		for i := 0; i <= 5; i++ {
			sec := end * float64(i) / 5
			fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%.0f s</text>`+"\n", x(sec), y0+panelH+14, sec)
		}
		for k, n := range names {
			var pts []string
			for _, s := range r.Samples {
				pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(s.At.Seconds()), y(value(s, n))))
			}
			c := colors[k%len(colors)]
			fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="1.5" points="%s"/>`+"\n", c, strings.Join(pts, " "))
			fmt.Fprintf(&b, `<text x="%d" y="%d" fill="%s">%s</text>`+"\n", w-right+8, y0+16+16*k, c, escape(n))
		}
	}
	panel(top+20, "Resident memory, MB (warm-up shaded)", func(s Sample, n string) float64 { return float64(s.RSS[n]) / (1 << 20) })
	panel(top+20+panelH+50, "Open file descriptors", func(s Sample, n string) float64 { return float64(s.FDs[n]) })
	b.WriteString("</svg>\n")
	return b.String()
}

func escape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(s)
}
