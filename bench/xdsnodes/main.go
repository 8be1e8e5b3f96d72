// Command xdsnodes measures what hostile xDS clients cost a running
// `mqtt-sticky serve` (issue 9, finding 1), as an attacker who can reach
// the xDS port would see it:
//
//  1. baseline: the server's heap and RSS (its /metrics), and the latency
//     of endpoint PUTs through the API;
//  2. N throwaway node IDs, each opening an ADS stream, getting its first
//     response and leaving; then the same figures again, the nodes listed
//     in /v1/status and the size of that answer;
//  3. optionally, after the server's grace period, once more;
//  4. optionally, with a number of nodes connected for good (a fleet);
//  5. 100 node IDs of 3 MB each, sent at once; then RSS, /v1/status and
//     the growth of the server's log.
//
// It runs any mqtt-sticky binary, so the same command measures an older
// build:
//
//	go build -o /tmp/mqtt-sticky ./cmd/mqtt-sticky
//	go run ./bench/xdsnodes --cli /tmp/mqtt-sticky
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/mqtt-sticky/mqtt-sticky/api"
	"github.com/mqtt-sticky/mqtt-sticky/xds/control"
	"github.com/mqtt-sticky/mqtt-sticky/xds/model"
)

func main() {
	cli := flag.String("cli", "", "the mqtt-sticky binary to measure (required)")
	nodes := flag.Int("nodes", 20000, "throwaway node IDs")
	puts := flag.Int("puts", 10, "endpoint PUTs per measurement")
	workers := flag.Int("workers", 16, "concurrent ADS clients")
	bigIDs := flag.Int("big-ids", 100, "node IDs of 3 MB sent at once (0: skip)")
	afterGrace := flag.Duration("after-grace", 0, "also measure this long after the attack (the server's grace period)")
	hold := flag.Int("hold", 0, "then connect this many nodes and keep them connected (acknowledging every push), and measure again")
	serveArgs := flag.String("serve-args", "", "more flags for serve, space-separated")
	flag.Parse()
	log.SetFlags(log.Ltime)
	if *cli == "" {
		log.Fatal("--cli is required: go build -o /tmp/mqtt-sticky ./cmd/mqtt-sticky")
	}
	s := startServe(*cli, strings.Fields(*serveArgs))
	defer s.stop()

	s.measure("baseline", *puts)
	start := time.Now()
	refused := throwaway(s.xds, *nodes, *workers)
	log.Printf("%d throwaway nodes in %v (%d refused)", *nodes, time.Since(start).Round(time.Millisecond), refused)
	s.measure(fmt.Sprintf("after %d throwaway nodes", *nodes), *puts)
	if *afterGrace > 0 {
		time.Sleep(*afterGrace)
		s.measure(fmt.Sprintf("%v later", *afterGrace), *puts)
	}
	if *hold > 0 {
		holdNodes(s.xds, *hold)
		s.measure(fmt.Sprintf("with %d nodes connected", *hold), *puts)
	}
	if *bigIDs > 0 {
		logBefore := s.logSize()
		codes := bigNodeIDs(s.xds, *bigIDs)
		log.Printf("%d node IDs of 3 MB: %v", *bigIDs, codes)
		s.measure(fmt.Sprintf("after %d node IDs of 3 MB", *bigIDs), *puts)
		log.Printf("server log grew by %.1f MB", float64(s.logSize()-logBefore)/1e6)
	}
}

// serve is the running control plane.
type serve struct {
	cmd      *exec.Cmd
	xds, api string
	logPath  string
	client   *api.Client
}

func startServe(cli string, args []string) *serve {
	dir, err := os.MkdirTemp("", "xdsnodes-")
	if err != nil {
		log.Fatal(err)
	}
	s := &serve{xds: freeAddr(), api: freeAddr(), logPath: filepath.Join(dir, "serve.log")}
	logf, err := os.Create(s.logPath)
	if err != nil {
		log.Fatal(err)
	}
	s.cmd = exec.Command(cli, append([]string{"serve", "--xds", s.xds, "--api", s.api, "--no-state"}, args...)...)
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	if err := s.cmd.Start(); err != nil {
		log.Fatal(err)
	}
	s.client = &api.Client{BaseURL: "http://" + s.api, HTTP: &http.Client{Timeout: 5 * time.Minute}}
	for range 200 {
		if resp, err := http.Get("http://" + s.api + "/healthz"); err == nil {
			resp.Body.Close()
			log.Printf("serving: %s %s (log %s)", cli, strings.Join(args, " "), s.logPath)
			return s
		}
		time.Sleep(50 * time.Millisecond)
	}
	log.Fatal("serve did not start; see ", s.logPath)
	return nil
}

func (s *serve) stop() {
	s.cmd.Process.Signal(os.Interrupt)
	s.cmd.Wait()
}

func (s *serve) logSize() int64 {
	fi, err := os.Stat(s.logPath)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// measure logs heap, RSS, PUT latency and /v1/status.
func (s *serve) measure(label string, puts int) {
	var lat []time.Duration
	for i := range puts {
		eps := []model.Endpoint{{Address: "127.0.0.1", Port: 18831}, {Address: "127.0.0.1", Port: 18832 + i%2}}
		start := time.Now()
		if _, err := s.client.SetEndpoints(context.Background(), "brokers", eps, control.AnyVersion); err != nil {
			log.Fatalf("PUT: %v", err)
		}
		lat = append(lat, time.Since(start))
	}
	slices.Sort(lat)
	m := s.metrics()
	statusBytes, statusNodes := s.status()
	log.Printf("%-34s heap %6.1f MB  RSS %6.1f MB  PUT median %8v max %8v  /v1/status %d nodes, %.1f MB",
		label+":", m["go_memstats_heap_alloc_bytes"]/1e6, m["process_resident_memory_bytes"]/1e6,
		lat[len(lat)/2].Round(100*time.Microsecond), lat[len(lat)-1].Round(100*time.Microsecond), statusNodes, float64(statusBytes)/1e6)
}

func (s *serve) metrics() map[string]float64 {
	resp, err := http.Get("http://" + s.api + "/metrics")
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), " ")
		if ok && !strings.HasPrefix(name, "#") {
			if v, err := strconv.ParseFloat(value, 64); err == nil {
				out[name] = v
			}
		}
	}
	return out
}

func (s *serve) status() (int, int) {
	resp, err := http.Get("http://" + s.api + "/v1/status")
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return len(data), strings.Count(string(data), `"first_seen"`)
}

// throwaway connects n node IDs, one ADS stream each: ask for the
// clusters, read the answer, leave. It returns how many were refused.
func throwaway(addr string, n, workers int) int64 {
	var next, refused atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn := dial(addr)
			defer conn.Close()
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				if err := oneStream(conn, fmt.Sprintf("throwaway-%06d", i)); err != nil {
					refused.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	return refused.Load()
}

// bigNodeIDs sends n requests whose node ID is 3 MB, at once, and returns
// how the server answered, by status.
func bigNodeIDs(addr string, n int) map[string]int {
	var mu sync.Mutex
	out := map[string]int{}
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn := dial(addr)
			defer conn.Close()
			err := oneStream(conn, fmt.Sprintf("%07d", i)+strings.Repeat("x", 3<<20))
			mu.Lock()
			out[status.Code(err).String()]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out
}

// holdNodes connects n nodes, over n/10 connections, and returns once
// each has its first answer; they stay connected and acknowledge every
// push, as Envoys do.
func holdNodes(addr string, n int) {
	var ready sync.WaitGroup
	var conns []*grpc.ClientConn
	for i := range n {
		if i%10 == 0 {
			conns = append(conns, dial(addr))
		}
		ready.Add(1)
		go func() {
			stream, err := discovery.NewAggregatedDiscoveryServiceClient(conns[i/10]).StreamAggregatedResources(context.Background())
			if err != nil {
				log.Fatal(err)
			}
			req := &discovery.DiscoveryRequest{Node: &corev3.Node{Id: fmt.Sprintf("held-%05d", i)}, TypeUrl: resource.ClusterType}
			for first := true; ; first = false {
				err := stream.Send(req)
				var resp *discovery.DiscoveryResponse
				if err == nil {
					resp, err = stream.Recv()
				}
				if err != nil && first {
					log.Fatalf("held node %d: %v", i, err)
				} else if err != nil {
					return // the server stopped
				}
				if first {
					ready.Done()
				}
				req = &discovery.DiscoveryRequest{TypeUrl: resp.GetTypeUrl(), VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()}
			}
		}()
	}
	ready.Wait()
}

func dial(addr string) *grpc.ClientConn {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(8<<20)))
	if err != nil {
		log.Fatal(err)
	}
	return conn
}

func oneStream(conn *grpc.ClientConn, node string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return err
	}
	if err := stream.Send(&discovery.DiscoveryRequest{Node: &corev3.Node{Id: node}, TypeUrl: resource.ClusterType}); err != nil {
		return err
	}
	_, err = stream.Recv()
	return err
}

func freeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
