//go:build mqtt_sticky_module

// Command module is the mqtt_sticky dynamic module for Envoy. Build it
// with `make filter`, which runs
//
//	go build -tags mqtt_sticky_module -buildmode=c-shared -o build/libmqtt_sticky.so ./filter/module
//
// Envoy loads build/libmqtt_sticky.so by the module name mqtt_sticky from
// ENVOY_DYNAMIC_MODULES_SEARCH_PATH. Everything lives in package abi; a
// c-shared library still needs a main package, whose main never runs.
//
// The build tag keeps `go build ./...` green: linked as an ordinary
// executable, the package would fail on the Envoy callbacks, which only
// Envoy's process provides.
package main

import _ "github.com/mqtt-sticky/mqtt-sticky/filter/abi"

func main() {}
