package translate

import (
	"fmt"
	"testing"

	"github.com/mqtt-sticky/mqtt-sticky/xds/model"
)

// BenchmarkTranslate builds one node's resources for clusters of 3, 100
// and 1,000 brokers: the work behind every push.
func BenchmarkTranslate(b *testing.B) {
	for _, n := range []int{3, 100, 1000} {
		b.Run(fmt.Sprintf("endpoints=%d", n), func(b *testing.B) {
			m := model.Default()
			c := &m.Clusters[0]
			c.Endpoints = nil
			for i := range n {
				c.Endpoints = append(c.Endpoints, model.Endpoint{Address: fmt.Sprintf("10.%d.%d.%d", i/65536, i/256%256, i%256), Port: 1883, Weight: 1})
			}
			if n >= 1000 {
				c.MaglevTable = 131071 // at least 100 entries per host
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Translate(m, "bench-node"); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
