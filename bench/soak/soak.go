// Package soak runs connection churn and QoS 1 traffic through a proxy for
// a while and samples the resident memory and open file descriptors of the
// processes involved (Envoy, the control plane) as it goes. The end-to-end
// test runs it briefly and checks that nothing grows; `go run ./bench
// --soak 30m` runs it long and charts it.
package soak

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	paho3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/mqtt-sticky/mqtt-sticky/filter/mqtt"
	"github.com/mqtt-sticky/mqtt-sticky/internal/procstat"
)

// Process is one process whose memory and descriptors are sampled.
type Process struct {
	Name string
	Pid  int
}

// Options describe a soak.
type Options struct {
	Addr      string        // the proxy's MQTT address
	Duration  time.Duration // the whole run
	Warmup    time.Duration // the part of the run the verdicts ignore
	Interval  time.Duration // between samples (default 1s)
	ChurnRate int           // connections per second that connect, get their CONNACK and close
	// QoS1Clients stay connected; each subscribes at QoS 1 to its own topic
	// and publishes there at QoS 1 QoS1Rate times a second, so every
	// message crosses the proxy twice and is acknowledged both ways.
	QoS1Clients int
	QoS1Rate    int
	Watch       []Process
	// Gauge, when set, is sampled too: the filter's waiting_for_connect.
	Gauge func() (int64, error)
}

// Sample is one moment of the run.
type Sample struct {
	At      time.Duration
	RSS     map[string]int64 // bytes, by process name
	FDs     map[string]int
	Waiting int64
}

// Result is what a run did and saw.
type Result struct {
	Samples     []Sample
	Churned     int64 // connections that got their CONNACK and closed
	ChurnErrors int64
	Published   int64 // QoS 1 PUBLISHes acknowledged by the broker
	Received    int64 // QoS 1 PUBLISHes delivered back to their publisher
	QoSErrors   int64
	Warmup      time.Duration
}

// Run soaks until opts.Duration has passed or ctx ends.
func Run(ctx context.Context, opts Options) (*Result, error) {
	if opts.Interval == 0 {
		opts.Interval = time.Second
	}
	res := &Result{Warmup: opts.Warmup}
	ctx, cancel := context.WithTimeout(ctx, opts.Duration)
	defer cancel()

	clients, err := startQoS1(opts, res)
	if err != nil {
		return nil, err
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); churn(ctx, opts, res) }()
	go func() { defer wg.Done(); publish(ctx, opts, res, clients) }()

	start := time.Now()
	tick := time.NewTicker(opts.Interval)
	defer tick.Stop()
	for {
		s := Sample{At: time.Since(start), RSS: map[string]int64{}, FDs: map[string]int{}}
		for _, p := range opts.Watch {
			s.RSS[p.Name], s.FDs[p.Name] = rss(p.Pid), fds(p.Pid)
		}
		if opts.Gauge != nil {
			s.Waiting, _ = opts.Gauge()
		}
		res.Samples = append(res.Samples, s)
		select {
		case <-ctx.Done():
			wg.Wait()
			for _, c := range clients {
				c.Disconnect(250)
			}
			return res, nil
		case <-tick.C:
		}
	}
}

// startQoS1 connects the QoS 1 clients and subscribes each to its topic.
func startQoS1(opts Options, res *Result) ([]paho3.Client, error) {
	var clients []paho3.Client
	for i := range opts.QoS1Clients {
		id := fmt.Sprintf("soak-qos1-%03d", i)
		topic := "soak/" + id
		o := paho3.NewClientOptions().AddBroker("tcp://" + opts.Addr).SetClientID(id).SetCleanSession(true).
			SetAutoReconnect(false).SetConnectRetry(false).SetKeepAlive(30 * time.Second).
			SetConnectionLostHandler(func(paho3.Client, error) { atomic.AddInt64(&res.QoSErrors, 1) })
		c := paho3.NewClient(o)
		if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			return nil, fmt.Errorf("soak: QoS 1 client %s: %v", id, tok.Error())
		}
		tok := c.Subscribe(topic, 1, func(paho3.Client, paho3.Message) { atomic.AddInt64(&res.Received, 1) })
		if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			return nil, fmt.Errorf("soak: subscribe %s: %v", topic, tok.Error())
		}
		clients = append(clients, c)
	}
	return clients, nil
}

// publish sends each client's QoS 1 messages at the configured rate.
func publish(ctx context.Context, opts Options, res *Result, clients []paho3.Client) {
	if len(clients) == 0 || opts.QoS1Rate == 0 {
		return
	}
	tick := time.NewTicker(time.Second / time.Duration(opts.QoS1Rate))
	defer tick.Stop()
	payload := make([]byte, 64)
	for n := 0; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		for i, c := range clients {
			tok := c.Publish(fmt.Sprintf("soak/soak-qos1-%03d", i), 1, false, payload)
			go func() {
				if tok.WaitTimeout(10*time.Second) && tok.Error() == nil {
					atomic.AddInt64(&res.Published, 1)
				} else {
					atomic.AddInt64(&res.QoSErrors, 1)
				}
			}()
		}
	}
}

// churn opens ChurnRate connections a second, each for one CONNECT and
// CONNACK, from rotating loopback addresses.
func churn(ctx context.Context, opts Options, res *Result) {
	if opts.ChurnRate == 0 {
		return
	}
	tick := time.NewTicker(time.Second / time.Duration(opts.ChurnRate))
	defer tick.Stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for n := 0; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := connectOnce(opts.Addr, n); err != nil {
				atomic.AddInt64(&res.ChurnErrors, 1)
			} else {
				atomic.AddInt64(&res.Churned, 1)
			}
		}()
	}
}

func connectOnce(addr string, n int) error {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+n%249))}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	pkt := mqtt.AppendConnect(nil, &mqtt.ConnectPacket{Connect: mqtt.Connect{Level: mqtt.Level311, ClientID: fmt.Sprintf("soak-churn-%d", n), CleanStart: true}})
	if _, err := c.Write(pkt); err != nil {
		return err
	}
	typ, body, err := mqtt.ReadPacket(bufio.NewReaderSize(c, 16))
	if err != nil {
		return err
	}
	if typ != 0x20 || len(body) != 2 || body[1] != 0 {
		return fmt.Errorf("CONNACK %#x % x", typ, body)
	}
	return nil
}

// Drift is how a sampled quantity moved after the warm-up: the first
// post-warm-up value (the median of the first tenth of the samples, to
// smooth noise), and the largest and last values relative to it.
type Drift struct {
	First, Max, Last float64
	MaxPct, LastPct  float64 // (max-first)/first and (last-first)/first, in percent
}

// RSSDrift is the drift of a process's resident memory.
func (r *Result) RSSDrift(name string) Drift {
	return r.drift(func(s Sample) float64 { return float64(s.RSS[name]) })
}

// FDDrift is the drift of a process's open descriptors.
func (r *Result) FDDrift(name string) Drift {
	return r.drift(func(s Sample) float64 { return float64(s.FDs[name]) })
}

func (r *Result) drift(v func(Sample) float64) Drift {
	var after []float64
	for _, s := range r.Samples {
		if s.At >= r.Warmup {
			after = append(after, v(s))
		}
	}
	if len(after) == 0 {
		return Drift{}
	}
	head := slices.Clone(after[:max(1, len(after)/10)])
	slices.Sort(head)
	d := Drift{First: head[len(head)/2], Max: slices.Max(after), Last: after[len(after)-1]}
	if d.First > 0 {
		d.MaxPct, d.LastPct = 100*(d.Max-d.First)/d.First, 100*(d.Last-d.First)/d.First
	}
	return d
}

// rss is a process's resident memory in bytes, 0 when it has gone.
func rss(pid int) int64 {
	n, _ := procstat.RSS(pid)
	return n
}

// fds is how many files a process holds open, 0 when it has gone.
func fds(pid int) int {
	n, _ := procstat.OpenFiles(pid)
	return n
}
