package viperblock

import (
	"context"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
)

func benchVolume(b *testing.B, size int64, o Options) (*Volume, backend.Store) {
	b.Helper()
	var st backend.Store = backend.NewMem()
	if os.Getenv("VB_BENCH_STORE") == "file" {
		fst, err := backend.NewFile(nil, filepath.Join(b.TempDir(), "store"))
		if err != nil {
			b.Fatal(err)
		}
		st = fst
	}
	if o.WALDir == "" {
		o.WALDir = b.TempDir()
	}
	o.Logger = quietLogger()
	v, err := Create(context.Background(), st, "bench", size, o)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { v.Close() })
	return v, st
}

// warmUp writes and drains 512 MiB so the measured run sees steady state:
// arena slabs, chunk buffers and the cache already allocated. (On a fresh
// virtual machine the first touch of each page of memory is very slow.)
func warmUp(b *testing.B, v *Volume, size int64) {
	buf := make([]byte, 1<<20)
	for off := int64(0); off < 512<<20; off += 1 << 20 {
		if _, err := v.WriteAt(buf, off%size); err != nil {
			b.Fatal(err)
		}
	}
	if err := v.Drain(context.Background()); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkWrite4KRandom: 4 KiB writes at random offsets of a 1 GiB volume,
// acknowledged from memory, from as many goroutines as GOMAXPROCS, in steady
// state: the background WAL writeback and drains run alongside and share the
// CPU. The store is in memory unless VB_BENCH_STORE=file.
func BenchmarkWrite4KRandom(b *testing.B) {
	const size = 1 << 30
	v, _ := benchVolume(b, size, Options{})
	warmUp(b, v, size)
	var seed atomic.Int64
	b.SetBytes(BlockSize)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		rng := rand.New(rand.NewSource(seed.Add(1)))
		buf := make([]byte, BlockSize)
		rng.Read(buf)
		for pb.Next() {
			off := rng.Int63n(size/BlockSize) * BlockSize
			if _, err := v.WriteAt(buf, off); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkWrite4KFlush: one 4 KiB write then a Flush (an fsync on disk),
// at queue depth 1; reports the Flush's median and 99th percentile latency
// too (flush-p50-µs, flush-p99-µs).
func BenchmarkWrite4KFlush(b *testing.B) {
	const size = 1 << 30
	v, _ := benchVolume(b, size, Options{})
	rng := rand.New(rand.NewSource(1))
	buf := make([]byte, BlockSize)
	rng.Read(buf)
	lat := make([]time.Duration, 0, b.N)
	b.SetBytes(BlockSize)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := v.WriteAt(buf, rng.Int63n(size/BlockSize)*BlockSize); err != nil {
			b.Fatal(err)
		}
		t0 := time.Now()
		if err := v.Flush(); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds())/1e3, "flush-p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds())/1e3, "flush-p99-µs")
}

// BenchmarkWrite1MSeq: sequential 1 MiB writes.
func BenchmarkWrite1MSeq(b *testing.B) {
	const size = 4 << 30
	v, _ := benchVolume(b, size, Options{})
	warmUp(b, v, size)
	buf := make([]byte, 1<<20)
	rand.New(rand.NewSource(1)).Read(buf)
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		off := int64(i%(size>>20)) << 20
		if _, err := v.WriteAt(buf, off); err != nil {
			b.Fatal(err)
		}
	}
}

func prefill(b *testing.B, v *Volume, blocks int) {
	buf := make([]byte, 1<<20)
	rand.New(rand.NewSource(2)).Read(buf)
	for off := int64(0); off < int64(blocks)*BlockSize; off += int64(len(buf)) {
		if _, err := v.WriteAt(buf, off); err != nil {
			b.Fatal(err)
		}
	}
	if err := v.Drain(context.Background()); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkRead4KCacheHit: random 4 KiB reads of drained blocks that are all
// in the read cache.
func BenchmarkRead4KCacheHit(b *testing.B) {
	const blocks = 16384 // 64 MiB
	v, _ := benchVolume(b, blocks*BlockSize, Options{CacheBlocks: 2 * blocks})
	prefill(b, v, blocks)
	var seed atomic.Int64
	b.SetBytes(BlockSize)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		rng := rand.New(rand.NewSource(seed.Add(1)))
		buf := make([]byte, BlockSize)
		for pb.Next() {
			if _, err := v.ReadAt(buf, rng.Int63n(blocks)*BlockSize); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkRead4KCacheMiss: random 4 KiB reads with no cache: each one is a
// ranged read of a chunk in the file store.
func BenchmarkRead4KCacheMiss(b *testing.B) {
	const blocks = 16384
	v, _ := benchVolume(b, blocks*BlockSize, Options{CacheBlocks: -1})
	prefill(b, v, blocks)
	rng := rand.New(rand.NewSource(3))
	buf := make([]byte, BlockSize)
	b.SetBytes(BlockSize)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := v.ReadAt(buf, rng.Int63n(blocks)*BlockSize); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkReplay1GiB: open a volume whose WAL holds 1 GiB of flushed,
// undrained writes: read, verify and index every record. Each iteration
// writes the WAL first, untimed.
func BenchmarkReplay1GiB(b *testing.B) {
	const size = 1 << 30
	st := backend.NewMem()
	o := Options{MaxPendingBytes: 2 << 30, DrainBytes: 2 << 30, DrainInterval: time.Hour, Logger: quietLogger()}
	if err := CreateOnly(context.Background(), st, "r", size); err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	rand.New(rand.NewSource(4)).Read(buf)
	b.SetBytes(size)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		o.WALDir = b.TempDir()
		v, err := Open(context.Background(), st, "r", o)
		if err != nil {
			b.Fatal(err)
		}
		for off := int64(0); off < size; off += int64(len(buf)) {
			if _, err := v.WriteAt(buf, off); err != nil {
				b.Fatal(err)
			}
		}
		if err := v.Flush(); err != nil {
			b.Fatal(err)
		}
		v.abandon()
		b.StartTimer()
		v, err = Open(context.Background(), st, "r", o)
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if got := v.Stats().Replayed; got < size/BlockSize {
			b.Fatalf("replayed %d records", got)
		}
		v.abandon()
		b.StartTimer()
	}
}

// BenchmarkWrite4KBurst: the acknowledgement path alone. Random 4 KiB writes
// below the drain threshold (run with -benchtime=65536x or less, 256 MiB),
// so no drain runs during the measurement; the WAL writeback does.
func BenchmarkWrite4KBurst(b *testing.B) {
	const size = 1 << 30
	v, _ := benchVolume(b, size, Options{DrainBytes: 1 << 30, MaxPendingBytes: 1 << 30, DrainInterval: time.Hour})
	warmUp(b, v, size)
	var seed atomic.Int64
	b.SetBytes(BlockSize)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		rng := rand.New(rand.NewSource(seed.Add(1)))
		buf := make([]byte, BlockSize)
		rng.Read(buf)
		for pb.Next() {
			if _, err := v.WriteAt(buf, rng.Int63n(size/BlockSize)*BlockSize); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkDurableSeqWrite: 1 GiB of 1 MiB sequential writes, then one
// Flush, per op, with the WAL deferral bound (Options.WALDeferBytes) off,
// at its default (half the pending limit) and at the pending limit. It
// reports the Flush's latency and the WAL bytes written per byte of data
// (1 when every write goes to the WAL as well as to a chunk). The WAL is
// in the test's temporary directory; the store is in memory unless
// VB_BENCH_STORE=file.
func BenchmarkDurableSeqWrite(b *testing.B) {
	const size, n = 4 << 30, 1 << 30
	for _, c := range []struct {
		name  string
		bound int64
	}{{"defer=off", -1}, {"defer=default", 0}, {"defer=pending-limit", 512 << 20}} {
		b.Run(c.name, func(b *testing.B) {
			v, _ := benchVolume(b, size, Options{WALDeferBytes: c.bound})
			buf := make([]byte, 1<<20)
			var flush time.Duration
			var off int64
			b.SetBytes(n)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				for end := off + n; off < end; off += 1 << 20 {
					if _, err := v.WriteAt(buf, off%size); err != nil {
						b.Fatal(err)
					}
				}
				t0 := time.Now()
				if err := v.Flush(); err != nil {
					b.Fatal(err)
				}
				flush += time.Since(t0)
			}
			b.StopTimer()
			s := v.Stats()
			b.ReportMetric(float64(flush.Milliseconds())/float64(b.N), "flush-ms/op")
			b.ReportMetric(float64(s.WALBytesWritten)/float64(s.WALBytesWritten+s.WALBytesSkipped+uint64(s.WALUnwrittenBytes)), "wal-share")
		})
	}
}
