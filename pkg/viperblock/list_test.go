package viperblock_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/viperblock/viperblock-csi/internal/testutil/faultproxy"
	"github.com/viperblock/viperblock-csi/internal/testutil/s3server"
	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/vfs"
)

// countingStore counts requests as an S3 store would send them: a listing
// is one request per 1,000 names it returns (at least one). keys counts the
// names listings returned.
type countingStore struct {
	backend.Store
	mu   sync.Mutex
	reqs map[string]int
	keys int
}

func newCounting(s backend.Store) *countingStore {
	return &countingStore{Store: s, reqs: map[string]int{}}
}

func (c *countingStore) add(op string, n int) {
	c.mu.Lock()
	c.reqs[op] += n
	c.mu.Unlock()
}

func pages(n int) int { return max(1, (n+999)/1000) }

func (c *countingStore) Get(ctx context.Context, key string) ([]byte, backend.Version, error) {
	c.add("Get", 1)
	return c.Store.Get(ctx, key)
}

func (c *countingStore) List(ctx context.Context, prefix string) ([]string, error) {
	keys, err := c.Store.List(ctx, prefix)
	c.add("List", pages(len(keys)))
	c.mu.Lock()
	c.keys += len(keys)
	c.mu.Unlock()
	return keys, err
}

func (c *countingStore) ListDirs(ctx context.Context, prefix string) ([]string, error) {
	dirs, err := backend.ListDirs(ctx, c.Store, prefix)
	c.add("ListDirs", pages(len(dirs)))
	c.mu.Lock()
	c.keys += len(dirs)
	c.mu.Unlock()
	return dirs, err
}

// total returns the requests counted and the names listed, and resets them.
func (c *countingStore) total() (reqs, keys int, by map[string]int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, n := range c.reqs {
		reqs += n
	}
	keys, by = c.keys, c.reqs
	c.reqs, c.keys = map[string]int{}, 0
	return reqs, keys, by
}

// fillBucket creates vols volumes with chunks chunk objects each. The chunk
// objects are small stand-ins: a listing never reads a chunk, so their
// content does not matter, only their keys.
func fillBucket(tb testing.TB, s backend.Store, vols, chunks int) {
	tb.Helper()
	ctx := context.Background()
	for i := range vols {
		name := fmt.Sprintf("pvc-%04d", i)
		if err := vb.CreateOnly(ctx, s, name, 1<<30); err != nil {
			tb.Fatal(err)
		}
		for j := range chunks {
			if err := s.Put(ctx, fmt.Sprintf("%s/chunks/%016x", name, uint64(1)<<40|uint64(j)), []byte{1}); err != nil {
				tb.Fatal(err)
			}
		}
	}
}

// TestListVolumesRequestsIndependentOfChunks lists 1,000 volumes holding
// 1,000 chunks in all, then holding 100,000, on the memory store and on the
// file store, and requires the same number of store requests both times
// (one listing plus one manifest read per volume) and no chunk key listed.
func TestListVolumesRequestsIndependentOfChunks(t *testing.T) {
	const vols = 1000
	perVol := []int{1, 100}
	if testing.Short() {
		perVol = []int{1, 10}
	}
	stores := map[string]func() backend.Store{
		"mem": func() backend.Store { return backend.NewMem() },
		"file": func() backend.Store {
			f, err := backend.NewFile(vfs.NewMem(), "/store")
			if err != nil {
				t.Fatal(err)
			}
			return f
		},
	}
	for kind, mk := range stores {
		t.Run(kind, func(t *testing.T) {
			var counts []int
			for _, n := range perVol {
				c := newCounting(mk())
				fillBucket(t, c.Store, vols, n)
				ents, err := vb.ListVolumes(context.Background(), c)
				if err != nil {
					t.Fatal(err)
				}
				if len(ents) != vols {
					t.Fatalf("listed %d volumes, want %d", len(ents), vols)
				}
				reqs, keys, by := c.total()
				all, err := c.Store.List(context.Background(), "")
				if err != nil {
					t.Fatal(err)
				}
				t.Logf("%s: %d volumes, %d chunks: %d requests %v, %d names listed (listing every key: %d requests, %d keys)",
					kind, vols, vols*n, reqs, by, keys, pages(len(all)), len(all))
				if keys != vols {
					t.Errorf("listing returned %d names, want %d (one per volume, no chunk)", keys, vols)
				}
				if want := 1 + vols; reqs != want {
					t.Errorf("%d requests, want %d (one listing, one manifest read per volume)", reqs, want)
				}
				counts = append(counts, reqs)
			}
			if counts[0] != counts[1] {
				t.Errorf("requests grew with the chunk count: %v for %v chunks per volume", counts, perVol)
			}
		})
	}
}

// TestListVolumesS3RequestsIndependentOfChunks counts the HTTP requests a
// listing sends to a real S3 server (versitygw) through the fault proxy (no
// faults): the same for 20 volumes with 1 chunk each as with 600 each
// (12,000 keys: a listing of every key would take 12 requests).
func TestListVolumesS3RequestsIndependentOfChunks(t *testing.T) {
	if testing.Short() {
		t.Skip("fills a bucket with 12,000 objects")
	}
	srv := s3server.Start(t)
	p := faultproxy.Start(t, srv.Endpoint, faultproxy.Options{})
	const vols = 20
	var counts []int
	for i, n := range []int{1, 600} {
		st := openS3(t, s3server.StoreURL(srv.Bucket, fmt.Sprintf("scale%d", i), p.URL, srv.CredentialsFile))
		fillBucket(t, st, vols, n)
		before := p.Counts()[faultproxy.None]
		start := time.Now()
		ents, err := vb.ListVolumes(context.Background(), st)
		if err != nil {
			t.Fatal(err)
		}
		reqs := p.Counts()[faultproxy.None] - before
		t.Logf("s3: %d volumes, %d chunks: %d requests in %v", vols, vols*n, reqs, time.Since(start))
		if len(ents) != vols {
			t.Fatalf("listed %d volumes, want %d", len(ents), vols)
		}
		counts = append(counts, reqs)
	}
	if counts[0] != counts[1] || counts[0] != 1+vols {
		t.Errorf("requests %v for 1 and 600 chunks per volume, want %d both times", counts, 1+vols)
	}
}

// BenchmarkListVolumes lists 1,000 volumes with 100 chunks each (100,000
// chunk keys) on the memory store.
func BenchmarkListVolumes(b *testing.B) {
	c := newCounting(backend.NewMem())
	fillBucket(b, c.Store, 1000, 100)
	ctx := context.Background()
	b.ResetTimer()
	for b.Loop() {
		if _, err := vb.ListVolumes(ctx, c); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	reqs, _, _ := c.total()
	b.ReportMetric(float64(reqs)/float64(b.N), "requests/op")
}

// TestListVolumesDamagedManifest: a damaged manifest fails its own volume
// in a listing, not the listing; deleted volumes and names without a
// manifest are left out.
func TestListVolumesDamagedManifest(t *testing.T) {
	ctx := context.Background()
	s := backend.NewMem()
	for _, n := range []string{"a", "b", "c", "d"} {
		if err := vb.CreateOnly(ctx, s, n, 1<<20); err != nil {
			t.Fatal(err)
		}
	}
	raw, _, err := s.Get(ctx, "b/manifest")
	if err != nil {
		t.Fatal(err)
	}
	raw[len(raw)/2] ^= 0xff
	if err := s.Put(ctx, "b/manifest", raw); err != nil {
		t.Fatal(err)
	}
	if err := vb.Delete(ctx, s, "c"); err != nil {
		t.Fatal(err)
	}
	if err := s.Put(ctx, "csi.meta/publish/a", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	ents, err := vb.ListVolumes(ctx, s)
	if err != nil {
		t.Fatalf("ListVolumes: %v (a damaged manifest must not fail the listing)", err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name)
		switch e.Name {
		case "b":
			if !errors.Is(e.Err, vb.ErrCorrupt) {
				t.Errorf("b: err %v, want ErrCorrupt", e.Err)
			}
		default:
			if e.Err != nil || e.Info.Size != 1<<20 {
				t.Errorf("%s: %+v", e.Name, e)
			}
		}
	}
	if fmt.Sprint(got) != "[a b d]" {
		t.Errorf("listed %v, want [a b d]", got)
	}
	if names, err := vb.List(ctx, s); err != nil || fmt.Sprint(names) != "[a b d]" {
		t.Errorf("List = %v, %v; want [a b d]", names, err)
	}
	if _, err := vb.Stat(ctx, s, "b"); !errors.Is(err, vb.ErrCorrupt) {
		t.Errorf("Stat(b) = %v, want ErrCorrupt", err)
	}
}

// TestStatReadsOneObject: Stat reads the manifest alone, whatever the
// number of snapshots, and agrees with Inspect.
func TestStatReadsOneObject(t *testing.T) {
	ctx := context.Background()
	c := newCounting(backend.NewMem())
	v := mustCreate(t, c, "v", 1<<20, vb.Options{WALDir: t.TempDir(), CacheBlocks: -1})
	if _, err := v.WriteAt(make([]byte, 8192), 0); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if _, err := v.Snapshot(ctx, fmt.Sprintf("s%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	c.total()
	st, err := vb.Stat(ctx, c, "v")
	if err != nil {
		t.Fatal(err)
	}
	if reqs, _, by := c.total(); reqs != 1 {
		t.Errorf("Stat sent %d requests %v, want 1", reqs, by)
	}
	inf, err := vb.Inspect(ctx, c, "v")
	if err != nil {
		t.Fatal(err)
	}
	if len(inf.Snapshots) != 5 {
		t.Errorf("Inspect: snapshots %v", inf.Snapshots)
	}
	inf.Snapshots, inf.Dependants = nil, nil
	if fmt.Sprint(st) != fmt.Sprint(inf) {
		t.Errorf("Stat = %+v\nInspect = %+v", st, inf)
	}
}

// TestSnapshotLimit: a snapshot past the limit is ErrTooManySnapshots,
// retaking an existing one is not, and deleting one makes room.
func TestSnapshotLimit(t *testing.T) {
	ctx := context.Background()
	s := backend.NewMem()
	v := mustCreate(t, s, "v", 1<<20, vb.Options{WALDir: t.TempDir(), CacheBlocks: -1, MaxSnapshots: 2})
	defer v.Close()
	for _, n := range []string{"s1", "s2"} {
		if _, err := v.Snapshot(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := v.Snapshot(ctx, "s3"); !errors.Is(err, vb.ErrTooManySnapshots) {
		t.Fatalf("third snapshot (owner) = %v, want ErrTooManySnapshots", err)
	}
	opts := vb.SnapshotOptions{MaxSnapshots: 2, OwnerWait: time.Second}
	if _, err := vb.CreateSnapshot(ctx, s, "v", "s3", opts); !errors.Is(err, vb.ErrTooManySnapshots) {
		t.Fatalf("third snapshot (controller) = %v, want ErrTooManySnapshots", err)
	}
	if _, err := vb.CreateSnapshot(ctx, s, "v", "s2", opts); err != nil {
		t.Fatalf("retaking an existing snapshot at the limit: %v", err)
	}
	if err := vb.CloneVolume(ctx, s, "v", "c", 0, opts); !errors.Is(err, vb.ErrTooManySnapshots) {
		t.Fatalf("clone at the limit = %v, want ErrTooManySnapshots (its internal snapshot counts)", err)
	}
	if err := vb.DeleteSnapshot(ctx, s, "v", "s1"); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Snapshot(ctx, "s3"); err != nil {
		t.Fatalf("after a delete: %v", err)
	}
	opts.MaxSnapshots = -1
	if _, err := vb.CreateSnapshot(ctx, s, "v", "s4", opts); err != nil {
		t.Fatalf("no limit: %v", err)
	}
}

// TestListVolumesFrom pages through a listing: each page reads the
// manifests of its own volumes only.
func TestListVolumesFrom(t *testing.T) {
	ctx := context.Background()
	c := newCounting(backend.NewMem())
	fillBucket(t, c.Store, 100, 1)
	if err := vb.Delete(ctx, c.Store, "pvc-0011"); err != nil {
		t.Fatal(err)
	}
	var all []string
	after := ""
	for {
		ents, err := vb.ListVolumesFrom(ctx, c, after, 10)
		if err != nil {
			t.Fatal(err)
		}
		reqs, _, by := c.total()
		if reqs > 1+2*16 {
			t.Errorf("a page of 10 took %d requests %v", reqs, by)
		}
		if len(ents) == 0 {
			break
		}
		for _, e := range ents {
			all = append(all, e.Name)
		}
		after = ents[len(ents)-1].Name
	}
	if len(all) != 99 || all[0] != "pvc-0000" || all[11] != "pvc-0012" || all[98] != "pvc-0099" {
		t.Errorf("paged listing: %d names %v", len(all), all)
	}
}
