package procstat

import (
	"os"
	"testing"
)

// This test process has resident memory, open files (at least stdin,
// stdout and stderr) and has used CPU; a process that does not exist is
// an error, not zero.
func TestOwnProcess(t *testing.T) {
	pid := os.Getpid()
	if rss, err := RSS(pid); err != nil || rss < 1<<20 {
		t.Errorf("RSS: %d, %v", rss, err)
	}
	if n, err := OpenFiles(pid); err != nil || n < 3 {
		t.Errorf("OpenFiles: %d, %v", n, err)
	}
	// The kernel counts CPU time in 10ms ticks: work until one is counted.
	cpu, err := CPUSeconds(pid)
	for sum := 0; err == nil && cpu == 0 && sum >= 0; cpu, err = CPUSeconds(pid) {
		for i := range 1 << 20 {
			sum += i & 1
		}
	}
	if err != nil || cpu <= 0 {
		t.Errorf("CPUSeconds: %v, %v", cpu, err)
	}
	if _, err := RSS(1 << 30); err == nil {
		t.Error("RSS of a process that does not exist: no error")
	}
}
