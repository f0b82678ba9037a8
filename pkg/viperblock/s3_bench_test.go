package viperblock_test

// Benchmarks of the engine on a real S3 server (versitygw on 127.0.0.1),
// skipped when versitygw is not installed:
//
//	go test -run '^$' -bench 'S3' -benchtime 2s ./pkg/viperblock/

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/viperblock/viperblock-csi/internal/testutil/s3server"
	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
)

func startBenchS3(b *testing.B) *s3server.Server {
	b.Helper()
	return s3server.Start(b) // skips without versitygw (fails under VB_REQUIRE)
}

const benchChunk = 4 << 20 // one full chunk of data

// BenchmarkS3Drain measures Drain to versitygw: each op is 4 MiB of data
// (one chunk) written to the volume and flushed, untimed, then drained (timed,
// in batches of up to 16 chunks, 64 MiB, the default DrainBytes). In the same run, between the drains, the
// same store client PUTs as many raw 4 MiB objects with
// Options.UploadConcurrency (4) workers. Reported: drain-MB/s, put-MB/s
// and drain/put, the ratio of the two (target ≥ 0.8).
func BenchmarkS3Drain(b *testing.B) {
	srv := startBenchS3(b)
	st := openS3(b, srv.URL("bench"))
	ctx := context.Background()
	const workers = 4 // vb.Options.UploadConcurrency's default
	o := vb.Options{
		WALDir: b.TempDir(), Logger: quiet(), UploadConcurrency: workers,
		DrainInterval: time.Hour, DrainBytes: 1 << 40, MaxPendingBytes: 1 << 40,
	}
	v, err := vb.Create(ctx, st, "drain", 1<<40, o)
	if err != nil {
		b.Fatal(err)
	}
	defer v.Close()
	data := make([]byte, benchChunk)
	_, _ = rand.NewChaCha8([32]byte{1}).Read(data)
	var chunkNo, objNo int
	// write fills n fresh chunks of the volume (untimed).
	write := func(n int) {
		for i := 0; i < n; i++ {
			binary.LittleEndian.PutUint64(data, uint64(chunkNo)) // no two chunks alike
			if _, err := v.WriteAt(data, int64(chunkNo)*benchChunk); err != nil {
				b.Fatal(err)
			}
			chunkNo++
		}
		if err := v.Flush(); err != nil {
			b.Fatal(err)
		}
	}
	// rawPut stores n 4 MiB objects, workers at a time, and returns how
	// long it took.
	rawPut := func(n int) time.Duration {
		start := time.Now()
		next := make(chan int)
		var wg sync.WaitGroup
		for w := 0; w < min(workers, n); w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range next {
					if err := st.Put(ctx, fmt.Sprintf("raw/%08d", i), data); err != nil {
						b.Error(err)
					}
				}
			}()
		}
		for i := 0; i < n; i++ {
			next <- objNo
			objNo++
		}
		close(next)
		wg.Wait()
		return time.Since(start)
	}
	drain := func() time.Duration {
		start := time.Now()
		if err := v.Drain(ctx); err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	// Warm up connections and buffers.
	write(workers)
	drain()
	rawPut(workers)

	var drainTime, putTime time.Duration
	b.SetBytes(benchChunk)
	b.ResetTimer()
	b.StopTimer()
	for done, batch := 0, 0; done < b.N; batch++ {
		n := min(b.N-done, 16) // DrainBytes's default, 64 MiB
		write(n)
		// Alternate the order so neither side always follows the other.
		if batch%2 == 1 {
			putTime += rawPut(n)
		}
		b.StartTimer()
		drainTime += drain()
		b.StopTimer()
		if batch%2 == 0 {
			putTime += rawPut(n)
		}
		done += n
	}
	mb := float64(b.N) * benchChunk / 1e6
	drainRate, putRate := mb/drainTime.Seconds(), mb/putTime.Seconds()
	b.ReportMetric(drainRate, "drain-MB/s")
	b.ReportMetric(putRate, "put-MB/s")
	b.ReportMetric(drainRate/putRate, "drain/put")
}

// BenchmarkS3ColdRead measures sequential 64 KiB reads of a drained 256 MiB
// volume on a "new node": each pass over the volume opens it with a fresh
// WAL directory, a new store client and a cold cache. With the default
// read-ahead (256 blocks) and without (-1). Reported: MB/s and GETs/MiB,
// the backend reads per MiB read.
func BenchmarkS3ColdRead(b *testing.B) {
	srv := startBenchS3(b)
	u := srv.URL("bench")
	ctx := context.Background()
	const size = 256 << 20
	const readSize = 64 << 10
	v, err := vb.Create(ctx, openS3(b, u), "cold", size, vb.Options{WALDir: b.TempDir(), Logger: quiet()})
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	rng := rand.NewChaCha8([32]byte{2})
	for off := int64(0); off < size; off += int64(len(buf)) {
		_, _ = rng.Read(buf)
		if _, err := v.WriteAt(buf, off); err != nil {
			b.Fatal(err)
		}
	}
	if err := v.Close(); err != nil {
		b.Fatal(err)
	}
	for _, ra := range []struct {
		name   string
		blocks int
	}{{"readahead=256", 256}, {"readahead=off", -1}} {
		b.Run(ra.name, func(b *testing.B) {
			var cur *vb.Volume
			var backendReads uint64
			closeCur := func() {
				if cur != nil {
					backendReads += cur.Stats().BackendReads
					if err := cur.Close(); err != nil {
						b.Fatal(err)
					}
					cur = nil
				}
			}
			defer closeCur()
			p := make([]byte, readSize)
			var off int64
			b.SetBytes(readSize)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if cur == nil {
					b.StopTimer()
					cur, err = vb.Open(ctx, openS3(b, u), "cold", vb.Options{
						WALDir: b.TempDir(), Logger: quiet(), ReadAheadBlocks: ra.blocks,
					})
					if err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
				}
				if _, err := cur.ReadAt(p, off); err != nil {
					b.Fatal(err)
				}
				if off += readSize; off == size {
					off = 0
					b.StopTimer()
					closeCur()
					b.StartTimer()
				}
			}
			b.StopTimer()
			closeCur()
			b.ReportMetric(float64(backendReads)/(float64(b.N)*readSize/(1<<20)), "GETs/MiB")
		})
	}
}

// BenchmarkS3Flush measures the latency of a 4 KiB write + FLUSH at queue
// depth 1 in each durability class, the engine on versitygw over loopback
// (the WAL on this machine's disk). Reported: p50-µs and p99-µs per class;
// `make bench-flush` runs it.
func BenchmarkS3Flush(b *testing.B) {
	srv := startBenchS3(b)
	for _, d := range []vb.Durability{vb.DurabilityNode, vb.DurabilityStore} {
		b.Run(string(d), func(b *testing.B) {
			st := openS3(b, srv.URL("flush-"+string(d)))
			ctx := context.Background()
			if err := vb.CreateWithClass(ctx, st, "v", 1<<30, d); err != nil && !errors.Is(err, vb.ErrExists) {
				b.Fatal(err)
			}
			v, err := vb.Open(ctx, st, "v", vb.Options{WALDir: b.TempDir(), Logger: quiet()})
			if err != nil {
				b.Fatal(err)
			}
			defer v.Close()
			data := make([]byte, vb.BlockSize)
			rng := rand.New(rand.NewPCG(1, 2))
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				binary.LittleEndian.PutUint64(data, uint64(i))
				t0 := time.Now()
				if _, err := v.WriteAt(data, int64(rng.IntN(1<<18))*vb.BlockSize); err != nil {
					b.Fatal(err)
				}
				if err := v.Flush(); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(t0))
			}
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
		})
	}
}
