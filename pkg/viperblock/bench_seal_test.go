package viperblock

import (
	"context"
	"io/fs"
	"math/rand"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
)

// sealFormats are the volume kinds BenchmarkSeal compares.
var sealFormats = []struct {
	name string
	opts func(testing.TB) CreateOptions
}{
	{"plain", func(testing.TB) CreateOptions { return CreateOptions{} }},
	{"encrypted", func(t testing.TB) CreateOptions { return CreateOptions{Keys: testKeySource(t, 1)} }},
	{"zstd", func(testing.TB) CreateOptions { return CreateOptions{Compression: CompressionZstd} }},
	{"lz4", func(testing.TB) CreateOptions { return CreateOptions{Compression: CompressionLZ4} }},
	{"encrypted-zstd", func(t testing.TB) CreateOptions {
		return CreateOptions{Keys: testKeySource(t, 1), Compression: CompressionZstd}
	}},
}

const sealBenchSize = 256 << 20

var (
	corpusOnce sync.Once
	corpusData []byte
)

// benchCorpus is 64 MiB of real files (from /usr/share and /usr/lib, in
// walk order), a compressible data set; random bytes where /usr has none.
func benchCorpus() []byte {
	corpusOnce.Do(func() {
		const n = 64 << 20
		buf := make([]byte, 0, n)
		for _, root := range []string{"/usr/share", "/usr/lib"} {
			filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
				if err != nil || len(buf) >= n {
					return filepath.SkipDir
				}
				if !e.Type().IsRegular() {
					return nil
				}
				b, err := os.ReadFile(p)
				if err == nil {
					buf = append(buf, b[:min(len(b), n-len(buf))]...)
				}
				return nil
			})
		}
		if len(buf) < n {
			tail := make([]byte, n-len(buf))
			rand.New(rand.NewSource(1)).Read(tail)
			buf = append(buf, tail...)
		}
		corpusData = buf
	})
	return corpusData
}

// fillData returns size bytes of the data set: "random" or "files".
func fillData(kind string, off int64, n int) []byte {
	p := make([]byte, n)
	if kind == "random" {
		rand.New(rand.NewSource(off)).Read(p)
		return p
	}
	c := benchCorpus()
	for i := 0; i < n; {
		at := int((off + int64(i)) % int64(len(c)))
		i += copy(p[i:], c[at:])
	}
	return p
}

func sealBenchVolume(b *testing.B, co CreateOptions) (backend.Store, Options) {
	b.Helper()
	var st backend.Store = backend.NewMem()
	if os.Getenv("VB_BENCH_STORE") == "file" {
		fst, err := backend.NewFile(nil, filepath.Join(b.TempDir(), "store"))
		if err != nil {
			b.Fatal(err)
		}
		st = fst
	}
	if err := CreateVolume(context.Background(), st, "bench", sealBenchSize, co); err != nil {
		b.Fatal(err)
	}
	return st, Options{WALDir: b.TempDir(), Logger: quietLogger(), Keys: co.Keys, Compaction: CompactionOptions{Disabled: true}}
}

// fillVolume writes the whole volume with the data set and drains it.
func fillVolume(b *testing.B, st backend.Store, o Options, kind string) {
	b.Helper()
	v, err := Open(context.Background(), st, "bench", o)
	if err != nil {
		b.Fatal(err)
	}
	for off := int64(0); off < sealBenchSize; off += 1 << 20 {
		if _, err := v.WriteAt(fillData(kind, off, 1<<20), off); err != nil {
			b.Fatal(err)
		}
	}
	if err := v.Close(); err != nil {
		b.Fatal(err)
	}
}

// reportCPU starts counting the process's CPU time (every goroutine's: the
// drain and the writeback too); the returned function reports it per
// operation as cpu-ns/op, which a busy machine disturbs less than ns/op.
// On systems without the measure it reports nothing.
func reportCPU(b *testing.B) func() {
	cpu0 := processCPU()
	return func() {
		if cpu := processCPU(); cpu > 0 && b.N > 0 {
			b.ReportMetric(float64(cpu-cpu0)/float64(b.N), "cpu-ns/op")
		}
	}
}

// BenchmarkSeal compares the volume kinds (plain, encrypted, compressed,
// both) on random data and on a compressible data set (real files):
//
//   - write-4k-random, write-1m-seq: writes acknowledged from memory, then
//     the drain that seals and uploads them, inside the timing;
//   - read-4k-random, read-1m-seq: cold reads (no cache) of a full volume,
//     each one a ranged store read (and decode); read-1m-seq-readahead:
//     sequential reads as a server makes them, through the block cache
//     with read-ahead.
//
// It reports the compression ratio (block bytes / stored bytes). The store
// is in memory unless VB_BENCH_STORE=file. Run:
//
//	go test ./pkg/viperblock/ -run '^$' -bench BenchmarkSeal -benchtime 2s
func BenchmarkSeal(b *testing.B) {
	ctx := context.Background()
	for _, data := range []string{"random", "files"} {
		for _, f := range sealFormats {
			b.Run(data+"/"+f.name+"/write-4k-random", func(b *testing.B) {
				st, o := sealBenchVolume(b, f.opts(b))
				v, err := Open(ctx, st, "bench", o)
				if err != nil {
					b.Fatal(err)
				}
				defer v.Close()
				rng := rand.New(rand.NewSource(1))
				bufs := make([][]byte, 64)
				for i := range bufs {
					bufs[i] = fillData(data, int64(i)*BlockSize*7919, BlockSize)
				}
				b.SetBytes(BlockSize)
				b.ResetTimer()
				cpu := reportCPU(b)
				for i := 0; i < b.N; i++ {
					off := rng.Int63n(sealBenchSize/BlockSize) * BlockSize
					if _, err := v.WriteAt(bufs[i%len(bufs)], off); err != nil {
						b.Fatal(err)
					}
				}
				if err := v.Drain(ctx); err != nil {
					b.Fatal(err)
				}
				cpu()
			})
			b.Run(data+"/"+f.name+"/write-1m-seq", func(b *testing.B) {
				st, o := sealBenchVolume(b, f.opts(b))
				v, err := Open(ctx, st, "bench", o)
				if err != nil {
					b.Fatal(err)
				}
				defer v.Close()
				bufs := make([][]byte, 16)
				for i := range bufs {
					bufs[i] = fillData(data, int64(i)<<20, 1<<20)
				}
				b.SetBytes(1 << 20)
				b.ResetTimer()
				cpu := reportCPU(b)
				for i := 0; i < b.N; i++ {
					off := int64(i) << 20 % sealBenchSize
					if _, err := v.WriteAt(bufs[i%len(bufs)], off); err != nil {
						b.Fatal(err)
					}
				}
				if err := v.Drain(ctx); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				cpu()
				sp, err := Space(ctx, st, "bench")
				if err == nil {
					b.ReportMetric(sp.CompressionRatio(), "ratio")
				}
			})
			b.Run(data+"/"+f.name+"/read", func(b *testing.B) {
				st, o := sealBenchVolume(b, f.opts(b))
				fillVolume(b, st, o, data)
				ro := Options{ReadOnly: true, CacheBlocks: -1, ReadAheadBlocks: -1, Keys: o.Keys, Logger: quietLogger()}
				b.Run("4k-random", func(b *testing.B) {
					v, err := Open(ctx, st, "bench", ro)
					if err != nil {
						b.Fatal(err)
					}
					rng := rand.New(rand.NewSource(2))
					p := make([]byte, BlockSize)
					b.SetBytes(BlockSize)
					b.ResetTimer()
					defer reportCPU(b)()
					for i := 0; i < b.N; i++ {
						if _, err := v.ReadAt(p, rng.Int63n(sealBenchSize/BlockSize)*BlockSize); err != nil {
							b.Fatal(err)
						}
					}
				})
				// seqRead reads 1 MiB at a time from a read-only open.
				seqRead := func(b *testing.B, ro Options) {
					v, err := Open(ctx, st, "bench", ro)
					if err != nil {
						b.Fatal(err)
					}
					p := make([]byte, 1<<20)
					b.SetBytes(1 << 20)
					b.ResetTimer()
					defer reportCPU(b)()
					for i := 0; i < b.N; i++ {
						if _, err := v.ReadAt(p, int64(i)<<20%sealBenchSize); err != nil {
							b.Fatal(err)
						}
					}
				}
				// As a server reads: through the block cache, with
				// read-ahead (the volume is larger than the cache).
				b.Run("1m-seq-readahead", func(b *testing.B) {
					seqRead(b, Options{ReadOnly: true, Keys: o.Keys, Logger: quietLogger()})
				})
				b.Run("1m-seq", func(b *testing.B) { seqRead(b, ro) })
			})
		}
	}
}
