package viperblock

import (
	"bytes"
	"context"
	"errors"
	"math/rand"
	"testing"
	"time"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/vfs"
)

func compactOpts(c CompactionOptions) Options {
	return Options{WALDir: "/wal", FS: vfs.NewMem(), Logger: quietLogger(), DrainInterval: time.Hour, DrainBytes: 1 << 40, Compaction: c}
}

// overwrite writes n random blocks of [0, blocks) with tag-stamped data,
// draining every per writes, and records them in want.
func overwrite(t *testing.T, v *Volume, rng *rand.Rand, blocks, n, per int, want [][]byte) {
	t.Helper()
	for i := 0; i < n; i++ {
		b := rng.Intn(blocks)
		d := make([]byte, BlockSize)
		rng.Read(d)
		if _, err := v.WriteAt(d, int64(b)*BlockSize); err != nil {
			t.Fatal(err)
		}
		want[b] = d
		if (i+1)%per == 0 {
			if err := v.Drain(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := v.Drain(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func checkBlocks(t *testing.T, v *Volume, want [][]byte) {
	t.Helper()
	buf := make([]byte, BlockSize)
	for b, w := range want {
		if _, err := v.ReadAt(buf, int64(b)*BlockSize); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf, orZero(w)) {
			t.Fatalf("block %d holds the wrong data", b)
		}
	}
}

// TestCompactBackgroundMeetsPolicy: random overwrites leave sparse chunks;
// the background compactor brings the store within the stored ratio, the
// data stays intact (also reopened elsewhere), and the counters move.
func TestCompactBackgroundMeetsPolicy(t *testing.T) {
	ctx := context.Background()
	s := backend.NewMem()
	const blocks = 4096
	o := compactOpts(CompactionOptions{Interval: 20 * time.Millisecond, BytesPerSec: -1, RequestsPerSec: -1})
	v, err := Create(ctx, s, "v", blocks*BlockSize, o)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewSource(testSeed(t)))
	want := make([][]byte, blocks)
	overwrite(t, v, rng, blocks, 3*blocks, 300, want)
	deadline := time.Now().Add(30 * time.Second)
	var sp SpaceInfo
	for {
		if sp, err = Space(ctx, s, "v"); err != nil {
			t.Fatal(err)
		}
		if sp.Ratio() < 1.25 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	st := v.Stats()
	t.Logf("space %+v ratio %.3f; stats runs %d read %d written %d reclaimed %d", sp, sp.Ratio(), st.GCRuns, st.GCBytesRead, st.GCBytesWritten, st.GCBytesReclaimed)
	if sp.Ratio() >= 1.25 {
		t.Fatalf("store holds %.3fx the live data after compaction", sp.Ratio())
	}
	if st.GCRuns == 0 || st.GCBytesWritten == 0 || st.GCBytesReclaimed == 0 || st.GCBytesRead == 0 {
		t.Fatalf("compaction counters did not move: %+v", st)
	}
	checkBlocks(t, v, want)
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	r, err := Open(ctx, s, "v", Options{ReadOnly: true, CacheBlocks: -1})
	if err != nil {
		t.Fatal(err)
	}
	checkBlocks(t, r, want)
}

// TestCompactNewerWriteWins rewrites and trims, while a compaction copies
// them, the very blocks it copies; the newer writes and trims must win, at
// once and after a reopen.
func TestCompactNewerWriteWins(t *testing.T) {
	ctx := context.Background()
	s := backend.NewMem()
	const blocks = 512
	var v *Volume
	rng := rand.New(rand.NewSource(testSeed(t)))
	want := make([][]byte, blocks)
	fired := false
	o := compactOpts(CompactionOptions{Disabled: true, ChunkLiveRatio: 1})
	o.crash = func(p string) error {
		if p != "compact.before-chunk-put" || fired {
			return nil
		}
		fired = true
		// The compactor has read the old blocks: overwrite half of the
		// volume, trim some, drain (committing), and leave some written
		// but not drained.
		for b := 0; b < blocks; b += 2 {
			d := make([]byte, BlockSize)
			rng.Read(d)
			if _, err := v.WriteAt(d, int64(b)*BlockSize); err != nil {
				return err
			}
			want[b] = d
		}
		if err := v.Trim(5*BlockSize, 20*BlockSize); err != nil {
			return err
		}
		for b := 5; b < 25; b++ {
			want[b] = nil
		}
		if err := v.Drain(ctx); err != nil {
			return err
		}
		for b := 1; b < blocks; b += 8 {
			d := make([]byte, BlockSize)
			rng.Read(d)
			if _, err := v.WriteAt(d, int64(b)*BlockSize); err != nil {
				return err
			}
			want[b] = d
		}
		return nil
	}
	var err error
	v, err = Create(ctx, s, "v", blocks*BlockSize, o)
	if err != nil {
		t.Fatal(err)
	}
	overwrite(t, v, rng, blocks, 3*blocks, 50, want)
	rep, err := v.Compact(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !fired || rep.ChunksRewritten == 0 {
		t.Fatalf("no compaction ran: %+v", rep)
	}
	checkBlocks(t, v, want)
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	v, err = Open(ctx, s, "v", compactOpts(CompactionOptions{Disabled: true}))
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	checkBlocks(t, v, want)
}

// TestCompactSnapshotsAndClones: chunks a snapshot pins are not rewritten
// or deleted; the snapshot and a clone of it read intact after compaction
// and a full GC; deleting the snapshot lets compaction reclaim them.
func TestCompactSnapshotsAndClones(t *testing.T) {
	ctx := context.Background()
	s := backend.NewMem()
	const blocks = 1024
	o := compactOpts(CompactionOptions{Disabled: true})
	v, err := Create(ctx, s, "v", blocks*BlockSize, o)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewSource(testSeed(t)))
	want := make([][]byte, blocks)
	overwrite(t, v, rng, blocks, 2*blocks, 100, want)
	if _, err := v.Snapshot(ctx, "s"); err != nil {
		t.Fatal(err)
	}
	snapWant := append([][]byte(nil), want...)
	if err := Clone(ctx, s, "v", "s", "c", 0); err != nil {
		t.Fatal(err)
	}
	pinned, err := snapshotChunks(ctx, s, "v")
	if err != nil {
		t.Fatal(err)
	}
	overwrite(t, v, rng, blocks, 2*blocks, 100, want)
	rep, err := v.GC(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rep.ChunksRewritten == 0 {
		t.Fatalf("nothing compacted: %+v", rep)
	}
	for id := range pinned {
		if _, err := s.GetRange(ctx, chunkKey("v", id), 0, 1); err != nil {
			t.Fatalf("pinned chunk %016x gone: %v", id, err)
		}
	}
	checkBlocks(t, v, want)
	for _, name := range []string{"s", "clone"} {
		var r *Volume
		if name == "s" {
			r, err = OpenSnapshot(ctx, s, "v", "s", Options{CacheBlocks: -1})
		} else {
			r, err = Open(ctx, s, "c", Options{ReadOnly: true, CacheBlocks: -1})
		}
		if err != nil {
			t.Fatal(err)
		}
		checkBlocks(t, r, snapWant)
	}
	before, _ := Space(ctx, s, "v")
	if err := Delete(ctx, s, "c"); err != nil {
		t.Fatal(err)
	}
	if err := DeleteSnapshot(ctx, s, "v", "s"); err != nil {
		t.Fatal(err)
	}
	if _, err := v.GC(ctx); err != nil {
		t.Fatal(err)
	}
	after, _ := Space(ctx, s, "v")
	t.Logf("with snapshot: %+v (%.3fx); without: %+v (%.3fx)", before, before.Ratio(), after, after.Ratio())
	if after.Ratio() > 1.25 || after.PinnedChunks != 0 || after.GarbageChunks != 0 {
		t.Fatalf("after deleting the snapshot: %+v (%.3fx)", after, after.Ratio())
	}
	checkBlocks(t, v, want)
	v.Close()
}

// TestCompactRequest: AskCompact makes the owner compact (even with its
// background policy off) and answers; a volume not open is refused.
func TestCompactRequest(t *testing.T) {
	ctx := context.Background()
	s := backend.NewMem()
	const blocks = 512
	o := compactOpts(CompactionOptions{Disabled: true, Interval: 20 * time.Millisecond})
	o.DrainInterval = 50 * time.Millisecond
	v, err := Create(ctx, s, "v", blocks*BlockSize, o)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewSource(testSeed(t)))
	want := make([][]byte, blocks)
	overwrite(t, v, rng, blocks, 3*blocks, 50, want)
	s.Put(ctx, chunkKey("v", 77), []byte("garbage of an older epoch (0)"))
	before, _ := Space(ctx, s, "v")
	if live, _, err := HasLiveOwner(ctx, s, "v"); err != nil || !live {
		t.Fatalf("HasLiveOwner = %v, %v", live, err)
	}
	if _, err := AskCompact(ctx, s, "v", 20*time.Second); err != nil {
		t.Fatal(err)
	}
	after, _ := Space(ctx, s, "v")
	t.Logf("before %+v (%.3fx), after %+v (%.3fx)", before, before.Ratio(), after, after.Ratio())
	if v.Stats().GCRuns == 0 || after.StoredBytes >= before.StoredBytes || after.GarbageChunks != 0 {
		t.Fatalf("the request compacted nothing: before %+v after %+v", before, after)
	}
	checkBlocks(t, v, want)
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := AskCompact(ctx, s, "v", time.Second); !errors.Is(err, ErrInvalidArg) {
		t.Fatalf("AskCompact on a closed volume: %v", err)
	}
	if live, _, err := HasLiveOwner(ctx, s, "v"); err != nil || live {
		t.Fatalf("HasLiveOwner after close = %v, %v", live, err)
	}
}

func TestRequestFormats(t *testing.T) {
	id, size, flags, err := decodeRequestFlags(encodeRequest(7, 4096))
	if err != nil || id != 7 || size != 4096 || flags != 0 {
		t.Fatalf("v1: %d %d %d %v", id, size, flags, err)
	}
	b := encodeRequest2(9, 0, requestCompact)
	if len(b) != 36 {
		t.Fatalf("v2 is %d bytes", len(b))
	}
	id, size, flags, err = decodeRequestFlags(b)
	if err != nil || id != 9 || size != 0 || flags != requestCompact {
		t.Fatalf("v2: %d %d %d %v", id, size, flags, err)
	}
	b[20] ^= 1
	if _, _, _, err := decodeRequestFlags(b); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("corrupt v2 accepted: %v", err)
	}
	if _, _, _, err := decodeRequestFlags(encodeRequest2(9, 0, 2)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("unknown flag accepted: %v", err)
	}
}
