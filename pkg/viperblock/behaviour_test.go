package viperblock_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/viperblock/viperblock-csi/internal/testutil"
	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/vfs"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/wal"
)

func fill(b byte, n int) []byte { return bytes.Repeat([]byte{b}, n) }

func readAll(t *testing.T, v *vb.Volume) []byte {
	t.Helper()
	buf := make([]byte, v.Size())
	if _, err := v.ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	return buf
}

func TestTrimZeroExtents(t *testing.T) { forEachStore(t, testTrimZeroExtents) }

func testTrimZeroExtents(t *testing.T, newStore func(t *testing.T) backend.Store) {
	ctx := context.Background()
	s := newStore(t)
	v := mustCreate(t, s, "v", 64*vb.BlockSize, opts(t))
	defer v.Close()
	if _, err := v.WriteAt(fill(1, 16*vb.BlockSize), 0); err != nil {
		t.Fatal(err)
	}
	if err := v.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := v.WriteAt(fill(2, 4*vb.BlockSize), 20*vb.BlockSize); err != nil {
		t.Fatal(err)
	}
	// Trim blocks 2-5 (drained) and 21 (in memory); zero an unaligned range.
	if err := v.Trim(2*vb.BlockSize, 4*vb.BlockSize); err != nil {
		t.Fatal(err)
	}
	if err := v.Trim(21*vb.BlockSize, vb.BlockSize); err != nil {
		t.Fatal(err)
	}
	if err := v.Zero(10*vb.BlockSize+100, 2*vb.BlockSize); err != nil {
		t.Fatal(err)
	}
	want := make([]byte, v.Size())
	copy(want, fill(1, 16*vb.BlockSize))
	copy(want[20*vb.BlockSize:], fill(2, 4*vb.BlockSize))
	clear(want[2*vb.BlockSize : 6*vb.BlockSize])
	clear(want[21*vb.BlockSize : 22*vb.BlockSize])
	clear(want[10*vb.BlockSize+100 : 12*vb.BlockSize+100])
	check := func(stage string) {
		if !bytes.Equal(readAll(t, v), want) {
			t.Fatalf("%s: content differs", stage)
		}
	}
	check("before drain")
	ext, err := v.Extents(0, v.Size())
	if err != nil {
		t.Fatal(err)
	}
	got := fmt.Sprint(ext)
	wantExt := "[{0 8192 false} {8192 16384 true} {24576 20480 false} {45056 4096 true} {49152 16384 false} {65536 16384 true} {81920 4096 false} {86016 4096 true} {90112 8192 false} {98304 163840 true}]"
	if got != wantExt {
		t.Fatalf("extents\n got %s\nwant %s", got, wantExt)
	}
	if err := v.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	check("after drain")
	if ext2, _ := v.Extents(0, v.Size()); fmt.Sprint(ext2) != wantExt {
		t.Fatalf("extents after drain %v", ext2)
	}
	// Trimmed blocks stop counting as used.
	inf, err := vb.Inspect(ctx, s, "v")
	if err != nil {
		t.Fatal(err)
	}
	if wantUsed := int64(16-4-1+3) * vb.BlockSize; inf.WrittenBytes != wantUsed {
		t.Fatalf("written %d, want %d", inf.WrittenBytes, wantUsed)
	}
}

func TestResize(t *testing.T) { forEachStore(t, testResize) }

func testResize(t *testing.T, newStore func(t *testing.T) backend.Store) {
	ctx := context.Background()
	s := newStore(t)
	v := mustCreate(t, s, "v", 1<<20, opts(t))
	if err := v.Resize(ctx, 1<<19); !errors.Is(err, vb.ErrInvalidArg) {
		t.Fatalf("shrink: %v", err)
	}
	if err := v.Resize(ctx, 3<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := v.WriteAt(fill(7, 4096), 3<<20-4096); err != nil {
		t.Fatal(err)
	}
	v.Close()
	inf, _ := vb.Inspect(ctx, s, "v")
	if inf.Size != 3<<20 || inf.WrittenBytes != 4096 {
		t.Fatalf("%+v", inf)
	}
}

// Two writers on two nodes: a node that waited out the older one's lease
// (paused: it neither renews nor answers) fences it.
func TestFencing(t *testing.T) { forEachStore(t, testFencing) }

func testFencing(t *testing.T, newStore func(t *testing.T) backend.Store) {
	ctx := context.Background()
	s := newStore(t)
	oa := opts(t)
	oa.LeaseDuration = 2 * time.Second // A's drain must confirm it on a busy disk or S3 server
	a := mustCreate(t, s, "v", 1<<20, oa)
	if _, err := a.WriteAt(fill(1, 4096), 0); err != nil {
		t.Fatal(err)
	}
	if err := a.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	vb.PauseLeaseForTest(a)
	b, err := vb.Open(ctx, newStore(t), "v", opts(t)) // another node
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.WriteAt(fill(2, 4096), 0); err != nil {
		t.Fatal(err) // accepted into memory: a write promises nothing
	}
	if err := a.Flush(); !errors.Is(err, vb.ErrFenced) {
		t.Fatalf("stale writer flush: %v, want ErrFenced", err)
	}
	if err := a.Drain(ctx); !errors.Is(err, vb.ErrFenced) {
		t.Fatalf("stale writer drain: %v, want ErrFenced", err)
	}
	if _, err := a.WriteAt(fill(3, 4096), 0); !errors.Is(err, vb.ErrFenced) {
		t.Fatalf("stale writer write: %v", err)
	}
	if err := a.Close(); !errors.Is(err, vb.ErrFenced) {
		t.Fatalf("stale close: %v", err)
	}
	if _, err := b.WriteAt(fill(4, 4096), 4096); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	c, err := vb.Open(ctx, newStore(t), "v", vb.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	got := readAll(t, c)
	if !bytes.Equal(got[:4096], fill(1, 4096)) || !bytes.Equal(got[4096:8192], fill(4, 4096)) {
		t.Fatal("final content is not the newer writer's view")
	}
}

// A WAL left on a node that lost ownership is set aside, not replayed.
func TestStaleWALQuarantined(t *testing.T) { forEachStore(t, testStaleWALQuarantined) }

func testStaleWALQuarantined(t *testing.T, newStore func(t *testing.T) backend.Store) {
	ctx := context.Background()
	s := newStore(t)
	walA := t.TempDir()
	a := mustCreate(t, s, "v", 1<<20, vb.Options{WALDir: walA, LeaseDuration: 2 * time.Second}) // its flush must confirm it on a busy disk
	if _, err := a.WriteAt(fill(1, 4096), 0); err != nil {
		t.Fatal(err)
	}
	if err := a.Flush(); err != nil {
		t.Fatal(err)
	}
	// Node A dies without draining; node B waits out its lease, takes
	// over and writes.
	vb.ForgetForTest(a)
	b, err := vb.Open(ctx, newStore(t), "v", opts(t))
	if err != nil {
		t.Fatal(err)
	}
	b.WriteAt(fill(2, 4096), 4096)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	// A's process is gone; its WAL remains. A comes back on walA:
	a2, err := vb.Open(ctx, s, "v", vb.Options{WALDir: walA})
	if err != nil {
		t.Fatal(err)
	}
	got := readAll(t, a2)
	if !bytes.Equal(got[:4096], make([]byte, 4096)) || !bytes.Equal(got[4096:8192], fill(2, 4096)) {
		t.Fatal("stale WAL was replayed over the newer owner's data")
	}
	a2.Close()
	ents, _ := os.ReadDir(filepath.Join(walA, "v"))
	found := false
	for _, e := range ents {
		found = found || len(e.Name()) > 6 && e.Name()[:6] == "stale-"
	}
	if !found {
		t.Fatal("stale WAL not kept for inspection")
	}
}

func TestInUse(t *testing.T) {
	s := backend.NewMem()
	o := opts(t)
	v := mustCreate(t, s, "v", 1<<20, o)
	defer v.Close()
	if _, err := vb.Open(context.Background(), s, "v", o); !errors.Is(err, vb.ErrInUse) {
		t.Fatalf("second open: %v", err)
	}
}

func TestCorruptionDetected(t *testing.T) { forEachStore(t, testCorruptionDetected) }

func testCorruptionDetected(t *testing.T, newStore func(t *testing.T) backend.Store) {
	ctx := context.Background()
	s := newStore(t)
	v := mustCreate(t, s, "v", 1<<20, vb.Options{WALDir: t.TempDir(), CacheBlocks: 0})
	v.WriteAt(fill(5, 8192), 0)
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	keys, _ := s.List(ctx, "v/chunks/")
	data, _, _ := s.Get(ctx, keys[0])
	data[4096+10] ^= 1 // a bit flip in block 0's data
	s.Put(ctx, keys[0], data)
	r, err := vb.Open(ctx, s, "v", vb.Options{ReadOnly: true, CacheBlocks: 1})
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	if _, err := r.ReadAt(buf, 0); !errors.Is(err, vb.ErrCorrupt) {
		t.Fatalf("read of corrupt block: %v, want ErrCorrupt", err)
	}
	if _, err := r.ReadAt(buf, 4096); err != nil {
		t.Fatalf("intact block: %v", err)
	}
	m, _, _ := s.Get(ctx, "v/manifest")
	m[20] ^= 1
	s.Put(ctx, "v/manifest", m)
	if _, err := vb.Open(ctx, s, "v", vb.Options{ReadOnly: true}); !errors.Is(err, vb.ErrCorrupt) {
		t.Fatalf("corrupt manifest: %v", err)
	}
}

func TestCorruptWALRefusesOpen(t *testing.T) {
	ctx := context.Background()
	s := backend.NewMem()
	dir := t.TempDir()
	v := mustCreate(t, s, "v", 1<<20, vb.Options{WALDir: dir})
	for i := 0; i < 3; i++ {
		v.WriteAt(fill(byte(i+1), 4096), int64(i*16)*4096) // all in shard 0
	}
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	vb.ForgetForTest(v)
	segs, _ := filepath.Glob(filepath.Join(dir, "v", "00", "*.wal"))
	if len(segs) != 1 {
		t.Fatalf("segments %v", segs)
	}
	b, _ := os.ReadFile(segs[0])
	_, hlen, err := wal.DecodeSegmentHeader(b)
	if err != nil {
		t.Fatal(err)
	}
	b[hlen+wal.BlockRecordLen+100] ^= 1 // inside the second record (the file is preallocated: not its end)
	os.WriteFile(segs[0], b, 0o600)
	if _, err := vb.Open(ctx, s, "v", vb.Options{WALDir: dir}); !errors.Is(err, vb.ErrCorrupt) {
		t.Fatalf("open with corrupt WAL: %v", err)
	}
	// Nothing in the backend changed: the manifest still has epoch 1.
	if inf, _ := vb.Inspect(ctx, s, "v"); inf.Epoch != 1 {
		t.Fatalf("epoch %d after refused open", inf.Epoch)
	}
}

// An fsync failure is sticky: the volume refuses further writes.
func TestFsyncFailureIsSticky(t *testing.T) {
	var fail sync.Map
	fs := vfs.Error(vfs.NewMem(), func(op vfs.Op, name string) error {
		if _, ok := fail.Load(op); ok {
			return errors.New("injected EIO")
		}
		return nil
	})
	v := mustCreate(t, backend.NewMem(), "v", 1<<20, vb.Options{WALDir: "/wal", FS: fs})
	v.WriteAt(fill(1, 4096), 0)
	fail.Store(vfs.OpSync, true)
	if err := v.Flush(); err == nil {
		t.Fatal("flush succeeded over a failed fsync")
	}
	fail.Delete(vfs.OpSync)
	if _, err := v.WriteAt(fill(1, 4096), 0); err == nil {
		t.Fatal("write accepted after a failed fsync")
	}
	if err := v.Flush(); err == nil {
		t.Fatal("flush succeeded after a failed fsync")
	}
}

type flakyStore struct {
	backend.Store
	mu   sync.Mutex
	down bool
}

func (f *flakyStore) setDown(d bool) { f.mu.Lock(); f.down = d; f.mu.Unlock() }
func (f *flakyStore) isDown() bool   { f.mu.Lock(); defer f.mu.Unlock(); return f.down }
func (f *flakyStore) Put(ctx context.Context, k string, d []byte) error {
	if f.isDown() {
		return errors.New("injected: backend unreachable")
	}
	return f.Store.Put(ctx, k, d)
}
func (f *flakyStore) PutIf(ctx context.Context, k string, d []byte, v backend.Version) (backend.Version, error) {
	if f.isDown() {
		return "", errors.New("injected: backend unreachable")
	}
	return f.Store.PutIf(ctx, k, d, v)
}

// With the backend down, writes go on into the WAL until the pending limit,
// then wait (not fail) until the backend returns.
func TestBackendOutageBackpressure(t *testing.T) { forEachStore(t, testBackendOutageBackpressure) }

func testBackendOutageBackpressure(t *testing.T, newStore func(t *testing.T) backend.Store) {
	fs := &flakyStore{Store: newStore(t)}
	o := opts(t)
	o.DrainInterval = 20 * time.Millisecond
	o.DrainBytes = 64 << 10
	o.MaxPendingBytes = 256 << 10
	o.Logger = quiet()
	v := mustCreate(t, fs, "v", 8<<20, o)
	fs.setDown(true)
	done := make(chan error, 1)
	go func() {
		for i := 0; i < 200; i++ {
			if _, err := v.WriteAt(fill(byte(i), 4096), int64(i)*4096); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	select {
	case err := <-done:
		t.Fatalf("writer finished (%v) while the backend was down and the limit far exceeded", err)
	case <-time.After(500 * time.Millisecond): // not synchronisation: the writer must not finish in this window
	}
	// A failed drain shows in the stats; on a loaded machine the first one
	// may not have run (or finished) yet.
	testutil.Eventually(t, time.Minute, "drain errors in the stats", func() (bool, error) {
		st := v.Stats()
		return st.DrainErrors > 0 && st.LastDrainErr != "", fmt.Errorf("%+v", st)
	})
	select {
	case err := <-done:
		t.Fatalf("writer finished (%v) while the backend was down and the limit far exceeded", err)
	default:
	}
	fs.setDown(false)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(time.Minute):
		t.Fatal("writer still blocked a minute after the backend returned")
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	r, _ := vb.Open(context.Background(), fs, "v", vb.Options{ReadOnly: true})
	got := readAll(t, r)
	for i := 0; i < 200; i++ {
		if !bytes.Equal(got[i*4096:(i+1)*4096], fill(byte(i), 4096)) {
			t.Fatalf("block %d lost", i)
		}
	}
}

// Concurrent writers and readers, with drains in between; run with -race.
func TestConcurrentIO(t *testing.T) {
	o := opts(t)
	o.DrainBytes = 1 << 20
	v := mustCreate(t, backend.NewMem(), "v", 16<<20, o)
	defer v.Close()
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Each writer owns every 4th block and checks its own data.
			for i := 0; i < 300; i++ {
				b := int64((i*4+w)%1024) * 4096
				d := fill(byte(w*50+i%50), 4096)
				if _, err := v.WriteAt(d, b); err != nil {
					t.Error(err)
					return
				}
				got := make([]byte, 4096)
				if _, err := v.ReadAt(got, b); err != nil || !bytes.Equal(got, d) {
					t.Errorf("writer %d block %d: read back differs (%v)", w, b/4096, err)
					return
				}
				if i%50 == 0 {
					if err := v.Flush(); err != nil {
						t.Error(err)
					}
				}
			}
		}()
	}
	wg.Wait()
}

func quiet() *slogLogger { return quietLog }
