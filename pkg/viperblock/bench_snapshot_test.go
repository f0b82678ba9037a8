package viperblock

import (
	"context"
	"fmt"
	"math/rand"
	"path/filepath"
	"testing"
	"time"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/blockmap"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/manifest"
)

// writtenVolume makes a volume whose committed map covers gib GiB written
// sequentially (one full chunk per 4 MiB, as drains of sequential writes
// produce). Snapshot and clone cost depends only on the manifest, so the
// chunks themselves are not stored.
func writtenVolume(b *testing.B, st backend.Store, name string, gib int) {
	chunks := gib * 256
	m := &manifest.Manifest{Name: name, Size: int64(gib) << 30, Epoch: 1, Committed: time.Now().UnixNano()}
	sizes := map[blockmap.ChunkRef]uint32{}
	for i := 0; i < chunks; i++ {
		id := uint64(1)<<40 | uint64(i+1)
		m.Extents = append(m.Extents, blockmap.Extent{Start: uint64(i) * 1024, Count: 1024, Chunk: id})
		sizes[blockmap.ChunkRef{ID: id}] = 1024
	}
	m.SetChunks(sizes)
	if _, err := st.PutIf(context.Background(), manifestKey(name), manifest.Encode(m), ""); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkSnapshot: Volume.Snapshot of an open volume with nothing pending,
// at 1 GiB and 64 GiB written, on a file store on local disk.
func BenchmarkSnapshot(b *testing.B) {
	for _, gib := range []int{1, 64} {
		b.Run(fmt.Sprintf("written=%dGiB", gib), func(b *testing.B) {
			st, _ := backend.NewFile(nil, filepath.Join(b.TempDir(), "store"))
			writtenVolume(b, st, "v", gib)
			v, err := Open(context.Background(), st, "v", Options{WALDir: b.TempDir(), Logger: quietLogger()})
			if err != nil {
				b.Fatal(err)
			}
			defer v.Close()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := v.Snapshot(context.Background(), fmt.Sprintf("s%d", i)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkClone: create a clone of a snapshot of a volume with 64 GiB
// written, then open it for writing.
func BenchmarkClone(b *testing.B) {
	ctx := context.Background()
	st, _ := backend.NewFile(nil, filepath.Join(b.TempDir(), "store"))
	writtenVolume(b, st, "v", 64)
	if _, err := CreateSnapshot(ctx, st, "v", "s", SnapshotOptions{}); err != nil {
		b.Fatal(err)
	}
	wal := b.TempDir()
	b.Run("create", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if err := Clone(ctx, st, "v", "s", fmt.Sprintf("c%d", i), 0); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("create+open", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			name := fmt.Sprintf("d%d", i)
			if err := Clone(ctx, st, "v", "s", name, 0); err != nil {
				b.Fatal(err)
			}
			v, err := Open(ctx, st, name, Options{WALDir: wal, Logger: quietLogger()})
			if err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			v.abandon()
			b.StartTimer()
		}
	})
}

// BenchmarkGCCompaction: rewrite the live half of sparse chunks (random
// overwrite of half of a 256 MiB volume), reported as live data moved.
func BenchmarkGCCompaction(b *testing.B) {
	ctx := context.Background()
	const blocks = 65536
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		st := backend.NewMem()
		v, err := Create(ctx, st, "g", blocks*BlockSize, Options{WALDir: b.TempDir(), Logger: quietLogger()})
		if err != nil {
			b.Fatal(err)
		}
		buf := make([]byte, 1<<20)
		rand.New(rand.NewSource(1)).Read(buf)
		for off := int64(0); off < blocks*BlockSize; off += 1 << 20 {
			v.WriteAt(buf, off)
		}
		v.Drain(ctx)
		rng := rand.New(rand.NewSource(2))
		for _, blk := range rng.Perm(blocks)[:blocks*6/10] {
			v.WriteAt(buf[:BlockSize], int64(blk)*BlockSize)
		}
		v.Drain(ctx)
		b.StartTimer()
		rep, err := v.GC(ctx)
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		b.SetBytes(int64(rep.BlocksMoved) * BlockSize)
		b.ReportMetric(float64(rep.ChunksRewritten), "chunks/op")
		v.abandon()
		b.StartTimer()
	}
}
