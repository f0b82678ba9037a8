package viperblock_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/seal"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/wal"
)

func storeOpts(t *testing.T) vb.Options {
	o := leaseOpts(t, 500*time.Millisecond)
	o.DrainBytes = 1 << 30
	return o
}

// durability=store: a node lost for good (process killed, WAL directory
// gone) loses nothing it confirmed; neither does the next owner if it dies
// before its first commit.
func TestStoreDurabilityNodeLost(t *testing.T) {
	forEachStore(t, func(t *testing.T, ns func(t *testing.T) backend.Store) { testStoreDurabilityNodeLost(t, ns, nil) })
}

// The same with an encrypted, compressed volume: the store log carries
// sealed records, which the next owners verify and open.
func TestStoreDurabilityNodeLostEncrypted(t *testing.T) {
	var k [seal.KeySize]byte
	k[0] = 9
	keys := seal.NewFileSource(k, "test")
	forEachStore(t, func(t *testing.T, ns func(t *testing.T) backend.Store) { testStoreDurabilityNodeLost(t, ns, keys) })
}

func testStoreDurabilityNodeLost(t *testing.T, newStore func(t *testing.T) backend.Store, keys vb.KeySource) {
	ctx := context.Background()
	s := newStore(t)
	co := vb.CreateOptions{Durability: vb.DurabilityStore, Keys: keys}
	if keys != nil {
		co.Compression = vb.CompressionZstd
	}
	if err := vb.CreateVolume(ctx, s, "v", 1<<20, co); err != nil {
		t.Fatal(err)
	}
	storeOpts := func(t *testing.T) vb.Options {
		o := storeOpts(t)
		o.Keys = keys
		return o
	}
	oa := storeOpts(t)
	a, err := vb.Open(ctx, s, "v", oa)
	if err != nil {
		t.Fatal(err)
	}
	if st := a.Stats(); st.Durability != vb.DurabilityStore {
		t.Fatalf("class %q, want store", st.Durability)
	}
	for i := 0; i < 8; i++ {
		if _, err := a.WriteAt(fill(byte(10+i), 4096), int64(i)*4096); err != nil {
			t.Fatal(err)
		}
		if i == 3 {
			if err := a.Trim(1*4096, 4096); err != nil {
				t.Fatal(err)
			}
		}
		if err := a.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	if st := a.Stats(); st.StoreLogPuts == 0 || st.Drains != 0 {
		t.Fatalf("stats %+v: want store-log uploads and no drain", st)
	}
	want := make([]byte, 8*4096)
	for i := 0; i < 8; i++ {
		copy(want[i*4096:], fill(byte(10+i), 4096))
	}
	copy(want[4096:8192], make([]byte, 4096)) // block 1: trimmed after its write
	// Node A is lost for good.
	vb.ForgetForTest(a)
	if err := os.RemoveAll(oa.WALDir); err != nil {
		t.Fatal(err)
	}
	ob := storeOpts(t)
	b, err := vb.Open(ctx, newStore(t), "v", ob)
	if err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, b)[:8*4096]; !bytes.Equal(got, want) {
		t.Fatal("B does not hold every write A confirmed")
	}
	// B dies before its first commit, its WAL lost too: C still has all.
	vb.ForgetForTest(b)
	os.RemoveAll(ob.WALDir)
	c, err := vb.Open(ctx, newStore(t), "v", storeOpts(t))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := readAll(t, c)[:8*4096]; !bytes.Equal(got, want) {
		t.Fatal("C does not hold every write A confirmed")
	}
	// Only C's log remains (A's and B's were carried and deleted).
	logKeys, err := s.List(ctx, "v/wal/")
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range logKeys {
		if !strings.Contains(k, fmt.Sprintf("/wal/%016x-", c.Epoch())) {
			t.Errorf("store log of another epoch left: %s", k)
		}
	}
	if err := c.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	if keys, _ := s.List(ctx, "v/wal/"); len(keys) != 0 {
		t.Errorf("store log left after a commit covering it: %v", keys)
	}
}

// A stale owner's store-log upload that lands after the takeover is never
// read: the new owner carried what it adopted into its own epoch's log. (An
// owner uploads only while its lease is valid, but a PUT sent then can
// land late: here its answer is lost and the object is written after the
// takeover.)
func TestStoreLogLateUpload(t *testing.T) {
	ctx := context.Background()
	s := backend.NewMem()
	ls := &lateStore{Store: s}
	if err := vb.CreateWithClass(ctx, s, "v", 1<<20, vb.DurabilityStore); err != nil {
		t.Fatal(err)
	}
	a, err := vb.Open(ctx, ls, "v", storeOpts(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.WriteAt(fill(1, 4096), 0); err != nil {
		t.Fatal(err)
	}
	if err := a.Flush(); err != nil {
		t.Fatal(err)
	}
	keys, _ := s.List(ctx, "v/wal/")
	if len(keys) != 1 {
		t.Fatalf("store log after one flush: %v", keys)
	}
	// A's next upload is held back, and its flush fails.
	ls.hold.Store(true)
	if _, err := a.WriteAt(fill(3, 4096), 0); err != nil {
		t.Fatal(err)
	}
	if err := a.Flush(); err == nil {
		t.Fatal("a flush whose upload got no answer was confirmed")
	}
	ls.hold.Store(false)
	if len(ls.held) == 0 {
		t.Fatal("no upload held back (nothing to test)")
	}
	vb.PauseLeaseForTest(a)
	b, err := vb.Open(ctx, s, "v", storeOpts(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.WriteAt(fill(2, 4096), 4096); err != nil {
		t.Fatal(err)
	}
	if err := b.Flush(); err != nil {
		t.Fatal(err)
	}
	// A's upload lands now, in its old epoch's log.
	for _, o := range ls.held {
		if err := s.Put(ctx, o.key, o.data); err != nil {
			t.Fatal(err)
		}
	}
	vb.ForgetForTest(b) // B dies before committing; C takes over from B's epoch
	c, err := vb.Open(ctx, s, "v", storeOpts(t))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got := readAll(t, c)
	if !bytes.Equal(got[:4096], fill(1, 4096)) || !bytes.Equal(got[4096:8192], fill(2, 4096)) {
		t.Fatal("wrong content after a late stale upload")
	}
}

// lateStore holds back store-log uploads while hold is set: they fail, as
// a PUT whose answer was lost does, and the test writes them later.
type lateStore struct {
	backend.Store
	hold atomic.Bool
	held []struct {
		key  string
		data []byte
	}
}

func (l *lateStore) Put(ctx context.Context, key string, data []byte) error {
	if l.hold.Load() && strings.Contains(key, "/wal/") {
		l.held = append(l.held, struct {
			key  string
			data []byte
		}{key, append([]byte(nil), data...)})
		return errors.New("injected: no answer")
	}
	return l.Store.Put(ctx, key, data)
}

// Concurrent flushes share store-log uploads (group commit).
func TestStoreLogGroupCommit(t *testing.T) {
	ctx := context.Background()
	s := backend.NewMem()
	if err := vb.CreateWithClass(ctx, s, "v", 4<<20, vb.DurabilityStore); err != nil {
		t.Fatal(err)
	}
	v, err := vb.Open(ctx, s, "v", storeOpts(t))
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	var wg sync.WaitGroup
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				if _, err := v.WriteAt(fill(byte(g), 4096), int64(g*50+i)*4096); err != nil {
					t.Error(err)
					return
				}
				if err := v.Flush(); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	st := v.Stats()
	t.Logf("%d flushes, %d store-log uploads", st.Flushes, st.StoreLogPuts)
	if st.StoreLogPuts == 0 || st.StoreLogPuts > st.Flushes {
		t.Fatalf("%d uploads for %d flushes", st.StoreLogPuts, st.Flushes)
	}
}

// A corrupt store-log object fails the open with ErrCorrupt and changes
// nothing in the store.
func TestStoreLogCorrupt(t *testing.T) {
	ctx := context.Background()
	s := backend.NewMem()
	if err := vb.CreateWithClass(ctx, s, "v", 1<<20, vb.DurabilityStore); err != nil {
		t.Fatal(err)
	}
	a, err := vb.Open(ctx, s, "v", storeOpts(t))
	if err != nil {
		t.Fatal(err)
	}
	a.WriteAt(fill(1, 4096), 0)
	if err := a.Flush(); err != nil {
		t.Fatal(err)
	}
	vb.ForgetForTest(a)
	keys, _ := s.List(ctx, "v/wal/")
	obj, _, _ := s.Get(ctx, keys[0])
	obj[100] ^= 1
	s.Put(ctx, keys[0], obj)
	before, _, _ := s.Get(ctx, "v/manifest")
	if _, err := vb.Open(ctx, s, "v", storeOpts(t)); !errors.Is(err, vb.ErrCorrupt) {
		t.Fatalf("open over a corrupt store log: %v; want ErrCorrupt", err)
	}
	if after, _, _ := s.Get(ctx, "v/manifest"); !bytes.Equal(before, after) {
		t.Fatal("a failed open changed the manifest")
	}
}

// durability=store: the local WAL can lack a trim that reached the store
// log (uploaded; the node crashed before its local copy was on disk). The
// next open on that node replays the older write from its WAL and adopts
// the trim from the store log: reads see the trim at once, not the old
// data until the next drain.
func TestStoreLogTrimNewerThanLocalWAL(t *testing.T) {
	ctx := context.Background()
	s := backend.NewMem()
	if err := vb.CreateWithClass(ctx, s, "v", 1<<20, vb.DurabilityStore); err != nil {
		t.Fatal(err)
	}
	o := storeOpts(t)
	a, err := vb.Open(ctx, s, "v", o)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.WriteAt(fill(7, 4096), 4096); err != nil {
		t.Fatal(err)
	}
	if err := a.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := a.Trim(4096, 4096); err != nil {
		t.Fatal(err)
	}
	if err := a.Flush(); err != nil {
		t.Fatal(err)
	}
	vb.ForgetForTest(a)
	// The local WAL loses its last record, the trim: only block 1's shard
	// holds records.
	var segs []string
	filepath.WalkDir(o.WALDir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(p, ".wal") {
			if fi, _ := d.Info(); fi.Size() > wal.BlockRecordLen {
				segs = append(segs, p)
			}
		}
		return nil
	})
	if len(segs) != 1 {
		t.Fatalf("segments holding records: %v, want one", segs)
	}
	fi, err := os.Stat(segs[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(segs[0], fi.Size()-wal.HeaderSize); err != nil {
		t.Fatal(err)
	}
	b, err := vb.Open(ctx, s, "v", o)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if got := readAll(t, b)[4096:8192]; !bytes.Equal(got, make([]byte, 4096)) {
		t.Fatal("block 1 reads its old data after the store log's newer trim was adopted")
	}
	if err := b.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, b)[4096:8192]; !bytes.Equal(got, make([]byte, 4096)) {
		t.Fatal("block 1 reads its old data after a drain")
	}
}
