package viperblock_test

import (
	"context"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
)

// BenchmarkS3ColdRandRead4K measures 4 KiB random reads at queue depth 32
// (32 goroutines) over a 1 GiB volume drained to versitygw, opened afresh
// (new WAL directory, new store client) with a 64 MiB memory cache, so most
// reads miss it: once with no chunk read cache (every miss is a ranged GET)
// and once with the node-local chunk read cache of 1 GiB that `vblock
// serve` and the node plugin use on S3 (the first miss of a chunk is a
// ranged GET and starts a fetch of the whole chunk). The volume is written
// once for both. b.N reads each; run it with a fixed count, as the chunk
// read cache warms with the reads:
//
//	go test -run '^$' -bench S3ColdRandRead4K -benchtime 20000x ./pkg/viperblock/
//
// Reported: IOPS, p50-µs, p99-µs, GETs/read (requests the store answered
// per read, whole-chunk fetches included) and disk-hits/read.
func BenchmarkS3ColdRandRead4K(b *testing.B) {
	srv := startBenchS3(b)
	u := srv.URL("bench")
	ctx := context.Background()
	const size = 1 << 30
	v, err := vb.Create(ctx, openS3(b, u), "rand", size, vb.Options{WALDir: b.TempDir(), Logger: quiet()})
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 4<<20)
	rng := rand.NewChaCha8([32]byte{3})
	for off := int64(0); off < size; off += int64(len(buf)) {
		_, _ = rng.Read(buf)
		if _, err := v.WriteAt(buf, off); err != nil {
			b.Fatal(err)
		}
	}
	if err := v.Close(); err != nil {
		b.Fatal(err)
	}
	for _, mode := range []struct {
		name  string
		bytes int64
	}{{"chunk-cache=none", 0}, {"chunk-cache=1GiB", 1 << 30}} {
		b.Run(mode.name, func(b *testing.B) {
			st, stats := backend.Count(openS3(b, u))
			r, err := vb.Open(ctx, st, "rand", vb.Options{WALDir: b.TempDir(), Logger: quiet(), CacheBlocks: 16384, ReadCacheBytes: mode.bytes})
			if err != nil {
				b.Fatal(err)
			}
			defer r.Close()
			get0 := stats.Snapshot()[backend.OpGet].OK
			coldRandRead(b, r, size)
			if n := r.Stats().Reads; n > 0 {
				b.ReportMetric(float64(stats.Snapshot()[backend.OpGet].OK-get0)/float64(b.N), "GETs/read")
				b.ReportMetric(float64(r.Stats().ReadCache.Hits)/float64(b.N), "disk-hits/read")
			}
		})
	}
}

// coldRandRead runs b.N 4 KiB random reads of r at queue depth 32 and
// reports IOPS and latencies.
func coldRandRead(b *testing.B, r *vb.Volume, size int64) {
	const qd = 32
	var left atomic.Int64
	left.Store(int64(b.N))
	lats := make([][]time.Duration, qd)
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for g := 0; g < qd; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 7))
			p := make([]byte, 4096)
			for left.Add(-1) >= 0 {
				t0 := time.Now()
				if _, err := r.ReadAt(p, rng.Int64N(size/4096)*4096); err != nil {
					b.Error(err)
					return
				}
				lats[g] = append(lats[g], time.Since(t0))
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	all := slices.Concat(lats...)
	slices.Sort(all)
	if len(all) == 0 {
		return
	}
	b.ReportMetric(float64(len(all))/elapsed.Seconds(), "IOPS")
	b.ReportMetric(float64(all[len(all)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(all[len(all)*99/100].Microseconds()), "p99-µs")
}
