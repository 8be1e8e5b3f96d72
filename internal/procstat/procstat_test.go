package procstat

import (
	"net"
	"net/netip"
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

// The server side of a loopback connection belongs to this process, not
// to pid 1; a connection that does not exist is an error.
func TestSocketOwner(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := net.Dial("tcp4", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	client := netip.MustParseAddrPort(c.LocalAddr().String())
	if owner, err := SocketOwner(client, 1, os.Getpid()); err != nil || owner != os.Getpid() {
		t.Errorf("SocketOwner(%s) = %d, %v; want this process, %d", client, owner, err, os.Getpid())
	}
	if owner, err := SocketOwner(client, 1); err != nil || owner != 0 {
		t.Errorf("SocketOwner(%s) among pid 1 only = %d, %v; want 0", client, owner, err)
	}
	c.Close()
	s.Close()
	gone := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), 1)
	if _, err := SocketOwner(gone, os.Getpid()); err == nil {
		t.Errorf("SocketOwner(%s) found a socket that does not exist", gone)
	}
}
