package viperblock

import (
	"bytes"
	"context"
	"math/rand"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
)

// BenchmarkDiscard1M: a million single-block operations, each on another
// block of a volume of as many blocks (4 GiB), in a random order, then a
// Flush; a crash and a reopen that replays the WAL; a drain; a clean close
// and an open from the store alone. The sub-benchmarks differ in the
// operations:
//
//   - discard: every operation is a one-block Trim;
//   - write:   every operation is a 4 KiB write;
//   - mixed:   one-block Trims, with a 4 KiB write of one random block and
//     a 4 KiB read of another after every 16th.
//
// Each phase's time is reported as a metric (apply-s, replay-s, drain-s,
// reopen-s); ns/op is the whole run, cpu-s the CPU time the process used
// in it (steadier than the wall clock on a shared machine). Drains run when 64 MiB is pending, as
// by default, never on a timer. VB_BENCH_OPS sets another count of
// operations. Run with -benchtime 1x.
func BenchmarkDiscard1M(b *testing.B) {
	n := 1_000_000
	if s := os.Getenv("VB_BENCH_OPS"); s != "" {
		var err error
		if n, err = strconv.Atoi(s); err != nil || n < 16 {
			b.Fatalf("VB_BENCH_OPS=%q: want a number of operations, at least 16", s)
		}
	}
	for _, kind := range []string{"discard", "write", "mixed"} {
		b.Run(kind, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				runDiscardBench(b, kind, n)
			}
		})
	}
}

func runDiscardBench(b *testing.B, kind string, n int) {
	b.StopTimer()
	ctx := context.Background()
	st := backend.NewMem()
	size := int64(n) * BlockSize
	o := Options{WALDir: b.TempDir(), DrainInterval: time.Hour, Logger: quietLogger()}
	if err := CreateOnly(ctx, st, "d", size); err != nil {
		b.Fatal(err)
	}
	v, err := Open(ctx, st, "d", o)
	if err != nil {
		b.Fatal(err)
	}
	rng := rand.New(rand.NewSource(1))
	order := rng.Perm(n)
	// state: what each block must read as at the end: 0 zeros, 1 the
	// written pattern of that block.
	state := make([]byte, n)
	data := func(blk int) []byte {
		d := make([]byte, BlockSize)
		for i := 0; i < BlockSize; i += 8 {
			d[i] = byte(blk)
			d[i+1] = byte(blk >> 8)
			d[i+2] = byte(blk >> 16)
			d[i+3] = 1
		}
		return d
	}
	buf := make([]byte, BlockSize)
	b.StartTimer()
	t0, cpu0 := time.Now(), processCPU()
	for i, blk := range order {
		off := int64(blk) * BlockSize
		if kind == "write" {
			if _, err := v.WriteAt(data(blk), off); err != nil {
				b.Fatal(err)
			}
			state[blk] = 1
			continue
		}
		if err := v.Trim(off, BlockSize); err != nil {
			b.Fatal(err)
		}
		state[blk] = 0
		if kind == "mixed" && i%16 == 15 {
			w := rng.Intn(n)
			if _, err := v.WriteAt(data(w), int64(w)*BlockSize); err != nil {
				b.Fatal(err)
			}
			state[w] = 1
			if _, err := v.ReadAt(buf, int64(rng.Intn(n))*BlockSize); err != nil {
				b.Fatal(err)
			}
		}
	}
	if err := v.Flush(); err != nil {
		b.Fatal(err)
	}
	t1 := time.Now()
	v.abandon()
	if v, err = Open(ctx, st, "d", o); err != nil {
		b.Fatal(err)
	}
	t2 := time.Now()
	if err := v.Drain(ctx); err != nil {
		b.Fatal(err)
	}
	t3 := time.Now()
	if err := v.Close(); err != nil {
		b.Fatal(err)
	}
	o.WALDir = b.TempDir()
	if v, err = Open(ctx, st, "d", o); err != nil {
		b.Fatal(err)
	}
	t4, cpu4 := time.Now(), processCPU()
	b.StopTimer()
	b.ReportMetric((cpu4 - cpu0).Seconds(), "cpu-s")
	b.ReportMetric(t1.Sub(t0).Seconds(), "apply-s")
	b.ReportMetric(t2.Sub(t1).Seconds(), "replay-s")
	b.ReportMetric(t3.Sub(t2).Seconds(), "drain-s")
	b.ReportMetric(t4.Sub(t3).Seconds(), "reopen-s")
	// The volume holds what the operations left: every block checked
	// against the model through Extents, a sample by content.
	ext, err := v.Extents(0, size)
	if err != nil {
		b.Fatal(err)
	}
	for _, e := range ext {
		for blk := e.Offset / BlockSize; blk < (e.Offset+e.Length)/BlockSize; blk++ {
			if want := state[blk] == 0; e.Zero != want {
				b.Fatalf("%s: block %d: hole %v, want %v", kind, blk, e.Zero, want)
			}
		}
	}
	for i := 0; i < 1000; i++ {
		blk := rng.Intn(n)
		if _, err := v.ReadAt(buf, int64(blk)*BlockSize); err != nil {
			b.Fatal(err)
		}
		want := make([]byte, BlockSize)
		if state[blk] == 1 {
			want = data(blk)
		}
		if !bytes.Equal(buf, want) {
			b.Fatalf("%s: block %d does not hold what was last written or trimmed", kind, blk)
		}
	}
	if err := v.Close(); err != nil {
		b.Fatal(err)
	}
	b.StartTimer()
}
