// Package procstat reads what a process uses, from /proc through
// prometheus/procfs: the figures the benchmarks, the soak and the bounds
// test sample from Envoy and the control plane.
package procstat

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"

	"github.com/prometheus/procfs"
)

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

// SocketOwner returns which of pids holds the IPv4 TCP socket whose remote
// end is remote (the server side of a client's connection), or 0 when
// none of them does. It reports an error when no such socket exists.
func SocketOwner(remote netip.AddrPort, pids ...int) (int, error) {
	fs, err := procfs.NewDefaultFS()
	if err != nil {
		return 0, err
	}
	sockets, err := fs.NetTCP()
	if err != nil {
		return 0, err
	}
	want := ""
	for _, s := range sockets {
		if addr, ok := netip.AddrFromSlice(s.RemAddr); ok && addr.Unmap() == remote.Addr() && s.RemPort == uint64(remote.Port()) {
			want = "socket:[" + strconv.FormatUint(s.Inode, 10) + "]"
			break
		}
	}
	if want == "" {
		return 0, fmt.Errorf("no TCP socket with remote end %s", remote)
	}
	for _, pid := range pids {
		p, err := fs.Proc(pid)
		if err != nil {
			continue
		}
		targets, _ := p.FileDescriptorTargets()
		if slices.Contains(targets, want) {
			return pid, nil
		}
	}
	return 0, nil
}
