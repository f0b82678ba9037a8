package viperblock

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/chunk"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/seal"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/vfs"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/wal"
)

// testKeySource returns a KEK source whose key is the byte b repeated.
func testKeySource(t testing.TB, b byte) KeySource {
	t.Helper()
	var k [seal.KeySize]byte
	for i := range k {
		k[i] = b
	}
	return seal.NewFileSource(k, "test-key")
}

// diskVolume is a volume on a file store and a WAL directory on the real
// disk, so tests can read every byte the engine leaves there.
type diskVolume struct {
	store    backend.Store
	storeDir string
	walDir   string
}

func newDiskVolume(t *testing.T) *diskVolume {
	t.Helper()
	d := &diskVolume{storeDir: t.TempDir(), walDir: t.TempDir()}
	st, err := backend.NewFile(vfs.Default, d.storeDir)
	if err != nil {
		t.Fatal(err)
	}
	d.store = st
	return d
}

func (d *diskVolume) opts(keys KeySource) Options {
	return Options{WALDir: d.walDir, Keys: keys, Logger: quietLogger(), CacheBlocks: -1, DrainInterval: time.Hour, DrainBytes: 1 << 40,
		Compaction: CompactionOptions{Disabled: true}}
}

// treeHash hashes every file's path and content under dirs.
func treeHash(t *testing.T, dirs ...string) string {
	t.Helper()
	h := sha256.New()
	for _, dir := range dirs {
		err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
			if err != nil || e.IsDir() {
				return err
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			fmt.Fprintf(h, "%s %d\n", p, len(b))
			h.Write(b)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return hex.EncodeToString(h.Sum(nil))
}

// findMarker reports the files under dirs that contain marker.
func findMarker(t *testing.T, marker []byte, dirs ...string) []string {
	t.Helper()
	// The volume is live: its background work creates, renames and
	// deletes WAL files (prepared free files, recycled segments) while the
	// search walks. A file gone between the listing and its read may be
	// under a name the listing missed, so such a search is made again,
	// until one reads every file it lists.
	for range 50 {
		found, vanished := searchMarker(t, marker, dirs)
		if !vanished {
			return found
		}
	}
	t.Fatal("files kept vanishing under the search for 50 rounds")
	return nil
}

// searchMarker is one search of findMarker; vanished reports that a
// listed file was gone when read.
func searchMarker(t *testing.T, marker []byte, dirs []string) (found []string, vanished bool) {
	t.Helper()
	for _, dir := range dirs {
		err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
			if err != nil && errors.Is(err, fs.ErrNotExist) && p != dir {
				vanished = true
				return nil
			}
			if err != nil || e.IsDir() {
				return err
			}
			b, err := os.ReadFile(p)
			if errors.Is(err, fs.ErrNotExist) {
				vanished = true
				return nil
			}
			if err != nil {
				return err
			}
			if bytes.Contains(b, marker) {
				found = append(found, p)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return found, vanished
}

// markerBlock is a block of random bytes (incompressible): its first 64
// bytes are the marker searched for.
func markerBlock(seed uint64) []byte {
	r := mrand.New(mrand.NewPCG(seed, 42))
	b := make([]byte, BlockSize)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// TestNoPlaintextAtRest writes a known block to a volume and looks for it
// in every byte under the store and the WAL directories, after each step
// that puts data there: unflushed (the writeback may have written it),
// flushed, drained, snapshotted, cloned (and the clone written and
// drained). An encrypted volume (plain or compressed chunks) must never
// show it; a plain volume must (which proves the search finds it).
func TestNoPlaintextAtRest(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name      string
		encrypted bool
		comp      Compression
	}{{"plain", false, CompressionNone}, {"encrypted", true, CompressionNone}, {"encrypted-zstd", true, CompressionZstd}} {
		t.Run(tc.name, func(t *testing.T) {
			d := newDiskVolume(t)
			var keys KeySource
			if tc.encrypted {
				keys = testKeySource(t, 7)
			}
			if err := CreateVolume(ctx, d.store, "vol", 1<<20, CreateOptions{Keys: keys, Compression: tc.comp}); err != nil {
				t.Fatal(err)
			}
			v, err := Open(ctx, d.store, "vol", d.opts(keys))
			if err != nil {
				t.Fatal(err)
			}
			blk := markerBlock(1)
			marker := blk[:64]
			check := func(step string) {
				t.Helper()
				found := findMarker(t, marker, d.storeDir, d.walDir)
				if tc.encrypted && len(found) > 0 {
					t.Fatalf("%s: plaintext found at rest in %v", step, found)
				}
				if !tc.encrypted && step != "unflushed" && len(found) == 0 {
					t.Fatalf("%s: the marker is not found in a plain volume: the search is broken", step)
				}
			}
			if _, err := v.WriteAt(blk, 3*BlockSize); err != nil {
				t.Fatal(err)
			}
			// A partial write (read-modify-write) and a trim too.
			if _, err := v.WriteAt(blk[:100], 9*BlockSize+7); err != nil {
				t.Fatal(err)
			}
			if err := v.Trim(20*BlockSize, 4*BlockSize); err != nil {
				t.Fatal(err)
			}
			check("unflushed")
			if err := v.Flush(); err != nil {
				t.Fatal(err)
			}
			check("flushed")
			if err := v.Drain(ctx); err != nil {
				t.Fatal(err)
			}
			check("drained")
			if _, err := v.Snapshot(ctx, "s1"); err != nil {
				t.Fatal(err)
			}
			// Written again after the snapshot: in the WAL only.
			if _, err := v.WriteAt(blk, 5*BlockSize); err != nil {
				t.Fatal(err)
			}
			if err := v.Flush(); err != nil {
				t.Fatal(err)
			}
			check("snapshotted")
			if err := v.Close(); err != nil {
				t.Fatal(err)
			}
			if err := Clone(ctx, d.store, "vol", "s1", "clone", 0); err != nil {
				t.Fatal(err)
			}
			c, err := Open(ctx, d.store, "clone", d.opts(keys))
			if err != nil {
				t.Fatal(err)
			}
			got := make([]byte, BlockSize)
			if _, err := c.ReadAt(got, 3*BlockSize); err != nil || !bytes.Equal(got, blk) {
				t.Fatalf("clone reads its parent's block: %v", err)
			}
			if _, err := c.WriteAt(blk, 40*BlockSize); err != nil {
				t.Fatal(err)
			}
			if err := c.Flush(); err != nil {
				t.Fatal(err)
			}
			check("clone flushed")
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
			check("cloned")
			// Every copy still reads back.
			c, err = Open(ctx, d.store, "clone", d.opts(keys))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			for _, b := range []int64{3, 40} {
				if _, err := c.ReadAt(got, b*BlockSize); err != nil || !bytes.Equal(got, blk) {
					t.Fatalf("clone block %d after reopen: %v", b, err)
				}
			}
		})
	}
}

// TestNoPlaintextWrittenOut covers each path by which WAL records leave
// memory (an encrypted volume keeps them unsealed there and seals each one
// on its way out): a Flush, a FUA write (a write then a Flush), the
// writeback's write-ahead (a bound, and none), the final flush of a Close
// whose drain fails, and the store log (durability store). After each, no
// file under the store or the WAL directory holds a marker block written
// in full, in part (read-modify-write) or next to a trim; a plain volume
// must show them (the search works, and the path did write). The records
// written then replay: the reopened volume reads every marker back.
func TestNoPlaintextWrittenOut(t *testing.T) {
	ctx := context.Background()
	paths := []struct {
		name string
		opts func(*Options)
		// out writes the records out; a drain fails while crash is set.
		out func(t *testing.T, v *Volume, crash *atomic.Bool)
	}{
		{"flush", nil, func(t *testing.T, v *Volume, _ *atomic.Bool) {
			if err := v.Flush(); err != nil {
				t.Fatal(err)
			}
		}},
		{"fua", nil, func(t *testing.T, v *Volume, _ *atomic.Bool) {
			// The server's FUA write: the write, then a Flush.
			if _, err := v.WriteAt(markerBlock(9), 11*BlockSize); err != nil {
				t.Fatal(err)
			}
			if err := v.Flush(); err != nil {
				t.Fatal(err)
			}
		}},
		{"write-ahead", func(o *Options) { o.WALDeferBytes = 1 }, func(t *testing.T, v *Volume, _ *atomic.Bool) {
			// Everything above the bound (1 byte) is written ahead.
			waitFor(t, "the writeback to write the records", func() bool { return v.unwritten.Load() <= 1 })
		}},
		{"write-ahead-no-defer", func(o *Options) { o.WALDeferBytes = -1; o.MaxPendingBytes, o.DrainBytes = 8<<20, 8<<20 }, func(t *testing.T, v *Volume, _ *atomic.Bool) {
			// Fill the first slab (64 KiB at this pending limit) of the
			// markers' shards, 3 and 9, so that the writeback writes them.
			for k := range 2 * 15 {
				for _, s := range []int64{3, 9} {
					if _, err := v.WriteAt(markerBlock(uint64(100+k)), (s+16*int64(1+k%15))*BlockSize); err != nil {
						t.Fatal(err)
					}
				}
			}
			rec := uint64(v.blockRecLen())
			waitFor(t, "the writeback to write the records", func() bool { return v.stats.walWritten.Load() >= 2*15*rec })
		}},
		{"close", nil, func(t *testing.T, v *Volume, crash *atomic.Bool) {
			crash.Store(true) // the drain fails: the records stay in the WAL Close flushed
			if err := v.Close(); !errors.Is(err, errCrash) {
				t.Fatalf("Close: %v, want the drain's failure", err)
			}
		}},
		{"store-log", func(o *Options) { o.Durability = DurabilityStore; o.LeaseDuration = 500 * time.Millisecond }, func(t *testing.T, v *Volume, _ *atomic.Bool) {
			if err := v.Flush(); err != nil {
				t.Fatal(err)
			}
			if v.stats.storeLogPuts.Load() == 0 {
				t.Fatal("no store-log object written")
			}
		}},
	}
	for _, encrypted := range []bool{false, true} {
		for _, p := range paths {
			name := "plain/" + p.name
			if encrypted {
				name = "encrypted/" + p.name
			}
			t.Run(name, func(t *testing.T) {
				d := newDiskVolume(t)
				var keys KeySource
				if encrypted {
					keys = testKeySource(t, 7)
				}
				if err := CreateVolume(ctx, d.store, "vol", 1<<20, CreateOptions{Keys: keys}); err != nil {
					t.Fatal(err)
				}
				o := d.opts(keys)
				var crash atomic.Bool
				o.crash = func(point string) error {
					if crash.Load() && point == "drain.before-chunk-put" {
						return errCrash
					}
					return nil
				}
				if p.opts != nil {
					p.opts(&o)
				}
				v, err := Open(ctx, d.store, "vol", o)
				if err != nil {
					t.Fatal(err)
				}
				defer v.Close()
				full, part := markerBlock(1), markerBlock(2)
				if _, err := v.WriteAt(full, 3*BlockSize); err != nil {
					t.Fatal(err)
				}
				if _, err := v.WriteAt(part[:100], 9*BlockSize+7); err != nil {
					t.Fatal(err)
				}
				if err := v.Trim(20*BlockSize, 4*BlockSize); err != nil {
					t.Fatal(err)
				}
				p.out(t, v, &crash)
				if v.stats.walWritten.Load() == 0 {
					t.Fatal("nothing was written to the WAL")
				}
				for _, m := range [][]byte{full[:64], part[:64]} {
					found := findMarker(t, m, d.storeDir, d.walDir)
					if encrypted && len(found) > 0 {
						t.Fatalf("plaintext found at rest in %v", found)
					}
					if !encrypted && len(found) == 0 {
						t.Fatal("the marker is not found in a plain volume: the search is broken, or nothing was written out")
					}
				}
				if p.name == "store-log" {
					// The store log alone holds them too.
					if found := findMarker(t, full[:64], filepath.Join(d.storeDir, "vol", "wal")); encrypted == (len(found) > 0) {
						t.Fatalf("marker in the store log: %v (encrypted %v)", found, encrypted)
					}
				}
				// What was written out replays after a crash (no drain): from
				// the WAL, or for the store log on another node.
				v.abandon()
				crash.Store(false)
				if p.name == "store-log" {
					// Replayed on this node (unsealed in memory), then sealed
					// again, under the old epoch's key, for the store log of
					// the next open (no drain: DeferBackground).
					o2 := o
					o2.DeferBackground = true
					r, err := Open(ctx, d.store, "vol", o2)
					if err != nil {
						t.Fatal(err)
					}
					if err := r.Flush(); err != nil {
						t.Fatal(err)
					}
					if r.stats.storeLogPuts.Load() == 0 {
						t.Fatal("the replayed records were not uploaded to the store log")
					}
					if found := findMarker(t, full[:64], d.storeDir, d.walDir); encrypted == (len(found) > 0) {
						t.Fatalf("marker after the replayed records' upload: %v (encrypted %v)", found, encrypted)
					}
					r.abandon()
					// Then on another node: from the store log alone.
					o.WALDir = t.TempDir()
				}
				r, err := Open(ctx, d.store, "vol", o)
				if err != nil {
					t.Fatal(err)
				}
				defer r.Close()
				got := make([]byte, BlockSize)
				if _, err := r.ReadAt(got, 3*BlockSize); err != nil || !bytes.Equal(got, full) {
					t.Fatalf("full block after reopen: %v", err)
				}
				if _, err := r.ReadAt(got[:100], 9*BlockSize+7); err != nil || !bytes.Equal(got[:100], part[:100]) {
					t.Fatalf("partial block after reopen: %v", err)
				}
			})
		}
	}
}

// TestKeyErrorsChangeNothing opens an encrypted volume with no key and
// with a wrong key, writable and read-only, and its snapshot: each fails
// with ErrKey and leaves every byte of the store and the WAL as it was.
func TestKeyErrorsChangeNothing(t *testing.T) {
	ctx := context.Background()
	d := newDiskVolume(t)
	good := testKeySource(t, 1)
	if err := CreateVolume(ctx, d.store, "vol", 1<<20, CreateOptions{Keys: good}); err != nil {
		t.Fatal(err)
	}
	v, err := Open(ctx, d.store, "vol", d.opts(good))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.WriteAt(markerBlock(2), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Snapshot(ctx, "s"); err != nil {
		t.Fatal(err)
	}
	if _, err := v.WriteAt(markerBlock(3), BlockSize); err != nil {
		t.Fatal(err)
	}
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	v.abandon() // a crash: the WAL holds unreplayed records, the lease is held
	before := treeHash(t, d.storeDir, d.walDir)
	wrong := testKeySource(t, 2)
	for _, tc := range []struct {
		name string
		keys KeySource
		want string
	}{{"no key", nil, "no key was given"}, {"wrong key", wrong, "wrong key"}} {
		o := d.opts(tc.keys)
		_, err := Open(ctx, d.store, "vol", o)
		if !errors.Is(err, ErrKey) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: open: %v", tc.name, err)
		}
		o.ReadOnly = true
		if _, err := Open(ctx, d.store, "vol", o); !errors.Is(err, ErrKey) {
			t.Errorf("%s: read-only open: %v", tc.name, err)
		}
		if _, err := OpenSnapshot(ctx, d.store, "vol", "s", o); !errors.Is(err, ErrKey) {
			t.Errorf("%s: snapshot open: %v", tc.name, err)
		}
		if tc.keys != nil {
			if _, err := Check(ctx, d.store, "vol", CheckOptions{Keys: tc.keys}); !errors.Is(err, ErrKey) {
				t.Errorf("%s: check: %v", tc.name, err)
			}
			if err := Rekey(ctx, d.store, "vol", tc.keys, testKeySource(t, 9)); !errors.Is(err, ErrKey) {
				t.Errorf("%s: rekey: %v", tc.name, err)
			}
		}
	}
	if after := treeHash(t, d.storeDir, d.walDir); after != before {
		t.Fatal("a refused open changed the store or the WAL")
	}
	// The right key still gets everything back, the WAL's records too.
	v, err = Open(ctx, d.store, "vol", Options{WALDir: d.walDir, Keys: good, Logger: quietLogger(), TakeoverTimeout: time.Minute, LeaseDuration: MinLeaseDuration})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	got := make([]byte, BlockSize)
	for i, seed := range []uint64{2, 3} {
		if _, err := v.ReadAt(got, int64(i)*BlockSize); err != nil || !bytes.Equal(got, markerBlock(seed)) {
			t.Fatalf("block %d after reopen: %v", i, err)
		}
	}
}

var castagnoliTab = crc32.MakeTable(crc32.Castagnoli)

// forgeExtent flips a byte of extent k's stored bytes in the chunk file at
// path and recomputes every checksum around it (extent, index, footer), as
// an attacker would: only the authentication tag can tell.
func forgeExtent(t *testing.T, path string, k int) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	h, err := chunk.DecodeHeader(b)
	if err != nil {
		t.Fatal(err)
	}
	il := int(chunk.IndexLen2(h.Count, h.ExtentBlocks))
	ix, err := chunk.DecodeIndex2(b[chunk.HeaderSize:chunk.HeaderSize+il], h)
	if err != nil {
		t.Fatal(err)
	}
	e := ix.Extents[k]
	b[e.Off+int64(e.Len)/2] ^= 0x01
	le := binary.LittleEndian
	ent := chunk.HeaderSize + h.Count*chunk.BlockEntry2 + k*chunk.ExtentEntry2
	le.PutUint32(b[ent+16:], crc32.Checksum(b[e.Off:e.Off+int64(e.Len)], castagnoliTab))
	body := il - chunk.FooterSize
	f := chunk.HeaderSize + body
	le.PutUint32(b[f+12:], crc32.Checksum(b[chunk.HeaderSize:f], castagnoliTab))
	le.PutUint32(b[f+28:], crc32.Checksum(b[f:f+28], castagnoliTab))
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func chunkFiles(t *testing.T, dir, vol string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, vol, "chunks", "*"))
	if err != nil || len(m) == 0 {
		t.Fatalf("no chunk files under %s: %v", dir, err)
	}
	return m
}

// TestTamperedChunk forges a sealed extent (checksums fixed up): a read of
// its blocks fails with ErrCorrupt, never returns data, and fsck with the
// key reports it, where fsck without the key (stored checksums only)
// cannot.
func TestTamperedChunk(t *testing.T) {
	ctx := context.Background()
	d := newDiskVolume(t)
	keys := testKeySource(t, 1)
	if err := CreateVolume(ctx, d.store, "vol", 1<<20, CreateOptions{Keys: keys}); err != nil {
		t.Fatal(err)
	}
	v, err := Open(ctx, d.store, "vol", d.opts(keys))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 40 {
		if _, err := v.WriteAt(markerBlock(uint64(i)), int64(i)*BlockSize); err != nil {
			t.Fatal(err)
		}
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	rep, err := Check(ctx, d.store, "vol", CheckOptions{Keys: keys})
	if err != nil || !rep.OK() || rep.Authenticated != 1 || rep.Sealed != 1 {
		t.Fatalf("intact volume: %+v, %v", rep, err)
	}
	files := chunkFiles(t, d.storeDir, "vol")
	forgeExtent(t, files[0], 1) // block 1 (one block per extent: sealed, not compressed)
	if rep, err := Check(ctx, d.store, "vol", CheckOptions{}); err != nil || !rep.OK() {
		t.Fatalf("without the key the forgery passes the stored checksums: %+v, %v", rep, err)
	}
	rep, err = Check(ctx, d.store, "vol", CheckOptions{Keys: keys})
	if err != nil || rep.OK() || !strings.Contains(strings.Join(rep.Problems, "\n"), "authentication") {
		t.Fatalf("fsck with the key: %+v, %v", rep, err)
	}
	v, err = Open(ctx, d.store, "vol", Options{ReadOnly: true, Keys: keys, CacheBlocks: -1})
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, BlockSize)
	if _, err := v.ReadAt(got, 1*BlockSize); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("read of a forged extent: %v", err)
	}
	if _, err := v.ReadAt(got, 3*BlockSize); err != nil || !bytes.Equal(got, markerBlock(3)) {
		t.Fatalf("read of an intact extent: %v", err)
	}
	// A plain flip (checksums left alone) is caught without the key too.
	b, _ := os.ReadFile(files[0])
	b[len(b)-10] ^= 0x80
	if err := os.WriteFile(files[0], b, 0o644); err != nil {
		t.Fatal(err)
	}
	if rep, err := Check(ctx, d.store, "vol", CheckOptions{}); err != nil || rep.OK() {
		t.Fatalf("flipped bit without the key: %+v, %v", rep, err)
	}
}

// TestTamperedWALRecord forges a sealed WAL record (its CRC fixed up): the
// open that replays it fails with ErrCorrupt and serves nothing.
func TestTamperedWALRecord(t *testing.T) {
	ctx := context.Background()
	d := newDiskVolume(t)
	keys := testKeySource(t, 1)
	if err := CreateVolume(ctx, d.store, "vol", 1<<20, CreateOptions{Keys: keys}); err != nil {
		t.Fatal(err)
	}
	v, err := Open(ctx, d.store, "vol", d.opts(keys))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.WriteAt(markerBlock(1), 0); err != nil { // shard 0
		t.Fatal(err)
	}
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	v.abandon()
	segs, _ := filepath.Glob(filepath.Join(d.walDir, "vol", "00", "*.wal"))
	if len(segs) != 1 {
		t.Fatalf("segments: %v", segs)
	}
	b, err := os.ReadFile(segs[0])
	if err != nil {
		t.Fatal(err)
	}
	_, hlen, err := wal.DecodeSegmentHeader(b)
	if err != nil {
		t.Fatal(err)
	}
	rec := b[hlen : hlen+wal.SealedBlockLen]
	if rec[4] != wal.TypeSealedBlock {
		t.Fatalf("record type %d", rec[4])
	}
	rec[100] ^= 1
	c := crc32.Update(crc32.Checksum(rec[:28], castagnoliTab), castagnoliTab, rec[32:])
	binary.LittleEndian.PutUint32(rec[28:], c)
	if err := os.WriteFile(segs[0], b, 0o644); err != nil {
		t.Fatal(err)
	}
	o := d.opts(keys)
	o.LeaseDuration, o.TakeoverTimeout = MinLeaseDuration, time.Minute
	if _, err := Open(ctx, d.store, "vol", o); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("open over a forged WAL record: %v", err)
	}
}

// TestRekey rewraps a volume's keys (and its snapshot's): the new key
// opens it, the old one no longer does; a held lease refuses the rekey.
func TestRekey(t *testing.T) {
	ctx := context.Background()
	d := newDiskVolume(t)
	k1, k2 := testKeySource(t, 1), testKeySource(t, 2)
	if err := CreateVolume(ctx, d.store, "vol", 1<<20, CreateOptions{Keys: k1, Compression: CompressionLZ4}); err != nil {
		t.Fatal(err)
	}
	v, err := Open(ctx, d.store, "vol", d.opts(k1))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.WriteAt(markerBlock(5), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Snapshot(ctx, "s"); err != nil {
		t.Fatal(err)
	}
	if err := Rekey(ctx, d.store, "vol", k1, k2); !errors.Is(err, ErrInUse) {
		t.Fatalf("rekey of an open volume: %v", err)
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	before := treeHash(t, d.storeDir)
	if err := Rekey(ctx, d.store, "vol", k2, testKeySource(t, 3)); !errors.Is(err, ErrKey) {
		t.Fatalf("rekey with the wrong old key: %v", err)
	}
	if treeHash(t, d.storeDir) != before {
		t.Fatal("a refused rekey changed the store")
	}
	if err := Rekey(ctx, d.store, "vol", k1, k2); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(ctx, d.store, "vol", d.opts(k1)); !errors.Is(err, ErrKey) {
		t.Fatalf("old key after rekey: %v", err)
	}
	if _, err := OpenSnapshot(ctx, d.store, "vol", "s", d.opts(k1)); !errors.Is(err, ErrKey) {
		t.Fatalf("old key on the snapshot after rekey: %v", err)
	}
	s, err := OpenSnapshot(ctx, d.store, "vol", "s", d.opts(k2))
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, BlockSize)
	if _, err := s.ReadAt(got, 0); err != nil || !bytes.Equal(got, markerBlock(5)) {
		t.Fatalf("snapshot read with the new key: %v", err)
	}
	v, err = Open(ctx, d.store, "vol", d.opts(k2))
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if _, err := v.ReadAt(got, 0); err != nil || !bytes.Equal(got, markerBlock(5)) {
		t.Fatalf("read with the new key: %v", err)
	}
}

// TestCloneKeys: a clone reads its parent's chunks with the parent's key,
// writes with a key of its own, and is re-keyed apart from its parent.
func TestCloneKeys(t *testing.T) {
	ctx := context.Background()
	d := newDiskVolume(t)
	k1, k2 := testKeySource(t, 1), testKeySource(t, 2)
	if err := CreateVolume(ctx, d.store, "p", 1<<20, CreateOptions{Keys: k1}); err != nil {
		t.Fatal(err)
	}
	v, err := Open(ctx, d.store, "p", d.opts(k1))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.WriteAt(markerBlock(1), 0); err != nil {
		t.Fatal(err)
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	if err := CloneVolume(ctx, d.store, "p", "c", 0, SnapshotOptions{}); err != nil {
		t.Fatal(err)
	}
	c, err := Open(ctx, d.store, "c", d.opts(k1))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.WriteAt(markerBlock(2), BlockSize); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	pm, _, _ := readLiveManifest(ctx, d.store, "p")
	cm, _, _ := readLiveManifest(ctx, d.store, "c")
	if len(cm.Keys) != 2 || cm.WriteKey == pm.WriteKey {
		t.Fatalf("clone keys %+v, write key %x (parent's %x)", cm.Keys, cm.WriteKey, pm.WriteKey)
	}
	if err := Rekey(ctx, d.store, "c", k1, k2); err != nil {
		t.Fatal(err)
	}
	c, err = Open(ctx, d.store, "c", d.opts(k2))
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, BlockSize)
	for i, seed := range []uint64{1, 2} {
		if _, err := c.ReadAt(got, int64(i)*BlockSize); err != nil || !bytes.Equal(got, markerBlock(seed)) {
			t.Fatalf("clone block %d: %v", i, err)
		}
	}
	c.Close()
	p, err := Open(ctx, d.store, "p", d.opts(k1))
	if err != nil {
		t.Fatalf("parent with its own key after the clone's rekey: %v", err)
	}
	p.Close()
}

// TestCompression: a compressible data set round-trips and its chunks
// shrink; random data is stored raw (extents not compressed); a plain
// volume keeps writing version 1 chunks.
func TestCompression(t *testing.T) {
	ctx := context.Background()
	text := bytes.Repeat([]byte("viperblock stores blocks in chunks; compressible text. "), 80)
	for _, tc := range []struct {
		comp       Compression
		compress   bool
		wantShrink bool
	}{{CompressionZstd, true, true}, {CompressionLZ4, true, true}, {CompressionZstd, false, false}, {CompressionNone, true, false}} {
		t.Run(fmt.Sprintf("%s/compressible=%v", tc.comp, tc.compress), func(t *testing.T) {
			d := newDiskVolume(t)
			if err := CreateVolume(ctx, d.store, "vol", 8<<20, CreateOptions{Compression: tc.comp}); err != nil {
				t.Fatal(err)
			}
			v, err := Open(ctx, d.store, "vol", d.opts(nil))
			if err != nil {
				t.Fatal(err)
			}
			const n = 300
			want := make([]byte, n*BlockSize)
			for i := range n {
				blk := want[i*BlockSize : (i+1)*BlockSize]
				if tc.compress {
					copy(blk, text[i%50:])
				} else {
					copy(blk, markerBlock(uint64(i)))
				}
			}
			if _, err := v.WriteAt(want, 0); err != nil {
				t.Fatal(err)
			}
			if err := v.Close(); err != nil {
				t.Fatal(err)
			}
			sp, err := Space(ctx, d.store, "vol")
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: %d block bytes stored in %d (ratio %.2f)", tc.comp, sp.BlockBytes, sp.StoredBytes, sp.CompressionRatio())
			if sp.BlockBytes != n*BlockSize {
				t.Fatalf("block bytes %d", sp.BlockBytes)
			}
			if tc.wantShrink != (sp.CompressionRatio() > 3) {
				t.Fatalf("ratio %.2f", sp.CompressionRatio())
			}
			b, _ := os.ReadFile(chunkFiles(t, d.storeDir, "vol")[0])
			h, err := chunk.DecodeHeader(b)
			if err != nil {
				t.Fatal(err)
			}
			if (tc.comp == CompressionNone) != (h.Version == chunk.Version) {
				t.Fatalf("compression %s wrote a version %d chunk", tc.comp, h.Version)
			}
			if h.Version == chunk.Version2 && !tc.compress {
				ix, err := chunk.DecodeIndex2(b[chunk.HeaderSize:chunk.HeaderSize+chunk.IndexLen2(h.Count, h.ExtentBlocks)], h)
				if err != nil {
					t.Fatal(err)
				}
				for k, e := range ix.Extents {
					if e.Compressed() {
						t.Fatalf("random extent %d stored compressed", k)
					}
				}
			}
			v, err = Open(ctx, d.store, "vol", Options{ReadOnly: true, CacheBlocks: -1})
			if err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len(want))
			if _, err := v.ReadAt(got, 0); err != nil || !bytes.Equal(got, want) {
				t.Fatalf("read back: %v", err)
			}
			// Unaligned small reads across extent edges.
			for _, off := range []int64{15*BlockSize + 100, 31*BlockSize - 1, 200 * BlockSize} {
				p := make([]byte, 3*BlockSize)
				if _, err := v.ReadAt(p, off); err != nil || !bytes.Equal(p, want[off:off+int64(len(p))]) {
					t.Fatalf("read at %d: %v", off, err)
				}
			}
			if rep, err := Check(ctx, d.store, "vol", CheckOptions{}); err != nil || !rep.OK() {
				t.Fatalf("check: %+v %v", rep, err)
			}
		})
	}
}
