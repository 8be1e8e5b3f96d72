//go:build mqtt_sticky_panic_hook

package filter

import "github.com/mqtt-sticky/mqtt-sticky/filter/mqtt"

// PanicClientID makes the filter panic while routing, in test builds only.
const PanicClientID = "mqtt-sticky-test-panic"

func init() {
	beforeRoute = func(c *mqtt.Connect) {
		if c.ClientID == PanicClientID {
			panic("test hook: panic requested by client ID " + PanicClientID)
		}
	}
}
