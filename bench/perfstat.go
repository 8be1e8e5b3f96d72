package main

import (
	"bytes"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
)

// perfEvents are counted with `perf stat` while a proxy is measured.
// Instructions retired depend far less on what else runs on the machine
// than CPU time does, so they compare contenders on a busy machine too.
var perfEvents = []string{"instructions:u", "instructions:k", "context-switches"}

// perfCounter counts perfEvents for one process until stop.
type perfCounter struct {
	cmd *exec.Cmd
	out bytes.Buffer
}

// startPerf starts counting for pid; it returns nil when perf is missing
// or not permitted, and the figures are then left out.
func startPerf(pid int) *perfCounter {
	if pid <= 0 {
		return nil
	}
	if _, err := exec.LookPath("perf"); err != nil {
		return nil
	}
	p := &perfCounter{}
	p.cmd = exec.Command("perf", "stat", "-x", ",", "-e", strings.Join(perfEvents, ","), "-p", strconv.Itoa(pid))
	p.cmd.Stderr = &p.out
	if err := p.cmd.Start(); err != nil {
		return nil
	}
	return p
}

// stop ends counting and returns each event's count.
func (p *perfCounter) stop() map[string]float64 {
	if p == nil {
		return nil
	}
	p.cmd.Process.Signal(syscall.SIGINT)
	p.cmd.Wait()
	out := map[string]float64{}
	for _, line := range strings.Split(p.out.String(), "\n") {
		f := strings.Split(line, ",")
		if len(f) < 3 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue // "<not counted>" or "<not supported>"
		}
		out[f[2]] = v
	}
	if len(out) == 0 {
		os.Stderr.WriteString("perf stat counted nothing: " + p.out.String())
		return nil
	}
	return out
}
