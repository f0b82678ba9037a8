package viperblock

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/seal"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/vfs"
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
	var found []string
	for _, dir := range dirs {
		err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
			if err != nil || e.IsDir() {
				return err
			}
			b, err := os.ReadFile(p)
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
	return found
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
