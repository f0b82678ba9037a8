// Package faultproxy is an HTTP reverse proxy for tests that injects the
// failures a client of a remote object store must survive: 500 and 503
// SlowDown errors, responses held back past the client's timeout, connection
// resets (before or after the request reached the server), response
// bodies cut short, and a network partition (SetPartition) that cuts the
// client off the server until it is healed.
//
//	p := faultproxy.Start(t, srv.Endpoint, faultproxy.Options{Rate: 0.1, Seed: 1})
//	// point the client at p.URL instead of srv.Endpoint
//
// Requests are forwarded with their Host header intact, so signed requests
// (AWS SigV4) stay valid.
package faultproxy

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"
)

// Kind is one kind of fault.
type Kind int

const (
	// None forwards the request and returns the response unchanged.
	None Kind = iota
	// Error500 answers 500 InternalError without forwarding.
	Error500
	// SlowDown503 answers 503 SlowDown without forwarding.
	SlowDown503
	// Delay forwards the request (the server applies it) and holds the
	// response back for Options.Delay, or until the client gives up.
	Delay
	// ResetBefore resets the connection without forwarding.
	ResetBefore
	// ResetAfter forwards the request (the server applies it) and resets the
	// connection instead of answering: the client cannot tell whether the
	// request took effect.
	ResetAfter
	// Truncate forwards the request and sends the response's headers and
	// the first half of its body, then closes the connection. A response
	// without a body is reset instead.
	Truncate
)

// AllKinds lists every fault.
var AllKinds = []Kind{Error500, SlowDown503, Delay, ResetBefore, ResetAfter, Truncate}

func (k Kind) String() string {
	switch k {
	case None:
		return "none"
	case Error500:
		return "500"
	case SlowDown503:
		return "503-slowdown"
	case Delay:
		return "delay"
	case ResetBefore:
		return "reset-before"
	case ResetAfter:
		return "reset-after"
	case Truncate:
		return "truncate"
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// Options configure a Proxy.
type Options struct {
	// Rate is the probability that a request gets a fault.
	Rate float64
	// Kinds are the faults to pick from, uniformly (default AllKinds).
	Kinds []Kind
	// Delay is how long a Delay fault holds the response (default 2 s).
	Delay time.Duration
	// Seed seeds the fault choice.
	Seed uint64
	// Match, if set, limits faults to the requests it accepts.
	Match func(*http.Request) bool
}

// Proxy is a running fault-injecting proxy.
type Proxy struct {
	// URL is the proxy's base URL.
	URL string

	upstream string
	client   *http.Client
	srv      *httptest.Server

	mu      sync.Mutex // guards the fields below
	opts    Options
	rng     *rand.Rand
	forced  []Kind
	counts  map[Kind]int
	holding int // responses a Delay fault holds back now
	// partition is closed while the proxy is partitioned (SetPartition),
	// so that held responses can wait on it; a heal replaces it with a
	// fresh, open channel.
	partition   chan struct{}
	partitioned bool
	partDrops   int // requests and responses dropped by a partition
}

// Start starts a proxy to upstream (a base URL such as
// http://127.0.0.1:7070); it stops when t ends.
func Start(t testing.TB, upstream string, opts Options) *Proxy {
	t.Helper()
	if len(opts.Kinds) == 0 {
		opts.Kinds = AllKinds
	}
	if opts.Delay <= 0 {
		opts.Delay = 2 * time.Second
	}
	p := &Proxy{
		upstream:  upstream,
		opts:      opts,
		rng:       rand.New(rand.NewPCG(opts.Seed, opts.Seed^0x5851f42d4c957f2d)),
		counts:    map[Kind]int{},
		partition: make(chan struct{}),
		client: &http.Client{Transport: &http.Transport{
			Proxy:               nil,
			MaxIdleConns:        256,
			MaxIdleConnsPerHost: 64,
			DisableCompression:  true,
			IdleConnTimeout:     30 * time.Second,
		}},
	}
	p.srv = httptest.NewServer(p)
	p.URL = p.srv.URL
	t.Cleanup(p.Close)
	return p
}

// Close stops the proxy.
func (p *Proxy) Close() {
	p.srv.CloseClientConnections()
	p.srv.Close()
	p.client.CloseIdleConnections()
}

// SetRate changes the fault rate.
func (p *Proxy) SetRate(r float64) {
	p.mu.Lock()
	p.opts.Rate = r
	p.mu.Unlock()
}

// Force makes the next n matching requests fail with kind, whatever the rate.
func (p *Proxy) Force(kind Kind, n int) {
	p.mu.Lock()
	for i := 0; i < n; i++ {
		p.forced = append(p.forced, kind)
	}
	p.mu.Unlock()
}

// SetPartition cuts the proxy's clients off the upstream (on) or heals the
// cut (off). While partitioned, every new request has its connection reset
// before it is forwarded; a request being forwarded when the partition
// starts may still reach the upstream (as a request on the wire would), but
// its response is dropped and the connection reset, and so are responses a
// Delay fault holds back. Idle keep-alive connections are closed when the
// partition starts. Healing lets new requests through again. Faults chosen
// by rate or Force apply only to requests the partition lets through.
func (p *Proxy) SetPartition(on bool) {
	p.mu.Lock()
	if on == p.partitioned {
		p.mu.Unlock()
		return
	}
	p.partitioned = on
	if on {
		close(p.partition)
	} else {
		p.partition = make(chan struct{})
	}
	p.mu.Unlock()
	if on {
		// Idle connections would otherwise carry the next request in;
		// it would be reset anyway, but closing them now models the cut.
		p.srv.CloseClientConnections()
	}
}

// Partitioned reports whether the proxy is partitioned now.
func (p *Proxy) Partitioned() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.partitioned
}

// PartitionDrops returns how many requests or responses a partition has
// dropped so far.
func (p *Proxy) PartitionDrops() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.partDrops
}

// cut reports whether the proxy is partitioned and, if so, counts a drop.
// It also returns the channel that closes when a partition starts.
func (p *Proxy) cut() (bool, <-chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.partitioned {
		p.partDrops++
	}
	return p.partitioned, p.partition
}

// Counts returns how many requests got each kind of fault (None included).
func (p *Proxy) Counts() map[Kind]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	c := make(map[Kind]int, len(p.counts))
	for k, v := range p.counts {
		c[k] = v
	}
	return c
}

// Holding returns how many responses Delay faults are holding back now:
// forwarded, answered by the upstream, and not yet sent to the client.
func (p *Proxy) Holding() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.holding
}

// Faults returns the number of faults injected so far.
func (p *Proxy) Faults() int {
	n := 0
	for k, v := range p.Counts() {
		if k != None {
			n += v
		}
	}
	return n
}

func (p *Proxy) pick(r *http.Request) Kind {
	p.mu.Lock()
	defer p.mu.Unlock()
	k := None
	if p.opts.Match == nil || p.opts.Match(r) {
		if len(p.forced) > 0 {
			k, p.forced = p.forced[0], p.forced[1:]
		} else if p.rng.Float64() < p.opts.Rate {
			k = p.opts.Kinds[p.rng.IntN(len(p.opts.Kinds))]
		}
	}
	p.counts[k]++
	return k
}

var hopByHop = map[string]bool{
	"Connection": true, "Keep-Alive": true, "Proxy-Authenticate": true, "Proxy-Authorization": true,
	"Proxy-Connection": true, "Te": true, "Trailer": true, "Transfer-Encoding": true, "Upgrade": true,
	"Expect": true,
}

func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if cut, _ := p.cut(); cut {
		reset(w)
		return
	}
	body, err := readAll(r.Body, r.ContentLength)
	if err != nil {
		reset(w)
		return
	}
	kind := p.pick(r)
	switch kind {
	case Error500:
		s3Error(w, http.StatusInternalServerError, "InternalError", "injected fault")
		return
	case SlowDown503:
		s3Error(w, http.StatusServiceUnavailable, "SlowDown", "injected fault: please reduce your request rate")
		return
	case ResetBefore:
		reset(w)
		return
	}
	resp, respBody, err := p.forward(r, body)
	cut, partition := p.cut()
	if cut {
		reset(w) // the partition started while the request was forwarded
		return
	}
	if err != nil {
		http.Error(w, "faultproxy: upstream: "+err.Error(), http.StatusBadGateway)
		return
	}
	switch kind {
	case ResetAfter:
		reset(w)
		return
	case Truncate:
		if len(respBody) < 2 {
			reset(w)
			return
		}
		truncate(w, resp, respBody)
		return
	case Delay:
		t := time.NewTimer(p.opts.Delay)
		defer t.Stop()
		p.mu.Lock()
		p.holding++
		p.mu.Unlock()
		defer func() {
			p.mu.Lock()
			p.holding--
			p.mu.Unlock()
		}()
		select {
		case <-t.C:
		case <-r.Context().Done():
			return
		case <-partition:
			p.mu.Lock()
			p.partDrops++
			p.mu.Unlock()
			reset(w)
			return
		}
	}
	for k, vs := range resp.Header {
		if !hopByHop[k] {
			w.Header()[k] = vs
		}
	}
	w.WriteHeader(resp.StatusCode)
	_, _ = w.Write(respBody)
}

func (p *Proxy) forward(r *http.Request, body []byte) (*http.Response, []byte, error) {
	req, err := http.NewRequestWithContext(r.Context(), r.Method, p.upstream+r.URL.RequestURI(), bytes.NewReader(body))
	if err != nil {
		return nil, nil, err
	}
	for k, vs := range r.Header {
		if !hopByHop[k] {
			req.Header[k] = vs
		}
	}
	req.Host = r.Host
	req.ContentLength = int64(len(body))
	if len(body) == 0 && r.ContentLength <= 0 {
		req.Body = http.NoBody
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	b, err := readAll(resp.Body, resp.ContentLength)
	if err != nil {
		return nil, nil, err
	}
	return resp, b, nil
}

// readAll reads r to the end into a buffer sized for the expected length
// (fewer copies: these tests move hundreds of MiB under the race detector).
func readAll(r io.Reader, size int64) ([]byte, error) {
	if size < 0 || size > 1<<30 {
		size = 0
	}
	buf := bytes.NewBuffer(make([]byte, 0, size+1))
	_, err := buf.ReadFrom(r)
	return buf.Bytes(), err
}

func s3Error(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/xml")
	w.WriteHeader(status)
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?>`+"\n"+
		`<Error><Code>%s</Code><Message>%s</Message><RequestId>faultproxy</RequestId></Error>`, code, msg)
}

// reset closes the client's connection with a TCP RST.
func reset(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = conn.Close()
}

// truncate writes resp's status and headers (with the full Content-Length)
// and the first half of its body, then closes the connection.
func truncate(w http.ResponseWriter, resp *http.Response, body []byte) {
	conn, buf, err := http.NewResponseController(w).Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	defer conn.Close()
	bw := bufio.NewWriter(conn)
	if buf != nil {
		bw = buf.Writer
	}
	fmt.Fprintf(bw, "HTTP/1.1 %s\r\n", resp.Status)
	for k, vs := range resp.Header {
		if hopByHop[k] || k == "Content-Length" {
			continue
		}
		for _, v := range vs {
			fmt.Fprintf(bw, "%s: %s\r\n", k, v)
		}
	}
	fmt.Fprintf(bw, "Content-Length: %d\r\nConnection: close\r\n\r\n", len(body))
	_, _ = bw.Write(body[:len(body)/2])
	_ = bw.Flush()
}
