package abi

/*
#include "abi.h"
*/
import "C"

import (
	"fmt"
	"os"
	"runtime"
	"sync"

	"github.com/mqtt-sticky/mqtt-sticky/filter"
)

// The Go runtime inside Envoy. Most connections never reach it: shim.c
// routes a plain CONNECT in C (filter/quick). The rest (split, unusual or
// invalid CONNECTs, deadlines that pass) do: Envoy's worker threads enter
// Go through cgo callbacks and return to C, where they spend nearly all
// their time, each still holding a P (a Go scheduler slot) in the syscall
// state. Two things follow, and each costs CPU on every core Envoy shares
// with it:
//
//   - With no idle P, the runtime's monitor thread (sysmon) takes a worker's
//     P from it as soon as it sees it in C, and wakes a thread to run it,
//     which finds nothing to do. Each time, sysmon also drops back to
//     polling every 20µs. One idle P stops this: GOMAXPROCS is Envoy's
//     concurrency plus one, unless the GOMAXPROCS environment variable says
//     otherwise.
//   - A P whose scheduler tick has not moved for 10ms is taken in any case,
//     and a callback never moves it. yield runs the scheduler once on the
//     worker thread (shim.c calls it at most every 5ms per worker, from a
//     read hook), which moves the tick and keeps sysmon asleep. A yield is
//     not free: the callback's goroutine is locked to the worker thread, so
//     the scheduler hands the P to another thread and back, about three
//     context switches. Measured at one worker and ~2,000 connections/s,
//     when every connection still entered Go (Go threads' wake-ups over
//     15 s): 2ms 11,700; 5ms 7,600; 8ms 8,800
//     (some ticks already missed); 20ms 31,700 with sysmon polling again.

var runtimeOnce sync.Once

// configureRuntime sizes the runtime for Envoy's workers, once, when Envoy
// creates the first filter config.
func configureRuntime() {
	runtimeOnce.Do(func() {
		if os.Getenv("GOMAXPROCS") != "" {
			return
		}
		workers := int(C.envoy_dynamic_module_callback_get_concurrency())
		if workers < 1 {
			return
		}
		runtime.GOMAXPROCS(workers + 1)
		hostLog(filter.LogInfo, fmt.Sprintf("mqtt_sticky: Go runtime: GOMAXPROCS=%d (Envoy's %d workers and one idle P)", workers+1, workers))
	})
}

//export mqttStickyYield
func mqttStickyYield() { runtime.Gosched() }
