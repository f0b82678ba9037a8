package viperblock_test

import (
	"bytes"
	"context"
	"errors"
	"math/rand"
	"os"
	"path/filepath"
	"testing"

	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/chunk"
)

// A chunk file corrupted in place on a file store, after the store has
// read it (and keeps it open) and while the volume serves, is reported as
// corruption on every read path: a single block read into the caller's
// buffer, a multi-block run read in one piece, an unaligned read and a run
// with read-ahead. Blocks verified before the corruption and held in the
// read cache still read back as written; intact blocks read normally.
func TestCorruptChunkOnOpenFileStore(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "store")
	st, err := backend.NewFile(nil, dir)
	if err != nil {
		t.Fatal(err)
	}
	const blocks = 64
	data := make([]byte, blocks*4096)
	rand.New(rand.NewSource(1)).Read(data)
	for _, cacheBlocks := range []int{-1, 1024} {
		name := "nocache"
		if cacheBlocks > 0 {
			name = "cache"
		}
		v := mustCreate(t, st, name, 1<<20, vb.Options{WALDir: t.TempDir(), CacheBlocks: cacheBlocks})
		if _, err := v.WriteAt(data, 0); err != nil {
			t.Fatal(err)
		}
		if err := v.Drain(ctx); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(data))
		if _, err := v.ReadAt(got, 0); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%s: read back: %v (equal %v)", name, err, bytes.Equal(got, data))
		}
		keys, err := st.List(ctx, name+"/chunks/")
		if err != nil || len(keys) != 1 {
			t.Fatalf("%s: chunks %v, %v", name, keys, err)
		}
		// Flip a bit of block 40's data in place: the store's open
		// descriptor sees it.
		f, err := os.OpenFile(filepath.Join(dir, filepath.FromSlash(keys[0])), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		off := chunk.DataOffset(40) + 100
		b := []byte{0}
		if _, err := f.ReadAt(b, off); err != nil {
			t.Fatal(err)
		}
		b[0] ^= 0x10
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
		f.Close()
		if cacheBlocks > 0 {
			// Verified when it entered the cache: still the written data.
			if _, err := v.ReadAt(got[:4096], 40*4096); err != nil || !bytes.Equal(got[:4096], data[40*4096:41*4096]) {
				t.Fatalf("cached block after corruption on the store: %v", err)
			}
			v.Close()
			v, err = vb.Open(ctx, st, name, vb.Options{WALDir: t.TempDir(), CacheBlocks: cacheBlocks, ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
		}
		for _, r := range []struct {
			what    string
			off, n  int64
			corrupt bool
		}{
			{"the corrupt block", 40 * 4096, 4096, true},
			{"a run over it", 32 * 4096, 16 * 4096, true},
			{"an unaligned read into it", 40*4096 + 50, 100, true},
			{"the block before", 39 * 4096, 4096, false},
			{"the run before", 0, 40 * 4096, false},
			{"a run after it", 41 * 4096, 23 * 4096, false},
			{"the whole volume", 0, blocks * 4096, true},
		} {
			p := make([]byte, r.n)
			_, err := v.ReadAt(p, r.off)
			if r.corrupt && !errors.Is(err, vb.ErrCorrupt) {
				t.Errorf("%s: read of %s: %v, want ErrCorrupt", name, r.what, err)
			}
			if !r.corrupt && (err != nil || !bytes.Equal(p, data[r.off:r.off+r.n])) {
				t.Errorf("%s: read of %s: %v (equal %v)", name, r.what, err, bytes.Equal(p, data[r.off:r.off+r.n]))
			}
		}
		v.Close()
	}
}

// Reads of every shape return what was written once it is drained:
// single blocks, runs, unaligned reads and runs that span chunks, with and
// without the read cache (the direct and the pooled-buffer paths).
func TestReadShapesAfterDrain(t *testing.T) {
	ctx := context.Background()
	st, err := backend.NewFile(nil, filepath.Join(t.TempDir(), "store"))
	if err != nil {
		t.Fatal(err)
	}
	const size = 12 << 20 // three 4 MiB chunks' worth
	data := make([]byte, size)
	rng := rand.New(rand.NewSource(2))
	rng.Read(data)
	for _, c := range []int{-1, 0} {
		name := map[int]string{-1: "nocache", 0: "cache"}[c]
		v := mustCreate(t, st, name, size, vb.Options{WALDir: t.TempDir(), CacheBlocks: c})
		// Written out of order, so chunk order differs from volume order.
		for _, i := range rng.Perm(size >> 16) {
			if _, err := v.WriteAt(data[i<<16:(i+1)<<16], int64(i)<<16); err != nil {
				t.Fatal(err)
			}
		}
		if err := v.Drain(ctx); err != nil {
			t.Fatal(err)
		}
		for n := 0; n < 300; n++ {
			l := int64(1 + rng.Intn(3<<20))
			if n%3 == 0 {
				l = int64(4096 * (1 + rng.Intn(300)))
			}
			off := rng.Int63n(size - l + 1)
			if n%2 == 0 {
				off &^= 4095
			}
			p := make([]byte, l)
			if _, err := v.ReadAt(p, off); err != nil {
				t.Fatalf("%s: ReadAt(%d, %d): %v", name, l, off, err)
			}
			if !bytes.Equal(p, data[off:off+l]) {
				t.Fatalf("%s: ReadAt(%d, %d) returned other data", name, l, off)
			}
		}
		v.Close()
	}
}

// A 4 KiB read of a drained block on a file store (the default settings:
// no memory cache, the page cache keeps the chunk files) allocates
// nothing once the chunk's index and file are open: random reads are the
// hot path of a block device, and each allocation there costs them (a
// read made eleven before chunk keys were kept with their index and the
// file store looked descriptors up by key).
func TestRandomReadsAllocateNothing(t *testing.T) {
	ctx := context.Background()
	st, err := backend.NewFile(nil, filepath.Join(t.TempDir(), "store"))
	if err != nil {
		t.Fatal(err)
	}
	const size = 8 << 20
	v := mustCreate(t, st, "allocs", size, vb.Options{WALDir: t.TempDir()})
	data := make([]byte, size)
	rand.New(rand.NewSource(3)).Read(data)
	if _, err := v.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	if err := v.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 4096)
	for off := int64(0); off < size; off += 4096 { // every chunk's index and file open
		if _, err := v.ReadAt(p, off); err != nil {
			t.Fatal(err)
		}
	}
	rng := rand.New(rand.NewSource(4))
	var bad error
	n := testing.AllocsPerRun(2000, func() {
		off := rng.Int63n(size/4096) * 4096
		if _, err := v.ReadAt(p, off); err != nil {
			bad = err
		} else if !bytes.Equal(p, data[off:off+4096]) {
			bad = errors.New("a read returned other data")
		}
	})
	if bad != nil {
		t.Fatal(bad)
	}
	if n != 0 {
		t.Fatalf("a 4 KiB read of a drained block makes %v allocations, want 0", n)
	}
}

// Readers that miss the same chunk at the same time read its index once.
func TestChunkIndexReadOnce(t *testing.T) {
	ctx := context.Background()
	st := backend.NewMem()
	v := mustCreate(t, st, "v", 4<<20, vb.Options{WALDir: t.TempDir(), CacheBlocks: -1})
	data := make([]byte, 4<<20)
	rand.New(rand.NewSource(3)).Read(data)
	if _, err := v.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	r, err := vb.Open(ctx, st, "v", vb.Options{ReadOnly: true, CacheBlocks: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	const readers = 32
	start := make(chan struct{})
	errs := make(chan error, readers)
	for g := 0; g < readers; g++ {
		go func() {
			<-start
			p := make([]byte, 4096)
			off := int64(g*31%1024) * 4096
			_, err := r.ReadAt(p, off)
			if err == nil && !bytes.Equal(p, data[off:off+4096]) {
				err = errors.New("wrong data")
			}
			errs <- err
		}()
	}
	close(start)
	for g := 0; g < readers; g++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	// One index read for the chunk, one data read per reader.
	if got := r.Stats().BackendReads; got != readers+1 {
		t.Fatalf("%d backend reads for %d readers of one chunk, want %d", got, readers, readers+1)
	}
}
