package viperblock

import (
	"context"
	"math/rand"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
)

// fileVolume creates a volume on a file store with default settings (the
// 64 MiB read cache, 1 MiB read-ahead), writes size bytes of random data
// with 1 MiB writes and drains them: the chunk files are fresh in the page
// cache, as they are after a write job, and nothing has been read yet.
func fileVolume(b *testing.B, size int64) *Volume {
	b.Helper()
	st, err := backend.NewFile(nil, filepath.Join(b.TempDir(), "store"))
	if err != nil {
		b.Fatal(err)
	}
	v, err := Create(context.Background(), st, "bench", size, Options{WALDir: b.TempDir(), Logger: quietLogger()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { v.Close() })
	buf := make([]byte, 1<<20)
	rng := rand.New(rand.NewSource(7))
	for off := int64(0); off < size; off += int64(len(buf)) {
		rng.Read(buf)
		if _, err := v.WriteAt(buf, off); err != nil {
			b.Fatal(err)
		}
	}
	if err := v.Drain(context.Background()); err != nil {
		b.Fatal(err)
	}
	return v
}

// BenchmarkReadJustWritten4K: random 4 KiB reads over a 1 GiB volume just
// written and drained to a file store, default settings, no warm-up read,
// 16 readers per GOMAXPROCS (queue depth 32 on two cores). With the 64 MiB
// cache most reads miss and go to a chunk file in the page cache. The setup
// writes 1 GiB for each round of b.N; run with -benchtime=200000x to set it
// up once.
func BenchmarkReadJustWritten4K(b *testing.B) {
	const size = 1 << 30
	v := fileVolume(b, size)
	var seed atomic.Int64
	b.SetBytes(BlockSize)
	b.ReportAllocs()
	b.SetParallelism(16)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		rng := rand.New(rand.NewSource(seed.Add(1)))
		buf := make([]byte, BlockSize)
		for pb.Next() {
			if _, err := v.ReadAt(buf, rng.Int63n(size/BlockSize)*BlockSize); err != nil {
				b.Error(err)
				return
			}
		}
	})
	st := v.Stats()
	b.ReportMetric(float64(st.BackendReads)/float64(b.N), "backend-reads/op")
}

// BenchmarkRead1MSeqDrained: sequential 1 MiB reads of a 1 GiB volume just
// written and drained to a file store, default settings, 8 readers per
// GOMAXPROCS taking the next MiB in turn (queue depth 16 on two cores), as
// a sequential read job does. Run with -benchtime=2000x to set up once.
func BenchmarkRead1MSeqDrained(b *testing.B) {
	const size = 1 << 30
	v := fileVolume(b, size)
	var next atomic.Int64
	b.SetBytes(1 << 20)
	b.ReportAllocs()
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		buf := make([]byte, 1<<20)
		for pb.Next() {
			off := (next.Add(1) - 1) % (size >> 20) << 20
			if _, err := v.ReadAt(buf, off); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
