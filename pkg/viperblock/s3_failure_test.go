package viperblock_test

// Failure tests of the engine on a real S3 server (versitygw): a lossy
// network (a fault-injecting proxy), split brain between two nodes, and an
// unreachable backend at open and during writes.

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/viperblock/viperblock-csi/internal/testutil"
	"github.com/viperblock/viperblock-csi/internal/testutil/faultproxy"
	"github.com/viperblock/viperblock-csi/internal/testutil/s3server"
	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
)

// regionData fills p with the content of generation gen of region r under
// seed: the test data is recomputed for checking instead of kept.
func regionData(p []byte, seed uint64, r int, gen uint32) {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[0:], seed)
	binary.LittleEndian.PutUint64(key[8:], uint64(r))
	binary.LittleEndian.PutUint32(key[16:], gen)
	_, _ = rand.NewChaCha8(key).Read(p)
}

// faultSeed is VB_FAULT_SEED or the clock, logged for reruns.
func faultSeed(t *testing.T) uint64 {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("VB_FAULT_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("VB_FAULT_SEED: %v", err)
		}
		seed = v
	}
	t.Logf("fault seed %d (rerun with VB_FAULT_SEED=%d)", seed, seed)
	return seed
}

// logCounter is a slog.Handler that counts the engine's warnings and errors
// by message and keeps the first few.
type logCounter struct {
	mu    sync.Mutex
	n     map[string]int
	first []string
}

func (h *logCounter) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }
func (h *logCounter) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.n == nil {
		h.n = map[string]int{}
	}
	h.n[r.Message]++
	if len(h.first) < 5 {
		msg := r.Level.String() + " " + r.Message
		r.Attrs(func(a slog.Attr) bool { msg += " " + a.String(); return true })
		h.first = append(h.first, msg)
	}
	return nil
}
func (h *logCounter) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *logCounter) WithGroup(string) slog.Handler      { return h }

// count returns how many records had message msg.
func (h *logCounter) count(msg string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.n[msg]
}

// summary returns the counts by message and the first few records.
func (h *logCounter) summary() (map[string]int, []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := make(map[string]int, len(h.n))
	for k, v := range h.n {
		n[k] = v
	}
	return n, append([]string(nil), h.first...)
}

// drainFailedMsg is the engine's warning when a background drain fails.
const drainFailedMsg = "drain failed; retrying"

// TestS3FaultInjection writes 1 GiB (64 MiB with -short) through a volume
// whose store reaches versitygw through a proxy that fails 10% of all
// requests in every way it knows (500, 503 SlowDown, responses held past the
// attempt timeout, connection resets before and after the server applied
// the request, truncated bodies), with drains running all along. The volume
// then drains, and once the faults stop it closes cleanly; a new node,
// reading through the same faults, finds every block with its last written
// content.
func TestS3FaultInjection(t *testing.T) {
	t.Parallel()
	const region = 1 << 20 // unit of writing and checking
	total, volSize := int64(1<<30), int64(768<<20)
	if testing.Short() {
		total, volSize = 64<<20, 48<<20
	}
	srv := s3server.Start(t)
	seed := faultSeed(t)
	p := faultproxy.Start(t, srv.Endpoint, faultproxy.Options{Rate: 0.1, Seed: seed, Delay: 30 * time.Second})
	storeURL := s3server.StoreURL(srv.Bucket, "faults", p.URL, srv.CredentialsFile,
		"max_attempts=10", "timeout=3s", "max_backoff=200ms")
	st := openS3(t, storeURL)
	logs := &logCounter{}
	o := vb.Options{
		WALDir: t.TempDir(), CacheBlocks: 1024, Logger: slog.New(logs),
		DrainInterval: 200 * time.Millisecond, DrainBytes: 32 << 20, MaxPendingBytes: 128 << 20,
	}
	ctx := context.Background()
	start := time.Now()
	v := mustCreate(t, st, "v", volSize, o)
	defer v.Close()

	// Two writers, each owning every other region: a first pass writes the
	// whole volume, then random regions are rewritten (a newer generation)
	// until total bytes were written.
	nRegions := int(volSize / region)
	gens := make([]uint32, nRegions)
	var written atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, 2)
	writer := func(w int, pass1 bool) {
		defer wg.Done()
		buf := make([]byte, region)
		rng := rand.New(rand.NewPCG(seed, uint64(w)))
		for i := 0; ; i++ {
			r := w + 2*i
			if pass1 {
				if r >= nRegions {
					return
				}
			} else {
				if written.Load() >= total {
					return
				}
				r = w + 2*rng.IntN(nRegions/2)
			}
			gens[r]++
			regionData(buf, seed, r, gens[r])
			if _, err := v.WriteAt(buf, int64(r)*region); err != nil {
				errc <- fmt.Errorf("write region %d: %w", r, err)
				return
			}
			if written.Add(region)%(32<<20) == 0 {
				if err := v.Flush(); err != nil {
					errc <- fmt.Errorf("flush: %w", err)
					return
				}
			}
		}
	}
	for _, pass1 := range []bool{true, false} {
		if !pass1 {
			burst(t, v, p, logs, func(r int, buf []byte) {
				gens[r]++
				regionData(buf, seed, r, gens[r])
			})
		}
		wg.Add(2)
		go writer(0, pass1)
		go writer(1, pass1)
		wg.Wait()
		select {
		case err := <-errc:
			t.Fatalf("%v (volume stats %+v)", err, v.Stats())
		default:
		}
		// An explicit drain through the faults succeeds: the store's retries
		// absorb them.
		dctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
		err := v.Drain(dctx)
		cancel()
		if err != nil {
			t.Fatalf("drain through 10%% faults: %v (volume stats %+v, store stats %+v)", err, v.Stats(), st.Stats())
		}
		if s := v.Stats(); s.PendingBytes != 0 {
			t.Fatalf("%d bytes pending after a successful drain", s.PendingBytes)
		}
	}
	writeTime := time.Since(start)
	faultsWhileWriting := p.Counts()
	storeStats := st.Stats()

	// The faults stop: the volume closes cleanly.
	p.SetRate(0)
	if err := v.Close(); err != nil {
		t.Fatalf("close after the faults stopped: %v", err)
	}
	vs := v.Stats()
	warns, firstWarns := logs.summary()
	t.Logf("wrote %d MiB and drained in %v (%.0f MB/s): %d drains, %d drain errors, %d chunks (%d MiB) uploaded",
		written.Load()>>20, writeTime.Round(time.Millisecond), float64(written.Load())/1e6/writeTime.Seconds(),
		vs.Drains, vs.DrainErrors, vs.ChunksPut, vs.BytesDrained>>20)
	t.Logf("store: %+v; proxy faults: %v", storeStats, faultsWhileWriting)
	t.Logf("engine warnings: %v, first %q", warns, firstWarns)
	if warns[drainFailedMsg] == 0 || vs.DrainErrors == 0 {
		t.Fatalf("the failed drain during the burst is not visible: %d %q warnings, %d drain errors", warns[drainFailedMsg], drainFailedMsg, vs.DrainErrors)
	}
	if storeStats.Retries == 0 || p.Faults() == 0 {
		t.Fatalf("no retries (%d) or no faults (%d): the test tested nothing", storeStats.Retries, p.Faults())
	}
	if vs.Drains < 2 || vs.ChunksPut < uint64(volSize/(4<<20)) {
		t.Fatalf("only %d drains and %d chunks uploaded for %d MiB written", vs.Drains, vs.ChunksPut, written.Load()>>20)
	}

	// A new node reads every block back through the faults.
	p.SetRate(0.1)
	inf, err := vb.Inspect(ctx, st, "v")
	if err != nil {
		t.Fatal(err)
	}
	if inf.WrittenBytes != volSize || inf.Size != volSize {
		t.Fatalf("backend maps %d of %d bytes (size %d)", inf.WrittenBytes, volSize, inf.Size)
	}
	p.Force(faultproxy.Truncate, 2) // at least these on the read path
	readStart := time.Now()
	st2 := openS3(t, storeURL)
	r, err := vb.Open(ctx, st2, "v", vb.Options{ReadOnly: true, CacheBlocks: 1024})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var bad atomic.Int64
	next := make(chan int)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, want := make([]byte, region), make([]byte, region)
			for i := range next {
				if _, err := r.ReadAt(got, int64(i)*region); err != nil {
					t.Errorf("read region %d: %v", i, err)
					bad.Add(1)
					continue
				}
				regionData(want, seed, i, gens[i])
				if !bytes.Equal(got, want) {
					for b := 0; b < region; b += vb.BlockSize {
						if !bytes.Equal(got[b:b+vb.BlockSize], want[b:b+vb.BlockSize]) {
							t.Errorf("block %d (region %d, generation %d) lost or corrupt", (i*region+b)/vb.BlockSize, i, gens[i])
							break
						}
					}
					bad.Add(1)
				}
			}
		}()
	}
	for i := 0; i < nRegions && bad.Load() < 5; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
	t.Logf("read back %d MiB through the faults in %v; store %+v", volSize>>20, time.Since(readStart).Round(time.Millisecond), st2.Stats())
	if bad.Load() > 0 {
		t.Fatalf("%d regions differ", bad.Load())
	}
	if st2.Stats().Retries == 0 {
		t.Fatal("the read-back saw no retries: the faults did not reach the read path")
	}
}

// burst makes 50 requests in a row fail, more than the store's 10
// attempts, while a drain of 8 rewritten regions runs: the drain fails at
// the engine level, is counted and logged, and the drain loop retries it
// until it succeeds.
func burst(t *testing.T, v *vb.Volume, p *faultproxy.Proxy, logs *logCounter, rewrite func(r int, buf []byte)) {
	t.Helper()
	const n = 50
	before := p.Counts()[faultproxy.Error500]
	p.Force(faultproxy.Error500, n)
	buf := make([]byte, 1<<20)
	for r := 0; r < 8; r++ {
		rewrite(r, buf)
		if _, err := v.WriteAt(buf, int64(r)<<20); err != nil {
			t.Fatal(err)
		}
	}
	testutil.Eventually(t, time.Minute, fmt.Sprintf("a failed drain after %d forced faults", n), func() (bool, error) {
		consumed, st := p.Counts()[faultproxy.Error500]-before, v.Stats()
		return st.DrainErrors > 0 && logs.count(drainFailedMsg) > 0 && consumed >= n,
			fmt.Errorf("%d faults consumed; stats %+v", consumed, st)
	})
	testutil.Eventually(t, time.Minute, "the drain loop to recover from the burst", func() (bool, error) {
		st := v.Stats()
		return st.PendingBytes == 0, fmt.Errorf("stats %+v", st)
	})
	t.Logf("burst of %d failures: %d drain errors, %d %q warnings", n, v.Stats().DrainErrors, logs.count(drainFailedMsg), drainFailedMsg)
}

// blockData is the content of a block written by writer w (its version n).
func blockData(w byte, b uint64, n int) []byte {
	d := make([]byte, vb.BlockSize)
	for i := 0; i < len(d); i += 16 {
		d[i] = w
		binary.LittleEndian.PutUint64(d[i+1:], b)
		binary.LittleEndian.PutUint32(d[i+9:], uint32(n))
	}
	return d
}

// TestS3SplitBrain: two nodes write the same volume at the same time. The
// one that opened it later owns it: the older one is fenced on its next
// commit and stops accepting writes, and the volume ends up holding exactly
// the newer writer's view, which includes what the older one committed
// before the takeover and nothing it wrote after.
func TestS3SplitBrain(t *testing.T) {
	t.Parallel()
	srv := s3server.Start(t)
	u := srv.URL("split")
	ctx := context.Background()
	const blocks = 256
	nodeA, nodeB := openS3(t, u), openS3(t, u)
	walA, walB := t.TempDir(), t.TempDir()
	fast := func(dir string) vb.Options {
		return vb.Options{WALDir: dir, CacheBlocks: 64, DrainInterval: 10 * time.Millisecond, DrainBytes: 256 << 10, Logger: quiet(), LeaseDuration: time.Second}
	}
	a := mustCreate(t, nodeA, "v", blocks*vb.BlockSize, fast(walA))
	defer a.Close()
	// What the backend holds when B takes over: A's committed writes.
	want := make([][]byte, blocks)
	for b := uint64(0); b < blocks; b += 3 {
		want[b] = blockData('A', b, 0)
		if _, err := a.WriteAt(want[b], int64(b)*vb.BlockSize); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Drain(ctx); err != nil {
		t.Fatal(err)
	}

	// A stops renewing its lease (paused, as far as the store can tell)
	// but goes on writing; B waits the lease out and takes over.
	vb.PauseLeaseForTest(a)
	ob := fast(walB)
	ob.LeaseDuration = 10 * time.Second // nothing waits for B's expiry; its drains must confirm it on a busy server
	b, err := vb.Open(ctx, nodeB, "v", ob)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if b.Epoch() <= a.Epoch() {
		t.Fatalf("B's epoch %d is not newer than A's %d", b.Epoch(), a.Epoch())
	}

	// Both write at once, to overlapping blocks, with their drain loops
	// committing every few milliseconds.
	var wg sync.WaitGroup
	var aAfter, aFlushed, aFenced atomic.Int64
	var aErr error
	wg.Add(2)
	go func() { // A, until it finds out it was fenced
		defer wg.Done()
		rng := rand.New(rand.NewPCG(1, 1))
		// Its drain loop commits every 10 ms and is fenced at its first
		// commit after B's open; the deadline only bounds a broken fence.
		deadline := time.Now().Add(2 * time.Minute)
		for n := 1; time.Now().Before(deadline); n++ {
			blk := rng.Uint64N(blocks)
			_, err := a.WriteAt(blockData('A', blk, n), int64(blk)*vb.BlockSize)
			if errors.Is(err, vb.ErrFenced) {
				aFenced.Store(1)
				return
			}
			if err != nil {
				aErr = err
				return
			}
			aAfter.Add(1)
			if n%16 == 0 {
				// Durable in A's WAL: it must still never reach the volume.
				err := a.Flush()
				if errors.Is(err, vb.ErrFenced) {
					aFenced.Store(1)
					return
				}
				if err != nil {
					aErr = err
					return
				}
				aFlushed.Add(1)
				time.Sleep(time.Millisecond) // not synchronisation: paces A's writes
			}
		}
	}()
	go func() { // B
		defer wg.Done()
		rng := rand.New(rand.NewPCG(2, 2))
		for n := 1; n <= 1000; n++ {
			blk := rng.Uint64N(blocks)
			d := blockData('B', blk, n)
			if _, err := b.WriteAt(d, int64(blk)*vb.BlockSize); err != nil {
				t.Errorf("B write: %v", err)
				return
			}
			want[blk] = d
			if n%250 == 0 {
				if err := b.Drain(ctx); err != nil {
					t.Errorf("B drain: %v", err)
					return
				}
			}
		}
	}()
	wg.Wait()
	if aErr != nil {
		t.Fatalf("A failed with %v, want ErrFenced", aErr)
	}
	if aFenced.Load() == 0 {
		t.Fatalf("A was never fenced (%d writes accepted after B took over; stats %+v)", aAfter.Load(), a.Stats())
	}
	t.Logf("A accepted %d writes (%d flushes) after the takeover before it was fenced", aAfter.Load(), aFlushed.Load())
	if s := a.Stats(); !s.Fenced || !strings.Contains(s.LastDrainErr, "fenced") {
		t.Fatalf("A's stats do not say it is fenced: %+v", s)
	}
	if err := a.Drain(ctx); !errors.Is(err, vb.ErrFenced) {
		t.Fatalf("A's drain: %v, want ErrFenced", err)
	}
	if _, err := a.WriteAt(make([]byte, vb.BlockSize), 0); !errors.Is(err, vb.ErrFenced) {
		t.Fatalf("A's write after the fence: %v, want ErrFenced", err)
	}
	if err := a.Trim(0, vb.BlockSize); !errors.Is(err, vb.ErrFenced) {
		t.Fatalf("A's trim after the fence: %v, want ErrFenced", err)
	}
	if err := a.Close(); !errors.Is(err, vb.ErrFenced) {
		t.Fatalf("A's close: %v, want ErrFenced", err)
	}

	wantImage := make([]byte, blocks*vb.BlockSize)
	for i, d := range want {
		copy(wantImage[i*vb.BlockSize:], d)
	}
	if !bytes.Equal(readAll(t, b), wantImage) {
		t.Fatal("B's view is not its own writes over A's pre-takeover commits")
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	check := func(what string, v *vb.Volume) {
		t.Helper()
		got := readAll(t, v)
		for i := 0; i < blocks; i++ {
			g := got[i*vb.BlockSize : (i+1)*vb.BlockSize]
			if w := wantImage[i*vb.BlockSize : (i+1)*vb.BlockSize]; !bytes.Equal(g, w) {
				t.Fatalf("%s: block %d holds %q v%d, want %q v%d", what, i,
					g[0], binary.LittleEndian.Uint32(g[9:]), w[0], binary.LittleEndian.Uint32(w[9:]))
			}
		}
	}
	// A third node sees B's view.
	c, err := vb.Open(ctx, openS3(t, u), "v", vb.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	check("third node", c)
	c.Close()
	// A's node opens the volume again: its WAL (with the writes that were
	// never committed) is stale, set aside and not replayed.
	a2, err := vb.Open(ctx, nodeA, "v", fast(walA))
	if err != nil {
		t.Fatal(err)
	}
	check("A's node again", a2)
	if err := a2.Close(); err != nil {
		t.Fatal(err)
	}
	if stale, _ := filepath.Glob(filepath.Join(walA, "v", "stale-*")); len(stale) == 0 && aFlushed.Load() > 0 {
		t.Fatal("A's stale WAL (flushed, never committed) was not kept aside")
	}

	// Two nodes open at the same moment: one takes the lease, the other
	// asks it to release and gets the volume once it has; the older
	// (lower epoch) then fails writes and drains with ErrFenced.
	type opened struct {
		v   *vb.Volume
		err error
	}
	res := make([]opened, 2)
	var ready sync.WaitGroup
	ready.Add(2)
	for i := range res {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st := openS3(t, u)
			ready.Done()
			ready.Wait()
			v, err := vb.Open(ctx, st, "v", fast(t.TempDir()))
			res[i] = opened{v, err}
		}()
	}
	wg.Wait()
	var owners []*vb.Volume
	for _, r := range res {
		switch {
		case r.err == nil:
			owners = append(owners, r.v)
			defer r.v.Close()
		case !errors.Is(r.err, vb.ErrFenced):
			t.Fatalf("racing open: %v", r.err)
		}
	}
	if len(owners) == 0 {
		t.Fatal("both racing opens failed")
	}
	if len(owners) == 2 && owners[0].Epoch() > owners[1].Epoch() {
		owners[0], owners[1] = owners[1], owners[0]
	}
	newest := owners[len(owners)-1]
	if len(owners) == 2 {
		if _, err := owners[0].WriteAt(blockData('X', 1, 1), vb.BlockSize); err != nil && !errors.Is(err, vb.ErrFenced) {
			t.Fatal(err)
		}
		if err := owners[0].Drain(ctx); !errors.Is(err, vb.ErrFenced) {
			t.Fatalf("the older of two racing opens committed: %v", err)
		}
	}
	if _, err := newest.WriteAt(blockData('Y', 2, 1), 2*vb.BlockSize); err != nil {
		t.Fatal(err)
	}
	if err := newest.Drain(ctx); err != nil {
		t.Fatalf("the newest owner's drain: %v", err)
	}
	copy(wantImage[2*vb.BlockSize:], blockData('Y', 2, 1))
	check("the newest racing owner", newest)
}

// unreachableStore returns an S3 store whose endpoint is addr, failing fast:
// two attempts of at most 300 ms each.
func unreachableStore(t *testing.T, addr string) backend.Store {
	t.Helper()
	creds := filepath.Join(t.TempDir(), "creds.env")
	if err := os.WriteFile(creds, []byte("AWS_ACCESS_KEY_ID=AKIDTEST\nAWS_SECRET_ACCESS_KEY=secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return openS3(t, s3server.StoreURL("bucket", "p", "http://"+addr, creds, "max_attempts=2", "timeout=300ms", "max_backoff=50ms"))
}

// blackHole listens on 127.0.0.1, accepts connections, reads what they send
// and never answers; it returns its address.
func blackHole(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			go func() { _, _ = io.Copy(io.Discard, c) }()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return l.Addr().String()
}

// TestS3UnreachableAtOpen: with nothing listening at the endpoint, or a
// server that accepts connections and never answers, Open and Create fail
// quickly with an error that says what went wrong; they neither hang nor
// claim the volume is missing or exists.
func TestS3UnreachableAtOpen(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := l.Addr().String()
	l.Close()

	hole := blackHole(t)

	// Two attempts take well under a second here; the bounds leave room
	// for a loaded machine (this test runs beside the fault-injection
	// tests) while still catching a hang or the store's default retries
	// (8 attempts of up to a minute).
	for _, tc := range []struct {
		name, addr, cause string
		max               time.Duration
	}{
		{"closed-port", closedAddr, "connection refused", 15 * time.Second},
		{"no-answer", hole, "timed out", 15 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := unreachableStore(t, tc.addr)
			for _, op := range []struct {
				name string
				fn   func() error
			}{
				{"Open", func() error {
					_, err := vb.Open(ctx, st, "v", vb.Options{WALDir: t.TempDir()})
					return err
				}},
				{"OpenReadOnly", func() error { _, err := vb.Open(ctx, st, "v", vb.Options{ReadOnly: true}); return err }},
				{"Create", func() error { _, err := vb.Create(ctx, st, "v", 1<<20, vb.Options{WALDir: t.TempDir()}); return err }},
			} {
				start := time.Now()
				err := op.fn()
				took := time.Since(start)
				t.Logf("%s took %v: %v", op.name, took.Round(time.Millisecond), err)
				if err == nil {
					t.Fatalf("%s against an unreachable backend succeeded", op.name)
				}
				if errors.Is(err, vb.ErrNotFound) || errors.Is(err, vb.ErrExists) || errors.Is(err, backend.ErrNotFound) {
					t.Fatalf("%s: an unreachable backend reported as a volume state: %v", op.name, err)
				}
				if !strings.Contains(err.Error(), tc.cause) || !strings.Contains(err.Error(), "v/manifest") {
					t.Fatalf("%s: error does not name the object and the cause (%q): %v", op.name, tc.cause, err)
				}
				if took > tc.max {
					t.Fatalf("%s took %v to fail, want < %v", op.name, took, tc.max)
				}
			}
		})
	}

	// With the store's default retries (8 attempts of up to a minute), the
	// caller's deadline still bounds Open.
	t.Run("caller-deadline", func(t *testing.T) {
		creds := filepath.Join(t.TempDir(), "creds.env")
		if err := os.WriteFile(creds, []byte("AWS_ACCESS_KEY_ID=AKIDTEST\nAWS_SECRET_ACCESS_KEY=secret\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		st := openS3(t, s3server.StoreURL("bucket", "p", "http://"+hole, creds))
		dctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		start := time.Now()
		_, err := vb.Open(dctx, st, "v", vb.Options{WALDir: t.TempDir()})
		took := time.Since(start)
		t.Logf("Open took %v: %v", took.Round(time.Millisecond), err)
		if err == nil || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Open under a 1 s deadline: %v, want a DeadlineExceeded error", err)
		}
		if took > 15*time.Second {
			t.Fatalf("Open took %v under a 1 s deadline", took)
		}
	})
}

// outage sets up a volume on versitygw behind a proxy that can make every
// request fail (connection resets, 503 SlowDown, 500), with small limits:
// drains start at 256 KiB pending, writers wait at 1 MiB.
func outage(t *testing.T) (*s3server.Server, *faultproxy.Proxy, string, vb.Options, *logCounter) {
	t.Helper()
	srv := s3server.Start(t)
	p := faultproxy.Start(t, srv.Endpoint, faultproxy.Options{
		Kinds: []faultproxy.Kind{faultproxy.ResetBefore, faultproxy.SlowDown503, faultproxy.Error500},
		Seed:  1,
	})
	u := s3server.StoreURL(srv.Bucket, "outage", p.URL, srv.CredentialsFile, "max_attempts=3", "timeout=2s", "max_backoff=50ms")
	logs := &logCounter{}
	o := vb.Options{
		WALDir: t.TempDir(), CacheBlocks: 64, Logger: slog.New(logs),
		DrainInterval: 50 * time.Millisecond, DrainBytes: 256 << 10, MaxPendingBytes: 1 << 20,
	}
	return srv, p, u, o, logs
}

// blockedWriter writes n 64 KiB writes of generation-1 region data (region
// size 64 KiB) in a goroutine, counting acknowledged bytes.
type blockedWriter struct {
	acked atomic.Int64
	done  chan error
}

const outageWrite = 64 << 10

func startWriter(v *vb.Volume, seed uint64, n int) *blockedWriter {
	w := &blockedWriter{done: make(chan error, 1)}
	go func() {
		buf := make([]byte, outageWrite)
		for i := 0; i < n; i++ {
			regionData(buf, seed, i, 1)
			if _, err := v.WriteAt(buf, int64(i)*outageWrite); err != nil {
				w.done <- err
				return
			}
			w.acked.Add(outageWrite)
		}
		w.done <- nil
	}()
	return w
}

// waitStalled waits until the volume holds its MaxPendingBytes and the
// writer has made no progress for quiet, and fails the test if the writer
// finished (or failed) instead.
func (w *blockedWriter) waitStalled(t *testing.T, v *vb.Volume, max int64, quiet time.Duration) int64 {
	t.Helper()
	last, since := w.acked.Load(), time.Now()
	testutil.Eventually(t, time.Minute, "the writer to stall", func() (bool, error) {
		select {
		case err := <-w.done:
			t.Fatalf("writer returned (%v) after %d bytes while the backend was unreachable: it should wait", err, w.acked.Load())
		default:
		}
		if n := w.acked.Load(); n != last {
			last, since = n, time.Now()
		} else if time.Since(since) >= quiet && v.Stats().PendingBytes >= max {
			return true, nil
		}
		return false, fmt.Errorf("%d bytes acknowledged, the last %v ago; %d pending", last, time.Since(since).Round(time.Millisecond), v.Stats().PendingBytes)
	})
	return last
}

// checkRegions opens the volume on a new node (directly on the server) and
// checks the first n 64 KiB regions.
func checkRegions(t *testing.T, srv *s3server.Server, seed uint64, n int) {
	t.Helper()
	r, err := vb.Open(context.Background(), openS3(t, srv.URL("outage")), "v", vb.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	got, want := make([]byte, outageWrite), make([]byte, outageWrite)
	for i := 0; i < n; i++ {
		if _, err := r.ReadAt(got, int64(i)*outageWrite); err != nil {
			t.Fatal(err)
		}
		regionData(want, seed, i, 1)
		if !bytes.Equal(got, want) {
			t.Fatalf("region %d (64 KiB) lost on the new node", i)
		}
	}
}

// TestS3UnreachableDuringWrites: with the backend gone, writes go on into
// the WAL (and Flush makes them durable) until MaxPendingBytes is pending;
// then writers wait, without failing, until the backend returns, and
// everything drains.
func TestS3UnreachableDuringWrites(t *testing.T) {
	t.Parallel()
	srv, p, u, o, logs := outage(t)
	const n = 64 // 4 MiB
	v := mustCreate(t, openS3(t, u), "v", n*outageWrite, o)
	defer v.Close()
	p.SetRate(1) // every request fails from now on
	w := startWriter(v, 5, n)
	acked := w.waitStalled(t, v, o.MaxPendingBytes, 500*time.Millisecond)
	// The first drain may still be retrying.
	testutil.Eventually(t, time.Minute, "a failed drain, logged and counted", func() (bool, error) {
		st := v.Stats()
		return logs.count(drainFailedMsg) > 0 && st.DrainErrors > 0, fmt.Errorf("%d %q warnings; stats %+v", logs.count(drainFailedMsg), drainFailedMsg, st)
	})
	s := v.Stats()
	t.Logf("backend down: %d KiB acknowledged, then blocked; %d KiB pending, %d drain errors, last: %s",
		acked>>10, s.PendingBytes>>10, s.DrainErrors, s.LastDrainErr)
	if acked < o.MaxPendingBytes-outageWrite || acked >= n*outageWrite {
		t.Fatalf("%d bytes acknowledged before blocking; want about MaxPendingBytes (%d)", acked, o.MaxPendingBytes)
	}
	if s.PendingBytes < o.MaxPendingBytes || s.DrainErrors == 0 || s.LastDrainErr == "" {
		t.Fatalf("stats do not show the outage: %+v", s)
	}
	if logs.count(drainFailedMsg) == 0 {
		t.Fatalf("no %q warning logged", drainFailedMsg)
	}
	// What was acknowledged is durable on this node despite the outage.
	if err := v.Flush(); err != nil {
		t.Fatalf("flush during the outage: %v", err)
	}
	// Still waiting a while later: blocked, not failed. Not
	// synchronisation: time passes and the writer must not move.
	time.Sleep(300 * time.Millisecond)
	select {
	case err := <-w.done:
		t.Fatalf("writer returned (%v) with the backend down", err)
	default:
	}
	if got := w.acked.Load(); got != acked {
		t.Fatalf("writer went on from %d to %d bytes with the backend down", acked, got)
	}

	p.SetRate(0) // the backend is back
	back := time.Now()
	select {
	case err := <-w.done:
		if err != nil {
			t.Fatalf("writer failed after the backend returned: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("writer still blocked 30 s after the backend returned (%+v)", v.Stats())
	}
	t.Logf("writer resumed and finished %v after the backend returned", time.Since(back).Round(time.Millisecond))
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	checkRegions(t, srv, 5, n)
}

// TestS3OutageDetach: the operator detaches while the backend is down and a
// writer waits. The writer is released with ErrClosed, Close reports that
// the data stays in the WAL, and reopening on the same node once the backend
// is back drains everything that was acknowledged.
func TestS3OutageDetach(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("Close retries its drain for about 6 s")
	}
	srv, p, u, o, _ := outage(t)
	const n = 64
	v := mustCreate(t, openS3(t, u), "v", n*outageWrite, o)
	p.SetRate(1)
	w := startWriter(v, 6, n)
	acked := w.waitStalled(t, v, o.MaxPendingBytes, 500*time.Millisecond)
	start := time.Now()
	err := v.Close()
	t.Logf("Close with the backend down took %v: %v", time.Since(start).Round(time.Millisecond), err)
	if err == nil || !strings.Contains(err.Error(), "WAL") {
		t.Fatalf("Close with the backend down: %v; want an error saying the data is kept in the WAL", err)
	}
	select {
	case err := <-w.done:
		if !errors.Is(err, vb.ErrClosed) {
			t.Fatalf("blocked writer released with %v, want ErrClosed", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("blocked writer not released by Close")
	}
	p.SetRate(0)
	v2, err := vb.Open(context.Background(), openS3(t, u), "v", o)
	if err != nil {
		t.Fatal(err)
	}
	if s := v2.Stats(); s.Replayed == 0 {
		t.Fatalf("nothing replayed from the WAL: %+v", s)
	}
	if err := v2.Close(); err != nil {
		t.Fatal(err)
	}
	checkRegions(t, srv, 6, int(acked/outageWrite))
}
