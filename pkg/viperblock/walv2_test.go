package viperblock

import (
	"context"
	"math/rand"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/vfs"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/wal"
)

// walFiles lists the segment files under the volume's WAL directory.
func walFiles(t *testing.T, fs *vfs.MemFS, dir, suffix string) []string {
	t.Helper()
	var out []string
	for i := 0; i < nShards; i++ {
		sd := filepath.Join(dir, "vol", fmtShard(i))
		names, err := fs.ReadDir(sd)
		if err != nil {
			continue
		}
		for _, n := range names {
			if strings.HasSuffix(n, suffix) {
				out = append(out, filepath.Join(sd, n))
			}
		}
	}
	return out
}

func fmtShard(i int) string { return string([]byte{'0' + byte(i/10), '0' + byte(i%10)}) }

// TestCrashRecycledSegments drains often enough that the active WAL
// segments live in recycled files, whose records of a previous life lie
// behind the new ones, then crashes (keeping a random part of what was not
// synced, in order) at a random moment and reopens: every flushed write is
// back, nothing of a previous life is read as data, and no crash leaves a
// WAL that reads as corrupt.
func TestCrashRecycledSegments(t *testing.T) {
	ctx := context.Background()
	const blocks = 128
	seed := testSeed(t)
	rng := rand.New(rand.NewSource(seed))
	fs := vfs.NewMem()
	st := backend.NewMem()
	if err := CreateOnly(ctx, st, "vol", blocks*BlockSize); err != nil {
		t.Fatal(err)
	}
	model := newCrashModel()
	var recycled uint64
	write := func(v *Volume, n int) {
		for i := 0; i < n; i++ {
			b := uint64(rng.Intn(blocks))
			d := make([]byte, BlockSize)
			rng.Read(d)
			if _, err := v.WriteAt(d, int64(b)*BlockSize); err != nil {
				t.Fatalf("seed %d: write: %v", seed, err)
			}
			model.write(b, d)
		}
	}
	for iter := 0; iter < crashIters(40); iter++ {
		o := Options{WALDir: "/wal", FS: fs, CacheBlocks: 32, DrainInterval: time.Hour, DrainBytes: 1 << 40, Logger: quietLogger(),
			Compaction: CompactionOptions{Disabled: true}}
		v, err := Open(ctx, st, "vol", o)
		if err != nil {
			t.Fatalf("seed %d iter %d: open: %v", seed, iter, err)
		}
		if iter > 0 {
			model.verify(t, v, blocks, seed, iter)
		}
		// Long lives first, so the recycled files hold many old records.
		for round := 0; round < 3; round++ {
			write(v, 100+rng.Intn(200))
			if rng.Intn(2) == 0 {
				if err := v.Trim(int64(rng.Intn(blocks/2))*BlockSize, int64(1+rng.Intn(8))*BlockSize); err != nil {
					t.Fatal(err)
				}
			}
			if err := v.Flush(); err != nil {
				t.Fatalf("seed %d: flush: %v", seed, err)
			}
			syncModel(t, v, model, blocks)
			if err := v.Drain(ctx); err != nil {
				t.Fatalf("seed %d: drain: %v", seed, err)
			}
		}
		// A short new life in the recycled files: flushed, then not.
		for k := rng.Intn(4); k >= 0; k-- {
			write(v, 1+rng.Intn(20))
			if rng.Intn(3) != 0 {
				if err := v.Flush(); err != nil {
					t.Fatalf("seed %d: flush: %v", seed, err)
				}
				model.flush()
			}
		}
		// Unsynced writes of the WAL (the writeback's, without a Flush)
		// that the crash keeps in part.
		for i := range v.shards {
			sh := &v.shards[i]
			sh.mu.Lock()
			seg, size := sh.seg, sh.seg.size
			sh.mu.Unlock()
			_ = v.writeOut(sh, seg, size, false)
		}
		recycled += v.Stats().WALRecycled
		v.abandon()
		fs = fs.CrashClone(rng)
	}
	if recycled == 0 {
		t.Fatalf("seed %d: no segment was written into a recycled file", seed)
	}
	v, err := Open(ctx, st, "vol", Options{WALDir: "/wal", FS: fs, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	model.verify(t, v, blocks, seed, -1)
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	if left := append(walFiles(t, fs, "/wal", ".wal"), walFiles(t, fs, "/wal", walFreeSuffix)...); len(left) > 0 {
		t.Fatalf("files left after a clean close: %v", left)
	}
}

// syncModel makes the model's flushed state what the volume holds (after
// a flush that covered trims the model does not track block by block).
func syncModel(t *testing.T, v *Volume, m *crashModel, blocks uint64) {
	t.Helper()
	buf := make([]byte, blocks*BlockSize)
	if _, err := v.ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	m.cur = map[uint64][]byte{}
	for b := uint64(0); b < blocks; b++ {
		if d := buf[b*BlockSize : (b+1)*BlockSize]; string(d) != string(zeroBlock) {
			m.cur[b] = append([]byte(nil), d...)
		}
	}
	m.flush()
}

// A WAL written in format version 1 (rewritten here from the engine's
// records with the version 1 encoder, torn tail included) replays.
func TestReplayV1WAL(t *testing.T) {
	ctx := context.Background()
	const blocks = 64
	fs := vfs.NewMem()
	st := backend.NewMem()
	if err := CreateOnly(ctx, st, "vol", blocks*BlockSize); err != nil {
		t.Fatal(err)
	}
	o := Options{WALDir: "/wal", FS: fs, DrainInterval: time.Hour, DrainBytes: 1 << 40, Logger: quietLogger()}
	v, err := Open(ctx, st, "vol", o)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewSource(1))
	want := make([]byte, blocks*BlockSize)
	rng.Read(want)
	if _, err := v.WriteAt(want, 0); err != nil {
		t.Fatal(err)
	}
	if err := v.Trim(5*BlockSize, 3*BlockSize); err != nil {
		t.Fatal(err)
	}
	clear(want[5*BlockSize : 8*BlockSize])
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	v.abandon()
	files := walFiles(t, fs, "/wal", ".wal")
	if len(files) != nShards {
		t.Fatalf("segments %v", files)
	}
	var n int
	for i, p := range files {
		b, err := vfs.ReadFile(fs, p)
		if err != nil {
			t.Fatal(err)
		}
		h, hlen, err := wal.DecodeSegmentHeader(b)
		if err != nil || h.Version != wal.Version {
			t.Fatalf("%s: %+v %v", p, h, err)
		}
		out := wal.AppendSegmentHeaderV1(nil, h)
		rd := wal.NewSegment(h, b[hlen:])
		for {
			r, _, err := rd.Next()
			if err != nil {
				break
			}
			rec := make([]byte, wal.RecordLen(r.Type))
			if r.Type == wal.TypeBlock {
				wal.PutBlockV1(rec, r.Seq, r.Block, r.Data)
			} else {
				wal.PutTrimV1(rec, r.Seq, r.Block, r.Count)
			}
			out = append(out, rec...)
			n++
		}
		if i == 3 { // a torn record after the last one
			rec := make([]byte, wal.BlockRecordLen)
			wal.PutBlockV1(rec, 1<<40, 3, make([]byte, wal.BlockSize))
			out = append(out, rec[:2000]...)
		}
		f, err := fs.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Write(out); err != nil {
			t.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	if n < blocks {
		t.Fatalf("%d records rewritten", n)
	}
	v, err = Open(ctx, st, "vol", o)
	if err != nil {
		t.Fatal(err)
	}
	if got := v.Stats().Replayed; got != uint64(n) {
		t.Fatalf("replayed %d records, want %d", got, n)
	}
	got := make([]byte, blocks*BlockSize)
	if _, err := v.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) {
		t.Fatal("the version 1 WAL replayed to other data")
	}
	// New writes go to version 2 segments; a drain commits both.
	if _, err := v.WriteAt(want[:BlockSize], 9*BlockSize); err != nil {
		t.Fatal(err)
	}
	copy(want[9*BlockSize:], want[:BlockSize])
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	v, err = Open(ctx, st, "vol", Options{WALDir: "/wal2", FS: fs, Logger: quietLogger(), ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if _, err := v.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) {
		t.Fatal("after the drain the volume holds other data")
	}
}

// InspectWAL counts the records of preallocated and recycled segment
// files, not their size, and their age from their headers.
func TestInspectWALv2(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st := backend.NewMem()
	if err := CreateOnly(ctx, st, "vol", 4<<20); err != nil {
		t.Fatal(err)
	}
	v, err := Open(ctx, st, "vol", Options{WALDir: dir, DrainInterval: time.Hour, DrainBytes: 1 << 40, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	hlen := int64(len(wal.AppendSegmentHeader(nil, wal.SegmentHeader{Volume: "vol"})))
	blk := make([]byte, BlockSize)
	for round := 0; round < 4; round++ {
		for i := 0; i < 5; i++ { // shard 0 only
			blk[0] = byte(round*5 + i + 1)
			if _, err := v.WriteAt(blk, int64(i*16)*BlockSize); err != nil {
				t.Fatal(err)
			}
		}
		if err := v.Flush(); err != nil {
			t.Fatal(err)
		}
		ws, err := InspectWAL(dir, "vol")
		if err != nil || ws.Segments != 1 || ws.PendingBytes != hlen+5*wal.BlockRecordLen || time.Since(ws.Oldest) > time.Minute {
			t.Fatalf("round %d: %+v, %v (header %d bytes)", round, ws, err, hlen)
		}
		if err := v.Drain(ctx); err != nil {
			t.Fatal(err)
		}
		// The drained segment is retired by the background writeback
		// worker or here, whichever takes it from the queue first: wait
		// for it to be recycled.
		deadline := time.Now().Add(10 * time.Second)
		for {
			v.removeQueued()
			ws, err := InspectWAL(dir, "vol")
			if err == nil && ws.Segments == 0 && ws.PendingBytes == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("round %d after the drain: %+v, %v", round, ws, err)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	if v.Stats().WALRecycled == 0 {
		t.Fatal("no file recycled")
	}
}
