// Package procstat reads what a process uses, from /proc through
// prometheus/procfs: the figures the benchmarks, the soak and the bounds
// test sample from Envoy and the control plane.
package procstat

import "github.com/prometheus/procfs"

// RSS is the process's resident memory in bytes (VmRSS).
func RSS(pid int) (int64, error) {
	p, err := procfs.NewProc(pid)
	if err != nil {
		return 0, err
	}
	st, err := p.NewStatus()
	if err != nil {
		return 0, err
	}
	return int64(st.VmRSS), nil
}

// OpenFiles is how many file descriptors the process holds.
func OpenFiles(pid int) (int, error) {
	p, err := procfs.NewProc(pid)
	if err != nil {
		return 0, err
	}
	return p.FileDescriptorsLen()
}

// CPUSeconds is the process's user and system CPU time.
func CPUSeconds(pid int) (float64, error) {
	p, err := procfs.NewProc(pid)
	if err != nil {
		return 0, err
	}
	st, err := p.Stat()
	if err != nil {
		return 0, err
	}
	return st.CPUTime(), nil
}
