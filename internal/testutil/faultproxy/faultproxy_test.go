package faultproxy

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/viperblock/viperblock-csi/internal/testutil"
)

func TestKinds(t *testing.T) {
	var hits atomic.Int64
	var lastHost atomic.Value
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		lastHost.Store(r.Host)
		b, _ := io.ReadAll(r.Body)
		w.Write([]byte("echo:" + string(b) + strings.Repeat(".", 1000)))
	}))
	defer up.Close()
	// A Delay holds its response far longer than the test waits: the
	// client gives up (cancels) once the request reached the upstream.
	// Every other request gets a generous timeout, as a loaded machine
	// can take a while to answer.
	p := Start(t, up.URL, Options{Delay: time.Hour})
	c := &http.Client{Timeout: time.Minute, Transport: &http.Transport{DisableKeepAlives: true}}
	do := func(k Kind) (status int, body string, err error) {
		t.Helper()
		if k != None {
			p.Force(k, 1)
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		var held chan error
		if k == Delay {
			// Give up once the proxy holds the upstream's answer back.
			held = make(chan error, 1)
			go func() {
				held <- testutil.WaitFor(ctx, time.Minute, func() (bool, error) { return p.Holding() > 0, nil })
				cancel()
			}()
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.URL+"/x?y=1", strings.NewReader("hi"))
		if err != nil {
			return 0, "", err
		}
		req.Header.Set("Content-Type", "text/plain")
		resp, err := c.Do(req)
		if held != nil {
			if err := <-held; err != nil {
				t.Errorf("delay: the proxy did not hold the response back: %v", err)
			}
		}
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), err
	}
	for _, c := range []struct {
		kind       Kind
		status     int
		bodyPrefix string
		wantErr    bool
		forwarded  bool
	}{
		{None, 200, "echo:hi", false, true},
		{Error500, 500, "<?xml", false, false},
		{SlowDown503, 503, "<?xml", false, false},
		{ResetBefore, 0, "", true, false},
		{ResetAfter, 0, "", true, true},
		{Truncate, 200, "echo:hi", true, true},
		{Delay, 0, "", true, true},
	} {
		before := hits.Load()
		status, body, err := do(c.kind)
		if (err != nil) != c.wantErr || status != c.status || !strings.HasPrefix(body, c.bodyPrefix) {
			t.Errorf("%v: status %d body %.20q err %v; want status %d body %q error %v", c.kind, status, body, err, c.status, c.bodyPrefix, c.wantErr)
		}
		if c.kind == Truncate && !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("truncate: error %v, want unexpected EOF", err)
		}
		if fwd := hits.Load() > before; fwd != c.forwarded {
			t.Errorf("%v: forwarded = %v, want %v", c.kind, fwd, c.forwarded)
		}
	}
	if h, _ := lastHost.Load().(string); h != strings.TrimPrefix(p.URL, "http://") {
		t.Errorf("upstream saw Host %q, want the proxy's %q", h, strings.TrimPrefix(p.URL, "http://"))
	}
	p.SetRate(1)
	if _, _, err := do(None); err == nil {
		// With rate 1 every request gets some fault; most kinds error.
		t.Logf("rate 1 request succeeded (a 500/503 answer is not a transport error)")
	}
	if p.Faults() < 7 {
		t.Errorf("Faults() = %d, want at least 7", p.Faults())
	}
}

// TestPartition checks SetPartition: while on, no new request reaches the
// upstream and every client sees a transport error; a request in flight
// when the partition starts may reach the upstream but gets no answer, and
// neither does a response a Delay fault holds; healing restores service.
func TestPartition(t *testing.T) {
	var hits atomic.Int64
	release := make(chan struct{})
	var blockNext atomic.Bool
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		if blockNext.CompareAndSwap(true, false) {
			<-release
		}
		w.Write([]byte("ok"))
	}))
	defer up.Close()
	p := Start(t, up.URL, Options{Delay: time.Hour})
	// Keep-alive on: a partition must also cut connections the client
	// already holds.
	c := &http.Client{Timeout: time.Minute}
	get := func() error {
		resp, err := c.Get(p.URL + "/k")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err == nil && string(b) != "ok" {
			err = errors.New("unexpected body " + string(b))
		}
		return err
	}
	if err := get(); err != nil {
		t.Fatalf("before the partition: %v", err)
	}

	// New requests are reset without reaching the upstream.
	p.SetPartition(true)
	if !p.Partitioned() {
		t.Fatal("Partitioned() = false after SetPartition(true)")
	}
	before := hits.Load()
	for i := 0; i < 3; i++ {
		if err := get(); err == nil {
			t.Fatal("a request succeeded through a partition")
		}
	}
	if hits.Load() != before {
		t.Errorf("the upstream saw %d requests through a partition", hits.Load()-before)
	}
	p.SetPartition(false)
	if err := get(); err != nil {
		t.Fatalf("after healing: %v", err)
	}

	// A request in flight when the partition starts reaches the upstream,
	// but its answer is dropped.
	blockNext.Store(true)
	before = hits.Load()
	errc := make(chan error, 1)
	go func() { errc <- get() }()
	testutil.Eventually(t, time.Minute, "the request to reach the upstream", func() (bool, error) { return hits.Load() > before, nil })
	p.SetPartition(true)
	close(release)
	if err := <-errc; err == nil {
		t.Error("an in-flight request got its answer through a partition")
	}
	p.SetPartition(false)

	// A response a Delay fault holds is dropped when the partition starts.
	p.Force(Delay, 1)
	go func() { errc <- get() }()
	testutil.Eventually(t, time.Minute, "the proxy to hold a response", func() (bool, error) { return p.Holding() > 0, nil })
	p.SetPartition(true)
	if err := <-errc; err == nil {
		t.Error("a held response was delivered through a partition")
	}
	p.SetPartition(false)
	if err := get(); err != nil {
		t.Fatalf("after the last heal: %v", err)
	}
	if p.PartitionDrops() < 5 {
		t.Errorf("PartitionDrops() = %d, want at least 5", p.PartitionDrops())
	}
}
