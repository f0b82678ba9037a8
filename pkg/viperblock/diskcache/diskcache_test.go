package diskcache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
)

var ctx = context.Background()

func chunks(key string) bool { return strings.Contains(key, "/chunks/") }

// setup returns a memory store holding n objects of size bytes
// ("v/chunks/<i>") with a request counter, and a cache of max bytes in
// front of it.
func setup(t *testing.T, n, size int, max int64) (*Cache, *backend.RequestStats, [][]byte) {
	t.Helper()
	mem := backend.NewMem()
	var objs [][]byte
	for i := 0; i < n; i++ {
		b := make([]byte, size)
		r := rand.New(rand.NewPCG(uint64(i), 1))
		for j := range b {
			b[j] = byte(r.Uint32())
		}
		if err := mem.Put(ctx, fmt.Sprintf("v/chunks/%d", i), b); err != nil {
			t.Fatal(err)
		}
		objs = append(objs, b)
	}
	if err := mem.Put(ctx, "v/manifest", []byte("mutable")); err != nil {
		t.Fatal(err)
	}
	st, stats := backend.Count(mem)
	c, err := New(st, Options{Dir: filepath.Join(t.TempDir(), "cache"), MaxBytes: max, Cacheable: chunks, Misses: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, stats, objs
}

func gets(s *backend.RequestStats) uint64 {
	o := s.Snapshot()[backend.OpGet]
	return o.OK + o.Errors
}

func read(t *testing.T, c *Cache, key string, off, n int64) []byte {
	t.Helper()
	p := make([]byte, n)
	if err := c.ReadRange(ctx, key, off, p); err != nil {
		t.Fatalf("read %s [%d, +%d): %v", key, off, n, err)
	}
	return p
}

func TestMissFillsThenHits(t *testing.T) {
	c, stats, objs := setup(t, 2, 64<<10, 1<<20)
	if got := read(t, c, "v/chunks/0", 4096, 4096); !bytes.Equal(got, objs[0][4096:8192]) {
		t.Fatal("first read returned the wrong bytes")
	}
	c.Wait()
	st := c.Stats()
	if st.Misses != 1 || st.Fills != 1 || st.Objects != 1 || st.Bytes != 64<<10 {
		t.Fatalf("after one miss: %+v", st)
	}
	before := gets(stats)
	for i := 0; i < 20; i++ {
		off := int64(i) * 3000
		if got := read(t, c, "v/chunks/0", off, 1000); !bytes.Equal(got, objs[0][off:off+1000]) {
			t.Fatalf("cached read at %d returned the wrong bytes", off)
		}
	}
	if after := gets(stats); after != before {
		t.Fatalf("cached reads went to the store: %d requests", after-before)
	}
	if st := c.Stats(); st.Hits != 20 {
		t.Fatalf("hits %d, want 20", st.Hits)
	}
	// Reading past the end is ErrRange, cached or not.
	if err := c.ReadRange(ctx, "v/chunks/0", 64<<10-10, make([]byte, 20)); !errors.Is(err, backend.ErrRange) {
		t.Fatalf("cached read past the end: %v", err)
	}
	if err := c.ReadRange(ctx, "v/chunks/1", 64<<10-10, make([]byte, 20)); !errors.Is(err, backend.ErrRange) {
		t.Fatalf("uncached read past the end: %v", err)
	}
	if _, err := c.GetRange(ctx, "v/chunks/404", 0, 10); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("missing object: %v", err)
	}
	c.Wait()
	if st := c.Stats(); st.FillErrors != 1 || st.Objects != 2 {
		t.Fatalf("a missing object's fill must fail and the other be cached: %+v", st)
	}
}

func TestNotCacheable(t *testing.T) {
	c, _, _ := setup(t, 1, 4096, 1<<20)
	for i := 0; i < 3; i++ {
		if got := read(t, c, "v/manifest", 0, 7); string(got) != "mutable" {
			t.Fatalf("got %q", got)
		}
	}
	c.Wait()
	if st := c.Stats(); st.Objects != 0 || st.Fills != 0 || st.Misses != 0 {
		t.Fatalf("a key that is not cacheable was cached: %+v", st)
	}
}

func TestEvictsLeastRecentlyUsed(t *testing.T) {
	const size = 16 << 10
	c, _, objs := setup(t, 5, size, 3*size)
	for i := 0; i < 3; i++ {
		read(t, c, fmt.Sprintf("v/chunks/%d", i), 0, 10)
		c.Wait()
	}
	read(t, c, "v/chunks/0", 0, 10) // 0 is now the most recent; 1 the least
	read(t, c, "v/chunks/3", 0, 10)
	c.Wait()
	st := c.Stats()
	if st.Objects != 3 || st.Bytes != 3*size || st.Evictions != 1 {
		t.Fatalf("after a fourth object: %+v", st)
	}
	hits := st.Hits
	for _, i := range []int{0, 2, 3} {
		if got := read(t, c, fmt.Sprintf("v/chunks/%d", i), 100, 100); !bytes.Equal(got, objs[i][100:200]) {
			t.Fatalf("object %d: wrong bytes", i)
		}
	}
	if st := c.Stats(); st.Hits != hits+3 {
		t.Fatalf("objects 0, 2 and 3 must be cached: %+v", st)
	}
	read(t, c, "v/chunks/1", 0, 10)
	if st := c.Stats(); st.Hits != hits+3 {
		t.Fatal("object 1, the least recently used, must have been evicted")
	}
	c.Wait()
	files, _ := filepath.Glob(filepath.Join(c.Dir(), "*"))
	if len(files) != 3 {
		t.Fatalf("%d files in the cache directory, want 3: %v", len(files), files)
	}
	// An object larger than the whole cache is never cached.
	big, _ := New(backend.NewMem(), Options{Dir: t.TempDir() + "/big", MaxBytes: 10, Cacheable: chunks, Misses: 1})
	defer big.Close()
	_ = big.store.Put(ctx, "v/chunks/x", make([]byte, 11))
	read(t, big, "v/chunks/x", 0, 11)
	big.Wait()
	if st := big.Stats(); st.Objects != 0 || st.FillErrors != 1 {
		t.Fatalf("an object larger than the cache: %+v", st)
	}
}

func TestForgetAndUnreadableCopy(t *testing.T) {
	c, stats, objs := setup(t, 1, 8192, 1<<20)
	read(t, c, "v/chunks/0", 0, 10)
	c.Wait()
	c.Forget("v/chunks/0")
	if st := c.Stats(); st.Objects != 0 || st.Bytes != 0 {
		t.Fatalf("after Forget: %+v", st)
	}
	if files, _ := filepath.Glob(filepath.Join(c.Dir(), "*")); len(files) != 0 {
		t.Fatalf("Forget left %v", files)
	}
	// A copy that turns out shorter than recorded (a damaged local disk)
	// is dropped and the read served by the store.
	read(t, c, "v/chunks/0", 0, 10)
	c.Wait()
	c.mu.Lock()
	e := c.entries["v/chunks/0"]
	c.mu.Unlock()
	if err := os.Truncate(e.path, 100); err != nil {
		t.Fatal(err)
	}
	before := gets(stats)
	if got := read(t, c, "v/chunks/0", 4000, 100); !bytes.Equal(got, objs[0][4000:4100]) {
		t.Fatal("wrong bytes after a damaged copy")
	}
	if gets(stats) == before {
		t.Fatal("the read of a damaged copy did not go to the store")
	}
}

func TestNewEmptiesAndCloseRemoves(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "cache")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "stale"), []byte("old life"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := New(backend.NewMem(), Options{Dir: dir, MaxBytes: 1 << 20, Cacheable: chunks})
	if err != nil {
		t.Fatal(err)
	}
	if files, _ := filepath.Glob(filepath.Join(dir, "*")); len(files) != 0 {
		t.Fatalf("New left %v", files)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("Close left the directory: %v", err)
	}
	if _, err := New(backend.NewMem(), Options{Dir: dir, MaxBytes: 0, Cacheable: chunks}); err == nil {
		t.Fatal("a cache of 0 bytes was accepted")
	}
}

func TestConcurrentReads(t *testing.T) {
	const size, n = 32 << 10, 8
	c, _, objs := setup(t, n, size, 4*size) // evictions while reading
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 2))
			p := make([]byte, 512)
			for i := 0; i < 500; i++ {
				o := r.IntN(n)
				off := int64(r.IntN(size - len(p)))
				if err := c.ReadRange(ctx, fmt.Sprintf("v/chunks/%d", o), off, p); err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(p, objs[o][off:off+int64(len(p))]) {
					errs <- fmt.Errorf("object %d at %d: wrong bytes", o, off)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	c.Wait()
	if st := c.Stats(); st.Hits == 0 || st.Bytes > 4*size {
		t.Fatalf("%+v", st)
	}
}

// gatedStore blocks whole-object Gets until gate is closed; ranged reads
// pass.
type gatedStore struct {
	backend.Store
	gate chan struct{}
}

func (g gatedStore) Get(ctx context.Context, key string) ([]byte, backend.Version, error) {
	select {
	case <-g.gate:
	case <-ctx.Done():
		return nil, "", ctx.Err()
	}
	return g.Store.Get(ctx, key)
}

func (g gatedStore) ReadRange(ctx context.Context, key string, off int64, p []byte) error {
	return backend.ReadRange(ctx, g.Store, key, off, p)
}

// TestAdmission: an object is fetched at its second miss by default, fills
// never queue when every slot is busy, and a read of an object whose fill
// is under way waits for it.
func TestAdmission(t *testing.T) {
	mem := backend.NewMem()
	for i := 0; i < 3; i++ {
		if err := mem.Put(ctx, fmt.Sprintf("v/chunks/%d", i), bytes.Repeat([]byte{byte(i)}, 8192)); err != nil {
			t.Fatal(err)
		}
	}
	g := gatedStore{mem, make(chan struct{})}
	c, err := New(g, Options{Dir: filepath.Join(t.TempDir(), "c"), MaxBytes: 1 << 20, Cacheable: chunks, Fills: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	read(t, c, "v/chunks/0", 0, 10) // first miss: no fill
	c.mu.Lock()
	n := len(c.filling)
	c.mu.Unlock()
	if n != 0 {
		t.Fatal("a single miss started a fill")
	}
	read(t, c, "v/chunks/0", 0, 10) // second miss: fill (blocked at the gate)
	read(t, c, "v/chunks/1", 0, 10)
	read(t, c, "v/chunks/1", 0, 10) // second miss, but the one slot is busy
	c.mu.Lock()
	_, f0 := c.filling["v/chunks/0"]
	_, f1 := c.filling["v/chunks/1"]
	c.mu.Unlock()
	if !f0 || f1 {
		t.Fatalf("filling 0: %v (want true), 1: %v (want false: no free slot, no queue)", f0, f1)
	}
	// A read of chunk 0 now waits for its fill, and is then a hit.
	done := make(chan []byte)
	go func() {
		p := make([]byte, 10)
		if err := c.ReadRange(ctx, "v/chunks/0", 100, p); err != nil {
			t.Error(err)
		}
		done <- p
	}()
	select {
	case <-done:
		t.Fatal("a read of a chunk being fetched did not wait for the fetch")
	case <-time.After(50 * time.Millisecond):
	}
	close(g.gate)
	if p := <-done; !bytes.Equal(p, bytes.Repeat([]byte{0}, 10)) {
		t.Fatalf("got %v", p)
	}
	if st := c.Stats(); st.Hits != 1 || st.Fills != 1 {
		t.Fatalf("after the wait: %+v", st)
	}
	read(t, c, "v/chunks/1", 0, 10) // a later miss fills it
	c.Wait()
	if st := c.Stats(); st.Fills != 2 || st.Objects != 2 {
		t.Fatalf("chunk 1 was not fetched at its next miss: %+v", st)
	}
}

// TestMinFree: a fill that would leave the filesystem less than MinFree
// free is skipped; reads still work.
func TestMinFree(t *testing.T) {
	mem := backend.NewMem()
	if err := mem.Put(ctx, "v/chunks/0", bytes.Repeat([]byte{1}, 8192)); err != nil {
		t.Fatal(err)
	}
	c, err := New(mem, Options{Dir: filepath.Join(t.TempDir(), "c"), MaxBytes: 1 << 20, Cacheable: chunks, Misses: 1, MinFree: 1 << 62})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := 0; i < 3; i++ {
		if got := read(t, c, "v/chunks/0", 0, 4); !bytes.Equal(got, []byte{1, 1, 1, 1}) {
			t.Fatalf("got %v", got)
		}
		c.Wait()
	}
	if st := c.Stats(); st.Objects != 0 || st.FillErrors != 3 {
		t.Fatalf("fills on a full filesystem: %+v", st)
	}
}
