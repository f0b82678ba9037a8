package viperblock

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/vfs"
)

// waitFor polls cond for up to 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// segState returns shard i's active segment's written length ahead of its
// records, its file's size and whether it has a file.
func segState(v *Volume, i int) (ahead, alloc int64, ok bool) {
	sh := &v.shards[i]
	sh.mu.Lock()
	seg := sh.seg
	sh.mu.Unlock()
	seg.io.Lock()
	defer seg.io.Unlock()
	return seg.init - (seg.base + seg.written), seg.alloc, seg.f != nil
}

// readyFree reports whether shard i's pool holds a fully written free file
// that is not being prepared, and how many prepared (prep-*) files it holds.
func readyFree(v *Volume, i int) (ready bool, prepared int) {
	v.wfree.mu.Lock()
	defer v.wfree.mu.Unlock()
	for _, f := range v.wfree.files[i] {
		ready = ready || f.ready() && !f.busy
		if strings.Contains(f.path, "/prep-") {
			prepared++
		}
	}
	return ready, prepared
}

// The WAL appends into written space: the first segment of a shard, whose
// file is created when its first record is written, gets zeros written
// ahead of its records in the background; a shard in use gets a prepared
// free file, written over its whole length, which its next segment takes.
// Idle shards get nothing. What a Flush returned for survives a crash
// whatever the zeros' writes did.
func TestWALPrepared(t *testing.T) {
	ctx := context.Background()
	fs := vfs.NewMem()
	st := backend.NewMem()
	if err := CreateOnly(ctx, st, "prep", 64<<20); err != nil {
		t.Fatal(err)
	}
	o := Options{WALDir: "/wal", FS: fs, DrainBytes: 4 << 20, DrainInterval: time.Hour, Logger: quietLogger()}
	v, err := Open(ctx, st, "prep", o)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { v.abandon() }()
	prep := v.wfree.prep
	if prep != walPrepSize(4<<20) || prep != walPreallocMin {
		t.Fatalf("prepared file size %d, want %d", prep, walPreallocMin)
	}

	// Blocks of shard 0 only (block & 15 == 0).
	want := map[int64][]byte{}
	write := func(n int, seed byte) {
		t.Helper()
		for k := range n {
			b := int64(len(want)+k) * nShards
			d := pattern(seed+byte(k), BlockSize)
			if _, err := v.WriteAt(d, b*BlockSize); err != nil {
				t.Fatal(err)
			}
			want[b] = d
		}
		if err := v.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	write(8, 1)
	waitFor(t, "zeros written ahead of shard 0's records", func() bool {
		ahead, _, ok := segState(v, 0)
		return ok && ahead >= prep/2
	})
	waitFor(t, "a prepared free file for shard 0", func() bool { r, _ := readyFree(v, 0); return r })
	for i := 1; i < nShards; i++ {
		if _, n := readyFree(v, i); n > 0 {
			t.Errorf("shard %d, never written, got a prepared file", i)
		}
	}

	// Records past the first fill: it keeps ahead of them.
	write(int(prep/BlockSize), 40)
	waitFor(t, "zeros written ahead again", func() bool {
		ahead, _, _ := segState(v, 0)
		return ahead >= prep/2
	})

	// The next segment takes the prepared file: written from end to end.
	recycled := v.Stats().WALRecycled
	if err := v.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	write(4, 90)
	if v.Stats().WALRecycled != recycled+1 {
		t.Fatalf("the new segment did not take a free file (recycled %d, was %d)", v.Stats().WALRecycled, recycled)
	}
	sh := &v.shards[0]
	sh.mu.Lock()
	seg := sh.seg
	sh.mu.Unlock()
	seg.io.Lock()
	init, alloc := seg.init, seg.alloc
	seg.io.Unlock()
	if alloc < prep || init != alloc {
		t.Fatalf("new segment: %d bytes written in a file of %d, want a written file of at least %d", init, alloc, prep)
	}

	// A crash keeps what was flushed.
	v.abandon()
	v2, err := Open(ctx, st, "prep", Options{WALDir: "/wal", FS: fs.CrashClone(nil), Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer v2.Close()
	got := make([]byte, BlockSize)
	for b, d := range want {
		if _, err := v2.ReadAt(got, b*BlockSize); err != nil || !bytes.Equal(got, d) {
			t.Fatalf("block %d after a crash: %v (equal %v)", b, err, bytes.Equal(got, d))
		}
	}
}

// The pacer holds writes to its rate and gives no credit for idle time.
func TestPacer(t *testing.T) {
	p := pacer{rate: 64 << 20}
	stop := make(chan struct{})
	time.Sleep(20 * time.Millisecond) // idle: no credit
	t0 := time.Now()
	for range 9 {
		if !p.wait(1<<20, stop) {
			t.Fatal("stopped")
		}
	}
	// 9 waits: the first passes at once, each later one a 64th of a second
	// after the one before.
	if d := time.Since(t0); d < 8*time.Second/64 {
		t.Fatalf("9 MiB let through in %v at 64 MiB/s", d)
	}
	close(stop)
	if p.wait(1<<20, stop) {
		t.Fatal("wait returned true after stop")
	}
}
