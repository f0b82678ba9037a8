package viperblock_test

import (
	"bytes"
	"context"
	"math/rand"
	"testing"

	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
)

// Overwrite a volume fully twice in random order; after GC the store holds
// at most 1.25x the logical data. With a snapshot held, its data survives
// GC intact, and deleting the snapshot then lets GC reclaim it.
func TestSpaceReclaim(t *testing.T) {
	ctx := context.Background()
	const blocks = 4096 // 16 MiB
	s := backend.NewMem()
	o := opts(t)
	o.DrainBytes = 1 << 20 // many small drains: scattered, sparse chunks
	v := mustCreate(t, s, "v", blocks*vb.BlockSize, o)
	rng := rand.New(rand.NewSource(5))
	pass := func(tag byte) {
		for _, b := range rng.Perm(blocks) {
			d := bytes.Repeat([]byte{tag, byte(b), byte(b >> 8)}, vb.BlockSize/3+1)[:vb.BlockSize]
			if _, err := v.WriteAt(d, int64(b)*vb.BlockSize); err != nil {
				t.Fatal(err)
			}
		}
		if err := v.Drain(ctx); err != nil {
			t.Fatal(err)
		}
	}
	pass(1)
	if _, err := v.Snapshot(ctx, "snap"); err != nil {
		t.Fatal(err)
	}
	pass(2)
	pass(3)
	if _, err := v.GC(ctx); err != nil {
		t.Fatal(err)
	}
	logical := int64(blocks * vb.BlockSize)
	// The snapshot pins the first pass: the store holds about two copies.
	if got := s.Bytes(); got > 2*logical*125/100 {
		t.Fatalf("with a snapshot: %d bytes stored for 2x%d logical", got, logical)
	}
	snap, err := vb.OpenSnapshot(ctx, s, "v", "snap", vb.Options{CacheBlocks: -1})
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, vb.BlockSize)
	for b := 0; b < blocks; b++ {
		if _, err := snap.ReadAt(buf, int64(b)*vb.BlockSize); err != nil {
			t.Fatal(err)
		}
		if buf[0] != 1 || buf[1] != byte(b) || buf[2] != byte(b>>8) {
			t.Fatalf("snapshot block %d lost after GC", b)
		}
	}
	if err := vb.DeleteSnapshot(ctx, s, "v", "snap"); err != nil {
		t.Fatal(err)
	}
	rep, err := v.GC(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := s.Bytes(); got > logical*125/100 {
		t.Fatalf("after deleting the snapshot and GC (%+v): %d bytes stored for %d logical", rep, got, logical)
	}
	t.Logf("stored %d bytes for %d logical (%.3fx)", s.Bytes(), logical, float64(s.Bytes())/float64(logical))
	for b := 0; b < blocks; b += 97 {
		v.ReadAt(buf, int64(b)*vb.BlockSize)
		if buf[0] != 3 || buf[1] != byte(b) {
			t.Fatalf("block %d wrong after GC", b)
		}
	}
	v.Close()
}
