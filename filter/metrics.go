package filter

import "github.com/mqtt-sticky/mqtt-sticky/filter/mqtt"

// Counter identifies one of the filter's counters. The Envoy side defines
// them all when the filter config is created, in the order of CounterNames,
// and Envoy shows them under the module's metrics namespace
// (mqtt_sticky.<name>).
type Counter int

const (
	ConnectMQTT31      Counter = iota // CONNECTs routed, MQTT 3.1
	ConnectMQTT311                    // CONNECTs routed, MQTT 3.1.1
	ConnectMQTT5                      // CONNECTs routed, MQTT 5.0
	EmptyKeyCount                     // CONNECTs whose hash key was empty
	Timeout                           // connections closed for not completing a CONNECT in time
	ClosedEarly                       // clients that closed before sending a byte
	RejectTruncated                   // clients that closed partway through a CONNECT
	RejectEmptyKey                    // empty key refused with a CONNACK (empty_key: reject)
	RejectInternal                    // routing key could not be set, or the filter panicked
	RejectReadDisabled                // Envoy was not reading: tcp_proxy lacks max_early_data_bytes
	RejectIdentity                    // client ID or user name is not the certificate's identity
	RejectNoIdentity                  // the config needs a certificate identity the connection lacks
	Accepted                          // connections the filter held for their CONNECT (counted by package abi)
	rejectFirst                       // one counter per parser refusal reason follows
)

// rejectCounter returns the counter for a parser refusal.
func rejectCounter(r mqtt.Reason) Counter {
	return rejectFirst + Counter(r) - Counter(mqtt.ReasonNotConnect)
}

var counterNames = CounterNames()

// CounterNames lists every counter's name, indexed by Counter.
func CounterNames() []string {
	names := []string{
		ConnectMQTT31:      "connect_mqtt31",
		ConnectMQTT311:     "connect_mqtt311",
		ConnectMQTT5:       "connect_mqtt5",
		EmptyKeyCount:      "empty_key",
		Timeout:            "timeout",
		ClosedEarly:        "closed_before_connect",
		RejectTruncated:    "rejected_truncated",
		RejectEmptyKey:     "rejected_empty_key",
		RejectInternal:     "rejected_internal",
		RejectReadDisabled: "rejected_read_disabled",
		RejectIdentity:     "rejected_identity",
		RejectNoIdentity:   "rejected_no_identity",
		Accepted:           "accepted",
	}
	for _, r := range mqtt.Reasons() {
		names = append(names, "rejected_"+r.String())
	}
	return names
}

// Gauge identifies one of the filter's gauges.
type Gauge int

const (
	// Waiting counts connections held while their CONNECT arrives. A
	// growing value means slow or idle clients (or an attack) are using
	// connection slots; connect_timeout_ms bounds how long each stays.
	// Package abi keeps it, for every connection.
	Waiting Gauge = iota
)

// GaugeNames lists every gauge's name, indexed by Gauge.
func GaugeNames() []string { return []string{Waiting: "waiting_for_connect"} }

// Histogram identifies one of the filter's histograms.
type Histogram int

const (
	// ConnectWait is the time from the connection's arrival to its
	// complete CONNECT, in milliseconds (Envoy's unit for its own _ms
	// histograms), for every routed connection. Slow links and slow
	// clients show here before they show as timeouts.
	ConnectWait Histogram = iota
)

// HistogramNames lists every histogram's name, indexed by Histogram.
func HistogramNames() []string { return []string{ConnectWait: "connect_wait_ms"} }
